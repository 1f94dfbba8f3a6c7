//! A [`Connection`] over any byte stream, framed with [`FrameCodec`].
//!
//! TCP, Unix stream sockets and named pipes are byte streams; this module turns one into a
//! connection that keeps the contract: length-prefixed frames, a close marker on
//! [`Sink::poll_close`] (and, best-effort, on drop), and end-of-stream without a close marker
//! reported as [`ErrorKind::ConnectionLost`]. After the peer's close marker the reader waits
//! for the end of stream (where the stream has a half-close, [`ByteStream::HALF_CLOSE`]) and
//! reports any byte before it as [`ErrorKind::Protocol`]. Room for a frame grows with the
//! bytes that arrive ([`ductwork_codec::grow_for`]), never by a header's claim alone.
//!
//! Limits are exchanged without a round trip: each side writes its hello (its own
//! `max_frame`) as soon as the connection exists, and reads the peer's before the peer's
//! first frame. A sender waits for the peer's hello before its first frame (in `poll_ready`;
//! the peer wrote it when it accepted or connected, so this costs at most the time until the
//! listener accepts) and then refuses a frame over the peer's limit itself, with
//! [`ErrorKind::FrameTooLarge`], leaving the connection usable: a conforming receiver never
//! has to drop a connection for a frame it cannot take. A peer that sent no hello (a raw
//! writer) within the endpoint's `connect_timeout` has an unknown limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ductwork_codec::{
    check_len, encode_hello, parse_hello, parse_refusal, CodecError, FrameCodec, Hello, Refusal,
    CLOSE_MARKER, HEADER_LEN, HELLO_LEN, REFUSED_IDENTITY,
};
use ductwork_core::{
    BoxConnection, Capabilities, Connection, ConnectionInfo, Endpoint, Error, ErrorKind,
    FrameEncoder, FrameWriter, Result,
};
use futures::{ready, Sink, Stream};
use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::{codec::Decoder, io::poll_read_buf};

/// Read buffer size: one read takes in up to this much. tokio-util's default (8 KiB) costs a
/// system call per ~100 small messages when a sender streams; 64 KiB cuts that eightfold, and
/// received frames keep sharing the buffer until they are dropped.
const READ_CAPACITY: usize = 64 * 1024;

/// Queued bytes past which `poll_ready` flushes before accepting another frame: bounds the
/// write buffer at this plus one frame. 64 KiB, like a hand-written sender's `BufWriter`
/// (the bench's raw baselines): with tokio-util's 8 KiB a batch of 1 KiB frames cost eight
/// system calls (and up to eight wake-ups of the reader) where one does.
const WRITE_BOUNDARY: usize = 64 * 1024;

/// The most an encoded send (`start_send_encoded`) first tries to encode into the write
/// buffer in one pass. Larger frames are sized first (a second pass, cheap next to their
/// bytes), so a frame over the limit never makes the buffer grow.
const SINGLE_PASS_ROOM: usize = 8 * 1024;

/// The write buffer's first allocation: it grows to [`WRITE_BOUNDARY`] plus a frame only on a
/// connection that batches, so an idle connection holds 8 KiB, not 64.
const WRITE_INITIAL: usize = 8 * 1024;

/// A byte stream a framed connection can run on.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Whether the peer's `poll_shutdown` ends this side's reading (TCP FIN, a Unix socket's
    /// `shutdown`), so that the end of stream follows a close marker even while the peer
    /// still reads. Then a receiver that read the marker waits for that end and reports any
    /// byte before it as `Protocol`, however late it arrives. A stream without a half-close
    /// (a Windows named pipe, which ends only when the peer closes its handle) reports the
    /// clean end at the marker and can only see bytes that arrived with it.
    const HALF_CLOSE: bool = true;

    /// Writes without waiting; used on drop to send the close marker when nothing is pending.
    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize>;
}

/// Implements [`ByteStream`] for tokio stream types, whose inherent `try_write` writes
/// without waiting (sockets, named pipes).
/// `byte_stream!(without_half_close: T, ...)` for streams whose end comes only with the peer's
/// handle (see [`ByteStream::HALF_CLOSE`]).
macro_rules! byte_stream {
    ($($t:ty),+) => {
        $(
            impl $crate::common::framed::ByteStream for $t {
                fn try_write_now(&self, buf: &[u8]) -> std::io::Result<usize> {
                    self.try_write(buf)
                }
            }
        )+
    };
    (without_half_close: $($t:ty),+) => {
        $(
            impl $crate::common::framed::ByteStream for $t {
                const HALF_CLOSE: bool = false;

                fn try_write_now(&self, buf: &[u8]) -> std::io::Result<usize> {
                    self.try_write(buf)
                }
            }
        )+
    };
}
pub(crate) use byte_stream;

/// A connection over a byte stream. See the module docs.
///
/// Reading and writing are done here rather than through tokio-util's `Framed`. Writes go
/// from one contiguous buffer with plain `poll_write` (`send`/`write`): `Framed` would use
/// `writev` for its single-chunk buffer, which costs the kernel ~0.25 µs more per call on
/// Linux sockets and buys nothing. Reads fill one buffer and let [`FrameCodec`] split frames
/// off it.
pub(crate) struct FramedConnection<S: ByteStream> {
    stream: S,
    codec: FrameCodec,
    /// Bytes read from the stream and not yet returned as frames.
    read_buf: BytesMut,
    /// Encoded frames (header and payload) not yet written to the stream.
    write_buf: BytesMut,
    info: ConnectionInfo,
    close_sent: bool,
    read_done: bool,
    /// The peer sent its close marker: it reads no more, so failing to deliver our own close
    /// marker to it is not an error. With [`ByteStream::HALF_CLOSE`] the reader then waits
    /// for the end of stream, and any byte before it is a protocol error.
    peer_closed: bool,
    /// Our hello has left the write buffer.
    hello_out: bool,
    /// What the peer's hello said, once read.
    peer: PeerLimit,
    /// A sender waited the whole deadline for the peer's hello and goes on without it; the
    /// reader still takes a late one off the start of the stream.
    hello_wait_over: bool,
    /// The largest frame this side sends: our own limit, then also the peer's.
    send_max: usize,
    /// Until the peer's hello is read, the tasks that wait in `poll_next` and in `poll_ready`:
    /// both read the stream then, and a stream keeps one read waker, so whichever reads wakes
    /// the other (a split connection's halves run in different tasks).
    reader_waker: Option<Waker>,
    hello_waker: Option<Waker>,
    /// When a sender stops waiting for a hello that does not come.
    hello_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The listener sent a refusal (code, reason) in place of its hello: every receive and
    /// send fails with it (see [`refuse`]).
    refused: Option<(u16, String)>,
}

/// The peer's receive limit, as its hello told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerLimit {
    /// No hello read yet.
    Unknown,
    /// The peer takes frames up to this size.
    Known(usize),
    /// The peer sent no hello (a raw writer), or the stream ended or failed first.
    Absent,
}

/// A boxed framed connection over `stream`: what every byte-stream transport hands out.
pub(crate) fn framed(
    stream: impl ByteStream,
    endpoint: Endpoint,
    peer: Option<String>,
    capabilities: Capabilities,
) -> BoxConnection {
    let mut conn = FramedConnection::new(
        stream,
        ConnectionInfo {
            endpoint,
            peer,
            capabilities,
        },
    );
    conn.send_hello_now();
    Box::new(conn)
}

/// Tells a client the listener will not serve why, in place of the hello: one refusal
/// (`docs/wire-format.md`), written without waiting (a fresh stream's buffer takes its few
/// hundred bytes at once; if not, the client sees only the connection lost). The caller then
/// drops the stream. The client's connection fails its first receive and send with the
/// reason (`PermissionDenied` for [`REFUSED_IDENTITY`], else `Refused`).
#[cfg_attr(
    not(any(all(unix, feature = "socket"), all(windows, feature = "pipe"))),
    allow(dead_code)
)]
pub(crate) fn refuse(stream: &impl ByteStream, endpoint: &Endpoint, code: u16, reason: &str) {
    let mut buf = BytesMut::new();
    ductwork_codec::encode_refusal(&mut buf, code, reason);
    // The listener logged the refusal; say so too when the client will not learn why.
    match stream.try_write_now(&buf) {
        Ok(n) if n == buf.len() => {}
        Ok(n) => tracing::warn!(
            endpoint = %endpoint,
            written = n,
            len = buf.len(),
            "the refusal did not fit in the connection's buffer; the refused client sees only the close"
        ),
        Err(e) => tracing::warn!(
            endpoint = %endpoint,
            error = %e,
            "the refusal could not be written; the refused client sees only the close"
        ),
    }
}

impl<S: ByteStream> FramedConnection<S> {
    /// Wraps `stream`; the frame limit is `info.capabilities.max_message`.
    pub(crate) fn new(stream: S, info: ConnectionInfo) -> Self {
        let max = info.capabilities.max_message;
        let codec = FrameCodec::new(max);
        let mut write_buf = BytesMut::with_capacity(WRITE_INITIAL);
        encode_hello(&mut write_buf, max);
        FramedConnection {
            stream,
            codec,
            read_buf: BytesMut::with_capacity(READ_CAPACITY),
            hello_out: false,
            write_buf,
            info,
            close_sent: false,
            read_done: false,
            peer_closed: false,
            peer: PeerLimit::Unknown,
            hello_wait_over: false,
            send_max: max,
            reader_waker: None,
            hello_waker: None,
            hello_deadline: None,
            refused: None,
        }
    }

    /// Sends our hello now, if the stream takes it without waiting (a fresh connection's
    /// always does), so that a peer waiting for it need not wait until this side first
    /// flushes or reads. Polled with a waker that does nothing: no task waits on this
    /// connection yet, and whichever polls it next registers its own. Else the hello goes
    /// with the first flush or receive.
    fn send_hello_now(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let _ = self.poll_write_all(&mut cx);
    }

    /// Takes the peer's hello off the front of the read buffer, if it is there, and wakes a
    /// task that waits for it. Call only while the peer's limit is unknown.
    fn take_hello(&mut self) {
        match parse_hello(&self.read_buf) {
            Hello::Incomplete => return,
            Hello::Absent => match parse_refusal(&self.read_buf) {
                Refusal::Incomplete => return,
                Refusal::Refused { code, reason } => {
                    self.read_buf.clear();
                    self.refused = Some((code, reason));
                    self.peer = PeerLimit::Absent;
                }
                Refusal::Absent => self.peer = PeerLimit::Absent,
            },
            Hello::Limit(limit) => {
                self.read_buf.advance(HELLO_LEN);
                self.peer = PeerLimit::Known(limit);
                self.send_max = self.send_max.min(limit);
            }
        }
        self.wake_readers();
    }

    /// Wakes both tasks that may wait on the stream's reads (see `reader_waker`).
    fn wake_readers(&mut self) {
        for w in [self.reader_waker.take(), self.hello_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }

    /// Waits until the peer's limit is settled: its hello read, or none by the deadline.
    /// Our own hello goes out first, so two peers that both wait never wait on each other.
    fn poll_peer_hello(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if !self.hello_out {
            if let Poll::Ready(Err(e)) = self.poll_write_all(cx) {
                let e = self.err(CodecError::from(e));
                return self.poll_refusal(cx).map(|r| Err(r.unwrap_or(e)));
            }
        }
        // Bounded: each pass reads bytes (the hello is decided by its first 8) or returns.
        for _ in 0..16 {
            self.take_hello();
            if self.peer != PeerLimit::Unknown {
                return Poll::Ready(Ok(()));
            }
            self.read_buf.reserve(HELLO_LEN);
            match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read_buf) {
                Poll::Ready(Ok(n)) => {
                    // Whatever this read took, the receiving task must look at it.
                    self.wake_readers();
                    if n == 0 {
                        self.peer = PeerLimit::Absent;
                    }
                }
                Poll::Ready(Err(_)) => {
                    // The receiving side reports the failure; sends will meet it too.
                    self.wake_readers();
                    self.peer = PeerLimit::Absent;
                }
                Poll::Pending => return self.poll_hello_deadline(cx),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Waiting for the hello: pending until the deadline (the endpoint's `connect_timeout`),
    /// after which the peer counts as one without a hello.
    fn poll_hello_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let endpoint = &self.info.endpoint;
        let deadline = self.hello_deadline.get_or_insert_with(|| {
            let wait = endpoint
                .connect_timeout()
                .unwrap_or(Duration::from_secs(10));
            Box::pin(tokio::time::sleep(wait))
        });
        if deadline.as_mut().poll(cx).is_ready() {
            self.hello_wait_over = true;
            return Poll::Ready(Ok(()));
        }
        self.hello_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// After a failed write: the refusal of a listener that refused us and closed the stream,
    /// which says more than the broken stream. A write fails once the peer is gone, so what it
    /// sent before is readable now or on its way (a Windows pipe's read can be done but not yet
    /// handed over by the event loop): wait for it or the end of the stream, within the hello
    /// deadline.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<Option<Error>> {
        // Bounded: a refusal is a few hundred bytes; each pass reads bytes or stops.
        for _ in 0..4 {
            if self.peer == PeerLimit::Unknown {
                self.take_hello();
            }
            if self.peer != PeerLimit::Unknown {
                break;
            }
            self.read_buf.reserve(512);
            match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read_buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Pending if self.poll_hello_deadline(cx).is_pending() => return Poll::Pending,
                _ => break,
            }
        }
        if self.peer == PeerLimit::Unknown {
            self.take_hello();
        }
        Poll::Ready(self.refused_err())
    }

    /// The listener's refusal as this side's error, if it sent one.
    fn refused_err(&self) -> Option<Error> {
        let (code, reason) = self.refused.as_ref()?;
        let kind = match *code {
            REFUSED_IDENTITY => ErrorKind::PermissionDenied,
            _ => ErrorKind::Refused,
        };
        let msg = format!("the listener refused this connection: {reason}");
        Some(Error::new(kind, &self.info.endpoint, msg))
    }

    /// Checks a frame of `len` bytes against our limit and the peer's; `Err` refuses it.
    /// Runs once per frame: the accepting case is a comparison, the refusal out of line.
    #[inline]
    fn check_send(&self, len: usize) -> Result<()> {
        if !self.close_sent && len <= self.send_max && self.refused.is_none() {
            return Ok(());
        }
        self.refuse(len)
    }

    /// Why a frame of `len` bytes cannot be sent (see [`check_send`](Self::check_send)).
    #[cold]
    fn refuse(&self, len: usize) -> Result<()> {
        if self.close_sent {
            return Err(self.closed_err());
        }
        if let Some(e) = self.refused_err() {
            return Err(e);
        }
        if len <= self.send_max {
            return Ok(());
        }
        let own = self.info.capabilities.max_message;
        match check_len(len, own) {
            Err(e) => Err(self.err(e)),
            Ok(()) => Err(Error::new(
                ErrorKind::FrameTooLarge,
                &self.info.endpoint,
                format!(
                    "frame of {len} bytes exceeds the peer's limit of {} bytes (its \
                     max_frame); nothing was sent and the connection stays usable",
                    self.send_max
                ),
            )),
        }
    }

    fn err(&self, e: CodecError) -> Error {
        Error::codec(&self.info.endpoint, e)
    }

    fn closed_err(&self) -> Error {
        Error::new(ErrorKind::Closed, &self.info.endpoint, "send after close")
    }

    /// Whether the peer sent its close marker: read already, or among the bytes readable now.
    /// A close that fails because the peer is gone is no error if the peer closed first; its
    /// marker may be unread yet (nobody was reading, or the reader waits for the end of stream
    /// after it). What is read here stays in the read buffer for the reader.
    fn peer_has_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.peer_closed {
            return true;
        }
        if self.peer == PeerLimit::Unknown {
            self.take_hello();
        }
        // Bounded: a few reads of what is already there, never a wait.
        for _ in 0..16 {
            self.read_buf.reserve(1);
            match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read_buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        // Walk the buffered frames (the codec keeps an incomplete frame's header at the start).
        let buf = &self.read_buf[..];
        let mut pos = 0usize;
        while let Some(h) = pos
            .checked_add(HEADER_LEN)
            .and_then(|end| buf.get(pos..end))
        {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if len == CLOSE_MARKER {
                return true;
            }
            pos = pos.saturating_add(HEADER_LEN + len as usize);
        }
        false
    }

    /// Writes the whole write buffer to the stream, then flushes the stream.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = &mut self.stream;
        while !self.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut *stream).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write frame to transport",
                )));
            }
            self.write_buf.advance(n);
        }
        // Written out: the next frames go to the front of the allocation again. Else they
        // are queued after the written bytes, and once the end is reached `reserve` moves
        // the whole batch queued since to the front (a memmove of ~60 KiB per batch).
        let room = self.write_buf.capacity();
        let _ = self.write_buf.try_reclaim(room + 1);
        self.hello_out = true;
        Pin::new(stream).poll_flush(cx)
    }
}

impl<S: ByteStream> Connection for FramedConnection<S> {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Encodes once, straight into the write buffer after room for the header, and writes
    /// the header when the length is known. The first try gets at most [`SINGLE_PASS_ROOM`]
    /// bytes (and never more than the limit), so a refused or huge frame reserves no more
    /// than that; a frame that does not fit is sized and sent as a sized send, which refuses
    /// one over the limit before anything is reserved for it.
    fn start_send_encoded(&mut self, frame: &mut dyn FrameEncoder) -> Result<usize> {
        self.check_send(0)?;
        let room = self.send_max.min(SINGLE_PASS_ROOM);
        let buf = &mut self.write_buf;
        let start = buf.len();
        buf.reserve(HEADER_LEN + room);
        let mut w = FrameWriter::new(&mut buf.spare_capacity_mut()[HEADER_LEN..][..room]);
        let encoded = frame.encode(&mut w);
        let (len, overrun) = (w.written(), w.is_overrun());
        if overrun {
            // Larger than the first try allows: nothing was queued (the buffer's length is
            // unchanged), so size it and send it as a sized send.
            let len = frame.encoded_len()?;
            self.start_send_sized(len, &mut |w| frame.encode(w))?;
            return Ok(len);
        }
        encoded?;
        buf.put_u32(len as u32);
        // SAFETY: the writer wrote `len` bytes in order from the start of the spare region
        // right after the header (it refuses writes past its end, and none was refused), and
        // `put_u32` just wrote the header in front of them without touching them (`reserve`
        // made room for both, so it did not reallocate): bytes up to `start + HEADER_LEN + len`
        // are initialized.
        unsafe { buf.set_len(start + HEADER_LEN + len) };
        Ok(len)
    }

    fn poll_recv_with(
        &mut self,
        cx: &mut Context<'_>,
        take: &mut dyn FnMut(&[u8]),
    ) -> Poll<Option<Result<usize>>> {
        self.poll_frame(cx, |buf, len| {
            take(&buf[HEADER_LEN..HEADER_LEN + len]);
            buf.advance(HEADER_LEN + len);
            len
        })
    }

    /// Encodes straight into the write buffer, after the header: the length is known, so
    /// the header is written first and nothing is patched or moved.
    fn start_send_sized(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        self.check_send(len)?;
        let buf = &mut self.write_buf;
        let start = buf.len();
        buf.reserve(HEADER_LEN + len);
        buf.put_u32(len as u32);
        let mut w = FrameWriter::new(&mut buf.spare_capacity_mut()[..len]);
        // `finish` words what went wrong; a complete frame needs no words.
        let done = encode(&mut w).and_then(|()| match w.is_complete() {
            true => Ok(()),
            false => w.finish(&self.info.endpoint),
        });
        if let Err(e) = done {
            buf.truncate(start);
            return Err(e);
        }
        // SAFETY: the writer is complete (`is_complete`, or `finish` returned Ok, which checks
        // the same), so it received exactly `len` bytes, written in
        // order from the start of the `len`-byte spare region it was given: the `len` bytes
        // after the header are initialized, and `reserve` made room for them.
        unsafe { buf.set_len(start + HEADER_LEN + len) };
        Ok(())
    }
}

impl<S: ByteStream> Stream for FramedConnection<S> {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.poll_frame(cx, |buf, len| {
            let mut frame = buf.split_to(HEADER_LEN + len);
            frame.advance(HEADER_LEN);
            frame.freeze()
        })
    }
}

impl<S: ByteStream> FramedConnection<S> {
    /// The receiving loop of `poll_next` and `poll_recv_with`: once a whole data frame of
    /// `len` payload bytes is at the front of the read buffer, `take(read_buf, len)` consumes
    /// it (cuts it off, or looks at it in place and advances past it).
    fn poll_frame<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut BytesMut, usize) -> T,
    ) -> Poll<Option<Result<T>>> {
        let this = self;
        if this.read_done {
            return Poll::Ready(None);
        } else if !this.hello_out {
            // A side that only receives must still send its hello (TLS queues it until a
            // flush); a failure to write it shows on the reads and sends that follow.
            let _ = this.poll_write_all(cx);
        }
        loop {
            if this.peer == PeerLimit::Unknown {
                this.take_hello();
                if let Some(e) = this.refused_err() {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            // Frames only after the hello is settled: a partial hello is no frame header.
            let decoded = match this.peer {
                PeerLimit::Unknown => Ok(false),
                // The common case: a whole data frame, taken where it lies.
                _ => match this.codec.whole_frame(&this.read_buf) {
                    Some(len) => return Poll::Ready(Some(Ok(take(&mut this.read_buf, len)))),
                    None => this.codec.decode_control(&mut this.read_buf),
                },
            };
            match decoded {
                // Not a whole frame yet (the codec made room for more of it), or the close
                // marker was read and the end of stream must follow.
                Ok(false) => {}
                Ok(true) => {
                    this.peer_closed = true;
                    if !S::HALF_CLOSE {
                        this.read_done = true;
                        return Poll::Ready(None);
                    }
                    // Wait for the end of stream: bytes arriving in a later read are as much
                    // a protocol error as bytes that came with the marker.
                }
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(this.err(e))));
                }
            }
            // Room for at least one byte, so that a read of 0 means end of stream.
            this.read_buf.reserve(1);
            let read = poll_read_buf(Pin::new(&mut this.stream), cx, &mut this.read_buf);
            if this.peer == PeerLimit::Unknown {
                // A sender may wait for the hello in `poll_ready` (see `reader_waker`).
                match read {
                    Poll::Pending => this.reader_waker = Some(cx.waker().clone()),
                    Poll::Ready(_) => this.wake_readers(),
                }
            }
            match ready!(read) {
                Ok(0) => {
                    this.read_done = true;
                    if this.peer == PeerLimit::Unknown {
                        this.peer = PeerLimit::Absent;
                    }
                    // A partial frame is `Truncated`; nothing at all is a peer gone without
                    // its close marker; nothing after the marker is the clean end.
                    let e = match this.codec.decode_eof(&mut this.read_buf) {
                        Err(e) => this.err(e),
                        Ok(_) if this.peer_closed => return Poll::Ready(None),
                        Ok(_) => Error::new(
                            ErrorKind::ConnectionLost,
                            &this.info.endpoint,
                            "the peer went away without closing (it may have crashed or been \
                             killed)",
                        ),
                    };
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(_) => {}
                // The peer said it was done and every frame before that was delivered: a
                // failing link now (a reset after its close) loses nothing.
                Err(_) if this.peer_closed => {
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.read_done = true;
                    if this.peer == PeerLimit::Unknown {
                        this.peer = PeerLimit::Absent;
                    }
                    return Poll::Ready(Some(Err(this.err(CodecError::from(e)))));
                }
            }
        }
    }
}

impl<S: ByteStream> Sink<Bytes> for FramedConnection<S> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.close_sent {
            return Poll::Ready(Err(self.closed_err()));
        }
        if self.peer == PeerLimit::Unknown && !self.hello_wait_over {
            ready!(self.poll_peer_hello(cx))?;
            if let Some(e) = self.refused_err() {
                return Poll::Ready(Err(e));
            }
        }
        if self.write_buf.len() >= WRITE_BOUNDARY {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        self.check_send(item.len())?;
        self.write_buf.reserve(HEADER_LEN + item.len());
        self.write_buf.put_u32(item.len() as u32);
        self.write_buf.extend_from_slice(&item);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_write_all(cx)
            .map_err(|e| self.err(CodecError::from(e)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if !self.close_sent {
            match ready!(self.as_mut().poll_flush(cx)) {
                Err(e) if e.kind() == ErrorKind::ConnectionLost && self.peer_has_closed(cx) => {
                    self.close_sent = true;
                    return Poll::Ready(Ok(()));
                }
                r => r?,
            }
            FrameCodec::encode_close(&mut self.write_buf);
            self.close_sent = true;
        }
        let done = match ready!(self.poll_write_all(cx)) {
            Ok(()) => ready!(Pin::new(&mut self.stream).poll_shutdown(cx)),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                let e = self.err(CodecError::from(e));
                if e.kind() == ErrorKind::ConnectionLost && self.peer_has_closed(cx) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
        }
    }
}

impl<S: ByteStream> Drop for FramedConnection<S> {
    fn drop(&mut self) {
        // Best effort: a connection dropped with nothing pending closes cleanly. If the marker
        // cannot be written whole, the peer sees a truncated header: ConnectionLost, as if this
        // side had died, which is what the contract allows for drop without close.
        // Our hello may still be pending (a stream that does not write at once): it goes
        // first.
        let only_hello = !self.hello_out && self.write_buf.len() <= HELLO_LEN;
        if !self.close_sent && (self.write_buf.is_empty() || only_hello) {
            self.write_buf.put_u32(CLOSE_MARKER);
            let _ = self.stream.try_write_now(&self.write_buf);
        }
    }
}

#[cfg(all(test, feature = "socket"))]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use std::io::Write;

    /// Sized sends on a real loopback TCP connection: a wrong byte count or an over-long
    /// frame queues nothing and leaves the connection usable; good frames, sized or not,
    /// arrive whole and in order.
    #[tokio::test]
    async fn sized_sends_queue_exactly_the_announced_bytes_or_nothing() {
        let mut listener = crate::bind("tcp://127.0.0.1:0?max_frame=64").await.unwrap();
        let ep = listener.endpoint().to_string();
        let (a, b) = tokio::join!(crate::connect(ep.as_str()), listener.accept());
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        for (len, wrote) in [(5usize, 4usize), (5, 6), (0, 1)] {
            a.flush().await.unwrap(); // poll_ready, as a caller must
            let e = a
                .start_send_sized(len, &mut |w| {
                    let _ = w.write_all(&vec![1; wrote]);
                    Ok(())
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encode, "{len}/{wrote}");
            assert!(e.to_string().contains(&ep), "{e}");
        }
        let mut ran = false;
        let e = a
            .start_send_sized(65, &mut |_| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        assert!(!ran, "the encoder does not run for an over-long frame");
        let e = a
            .start_send_sized(3, &mut |_| {
                Err(Error::new(ErrorKind::Encode, "x", "failed"))
            })
            .unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");

        a.start_send_sized(5, &mut |w| {
            assert!(w.put(b"hel") && w.put(b"lo"));
            Ok(())
        })
        .unwrap();
        a.start_send_sized(0, &mut |_| Ok(())).unwrap();
        a.feed(Bytes::from_static(b"abc")).await.unwrap();
        a.close().await.unwrap();
        let mut got = Vec::new();
        while let Some(frame) = b.next().await {
            got.push(frame.unwrap());
        }
        assert_eq!(got, ["hello".as_bytes(), b"", b"abc"]);
    }

    /// A raw TCP writer feeds a connection's reader: a frame whose header and payload come in
    /// pieces, frames that share a read, then a frame cut short by the end of the stream,
    /// which is `ConnectionLost` naming the byte counts.
    async fn read(chunks: &[&[u8]]) -> (Vec<Bytes>, Error) {
        use tokio::io::AsyncWriteExt;
        let mut listener = crate::bind("tcp://127.0.0.1:0?max_frame=64").await.unwrap();
        let addr = listener.endpoint().address().to_string();
        let (w, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut w, mut b) = (w.unwrap(), b.unwrap());
        w.set_nodelay(true).unwrap();
        let mut got = Vec::new();
        for chunk in chunks {
            w.write_all(chunk).await.unwrap();
            w.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(w);
        loop {
            match b.next().await {
                Some(Ok(f)) => got.push(f),
                Some(Err(e)) => {
                    assert!(b.next().await.is_none(), "broken after an error");
                    return (got, e);
                }
                None => panic!("clean end without a close marker"),
            }
        }
    }

    #[tokio::test]
    async fn frames_are_read_whole_from_any_split_and_a_cut_frame_is_lost() {
        let (got, e) = read(&[
            b"\0\0",
            b"\0\x05he",
            b"llo\0\0\0\x01x\0\0\0\0",
            b"\0\0\0\x03ab",
        ])
        .await;
        assert_eq!(got, ["hello".as_bytes(), b"x", b""]);
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
        assert!(
            e.to_string().contains("7"),
            "names the expected length: {e}"
        );
    }

    #[tokio::test]
    async fn a_bad_length_or_bytes_after_the_close_marker_fail_the_connection() {
        let (got, e) = read(&[b"\0\0\0\x02ok\0\0\0\x41"]).await;
        assert_eq!(got, ["ok".as_bytes()]);
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        let (got, e) = read(&[b"\0\0\0\x01a\xff\xff\xff\xffz"]).await;
        assert_eq!(got, ["a".as_bytes()]);
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    }

    /// Bytes after the close marker are a protocol error also when they come in a later read
    /// (defect 9: they were reported as a clean end). The receiver reads the marker first
    /// (its next `recv` waits for the end of stream instead of ending cleanly), then the
    /// garbage arrives; with a marker followed by the end of stream the end is clean.
    #[tokio::test]
    async fn bytes_after_the_close_marker_in_a_later_read_are_a_protocol_error() {
        use tokio::io::AsyncWriteExt;
        let mut listener = crate::bind("tcp://127.0.0.1:0?max_frame=64").await.unwrap();
        let addr = listener.endpoint().address().to_string();
        for garbage in [&b"z"[..], b"\0\0\0\x01b", b"\xff\xff\xff\xff"] {
            let (w, b) = tokio::join!(tokio::net::TcpStream::connect(&addr), listener.accept());
            let (mut w, mut b) = (w.unwrap(), b.unwrap());
            w.write_all(b"\0\0\0\x01a\xff\xff\xff\xff").await.unwrap();
            assert_eq!(&b.next().await.unwrap().unwrap()[..], b"a");
            // The marker is read (it came with the frame, or comes now); no end follows it
            // yet, so the receiver must still be waiting, not done.
            let early = tokio::time::timeout(std::time::Duration::from_millis(200), b.next());
            if let Ok(r) = early.await {
                panic!("after the marker, before the end of stream: {r:?}");
            }
            w.write_all(garbage).await.unwrap();
            match b.next().await {
                Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::Protocol, "{e}"),
                other => panic!("{garbage:?} after the marker: {other:?}"),
            }
            assert!(b.next().await.is_none(), "broken after the error");
        }
        // The marker, a pause, then the end of stream: a clean end.
        let (w, b) = tokio::join!(tokio::net::TcpStream::connect(&addr), listener.accept());
        let (mut w, mut b) = (w.unwrap(), b.unwrap());
        w.write_all(b"\xff\xff\xff\xff").await.unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), b.next());
        assert!(early.await.is_err(), "no end before the end of stream");
        w.shutdown().await.unwrap();
        assert!(b.next().await.is_none(), "marker then end of stream: clean");
    }

    /// A connected pair of framed TCP connections with small socket buffers (so that a
    /// sender that batches meets a full socket within a few hundred KiB) and `max_frame`.
    pub(super) async fn small_buffer_pair(
        max_frame: usize,
    ) -> (
        FramedConnection<tokio::net::TcpStream>,
        FramedConnection<tokio::net::TcpStream>,
    ) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = sock.listen(4).unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_send_buffer_size(16 * 1024).unwrap();
        let (a, b) = tokio::join!(client.connect(addr), l.accept());
        let ep = Endpoint::parse(&format!("tcp://{addr}?max_frame={max_frame}")).unwrap();
        let info = ConnectionInfo {
            capabilities: crate::socket::stream_caps(&ep, ductwork_core::Reach::Network).unwrap(),
            endpoint: ep,
            peer: None,
        };
        let (mut a, mut b) = (
            FramedConnection::new(a.unwrap(), info.clone()),
            FramedConnection::new(b.unwrap().0, info),
        );
        a.send_hello_now();
        b.send_hello_now();
        (a, b)
    }

    /// Frame `i` of the batching tests: its number, then a byte pattern that depends on it.
    fn numbered(i: u32, len: usize) -> Bytes {
        let mut v = i.to_be_bytes().to_vec();
        v.extend((0..len - 4).map(|k| (k as u32 ^ i).wrapping_mul(31) as u8));
        Bytes::from(v)
    }

    /// Reads every frame up to the clean end.
    async fn read_all<S: ByteStream>(b: &mut FramedConnection<S>) -> Vec<Bytes> {
        let mut got = Vec::new();
        while let Some(f) = b.next().await {
            got.push(f.unwrap());
        }
        got
    }

    /// Batched sends (`feed`, no flush) of far more than the socket takes, while the peer does
    /// not read: the write buffer never holds more than the flush boundary plus one frame,
    /// the sender waits on the full socket (its writes were partial), and once the peer reads,
    /// every frame arrives whole and in order, then the close.
    #[tokio::test]
    async fn batched_sends_wait_on_a_full_socket_and_lose_nothing() {
        let (mut a, mut b) = small_buffer_pair(4096).await;
        let blocked = tokio::sync::Notify::new();
        let n = 1500u32;
        let send = async {
            let mut waited = false;
            for i in 0..n {
                let mut feed = a.feed(numbered(i, 1024));
                match futures::poll!(&mut feed) {
                    Poll::Ready(r) => r.unwrap(),
                    Poll::Pending => {
                        if !waited {
                            blocked.notify_one();
                        }
                        waited = true;
                        feed.await.unwrap();
                    }
                }
                assert!(
                    a.write_buf.len() <= WRITE_BOUNDARY + HEADER_LEN + 1024,
                    "{} bytes queued",
                    a.write_buf.len()
                );
            }
            if !waited {
                blocked.notify_one();
            }
            a.close().await.unwrap();
            waited
        };
        let recv = async {
            blocked.notified().await;
            read_all(&mut b).await
        };
        let (waited, got) = tokio::join!(send, recv);
        assert!(waited, "1.5 MB of batched frames never met a full socket");
        assert_eq!(got.len(), n as usize);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &numbered(i as u32, 1024), "frame {i}");
        }
    }

    /// Errors in the middle of a batch (a frame over the limit, an encoder that writes the
    /// wrong byte count, after more than a boundary's worth was queued) refuse that frame only:
    /// the frames queued before and after it are all delivered, in order.
    #[tokio::test]
    async fn errors_mid_batch_lose_no_queued_frame() {
        let (mut a, mut b) = small_buffer_pair(2048).await;
        let send = async {
            let mut sent = Vec::new();
            for i in 0..300u32 {
                a.feed(numbered(i, 512)).await.unwrap();
                sent.push(numbered(i, 512));
                if i % 100 == 50 {
                    let e = a.feed(Bytes::from(vec![7u8; 2049])).await.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
                    let e = a
                        .start_send_sized(8, &mut |w| {
                            assert!(w.put(b"short"));
                            Ok(())
                        })
                        .unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
                }
            }
            a.close().await.unwrap();
            sent
        };
        let (sent, got) = tokio::join!(send, read_all(&mut b));
        assert_eq!(got, sent);
    }

    /// Frames queued without a flush and then `close`d all arrive before the end, however many
    /// boundaries they span.
    #[tokio::test]
    async fn close_after_batched_sends_delivers_every_frame() {
        let (mut a, mut b) = small_buffer_pair(1 << 20).await;
        let sizes = [0usize, 4, 64, 1024, 70_000, 4, 200_000, 1];
        let frames: Vec<Bytes> = (0..200u32)
            .map(|i| {
                let len = sizes[i as usize % sizes.len()].max(4);
                numbered(i, len)
            })
            .collect();
        let send = async {
            for f in &frames {
                a.feed(f.clone()).await.unwrap();
            }
            a.close().await.unwrap();
        };
        let ((), got) = tokio::join!(send, read_all(&mut b));
        assert_eq!(got, frames);
    }

    /// A peer that goes away in the middle of a batch: the sender's batch fails with an error
    /// (the peer is gone, not a hang, not success) within a bounded number of frames.
    #[tokio::test]
    async fn a_peer_gone_mid_batch_fails_the_batch() {
        let (mut a, mut b) = small_buffer_pair(4096).await;
        a.feed(numbered(0, 1024)).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), numbered(0, 1024));
        drop(b);
        let mut failed = None;
        for i in 1..20_000u32 {
            if let Err(e) = a.feed(numbered(i, 1024)).await {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => a.flush().await.unwrap_err(),
        };
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    }

    /// A Unix stream that counts the writes made to it.
    #[cfg(unix)]
    struct CountingWrites {
        inner: tokio::net::UnixStream,
        writes: usize,
    }

    #[cfg(unix)]
    impl ByteStream for CountingWrites {
        fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
            self.inner.try_write(buf)
        }
    }

    #[cfg(unix)]
    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[cfg(unix)]
    impl AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A batch of 64 frames of 1 KiB (64 KiB, what a hand-written sender's `BufWriter`
    /// writes at once) goes to the socket in one write when the socket takes it, not one per
    /// 8 KiB (the earlier boundary: eight writes, and up to eight wake-ups of the reader).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_64_kib_batch_is_one_write() {
        let (x, y) = tokio::net::UnixStream::pair().unwrap();
        let ep = Endpoint::parse("unix:///tmp/ductwork-batch-test.sock").unwrap();
        let info = ConnectionInfo {
            capabilities: crate::socket::stream_caps(&ep, ductwork_core::Reach::Host).unwrap(),
            endpoint: ep,
            peer: None,
        };
        let counting = CountingWrites {
            inner: x,
            writes: 0,
        };
        let (mut a, mut b) = (
            FramedConnection::new(counting, info.clone()),
            FramedConnection::new(y, info),
        );
        a.send_hello_now();
        b.send_hello_now();
        // The peer's hello settles the limit (a sender waits for it before its first frame).
        a.flush().await.unwrap();
        let before = a.stream.writes;
        let frames: Vec<Bytes> = (0..63u32).map(|i| numbered(i, 1024)).collect();
        for f in &frames {
            a.feed(f.clone()).await.unwrap();
        }
        a.flush().await.unwrap();
        assert_eq!(a.stream.writes - before, 1, "writes for one 64 KiB batch");
        a.close().await.unwrap();
        assert_eq!(read_all(&mut b).await, frames);
    }

    /// A raw peer that sends no hello (it only reads): the first send waits for one at most
    /// the endpoint's `connect_timeout`, then goes; the peer reads our hello, then the frame.
    /// A hello that comes late is still taken off the start of the stream (not a frame, not
    /// a protocol error), and its limit applies to the sends after it.
    #[tokio::test]
    async fn a_peer_without_a_hello_is_sent_to_after_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = format!("tcp://{}?connect_timeout=200ms", l.local_addr().unwrap());
        let (c, r) = tokio::join!(crate::connect(ep.as_str()), l.accept());
        let (mut c, (mut raw, _)) = (c.unwrap(), r.unwrap());
        c.send(Bytes::from_static(b"hi")).await.unwrap();
        let mut got = [0u8; 14];
        raw.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got[..8],
            [0xff, 0xff, 0xff, 0xfe, 1, 0, 0, 0],
            "hello, 16 MiB"
        );
        assert_eq!(&got[8..], b"\0\0\0\x02hi");
        raw.write_all(b"\xff\xff\xff\xfe\0\0\0\x10\0\0\0\x01z")
            .await
            .unwrap();
        assert_eq!(&c.next().await.unwrap().unwrap()[..], b"z");
        let e = c.send(Bytes::from(vec![0u8; 17])).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(e.to_string().contains("peer's limit of 16 bytes"), "{e}");
        c.send(Bytes::from(vec![0u8; 16])).await.unwrap();
    }
}

/// Encoded sends (`start_send_encoded`) and frames lent in place (`poll_recv_with`).
#[cfg(all(test, feature = "socket"))]
mod in_place_tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use std::io::Write;

    /// Writes `frame` in 100-byte pieces, counting how often it is sized and encoded; with
    /// `fail_after`, fails once that many bytes were written.
    struct Pieces {
        frame: Bytes,
        sized: usize,
        encoded: usize,
        fail_after: Option<usize>,
    }

    impl Pieces {
        fn new(frame: Bytes) -> Self {
            Pieces {
                frame,
                sized: 0,
                encoded: 0,
                fail_after: None,
            }
        }
    }

    impl FrameEncoder for Pieces {
        fn encoded_len(&mut self) -> Result<usize> {
            self.sized += 1;
            Ok(self.frame.len())
        }

        fn encode(&mut self, w: &mut FrameWriter<'_>) -> Result<()> {
            self.encoded += 1;
            for (i, piece) in self.frame.chunks(100).enumerate() {
                if self.fail_after.is_some_and(|n| i * 100 >= n) {
                    return Err(Error::new(ErrorKind::Encode, "test://x", "gave up"));
                }
                w.write_all(piece)
                    .map_err(|e| Error::new(ErrorKind::Encode, "test://x", e.to_string()))?;
            }
            Ok(())
        }
    }

    /// Frame `i`: its number, then `len - 4` bytes that depend on it.
    fn numbered(i: u32, len: usize) -> Bytes {
        let mut v = i.to_be_bytes().to_vec();
        v.extend((0..len.max(4) - 4).map(|k| (k as u32 ^ i).wrapping_mul(31) as u8));
        Bytes::from(v)
    }

    // A connected TCP pair with small socket buffers (see the batching tests).
    use super::tests::small_buffer_pair as pair;

    /// Every frame up to the clean end, each lent by `poll_recv_with` and copied out.
    async fn lend_all<S: ByteStream>(b: &mut FramedConnection<S>) -> Vec<Bytes> {
        let mut got = Vec::new();
        loop {
            let mut frame = None;
            let r = futures::future::poll_fn(|cx| {
                b.poll_recv_with(cx, &mut |f| frame = Some(Bytes::copy_from_slice(f)))
            })
            .await;
            match r {
                None => return got,
                Some(r) => {
                    let frame = frame.expect("a frame was lent");
                    assert_eq!(r.unwrap(), frame.len());
                    got.push(frame);
                }
            }
        }
    }

    /// A frame that fits the first try is encoded once and never sized; a larger one is sized
    /// and encoded again (the first try's bytes discarded); one over the limit is refused
    /// with `FrameTooLarge` without the write buffer growing past the first try's room; a
    /// failing encoder queues nothing. Every good frame arrives whole and in order.
    #[tokio::test]
    async fn encoded_sends_take_one_pass_when_they_fit_and_refuse_what_is_too_large() {
        let max = 3 * SINGLE_PASS_ROOM;
        let (mut a, mut b) = pair(max).await;
        a.flush().await.unwrap(); // poll_ready: the peer's hello settles the limit
        let send = async {
            // Too large, before any large frame made the buffer grow: refused, and the buffer
            // grew only for the first try's room.
            let mut big = Pieces::new(numbered(99, max + 1));
            let e = a.start_send_encoded(&mut big).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
            assert!(e.to_string().contains(&format!("{}", max + 1)), "{e}");
            assert_eq!(
                big.encoded, 1,
                "the sized path refuses before encoding again"
            );
            assert!(a.write_buf.is_empty(), "nothing queued");
            let cap = a.write_buf.capacity();
            assert!(cap < max, "{cap} bytes reserved for a refused frame");
            let mut sent = Vec::new();
            let cases = [0usize, 5, 100, SINGLE_PASS_ROOM, SINGLE_PASS_ROOM + 1, max];
            for (i, &len) in cases.iter().enumerate() {
                let frame = if len == 0 {
                    Bytes::new()
                } else {
                    numbered(i as u32, len.max(4))
                };
                let mut p = Pieces::new(frame.clone());
                assert_eq!(a.start_send_encoded(&mut p).unwrap(), frame.len());
                let (sized, encoded) = if len <= SINGLE_PASS_ROOM {
                    (0, 1)
                } else {
                    (1, 2)
                };
                assert_eq!((p.sized, p.encoded), (sized, encoded), "{len} bytes");
                sent.push(frame);
                a.flush().await.unwrap();
            }
            for fail_after in [0, 300, SINGLE_PASS_ROOM + 200] {
                let mut bad = Pieces::new(numbered(98, SINGLE_PASS_ROOM + 500));
                bad.fail_after = Some(fail_after);
                let e = a.start_send_encoded(&mut bad).unwrap_err();
                assert!(e.to_string().contains("gave up"), "{e}");
                assert!(a.write_buf.is_empty(), "nothing queued");
            }
            let mut last = Pieces::new(numbered(7, 64));
            a.start_send_encoded(&mut last).unwrap();
            sent.push(last.frame);
            a.close().await.unwrap();
            sent
        };
        let (sent, got) = tokio::join!(send, lend_all(&mut b));
        assert_eq!(got, sent);
    }

    /// The peer's smaller limit (from its hello) bounds the single pass too: a frame over it
    /// is refused naming the peer's limit, and one at it goes.
    #[tokio::test]
    async fn encoded_sends_keep_to_the_peers_limit() {
        let (mut a, mut b) = pair(1 << 20).await;
        b.codec = FrameCodec::new(16);
        a.flush().await.unwrap();
        a.send_max = 16; // what the peer's hello of 16 would have set
        let e = a
            .start_send_encoded(&mut Pieces::new(numbered(1, 17)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(e.to_string().contains("peer's limit of 16 bytes"), "{e}");
        a.start_send_encoded(&mut Pieces::new(numbered(2, 16)))
            .unwrap();
        a.close().await.unwrap();
        assert_eq!(lend_all(&mut b).await, [numbered(2, 16)]);
    }

    /// Batches of encoded sends of far more than the socket takes, with refused and failing
    /// frames in the middle, while the receiver lends frames in place: every good frame
    /// arrives whole and in order, and the sender met a full socket (its writes were
    /// partial).
    #[tokio::test]
    async fn encoded_batches_over_a_full_socket_lose_nothing() {
        let (mut a, mut b) = pair(4096).await;
        let send = async {
            let mut sent = Vec::new();
            let mut waited = false;
            for i in 0..2000u32 {
                let frame = numbered(i, [64usize, 1024, 3000][i as usize % 3]);
                let mut ready = futures::future::poll_fn(|cx| Pin::new(&mut a).poll_ready(cx));
                match futures::poll!(&mut ready) {
                    Poll::Ready(r) => r.unwrap(),
                    Poll::Pending => {
                        waited = true;
                        ready.await.unwrap();
                    }
                }
                a.start_send_encoded(&mut Pieces::new(frame.clone()))
                    .unwrap();
                sent.push(frame);
                if i % 97 == 0 {
                    let e = a
                        .start_send_encoded(&mut Pieces::new(numbered(i, 4097)))
                        .unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
                    let mut bad = Pieces::new(numbered(i, 2000));
                    bad.fail_after = Some(1000);
                    assert!(a.start_send_encoded(&mut bad).is_err());
                }
            }
            a.close().await.unwrap();
            (sent, waited)
        };
        let ((sent, waited), got) = tokio::join!(send, lend_all(&mut b));
        assert!(waited, "6 MB of batched frames never met a full socket");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "frames differ");
    }

    /// Frames lent in place from a raw writer's pieces (a header split, frames sharing a
    /// read), mixed with `poll_next`; a poll that finds no whole frame lends nothing and
    /// consumes nothing (cancel-safe); errors are `poll_next`'s.
    #[tokio::test]
    async fn frames_are_lent_whole_from_any_split() {
        use tokio::io::AsyncWriteExt;
        let mut listener = crate::bind("tcp://127.0.0.1:0?max_frame=64").await.unwrap();
        let addr = listener.endpoint().address().to_string();
        let (w, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut w, mut b) = (w.unwrap(), b.unwrap());
        w.set_nodelay(true).unwrap();
        let mut lent = Vec::new();
        let mut lend = |b: &mut BoxConnection, cx: &mut Context<'_>| {
            b.poll_recv_with(cx, &mut |f| lent.push(f.to_vec()))
        };
        // Nothing there yet: pending, nothing lent.
        let none = futures::future::poll_fn(|cx| Poll::Ready(lend(&mut b, cx))).await;
        assert!(none.is_pending());
        w.write_all(b"\0\0").await.unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let half = futures::future::poll_fn(|cx| Poll::Ready(lend(&mut b, cx))).await;
        assert!(half.is_pending(), "half a header is no frame");
        w.write_all(b"\0\x05hello\0\0\0\x01x\0\0\0\0\0\0\0\x02ab\0\0\0\x41")
            .await
            .unwrap();
        for want in [5, 1, 0] {
            let r = futures::future::poll_fn(|cx| lend(&mut b, cx)).await;
            assert_eq!(r.unwrap().unwrap(), want);
        }
        // `poll_next` goes on where the lending stopped.
        assert_eq!(&b.next().await.unwrap().unwrap()[..], b"ab");
        let r = futures::future::poll_fn(|cx| lend(&mut b, cx)).await;
        let e = r.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(futures::future::poll_fn(|cx| lend(&mut b, cx))
            .await
            .is_none());
        assert_eq!(lent, [b"hello".to_vec(), b"x".to_vec(), Vec::new()]);
    }
}
