//! The sending half of a datagram connection, written once for `udp://` and the `mailslot://`
//! senders on Unix and Windows.
//!
//! - At most one datagram waits for the OS at a time: `start_send` checks the frame against
//!   `max_message` (a larger one is `FrameTooLarge` and the connection stays usable) and holds
//!   it; `poll_flush` (and the next `poll_ready`) hands it to the OS. So a slow OS queue is
//!   backpressure on the sender, never a growing buffer.
//! - `poll_close` flushes, says goodbye if the transport has a way to (udp's bye), and marks
//!   the sink closed: a later send is [`ErrorKind::Closed`] (`send after close`).
//!
//! A backend implements [`DatagramSend`] (its OS send, and optionally a header and a goodbye)
//! and gets its `Sink` from [`datagram_sink!`](crate::common::datagram::datagram_sink).

use bytes::Bytes;
use ductwork_core::{Connection, Error, ErrorKind, Result};
use futures::ready;
use std::task::{Context, Poll};

/// The sink's state: the datagram waiting for the OS, and whether the sink was closed.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: Option<Bytes>,
    closed: bool,
}

impl Outbox {
    /// Whether the sink was closed (no more sends).
    #[cfg_attr(not(feature = "socket"), allow(dead_code))]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A connection that sends one datagram per frame.
pub(crate) trait DatagramSend: Connection {
    /// The sink's state.
    fn outbox(&mut self) -> &mut Outbox;

    /// Sends one whole datagram. Called again with the same datagram after `Pending`.
    fn poll_send_datagram(&mut self, cx: &mut Context<'_>, datagram: &Bytes) -> Poll<Result<()>>;

    /// The datagram that carries `frame` (udp prefixes its tag); the frame itself by default.
    fn datagram(&self, frame: Bytes) -> Bytes {
        frame
    }

    /// Runs once, when the sink is first closed, after the last datagram left.
    fn poll_goodbye(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// `Sink::poll_ready`: closed is an error; otherwise the held datagram must leave first.
pub(crate) fn poll_ready<T: DatagramSend>(t: &mut T, cx: &mut Context<'_>) -> Poll<Result<()>> {
    if t.outbox().closed {
        return Poll::Ready(Err(Error::new(
            ErrorKind::Closed,
            &t.info().endpoint,
            "send after close",
        )));
    }
    poll_flush(t, cx)
}

/// `Sink::start_send`: checks the size and holds the datagram.
pub(crate) fn start_send<T: DatagramSend>(t: &mut T, frame: Bytes) -> Result<()> {
    ductwork_codec::check_len(frame.len(), t.info().capabilities.max_message)
        .map_err(|e| Error::codec(&t.info().endpoint, e))?;
    let datagram = t.datagram(frame);
    t.outbox().pending = Some(datagram);
    Ok(())
}

/// `Sink::poll_flush`: sends the held datagram. A failed send drops it (datagrams are not
/// retried) and reports the error.
pub(crate) fn poll_flush<T: DatagramSend>(t: &mut T, cx: &mut Context<'_>) -> Poll<Result<()>> {
    if let Some(d) = t.outbox().pending.clone() {
        let r = ready!(t.poll_send_datagram(cx, &d));
        t.outbox().pending = None;
        r?;
    }
    Poll::Ready(Ok(()))
}

/// `Sink::poll_close`: flush, goodbye (once), closed.
pub(crate) fn poll_close<T: DatagramSend>(t: &mut T, cx: &mut Context<'_>) -> Poll<Result<()>> {
    ready!(poll_flush(t, cx))?;
    if !t.outbox().closed {
        ready!(t.poll_goodbye(cx));
    }
    t.outbox().closed = true;
    Poll::Ready(Ok(()))
}

/// Implements `Sink<Bytes>` for a [`DatagramSend`] type with the functions above. (A blanket
/// impl is not allowed for a foreign trait, hence the macro.)
macro_rules! datagram_sink {
    ($t:ty) => {
        impl futures::Sink<bytes::Bytes> for $t {
            type Error = ductwork_core::Error;

            fn poll_ready(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                $crate::common::datagram::poll_ready(self.get_mut(), cx)
            }

            fn start_send(
                self: std::pin::Pin<&mut Self>,
                item: bytes::Bytes,
            ) -> ductwork_core::Result<()> {
                $crate::common::datagram::start_send(self.get_mut(), item)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                $crate::common::datagram::poll_flush(self.get_mut(), cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                $crate::common::datagram::poll_close(self.get_mut(), cx)
            }
        }
    };
}
pub(crate) use datagram_sink;
