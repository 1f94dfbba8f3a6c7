//! The transport contract: what every backend implements and every user may rely on.
//!
//! A [`Transport`] turns an [`Endpoint`] into a [`Listener`] (`bind`) or a [`Connection`]
//! (`connect`). A connection carries *frames* (opaque byte payloads); the typed layer
//! ([`crate::Channel`]) turns frames into values. No backend knows about typed messages.
//!
//! # The contract
//! The conformance suite in `ductwork-transports` checks each rule below for every backend,
//! with the two sides in separate OS processes. A rule a transport's [`Capabilities`] exempt it
//! from is stated there.
//!
//! - **Frames, not bytes.** One `send` is one `recv` on the other side: boundaries are kept.
//! - **Ordering and delivery.** On a [`Delivery::Reliable`](crate::Delivery) transport every
//!   frame whose send completed is delivered exactly once, in order, unless the connection fails
//!   with an error. Best-effort transports may lose or reorder, never corrupt or split.
//! - **What send means.** A completed send (`Sink::poll_flush` returned `Ready(Ok)`) means the
//!   frame was handed to the mechanism (socket buffer, ring, mailslot): not that the peer read it.
//!   A full mechanism makes send wait (backpressure): no transport buffers without bound.
//! - **Size limit.** A frame larger than the endpoint's `max_message` is refused on send with
//!   [`ErrorKind::FrameTooLarge`](crate::ErrorKind) and the connection stays usable. A peer that
//!   announces a larger frame makes *that connection* fail with `FrameTooLarge` before any
//!   memory is reserved for it.
//! - **What close means.** `Sink::poll_close` flushes pending frames, tells the peer no more will
//!   come and releases the sending side. The peer's stream then yields every frame sent before,
//!   then `None`. Dropping a connection without closing is best-effort: transports try to
//!   close cleanly, but may report [`ErrorKind::ConnectionLost`](crate::ErrorKind) instead.
//! - **What a dead peer looks like.** If the peer dies (killed, crashed, network reset) a
//!   transport with `peer_loss` makes the survivor's pending and later `recv` return
//!   [`ErrorKind::ConnectionLost`](crate::ErrorKind) promptly, never hang; `None` is reserved for
//!   a clean close. Sends to a dead peer fail with `ConnectionLost` or `Closed`.
//! - **Garbage.** Malformed input fails that connection with
//!   [`ErrorKind::Protocol`](crate::ErrorKind) or `FrameTooLarge`; the listener and other
//!   connections keep working. Nothing the peer sends causes a panic, undefined behaviour or an
//!   allocation sized by the peer's claim beyond `max_message`.
//! - **After an error.** Once `recv` returned an error other than `Decode`, the connection is
//!   broken: later calls return an error or `None`.
//! - **Names.** Binding an endpoint that another live listener holds fails with
//!   [`ErrorKind::AddrInUse`](crate::ErrorKind); connecting where nothing listens fails with
//!   [`ErrorKind::NotFound`](crate::ErrorKind). Every error names the endpoint.
//! - **One-way transports.** Receiving on the sending side, or sending on the receiving side,
//!   fails with [`ErrorKind::Unsupported`](crate::ErrorKind).
//! - **Cancellation.** `accept` and `recv` (`Stream::poll_next`) are cancel-safe: dropping the
//!   future loses nothing.

use crate::{Capabilities, Endpoint, Result};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream};
use std::pin::Pin;

/// Facts about one connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The endpoint this connection belongs to (the listener's, for accepted connections).
    pub endpoint: Endpoint,
    /// A description of the peer, when the mechanism knows one (address, pid, ...).
    pub peer: Option<String>,
    /// What this connection offers.
    pub capabilities: Capabilities,
}

/// One connection: a sink of outgoing frames and a stream of incoming ones.
///
/// The stream yields `Some(Ok(frame))` per frame, `None` after the peer closed cleanly, and
/// `Some(Err(_))` when the connection failed; see the [module docs](self) for the full contract.
pub trait Connection:
    Stream<Item = Result<Bytes>> + Sink<Bytes, Error = crate::Error> + Send + Unpin + 'static
{
    /// Facts about this connection.
    fn info(&self) -> &ConnectionInfo;

    /// Queues one frame whose payload `encode` appends to the buffer it is given, returning
    /// the payload's length; like [`Sink::start_send`], call it only after `poll_ready`
    /// returned `Ready(Ok(()))`.
    ///
    /// The typed [`Channel`](crate::Channel) sends through this. The default encodes into a
    /// fresh buffer and calls `start_send`; transports that keep a write buffer override it to
    /// encode in place, which saves an allocation and a copy per message. If `encode` fails,
    /// nothing is queued and the connection stays usable.
    fn start_send_encoded(
        &mut self,
        encode: &mut dyn FnMut(&mut BytesMut) -> Result<usize>,
    ) -> Result<()> {
        let mut buf = BytesMut::new();
        encode(&mut buf)?;
        Pin::new(self).start_send(buf.freeze())
    }
}

/// A boxed connection, as transports return it.
pub type BoxConnection = Box<dyn Connection>;

/// A bound endpoint that accepts connections.
#[async_trait]
pub trait Listener: Send + 'static {
    /// The endpoint actually bound (for example with the real port when port 0 was asked).
    fn endpoint(&self) -> &Endpoint;

    /// Waits for the next connection. Cancel-safe.
    async fn accept(&mut self) -> Result<BoxConnection>;
}

/// A boxed listener, as transports return it.
pub type BoxListener = Box<dyn Listener>;

/// A messaging mechanism, selected by an endpoint's scheme.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The scheme this transport serves (`tcp`, `shm`, ...).
    fn scheme(&self) -> &'static str;

    /// What this transport offers on `endpoint` (with its options), or why it cannot serve it.
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities>;

    /// Binds `endpoint` and returns a listener.
    async fn bind(&self, endpoint: &Endpoint) -> Result<BoxListener>;

    /// Connects to a listener at `endpoint`.
    async fn connect(&self, endpoint: &Endpoint) -> Result<BoxConnection>;
}
