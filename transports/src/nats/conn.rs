//! One `nats://` connection: frames published to the peer's inbox, read from our own, a
//! heartbeat task that tells a live peer from a lost one, and the client side of the connect
//! handshake (the listener side is in `listener.rs`).

use super::{caps, config::Config};
use async_nats::{header::HeaderMap, Client, Message, Subject, Subscriber};
use bytes::Bytes;
use ductwork_core::{
    BoxConnection, Connection, ConnectionInfo, Endpoint, Error, ErrorKind, Result,
};
use futures::{task::AtomicWaker, FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::task::JoinHandle;

/// The header that marks ductwork's control messages (data frames carry no header).
pub(crate) const HEADER: &str = "Ductwork-Nats";
/// A client's connect request.
pub(crate) const HELLO: &str = "hello/1";
/// A listener's answer: the message's reply subject is the listener's inbox.
pub(crate) const ACCEPT: &str = "accept";
/// A listener's refusal (its backlog is full); the payload says why.
pub(crate) const REFUSED: &str = "refused";
/// No more frames from this side (on the data subject, after the last frame).
const CLOSE: &str = "close";
/// This side dropped the connection (on the heartbeat subject).
const BYE: &str = "bye";

/// A message with ductwork's control header `value`, and no payload unless given.
pub(crate) fn control(value: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER, value);
    h
}

/// The control value a message carries, if it has ductwork's header.
pub(crate) fn control_of(m: &Message) -> Option<&str> {
    m.headers.as_ref()?.get(HEADER).map(|v| v.as_str())
}

/// The heartbeat subject that goes with an inbox.
pub(crate) fn hb_subject(inbox: &str) -> String {
    format!("{inbox}.hb")
}

/// Whether `s` is a subject one may publish to: printable tokens, no wildcard, no space.
pub(crate) fn publishable(s: &str) -> bool {
    s.len() <= 256
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// The peer's liveness as the heartbeat task sees it.
const ALIVE: u8 = 0;
/// The peer dropped its connection (it said goodbye).
const GONE: u8 = 1;
/// No heartbeat for `peer_timeout`, or our client closed.
const LOST: u8 = 2;

/// What a connection and its heartbeat task share.
#[derive(Default)]
struct Shared {
    state: AtomicU8,
    /// Woken when `state` changes: the receiving side and the sending side.
    recv: AtomicWaker,
    send: AtomicWaker,
}

impl Shared {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.recv.wake();
        self.send.wake();
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// Both ends of one conversation, as the handshake leaves them.
pub(crate) struct Link {
    pub client: Client,
    /// Our inbox's subscription (frames and close markers).
    pub data: Subscriber,
    /// Our heartbeat subject's subscription.
    pub hb: Subscriber,
    /// The peer's inbox.
    pub peer: Subject,
}

/// Where the sending side stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sending {
    Open,
    /// `poll_close` queued the close marker and waits for it to be flushed.
    Closing,
    Closed,
}

/// One `nats://` connection.
pub(crate) struct NatsConnection {
    info: ConnectionInfo,
    /// Our client, as a sink of outgoing messages (its own queue slot per connection).
    client: Client,
    peer: Subject,
    data: Option<Subscriber>,
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
    /// A flush of the client's writer in progress.
    flushing: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
    /// Frames queued since the last completed flush.
    dirty: bool,
    send: Sending,
    /// Why receiving ended, once it did: `None` inside for a clean end.
    ended: Option<Option<ErrorKind>>,
}

impl NatsConnection {
    /// A connection over `link`, limited to `max` bytes a frame, with heartbeats as `cfg` says.
    pub(crate) fn new(ep: &Endpoint, cfg: &Config, link: Link, max: usize) -> NatsConnection {
        let shared = Arc::new(Shared::default());
        let watcher = tokio::spawn(watch(
            link.client.clone(),
            link.hb,
            Subject::from(hb_subject(link.peer.as_str())),
            (cfg.heartbeat, cfg.peer_timeout),
            shared.clone(),
        ));
        NatsConnection {
            info: ConnectionInfo {
                endpoint: ep.clone(),
                peer: Some(format!("nats inbox {}", link.peer)),
                capabilities: caps(max),
            },
            client: link.client,
            peer: link.peer,
            data: Some(link.data),
            shared,
            watcher,
            flushing: None,
            dirty: false,
            send: Sending::Open,
            ended: None,
        }
    }

    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(kind, &self.info.endpoint, detail)
    }

    /// The peer's state as an error for a sender, if it is not alive.
    fn peer_error(&self) -> Option<Error> {
        match self.shared.get() {
            LOST => Some(self.err(
                ErrorKind::ConnectionLost,
                "no heartbeat from the peer within peer_timeout",
            )),
            GONE => Some(self.err(ErrorKind::Closed, "the peer closed the connection")),
            _ => None,
        }
    }

    /// Receiving has ended: `kind` is why (`None`: a clean end). The subscription goes, so
    /// nothing more is buffered for it.
    fn end(&mut self, kind: Option<ErrorKind>) {
        self.ended = Some(kind);
        self.data = None;
    }

    /// One message from our inbox: a frame, the end, or a reason to break.
    fn take(&mut self, m: Message) -> Option<Result<Bytes>> {
        if m.status.is_some() {
            // A server status for an earlier request of ours; not for the peer's stream.
            tracing::debug!(endpoint = %self.info.endpoint, status = ?m.status, "nats: status ignored");
            return None;
        }
        match (m.headers.is_some(), control_of(&m)) {
            (false, _) => {
                let max = self.info.capabilities.max_message;
                if m.payload.len() > max {
                    self.end(Some(ErrorKind::FrameTooLarge));
                    return Some(Err(self.err(
                        ErrorKind::FrameTooLarge,
                        format!(
                            "the peer sent {} bytes, over the limit of {max}",
                            m.payload.len()
                        ),
                    )));
                }
                Some(Ok(m.payload))
            }
            (true, Some(CLOSE)) => {
                self.end(None);
                None
            }
            (true, other) => {
                let what = format!("a message with unknown headers ({other:?})");
                self.end(Some(ErrorKind::Protocol));
                Some(Err(self.err(ErrorKind::Protocol, what)))
            }
        }
    }

    /// Drives the flush in progress (starting one if frames were queued since the last).
    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.flushing.is_none() && self.dirty {
            let client = self.client.clone();
            self.flushing = Some(Box::pin(async move { client.flush().await.is_ok() }));
            self.dirty = false;
        }
        let Some(f) = self.flushing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        // A flush waits while the client reconnects; a lost peer ends the wait.
        self.shared.send.register(cx.waker());
        if self.shared.get() == LOST {
            self.flushing = None;
            return Poll::Ready(Err(self.peer_error().expect("lost")));
        }
        let ok = ready!(f.poll_unpin(cx));
        self.flushing = None;
        if ok {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(
                self.err(ErrorKind::ConnectionLost, "the NATS client has closed")
            ))
        }
    }
}

impl Stream for NatsConnection {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        loop {
            let Some(data) = this.data.as_mut() else {
                return Poll::Ready(None);
            };
            match data.poll_next_unpin(cx) {
                Poll::Ready(Some(m)) => match this.take(m) {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => continue,
                },
                Poll::Ready(None) => {
                    this.end(Some(ErrorKind::ConnectionLost));
                    return Poll::Ready(Some(Err(
                        this.err(ErrorKind::ConnectionLost, "the NATS client has closed")
                    )));
                }
                Poll::Pending => {}
            }
            // Everything that arrived is read: only now does the peer's state count (a
            // goodbye or a lost peer comes after its last frame).
            this.shared.recv.register(cx.waker());
            let why = match this.shared.get() {
                ALIVE => return Poll::Pending,
                GONE => "the peer dropped the connection without closing it",
                _ => "no heartbeat from the peer within peer_timeout",
            };
            // The state may have changed after the poll above: read once more first.
            if let Poll::Ready(Some(m)) = this
                .data
                .as_mut()
                .map_or(Poll::Pending, |d| d.poll_next_unpin(cx))
            {
                match this.take(m) {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => continue,
                }
            }
            this.end(Some(ErrorKind::ConnectionLost));
            return Poll::Ready(Some(Err(this.err(ErrorKind::ConnectionLost, why))));
        }
    }
}

impl Sink<Bytes> for NatsConnection {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.send != Sending::Open {
            return Poll::Ready(Err(self.err(ErrorKind::Closed, "sent after close")));
        }
        if let Some(e) = self.peer_error() {
            return Poll::Ready(Err(e));
        }
        self.shared.send.register(cx.waker());
        match ready!(self.client.poll_ready_unpin(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(self.err(ErrorKind::ConnectionLost, e.to_string()))),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<()> {
        if self.send != Sending::Open {
            return Err(self.err(ErrorKind::Closed, "sent after close"));
        }
        let max = self.info.capabilities.max_message;
        if frame.len() > max {
            return Err(self.err(
                ErrorKind::FrameTooLarge,
                format!(
                    "a frame of {} bytes is over the limit of {max}",
                    frame.len()
                ),
            ));
        }
        let msg = async_nats::message::OutboundMessage {
            subject: self.peer.clone(),
            reply: None,
            payload: frame,
            headers: None,
        };
        self.client
            .start_send_unpin(msg)
            .map_err(|e| self.err(ErrorKind::ConnectionLost, e.to_string()))?;
        self.dirty = true;
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_flush_inner(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            match self.send {
                Sending::Closed => return Poll::Ready(Ok(())),
                Sending::Closing => {
                    let r = ready!(self.poll_flush_inner(cx));
                    self.send = Sending::Closed;
                    return Poll::Ready(r);
                }
                Sending::Open => {
                    ready!(self.poll_flush_inner(cx))?;
                    if self.shared.get() == GONE {
                        // The peer dropped the connection: nobody to tell.
                        self.send = Sending::Closed;
                        continue;
                    }
                    if let Err(e) = ready!(self.client.poll_ready_unpin(cx)) {
                        return Poll::Ready(
                            Err(self.err(ErrorKind::ConnectionLost, e.to_string())),
                        );
                    }
                    let msg = async_nats::message::OutboundMessage {
                        subject: self.peer.clone(),
                        reply: None,
                        payload: Bytes::new(),
                        headers: Some(control(CLOSE)),
                    };
                    self.client
                        .start_send_unpin(msg)
                        .map_err(|e| self.err(ErrorKind::ConnectionLost, e.to_string()))?;
                    self.dirty = true;
                    self.send = Sending::Closing;
                }
            }
        }
    }
}

impl Connection for NatsConnection {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Drop for NatsConnection {
    fn drop(&mut self) {
        self.watcher.abort();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime nothing can be sent, and a subscription's own drop would
            // spawn its unsubscribe there (and panic): leave it to the client's end.
            std::mem::forget(self.data.take());
            return;
        };
        // Tell the peer: the close marker after our last frame (unless closed already), then
        // the goodbye that stops it waiting for heartbeats. Best-effort: a process that exits
        // right away may not get to send them, and the peer's timeout says it instead.
        let client = self.client.clone();
        let peer = self.peer.clone();
        let closed = self.send != Sending::Open || self.shared.get() != ALIVE;
        rt.spawn(async move {
            if !closed {
                let _ = client
                    .publish_with_headers(peer.clone(), control(CLOSE), Bytes::new())
                    .await;
            }
            let hb = hb_subject(peer.as_str());
            let _ = client
                .publish_with_headers(hb, control(BYE), Bytes::new())
                .await;
            let _ = client.flush().await;
        });
    }
}

/// The heartbeat task: sends ours every `heartbeat`, watches the peer's, and marks the peer
/// gone (a goodbye) or lost (silence for `peer_timeout`, or our client closed).
async fn watch(
    client: Client,
    mut hb: Subscriber,
    peer_hb: Subject,
    (heartbeat, peer_timeout): (Duration, Duration),
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(peer_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Never wait long here: a reconnecting client's queue may be full, and the
                // deadline must still be watched.
                let _ = tokio::time::timeout(heartbeat, client.publish(peer_hb.clone(), Bytes::new())).await;
            }
            m = hb.next() => match m {
                Some(m) if control_of(&m) == Some(BYE) => return shared.set(GONE),
                Some(_) => deadline.as_mut().reset(tokio::time::Instant::now() + peer_timeout),
                None => return shared.set(LOST),
            },
            _ = &mut deadline => return shared.set(LOST),
        }
    }
}

/// The client side of the handshake: a fresh inbox, the hello to the name's connect subject,
/// and the listener's answer (see the module docs of `nats`).
pub(crate) async fn connect(ep: &Endpoint, cfg: &Config) -> Result<BoxConnection> {
    let client = cfg.client(ErrorKind::NotFound).await?;
    let e = |kind: ErrorKind, what: String| Error::new(kind, &cfg.shown, what);
    let io = |what: &str, err: &dyn std::fmt::Display| {
        e(ErrorKind::ConnectionLost, format!("{what}: {err}"))
    };
    let inbox = client.new_inbox();
    let mut data = client
        .subscribe(inbox.clone())
        .await
        .map_err(|x| io("subscribe", &x))?;
    let hb = client
        .subscribe(hb_subject(&inbox))
        .await
        .map_err(|x| io("subscribe", &x))?;
    client
        .publish_with_reply_and_headers(cfg.connect_subject(), inbox, control(HELLO), Bytes::new())
        .await
        .map_err(|x| io("connect request", &x))?;
    client
        .flush()
        .await
        .map_err(|x| io("connect request", &x))?;
    let answer = data
        .next()
        .await
        .ok_or_else(|| e(ErrorKind::ConnectionLost, "the NATS client closed".into()))?;
    let peer = match (answer.status, control_of(&answer), answer.reply.clone()) {
        (Some(s), _, _) if s == async_nats::StatusCode::NO_RESPONDERS => {
            return Err(e(
                ErrorKind::NotFound,
                format!("no listener serves `{}` on the NATS server", cfg.name),
            ))
        }
        (None, Some(ACCEPT), Some(peer)) if publishable(peer.as_str()) => peer,
        (None, Some(REFUSED), _) => {
            return Err(e(
                ErrorKind::Refused,
                format!(
                    "the listener refused: {}",
                    String::from_utf8_lossy(&answer.payload)
                ),
            ))
        }
        (status, control, _) => {
            return Err(e(
                ErrorKind::Protocol,
                format!(
                    "not a ductwork listener's answer (status {status:?}, control {control:?})"
                ),
            ))
        }
    };
    let server_max = client.server_info().max_payload;
    let max = cfg.max_frame.map_or(server_max, |m| m.min(server_max));
    let link = Link {
        client,
        data,
        hb,
        peer,
    };
    Ok(Box::new(NatsConnection::new(ep, cfg, link, max)))
}
