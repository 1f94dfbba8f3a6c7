//! A connection made of two channels to a task that speaks NATS: how the patterns' own
//! machinery (ids and deadlines, concurrent handlers, subscriber queues) runs unchanged over
//! NATS-native messages. The pattern sends and receives its usual frames; the task turns
//! them into NATS publications and back.

use crate::{Capabilities, Connection, ConnectionInfo, Endpoint, Error, ErrorKind, Result};
use bytes::Bytes;
use ductwork_core::async_trait;
use futures::{FutureExt, Sink, Stream};
use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::PollSender;

/// Frames waiting in each direction between a pattern and its task: a small bound, as NATS
/// buffers (up to the `buffer` option) behind it.
const CAPACITY: usize = 64;

/// The task's ends of a bridge.
pub(super) struct Ends {
    /// Frames for the pattern, or why the link ended.
    pub to_pattern: mpsc::Sender<Result<Bytes>>,
    /// Frames from the pattern; `None` once it closed or dropped the connection.
    pub from_pattern: mpsc::Receiver<Bytes>,
}

/// The pattern's end: a [`Connection`].
pub(super) struct Bridge {
    info: ConnectionInfo,
    rx: mpsc::Receiver<Result<Bytes>>,
    tx: PollSender<Bytes>,
    task: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Starts `run` with the task's ends; the connection is the pattern's.
    pub(super) fn spawn<F, Fut>(info: ConnectionInfo, run: F) -> Bridge
    where
        F: FnOnce(Ends) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (to_tx, to_rx) = mpsc::channel(CAPACITY);
        let (from_tx, from_rx) = mpsc::channel(CAPACITY);
        let task = tokio::spawn(run(Ends {
            to_pattern: to_tx,
            from_pattern: from_rx,
        }));
        Bridge {
            info,
            rx: to_rx,
            tx: PollSender::new(from_tx),
            task: Some(task),
        }
    }

    fn closed(&self) -> Error {
        Error::new(
            ErrorKind::Closed,
            &self.info.endpoint,
            "the NATS link of this pattern has ended",
        )
    }
}

/// What a bridged connection says of itself: the transport's capabilities with the payload
/// limit in force; `peer_loss`, as there is no peer to watch (the patterns then send no
/// heartbeats of their own).
pub(super) fn info(ep: &Endpoint, what: String, max_payload: usize) -> Result<ConnectionInfo> {
    let capabilities = Capabilities {
        max_message: max_payload,
        peer_loss: true,
        ..crate::capabilities(ep)?
    };
    Ok(ConnectionInfo {
        endpoint: ep.clone(),
        peer: Some(what),
        capabilities,
    })
}

impl Stream for Bridge {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.rx.poll_recv(cx)
    }
}

impl Sink<Bytes> for Bridge {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match ready!(self.tx.poll_reserve(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(self.closed())),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<()> {
        self.tx.send_item(frame).map_err(|_| self.closed())
    }

    /// Frames are the task's once handed over, and it publishes them in order.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the frames to the task and waits for it to finish: what the pattern sent is then
    /// flushed to the NATS server.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // A reserved slot would keep the channel open: given back first.
        self.tx.abort_send();
        self.tx.close();
        if let Some(task) = self.task.as_mut() {
            let _ = ready!(task.poll_unpin(cx));
            self.task = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl Connection for Bridge {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

/// A listener that hands out one bridged connection (the pattern's whole NATS side) and then
/// nothing more.
pub(super) struct OneShot {
    pub endpoint: Endpoint,
    pub conn: Option<Bridge>,
}

#[async_trait]
impl crate::Listener for OneShot {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<crate::BoxConnection> {
        match self.conn.take() {
            Some(c) => Ok(Box::new(c)),
            None => std::future::pending().await,
        }
    }
}
