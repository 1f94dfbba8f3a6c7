//! Typed channels: values in, values out, whatever carries them.
//!
//! A [`Channel<Out, In>`] wraps any [`Connection`](crate::Connection) and sends values of type
//! `Out` and receives values of type `In` (both `In = Out` by default), encoded with postcard.
//! It offers plain async [`send`](Channel::send) / [`recv`](Channel::recv) and implements
//! `futures`' [`Sink<Out>`] and [`Stream<Item = Result<In>>`], so application code is the same
//! for every endpoint.
//!
//! ```
//! # async fn demo(conn: ductwork_core::BoxConnection) -> ductwork_core::Result<()> {
//! use ductwork_core::Channel;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Ping(u64);
//! let mut ch: Channel<Ping> = Channel::new(conn);
//! ch.send(&Ping(1)).await?;
//! if let Some(Ping(n)) = ch.recv().await? {
//!     println!("pong {n}");
//! }
//! ch.close().await?;
//! # Ok(()) }
//! ```

use crate::{BoxConnection, ConnectionInfo, Endpoint, Error, FrameEncoder, FrameWriter, Result};
use bytes::Bytes;
use ductwork_codec::CodecError;
use futures::{ready, Sink, SinkExt, Stream, StreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

/// A typed channel over one connection: sends `Out`, receives `In`.
pub struct Channel<Out, In = Out> {
    conn: BoxConnection,
    /// The connection's endpoint, copied once here so that an encoder error inside a sized
    /// send (while `conn` is borrowed) is built with it directly.
    endpoint: Endpoint,
    _types: PhantomData<fn(Out) -> In>,
}

impl<Out, In> Channel<Out, In>
where
    Out: Serialize,
    In: DeserializeOwned,
{
    /// Wraps a connection.
    pub fn new(conn: BoxConnection) -> Self {
        Channel {
            endpoint: conn.info().endpoint.clone(),
            conn,
            _types: PhantomData,
        }
    }

    /// What the underlying connection has carried so far (frames and bytes each way, errors),
    /// when it counts (see [`crate::Connection::stats`]).
    pub fn stats(&self) -> Option<crate::Stats> {
        self.conn.stats()
    }

    /// Facts about the underlying connection (endpoint, peer, capabilities).
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// Encodes `msg` into a frame, checking the endpoint's size limit.
    pub fn encode(&self, msg: &Out) -> Result<Bytes> {
        let info = self.conn.info();
        ductwork_codec::encode(msg, info.capabilities.max_message)
            .map_err(|e| Error::codec(&info.endpoint, e))
    }

    /// Sends one message and waits until the transport accepted it (see the contract for what
    /// that means). A message over the size limit fails with `FrameTooLarge` and the channel
    /// stays usable.
    pub async fn send(&mut self, msg: &Out) -> Result<()> {
        self.feed(msg).await?;
        self.conn.flush().await
    }

    /// Queues one message without flushing; call [`flush`](Self::flush) after a batch. Useful
    /// for throughput: stream transports then write many frames per system call.
    pub async fn feed(&mut self, msg: &Out) -> Result<()> {
        futures::future::poll_fn(|cx| self.conn.poll_ready_unpin(cx)).await?;
        self.start_send_msg(msg)
    }

    /// Encodes `msg` straight into the connection (see
    /// [`crate::Connection::start_send_encoded`]): a stream transport encodes it once into
    /// its write buffer; others size it first and let the encoder write where the frame goes.
    /// The connection refuses a frame over the endpoint's limit.
    fn start_send_msg(&mut self, msg: &Out) -> Result<()> {
        let mut frame = Postcard {
            msg,
            endpoint: &self.endpoint,
        };
        self.conn.start_send_encoded(&mut frame).map(drop)
    }

    /// Flushes messages queued with [`feed`](Self::feed).
    pub async fn flush(&mut self) -> Result<()> {
        self.conn.flush().await
    }

    /// Receives the next message: `Ok(None)` once the peer closed cleanly. Cancel-safe.
    ///
    /// A frame that does not decode as `In` is a [`crate::ErrorKind::Decode`] error for that
    /// frame; the channel stays usable.
    pub async fn recv(&mut self) -> Result<Option<In>> {
        futures::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Receives the next frame and hands it to `f` where it lies, without copying it out of
    /// the connection's buffer: `Ok(None)` once the peer closed cleanly. Cancel-safe (the
    /// frame is consumed only once `f` ran).
    ///
    /// For bulk consumers that decode into types borrowing from the frame (see
    /// [`recv_frame`](Self::recv_frame) for such a type) and need no owned copy:
    ///
    /// ```
    /// # async fn demo(mut ch: ductwork_core::Channel<()>) -> ductwork_core::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Chunk<'a> {
    ///     offset: u64,
    ///     data: &'a [u8],
    /// }
    /// while let Some(sum) = ch
    ///     .recv_with(|frame| {
    ///         let chunk: Chunk<'_> = frame.decode()?;
    ///         Ok::<_, ductwork_core::Error>(chunk.data.iter().map(|&b| b as u64).sum::<u64>())
    ///     })
    ///     .await?
    /// {
    ///     println!("{}", sum?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_with<R>(&mut self, f: impl FnOnce(FrameRef<'_>) -> R) -> Result<Option<R>> {
        let mut f = Some(f);
        let mut out = None;
        let endpoint = &self.endpoint;
        let conn = &mut self.conn;
        let got = futures::future::poll_fn(|cx| {
            conn.poll_recv_with(cx, &mut |bytes| {
                if let Some(f) = f.take() {
                    out = Some(f(FrameRef { bytes, endpoint }));
                }
            })
        })
        .await;
        match got {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) => out.map(Some).ok_or_else(|| lent_nothing(endpoint)),
        }
    }

    /// One `recv`: the frame decoded where it lies.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<In>>> {
        let mut out = None;
        let endpoint = &self.endpoint;
        let got = self.conn.poll_recv_with(cx, &mut |bytes| {
            out = Some(FrameRef { bytes, endpoint }.decode());
        });
        Poll::Ready(match ready!(got) {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) => match out {
                Some(r) => r.map(Some),
                None => Err(lent_nothing(endpoint)),
            },
        })
    }

    /// Receives the next frame without decoding it: `Ok(None)` once the peer closed cleanly.
    /// Cancel-safe.
    ///
    /// With [`decode_frame`](Self::decode_frame) this decodes into types that borrow from the
    /// frame, so large byte or string fields are read in place rather than copied into an
    /// owned value:
    ///
    /// ```
    /// # async fn demo(mut ch: ductwork_core::Channel<()>) -> ductwork_core::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Chunk<'a> {
    ///     offset: u64,
    ///     data: &'a [u8], // `&[u8]` and `&str` borrow by default
    /// }
    /// while let Some(frame) = ch.recv_frame().await? {
    ///     let chunk: Chunk<'_> = ch.decode_frame(&frame)?;
    ///     println!("{} bytes at {}", chunk.data.len(), chunk.offset);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// The sender may send an owned type of the same shape (a `Vec<u8>` where the receiver
    /// borrows `&[u8]`, a `String` for a `&str`): postcard encodes them alike.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>> {
        match self.conn.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(frame)) => Ok(Some(frame)),
        }
    }

    /// Decodes a frame from [`recv_frame`](Self::recv_frame) as `T`, which may borrow from
    /// it. Errors name this channel's endpoint, as [`recv`](Self::recv)'s do.
    pub fn decode_frame<'a, T: Deserialize<'a>>(&self, frame: &'a [u8]) -> Result<T> {
        ductwork_codec::decode(frame).map_err(|e| Error::codec(&self.conn.info().endpoint, e))
    }

    /// Closes the sending side after flushing; the peer receives everything sent, then `None`.
    pub async fn close(&mut self) -> Result<()> {
        self.conn.close().await
    }

    /// The underlying connection.
    pub fn into_inner(self) -> BoxConnection {
        self.conn
    }
}

/// A connection that said it received a frame without lending it (a broken
/// [`crate::Connection::poll_recv_with`]): an error, not a panic.
#[cold]
fn lent_nothing(endpoint: &Endpoint) -> Error {
    Error::new(
        crate::ErrorKind::Protocol,
        endpoint,
        "the connection reported a frame but did not lend it",
    )
}

/// A received frame lent by [`Channel::recv_with`]: its bytes, and a decoder whose errors name
/// the channel's endpoint.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    bytes: &'a [u8],
    endpoint: &'a Endpoint,
}

impl<'a> FrameRef<'a> {
    /// The frame's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Decodes the frame as `T`, which may borrow from it (as
    /// [`Channel::decode_frame`] does).
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T> {
        ductwork_codec::decode(self.bytes).map_err(|e| Error::codec(self.endpoint, e))
    }
}

/// A typed value as a [`FrameEncoder`]: postcard, errors naming the endpoint.
struct Postcard<'a, T> {
    msg: &'a T,
    endpoint: &'a Endpoint,
}

impl<T: Serialize> FrameEncoder for Postcard<'_, T> {
    fn encoded_len(&mut self) -> Result<usize> {
        postcard::experimental::serialized_size(self.msg)
            .map_err(|e| Error::codec(self.endpoint, CodecError::Encode(e)))
    }

    #[inline]
    fn encode(&mut self, w: &mut FrameWriter<'_>) -> Result<()> {
        match postcard::serialize_with_flavor(self.msg, IntoFrame(w)) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::codec(self.endpoint, CodecError::Encode(e))),
        }
    }
}

/// postcard's output straight into a [`FrameWriter`]: no `io::Write` layer (and its
/// `io::Error`s) between the serializer and the frame's memory.
struct IntoFrame<'w, 'a>(&'w mut FrameWriter<'a>);

impl postcard::ser_flavors::Flavor for IntoFrame<'_, '_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match self.0.put(data) {
            true => Ok(()),
            false => Err(postcard::Error::SerializeBufferFull),
        }
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl<Out, In> std::fmt::Debug for Channel<Out, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("endpoint", &self.conn.info().endpoint)
            .finish()
    }
}

impl<Out: Serialize, In: DeserializeOwned> Sink<Out> for Channel<Out, In> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Out) -> Result<()> {
        self.start_send_msg(&item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn.poll_close_unpin(cx)
    }
}

impl<Out: Serialize, In: DeserializeOwned> Stream for Channel<Out, In> {
    type Item = Result<In>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<In>>> {
        self.poll_recv(cx).map(Result::transpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{transport::tests::Collect, ErrorKind};
    use std::cell::Cell;

    /// Serializes one byte longer every time, so the size computed first is wrong by the
    /// time the encoder writes: the encoder fails inside the sized send.
    struct Grows(Cell<usize>);
    impl Serialize for Grows {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            self.0.set(self.0.get() + 1);
            s.serialize_bytes(&vec![7; self.0.get()])
        }
    }

    /// Item: an encoder error inside the sized send is built once with the endpoint (it used
    /// to be a placeholder patched afterwards); nothing is queued.
    #[test]
    fn encoder_error_names_the_endpoint_and_queues_nothing() {
        let conn = Collect::new();
        let sent = conn.sent.clone();
        let mut ch: Channel<Grows, ()> = Channel::new(Box::new(conn));
        let e = ch.start_send_msg(&Grows(Cell::new(0))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
        assert!(
            e.to_string()
                .starts_with("tcp://127.0.0.1:1: cannot encode message: "),
            "{e}"
        );
        assert!(sent.lock().unwrap().is_empty());
    }
}
