//! A [`Connection`] over any byte stream, framed with [`FrameCodec`].
//!
//! TCP, Unix stream sockets and named pipes are byte streams; this module turns one into a
//! connection that keeps the contract: length-prefixed frames, a close marker on
//! [`Sink::poll_close`] (and, best-effort, on drop), and end-of-stream without a close marker
//! reported as [`ErrorKind::ConnectionLost`].

use bytes::{BufMut, Bytes, BytesMut};
use ductwork_codec::{Frame, FrameCodec, CLOSE_MARKER, HEADER_LEN};
use ductwork_core::{Connection, ConnectionInfo, Error, ErrorKind, Result};
use futures::{ready, Sink, Stream};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

/// Read buffer size: one read takes in up to this much. tokio-util's default (8 KiB) costs a
/// system call per ~100 small messages when a sender streams; 64 KiB cuts that eightfold, and
/// received frames keep sharing the buffer until they are dropped.
const READ_CAPACITY: usize = 64 * 1024;

/// A byte stream a framed connection can run on.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Writes without waiting; used on drop to send the close marker when nothing is pending.
    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize>;
}

/// A connection over a byte stream. See the module docs.
pub(crate) struct FramedConnection<S: ByteStream> {
    framed: Framed<S, FrameCodec>,
    info: ConnectionInfo,
    close_sent: bool,
    read_done: bool,
    /// The peer sent its close marker: it reads no more, so failing to deliver our own close
    /// marker to it is not an error.
    peer_closed: bool,
}

impl<S: ByteStream> FramedConnection<S> {
    /// Wraps `stream`; the frame limit is `info.capabilities.max_message`.
    pub(crate) fn new(stream: S, info: ConnectionInfo) -> Self {
        let codec = FrameCodec::new(info.capabilities.max_message);
        FramedConnection {
            framed: Framed::with_capacity(stream, codec, READ_CAPACITY),
            info,
            close_sent: false,
            read_done: false,
            peer_closed: false,
        }
    }

    fn err(&self, e: ductwork_codec::CodecError) -> Error {
        Error::codec(&self.info.endpoint, e)
    }
}

impl<S: ByteStream> Connection for FramedConnection<S> {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Encodes straight into the write buffer behind a header patched afterwards: no
    /// per-message allocation, one copy.
    fn start_send_encoded(
        &mut self,
        encode: &mut dyn FnMut(&mut BytesMut) -> Result<usize>,
    ) -> Result<()> {
        if self.close_sent {
            return Err(Error::new(
                ErrorKind::Closed,
                &self.info.endpoint,
                "send after close",
            ));
        }
        let max = self.info.capabilities.max_message;
        let buf = self.framed.write_buffer_mut();
        let start = buf.len();
        buf.put_u32(0);
        let len = match encode(buf) {
            Ok(len) if len <= max && buf.len() == start + HEADER_LEN + len => len,
            Ok(len) => {
                buf.truncate(start);
                return Err(self.err(ductwork_codec::CodecError::FrameTooLarge { len, max }));
            }
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        };
        buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl<S: ByteStream> Stream for FramedConnection<S> {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        if self.read_done {
            return Poll::Ready(None);
        }
        let item = ready!(Pin::new(&mut self.framed).poll_next(cx));
        Poll::Ready(match item {
            Some(Ok(Frame::Data(b))) => Some(Ok(b.freeze())),
            Some(Ok(Frame::Close)) => {
                self.read_done = true;
                self.peer_closed = true;
                None
            }
            None => {
                self.read_done = true;
                Some(Err(Error::new(
                    ErrorKind::ConnectionLost,
                    &self.info.endpoint,
                    "the peer went away without closing (it may have crashed or been killed)",
                )))
            }
            Some(Err(e)) => {
                self.read_done = true;
                Some(Err(self.err(e)))
            }
        })
    }
}

impl<S: ByteStream> Sink<Bytes> for FramedConnection<S> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.close_sent {
            return Poll::Ready(Err(Error::new(
                ErrorKind::Closed,
                &self.info.endpoint,
                "send after close",
            )));
        }
        Pin::new(&mut self.framed)
            .poll_ready(cx)
            .map_err(|e| self.err(e))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        Pin::new(&mut self.framed)
            .start_send(item)
            .map_err(|e| self.err(e))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.framed)
            .poll_flush(cx)
            .map_err(|e| self.err(e))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if !self.close_sent {
            match ready!(self.as_mut().poll_flush(cx)) {
                Err(e) if self.peer_closed && e.kind() == ErrorKind::ConnectionLost => {
                    self.close_sent = true;
                    return Poll::Ready(Ok(()));
                }
                r => r?,
            }
            FrameCodec::encode_close(self.framed.write_buffer_mut());
            self.close_sent = true;
        }
        match ready!(Pin::new(&mut self.framed).poll_close(cx)) {
            Err(e) => {
                let e = self.err(e);
                if self.peer_closed && e.kind() == ErrorKind::ConnectionLost {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
            ok => Poll::Ready(ok.map_err(|e| self.err(e))),
        }
    }
}

impl<S: ByteStream> Drop for FramedConnection<S> {
    fn drop(&mut self) {
        // Best effort: a connection dropped with nothing pending closes cleanly. If the marker
        // cannot be written whole, the peer sees a truncated header: ConnectionLost, as if this
        // side had died, which is what the contract allows for drop without close.
        if !self.close_sent && self.framed.write_buffer().is_empty() {
            let _ = self
                .framed
                .get_ref()
                .try_write_now(&CLOSE_MARKER.to_be_bytes());
        }
    }
}
