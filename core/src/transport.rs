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
//!   [`ErrorKind::FrameTooLarge`](crate::ErrorKind) and the connection stays usable. On the
//!   byte-stream transports (tcp, unix, pipe, tls) the two sides also tell each other their
//!   limit at connect (a hello, see `docs/wire-format.md`; no round trip: each writes its own
//!   at once and a sender waits only before its first frame, for the peer's), and a frame over
//!   *the peer's* limit is refused the same way, on send, naming the endpoint and the limit,
//!   nothing written: so a sender learns of every frame its peer would refuse, and a
//!   conforming receiver never drops a connection for one. A peer that sends no hello (a raw
//!   writer) within the endpoint's `connect_timeout` has an unknown limit. shm exchanges the
//!   limits in its set-up handshake (the client's hello, the listener's reply) with the same
//!   effect; the other message transports refuse on the receiving side, see *After an error*.
//!   A peer that
//!   announces a larger frame makes *that connection* fail with `FrameTooLarge` (on a shared
//!   receiver: that message only, see *After an error*) before any memory is reserved for it;
//!   nor is memory reserved by a frame's announced length alone, only as its bytes arrive.
//! - **What close means.** `Sink::poll_close` flushes pending frames, tells the peer no more will
//!   come and releases the sending side. The peer's stream then yields every frame sent before,
//!   then `None`; anything the closed side sends after its close is a
//!   [`ErrorKind::Protocol`](crate::ErrorKind) error instead, however late it arrives (on a
//!   byte stream with a half-close; a Windows named pipe has none, see `docs/wire-format.md`). Dropping a connection without closing is best-effort: transports try to
//!   close cleanly, but may report [`ErrorKind::ConnectionLost`](crate::ErrorKind) instead.
//!   A completed close, like a completed send, means the frames were handed to the mechanism,
//!   not that the peer's application read them: there is no acknowledgement. If the receiving
//!   application drops its connection with frames unread, those frames are lost and the
//!   sender is not necessarily told: a send or close still in progress may fail with
//!   `ConnectionLost` (a stream socket closed with unread data resets the connection), but a
//!   close that completed before that returned `Ok`. An application that must know that its
//!   peer processed a message asks for a reply (`ductwork::patterns::reqrep`).
//! - **What a dead peer looks like.** If the peer dies (killed, crashed, network reset) a
//!   transport with `peer_loss` makes the survivor's pending and later `recv` return
//!   [`ErrorKind::ConnectionLost`](crate::ErrorKind) promptly, never hang; `None` is reserved for
//!   a clean close. Sends to a dead peer fail with `ConnectionLost` or `Closed`.
//! - **Garbage.** Malformed input fails that connection (on a shared receiver, that message)
//!   with [`ErrorKind::Protocol`](crate::ErrorKind) or `FrameTooLarge`; the listener and other
//!   connections keep working. Nothing the peer sends causes a panic, undefined behaviour or an
//!   allocation sized by the peer's claim beyond `max_message`.
//! - **After an error.** Once `recv` returned an error other than `Decode`, the connection is
//!   broken: later calls return an error or `None`. One exception, **shared receivers**
//!   ([`Accept::Shared`](crate::Accept): mailslot, copydata, one receiving connection for every
//!   sender): an error that concerns one message, `Decode` or `FrameTooLarge` (one message
//!   over the limit), is that message's alone. The receiver drops the message, reports it (as
//!   one `recv` error, or to its sender where the mechanism answers each message, as
//!   copydata's acknowledgement does) and goes on receiving every other sender's messages.
//!   Any other error (the mechanism itself failed) breaks it as above. A shared receiver that
//!   one message from any same-user process could end would be a denial of service for all.
//! - **Names.** Binding an endpoint that another live listener holds fails with
//!   [`ErrorKind::AddrInUse`](crate::ErrorKind) (except on a transport whose listeners form a
//!   pool, [`Accept::Pooled`](crate::Accept): there the second listener joins); connecting where nothing listens fails with
//!   [`ErrorKind::NotFound`](crate::ErrorKind); binding an endpoint this machine cannot serve
//!   (an address not its own, a directory that does not exist) fails with
//!   [`ErrorKind::Bind`](crate::ErrorKind), never `NotFound`. Every error names the endpoint.
//! - **One-way transports.** Receiving on the sending side, or sending on the receiving side,
//!   fails with [`ErrorKind::Unsupported`](crate::ErrorKind).
//! - **Cancellation.** `accept` and `recv` (`Stream::poll_next`) are cancel-safe: dropping the
//!   future loses nothing.
//! - **What accept may return.** [`Listener::accept`] returns an error only when the listener
//!   itself can accept no more (its socket, pipe or accepting task is gone); after one, later
//!   calls fail too. Transient faults never come out of `accept`: running out of descriptors
//!   or memory (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`, their Windows counterparts), a client
//!   that gave up before it was accepted (`ECONNABORTED`), one client's failed set-up (the shm
//!   handshake, a pipe instance that could not be made). The listener logs each at `warn`
//!   with its endpoint, pauses (10 ms, doubling to 1 s, back to 10 ms after a success) and
//!   keeps accepting. So an accept loop may treat an error as the end of the listener:
//!   report it and stop (`while let Ok(c) = listener.accept().await` is correct, but loses
//!   the reason).
//! - **Connect deadline.** Every `connect` completes, fails, or fails with
//!   [`ErrorKind::Timeout`](crate::ErrorKind) naming the endpoint and the deadline once the
//!   endpoint's `connect_timeout` has passed (default 10 s, see [`Endpoint::connect_timeout`]):
//!   a listener that is stopped, overloaded or behind a full backlog never makes it hang.
//! - **Set-up refusals say why.** A listener that cannot set a connection up for lack of
//!   resources tells the client when its mechanism can ([`ErrorKind::Refused`](crate::ErrorKind)
//!   on the client); a client that runs out of descriptors itself gets
//!   [`ErrorKind::Io`](crate::ErrorKind) saying so, never `Protocol`.
//!
//! # Sized sends
//! [`Connection::start_send_sized`] queues a frame whose length the caller knows before
//! encoding it (the typed [`Channel`](crate::Channel) computes it once), so a transport can
//! let the encoder write straight into its mechanism (the shared-memory ring) or its write
//! buffer. Rules, for callers and implementors:
//!
//! - **When.** Like `Sink::start_send`: only after `poll_ready` returned `Ready(Ok(()))`.
//! - **Size limit.** A `len` over `max_message` is refused with `FrameTooLarge` before the
//!   encoder runs; the connection stays usable.
//! - **Exactly `len` bytes.** The encoder writes the payload into the [`FrameWriter`] it is
//!   given. The writer holds exactly `len` bytes: a write past them is refused (an
//!   [`std::io::Error`] of kind `WriteZero`, nothing of it written). If the encoder fails, or
//!   returns having written fewer or more than `len` bytes, *nothing is queued or published*:
//!   the send fails (with the encoder's error if it failed, else
//!   [`ErrorKind::Encode`](crate::ErrorKind)) and the connection stays usable.
//! - **Then as `start_send`.** Once the encoder wrote `len` bytes the frame is queued exactly as
//!   if it had been given to `start_send`: flushing, ordering and close rules are the same.
//!
//! # Encoded sends
//! [`Connection::start_send_encoded`] queues a frame whose encoder can also say its length
//! ([`FrameEncoder`]), so a transport that keeps a write buffer encodes once, straight into
//! it, and writes the length in front afterwards, with no sizing pass. The typed
//! [`Channel`](crate::Channel) sends through this. Rules, as for sized sends:
//!
//! - **When.** Only after `poll_ready` returned `Ready(Ok(()))`.
//! - **Size limit.** A frame over `max_message` (or, on the byte streams, the peer's limit) is
//!   refused with `FrameTooLarge` and nothing is queued; the connection stays usable. A
//!   transport may find that out by running the encoder into bounded room first, but it never
//!   reserves memory for more than the limit.
//! - **All or nothing.** If the encoder (or its sizing) fails, nothing is queued and the send
//!   fails with the encoder's error; the connection stays usable.
//! - **One pass or two.** The default implementation asks [`FrameEncoder::encoded_len`] and then
//!   makes a [sized send](#sized-sends) with it, so every transport is correct without
//!   overriding it; an override may run the encoder once, or more than once (after a first
//!   try into bounded room failed for lack of it), and must queue the bytes of one complete
//!   run, as one frame.
//! - **Then as `start_send`.** The frame is queued exactly as if it had been given to
//!   `start_send`.
//!
//! # Receiving in place
//! [`Connection::poll_recv_with`] is `Stream::poll_next` for a caller that only needs to look
//! at a frame (decode it) before it is gone: the frame is lent to a closure, so a transport
//! that reads into a buffer need not cut a [`Bytes`] off it per frame. It follows every rule
//! of `poll_next` (ordering, end, errors, cancel safety: the frame is consumed only when the
//! closure ran); the default implementation calls `poll_next` and lends the frame it returns.

use crate::{Capabilities, Endpoint, Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ductwork_codec::check_len;
use futures::{Sink, Stream};
use std::{
    fmt, io,
    marker::PhantomData,
    mem::MaybeUninit,
    pin::Pin,
    ptr,
    task::{Context, Poll},
};

/// Facts about one connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The endpoint this connection belongs to (the listener's, for accepted connections).
    pub endpoint: Endpoint,
    /// A description of the peer, when the mechanism knows one (address, pid, ...). On the
    /// Unix socket transports (`unix://`, and `pipe://`, `shm://` on Unix) it is the peer's
    /// kernel-reported credentials, on Windows `pipe://` the peer process's pid and user SID;
    /// [`peer_credentials`](Self::peer_credentials) returns them typed.
    pub peer: Option<String>,
    /// What this connection offers.
    pub capabilities: Capabilities,
}

impl ConnectionInfo {
    /// The peer process's credentials as the kernel reported them when the connection was made
    /// (`SO_PEERCRED`: the listener's as of its `listen`, the client's as of its `connect`),
    /// on `unix://`, and on `pipe://` and `shm://` on Unix. On Windows `pipe://` (local
    /// pipes) they are the pid the pipe reports (`GetNamedPipeServerProcessId`,
    /// `GetNamedPipeClientProcessId`) and the user SID of that process's token, when this
    /// process may read it. `None` on other transports.
    ///
    /// Transports record them in [`peer`](Self::peer) in the one form
    /// [`PeerCredentials`]'s `Display` writes (`uid 1000, gid 1000, pid 42`, `sid S-1-5-21-..., pid 42`); an address, a
    /// path or a Windows description never reads as one.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.peer.as_deref()?.parse().ok()
    }
}

/// Who is at the other end of a local connection, as the operating system vouches for it.
///
/// Its fields follow the platform: a uid and gid on Unix (`SO_PEERCRED`), the user's SID on
/// Windows (from the peer process's token). A Windows peer has no uid, and a made-up one
/// (0 would read as root) would be worse than none, so code that reads `uid` is Unix code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(windows), derive(Copy))]
pub struct PeerCredentials {
    /// The peer's effective user id.
    #[cfg(not(windows))]
    pub uid: u32,
    /// The peer's effective group id.
    #[cfg(not(windows))]
    pub gid: u32,
    /// The peer process's user SID in its string form (`S-1-5-21-...-1001`), as
    /// `ConvertSidToStringSidW` writes it.
    #[cfg(windows)]
    pub sid: String,
    /// The peer's process id, when the kernel gives one.
    pub pid: Option<u32>,
}

impl fmt::Display for PeerCredentials {
    /// `uid 1000, gid 100, pid 42` on Unix, `sid S-1-5-21-1-2-3-1001, pid 42` on Windows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(not(windows))]
        write!(f, "uid {}, gid {}", self.uid, self.gid)?;
        #[cfg(windows)]
        write!(f, "sid {}", self.sid)?;
        match self.pid {
            Some(pid) => write!(f, ", pid {pid}"),
            None => Ok(()),
        }
    }
}

/// A run of ASCII digits as a `u32` (`u32::from_str` would also take a leading `+`).
fn digits(v: &str) -> Option<u32> {
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

impl std::str::FromStr for PeerCredentials {
    type Err = ();

    /// Reads exactly what `Display` writes; anything else is `Err(())`.
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let mut parts = s.split(", ");
        let mut field =
            |name: &str| -> Option<&str> { parts.next()?.strip_prefix(name)?.strip_prefix(' ') };
        #[cfg(not(windows))]
        let (uid, gid) = (
            field("uid").and_then(digits).ok_or(())?,
            field("gid").and_then(digits).ok_or(())?,
        );
        #[cfg(windows)]
        let sid = field("sid")
            .filter(|v| {
                v.strip_prefix("S-1-").is_some_and(|r| {
                    r.split('-')
                        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .ok_or(())?
            .to_string();
        let rest: Vec<&str> = parts.collect();
        let pid = match rest.as_slice() {
            [] => None,
            [p] => Some(p.strip_prefix("pid ").and_then(digits).ok_or(())?),
            _ => return Err(()),
        };
        #[cfg(not(windows))]
        return Ok(PeerCredentials { uid, gid, pid });
        #[cfg(windows)]
        return Ok(PeerCredentials { sid, pid });
    }
}

#[cfg(test)]
mod peer_credentials_tests {
    use super::PeerCredentials;

    #[test]
    #[cfg(not(windows))]
    fn display_and_parse_round_trip() {
        for c in [
            PeerCredentials {
                uid: 1000,
                gid: 100,
                pid: Some(42),
            },
            PeerCredentials {
                uid: 0,
                gid: 0,
                pid: None,
            },
        ] {
            assert_eq!(c.to_string().parse::<PeerCredentials>(), Ok(c));
        }
        assert_eq!(
            PeerCredentials {
                uid: 1,
                gid: 2,
                pid: Some(3)
            }
            .to_string(),
            "uid 1, gid 2, pid 3"
        );
    }

    #[test]
    #[cfg(windows)]
    fn display_and_parse_round_trip() {
        for c in [
            PeerCredentials {
                sid: "S-1-5-21-1-2-3-1001".into(),
                pid: Some(42),
            },
            PeerCredentials {
                sid: "S-1-5-18".into(),
                pid: None,
            },
        ] {
            assert_eq!(c.to_string().parse::<PeerCredentials>(), Ok(c.clone()));
        }
        assert_eq!(
            PeerCredentials {
                sid: "S-1-5-18".into(),
                pid: Some(3)
            }
            .to_string(),
            "sid S-1-5-18, pid 3"
        );
    }

    #[test]
    fn addresses_paths_and_other_descriptions_are_not_credentials() {
        for s in [
            "127.0.0.1:5000",
            "/run/user/0/ductwork/mailslot-x.sock",
            "pid 42",
            "pid 42, window 0x10",
            "uid 1",
            "uid +1, gid 2",
            "uid 1, gid 2, pid ",
            "uid 1, gid 2, pid 3, x",
            "uid 99999999999, gid 2",
            "sid S-1-5-21-x",
            "sid S-1-5--1",
            "sid S-1-",
            "sid S-1-5-18, pid +1",
            "sid 1-5-18",
            r"\\.\pipe\ductwork-x",
        ] {
            assert!(s.parse::<PeerCredentials>().is_err(), "{s}");
        }
    }
}

/// What one connection has carried so far, as [`Connection::stats`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received.
    pub frames_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Frames queued for sending (whose `start_send` succeeded).
    pub frames_out: u64,
    /// Payload bytes queued for sending.
    pub bytes_out: u64,
    /// Errors returned by any operation on the connection.
    pub errors: u64,
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

    /// What this connection has carried so far, when it counts: connections made through
    /// `ductwork::bind`/`connect` do; a backend's raw connection returns `None`.
    fn stats(&self) -> Option<Stats> {
        None
    }

    /// Queues one frame of exactly `len` bytes that `encode` writes into the [`FrameWriter`]
    /// it is given; like [`Sink::start_send`], call it only after `poll_ready` returned
    /// `Ready(Ok(()))`. See [Sized sends](self#sized-sends) for the rules.
    ///
    /// The typed [`Channel`](crate::Channel) sends through this. The default encodes into a
    /// fresh buffer of `len` bytes and hands it to `start_send`; a transport that keeps a
    /// write buffer, or can hand out its mechanism's memory, overrides it to encode in place
    /// and save that allocation and copy.
    fn start_send_sized(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        let info = self.info();
        check_len(len, info.capabilities.max_message)
            .map_err(|e| Error::codec(&info.endpoint, e))?;
        let mut buf = BytesMut::with_capacity(len);
        let mut w = FrameWriter::new(&mut buf.spare_capacity_mut()[..len]);
        encode(&mut w).and_then(|()| w.finish(&info.endpoint))?;
        // SAFETY: `finish` returned Ok, so the writer received exactly `len` bytes, written in
        // order from the start of the `len`-byte spare region it was given: bytes `0..len`
        // are initialized, and `with_capacity` made room for them.
        unsafe { buf.set_len(len) };
        Pin::new(self).start_send(buf.freeze())
    }

    /// Queues one frame that `frame` encodes, and returns its length; like
    /// [`Sink::start_send`], call it only after `poll_ready` returned `Ready(Ok(()))`. See
    /// [Encoded sends](self#encoded-sends) for the rules.
    ///
    /// The default asks `frame` for its length and makes a
    /// [sized send](Self::start_send_sized) (two passes of the encoder); a transport with a
    /// write buffer overrides it to encode once and write the length afterwards.
    fn start_send_encoded(&mut self, frame: &mut dyn FrameEncoder) -> Result<usize> {
        let len = frame.encoded_len()?;
        self.start_send_sized(len, &mut |w| frame.encode(w))?;
        Ok(len)
    }

    /// Receives the next frame and lends it to `take`: `Ready(Some(Ok(len)))` once `take` ran
    /// on a frame of `len` bytes, `Ready(None)` after the peer's clean close,
    /// `Ready(Some(Err(_)))` as `poll_next` would. See
    /// [Receiving in place](self#receiving-in-place).
    ///
    /// The default calls `poll_next`; a transport that reads into a buffer overrides it to
    /// lend the frame where it lies.
    fn poll_recv_with(
        &mut self,
        cx: &mut Context<'_>,
        take: &mut dyn FnMut(&[u8]),
    ) -> Poll<Option<Result<usize>>> {
        match Pin::new(&mut *self).poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                take(&frame);
                Poll::Ready(Some(Ok(frame.len())))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A frame's payload, produced on demand: what an [encoded send](Connection::start_send_encoded)
/// writes. The typed [`Channel`](crate::Channel) implements it with postcard.
pub trait FrameEncoder {
    /// The payload's exact length, as [`encode`](Self::encode) would write it (a sizing
    /// pass, for transports that need the length before the bytes).
    fn encoded_len(&mut self) -> Result<usize>;

    /// Writes the payload into `w`. A write that `w` refuses (past its length) makes this
    /// fail; the transport then knows from [`FrameWriter::is_overrun`] that it ran out of
    /// room rather than that the value cannot be encoded.
    fn encode(&mut self, w: &mut FrameWriter<'_>) -> Result<()>;
}

/// Where a [sized send](Connection::start_send_sized) writes its payload: exactly `len`
/// bytes, in one region or split over two (a ring's end and its start).
///
/// Implements [`std::io::Write`]; writes go straight to the memory behind it, by raw copies.
/// A write that would pass `len` bytes writes nothing and fails with
/// [`io::ErrorKind::WriteZero`]; [`finish`](Self::finish) then reports the overrun.
pub struct FrameWriter<'a> {
    /// The first region: `first_len` bytes.
    first: *mut u8,
    first_len: usize,
    /// The second region: `len - first_len` bytes.
    second: *mut u8,
    /// Total bytes the frame holds.
    len: usize,
    /// Bytes written so far, in order from the start (`written <= len`).
    written: usize,
    /// A write was refused because it would have passed `len`.
    overrun: bool,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: the writer only holds the two regions for its lifetime `'a` (as a `&'a mut [u8]`
// would) and accesses them by raw copies through `&mut self`; nothing ties it to a thread.
unsafe impl Send for FrameWriter<'_> {}

impl<'a> FrameWriter<'a> {
    /// A writer over `buf` (which may be uninitialized): the frame is `buf.len()` bytes.
    /// Once [`is_complete`](Self::is_complete), every byte of `buf` is initialized.
    pub fn new(buf: &'a mut [MaybeUninit<u8>]) -> Self {
        let len = buf.len();
        FrameWriter {
            first: buf.as_mut_ptr().cast(),
            first_len: len,
            second: ptr::null_mut(),
            len,
            written: 0,
            overrun: false,
            _mem: PhantomData,
        }
    }

    /// A writer over two raw regions: the frame's first `first_len` bytes go to `first`,
    /// the remaining `second_len` to `second`. The writer only ever writes into them with raw
    /// copies (it forms no reference to them), so they may be memory another process shares.
    ///
    /// # Safety
    /// For the lifetime `'a`, `first` must be valid for writes of `first_len` bytes and
    /// `second` for writes of `second_len` bytes (either may be dangling when its length is
    /// 0), the two regions must not overlap, and nothing else in this process may read or
    /// write them while the writer lives.
    pub unsafe fn from_raw_parts(
        first: *mut u8,
        first_len: usize,
        second: *mut u8,
        second_len: usize,
    ) -> Self {
        FrameWriter {
            first,
            first_len,
            second,
            len: first_len + second_len,
            written: 0,
            overrun: false,
            _mem: PhantomData,
        }
    }

    /// The frame's length: the bytes the encoder must write.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Whether a write was refused because it would have passed `len()`.
    pub fn is_overrun(&self) -> bool {
        self.overrun
    }

    /// Whether exactly `len()` bytes were written and no write was refused.
    pub fn is_complete(&self) -> bool {
        self.written == self.len && !self.overrun
    }

    /// Appends `src` whole, or, if it would pass `len()`, writes nothing and returns false.
    #[inline]
    pub fn put(&mut self, src: &[u8]) -> bool {
        let at = self.written;
        let n = src.len();
        if at <= self.first_len && n <= self.first_len - at {
            // The common case, inlined so that an encoder's one-byte writes become stores.
            // SAFETY: `at + n <= first_len`: the destination lies in the first region, which
            // is valid for writes and not aliased (constructor contracts); `src` is a
            // separate borrow, so the ranges do not overlap.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.first.add(at), n) };
            self.written = at + n;
            return true;
        }
        self.put_split(src)
    }

    /// `put` when `src` reaches into the second region or past the end.
    #[cold]
    #[inline(never)]
    fn put_split(&mut self, src: &[u8]) -> bool {
        let n = src.len();
        if n > self.len - self.written {
            self.overrun = true;
            return false;
        }
        let at = self.written;
        let in_first = self.first_len.saturating_sub(at).min(n);
        // SAFETY: `at + n <= len` (checked above). The first `in_first` bytes go to
        // `first[at..at + in_first]`, within `first_len` since `in_first <= first_len - at`;
        // the rest goes to `second[at + in_first - first_len..][..n - in_first]`, which is
        // only reached when the first region is full (`at + in_first == first_len` whenever
        // `n > in_first`) and ends at `at + n - first_len <= len - first_len`, the second
        // region's length. Both regions are valid for writes and not aliased (constructor
        // contracts); `src` is a separate borrow, so the copies do not overlap.
        unsafe {
            if in_first > 0 {
                ptr::copy_nonoverlapping(src.as_ptr(), self.first.add(at), in_first);
            }
            if in_first < n {
                let off = at + in_first - self.first_len;
                ptr::copy_nonoverlapping(
                    src.as_ptr().add(in_first),
                    self.second.add(off),
                    n - in_first,
                );
            }
        }
        self.written += n;
        true
    }

    /// Checks that the encoder wrote exactly `len()` bytes; if not, the error (of kind
    /// [`ErrorKind::Encode`], naming `endpoint`) says what it did instead.
    pub fn finish(&self, endpoint: impl fmt::Display) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some(why) => Err(Error::new(ErrorKind::Encode, endpoint, why)),
        }
    }

    /// What is wrong with the byte count, if anything.
    fn problem(&self) -> Option<String> {
        if self.overrun {
            Some(format!(
                "the encoder wrote more than the {} bytes it announced; nothing was sent",
                self.len
            ))
        } else if self.written != self.len {
            Some(format!(
                "the encoder wrote {} of the {} bytes it announced; nothing was sent",
                self.written, self.len
            ))
        } else {
            None
        }
    }
}

impl io::Write for FrameWriter<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.put(buf) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the announced frame length",
            ))
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for FrameWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("len", &self.len)
            .field("written", &self.written)
            .field("overrun", &self.overrun)
            .finish()
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
    ///
    /// Transient faults (out of descriptors or memory, a client that gave up, one client's
    /// failed set-up) are logged at `warn` and retried with a backoff inside; an error means
    /// the listener can accept no more (see the [module docs](self)).
    async fn accept(&mut self) -> Result<BoxConnection>;
}

/// A boxed listener, as transports return it.
pub type BoxListener = Box<dyn Listener>;

/// A messaging mechanism, selected by an endpoint's scheme.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The scheme this transport serves (`tcp`, `shm`, ...).
    fn scheme(&self) -> &'static str;

    /// A fresh endpoint of this transport on this machine, for the tests, benches and examples
    /// that need one without knowing the transport's address format. `unique` (letters,
    /// digits, `-`) tells concurrent users apart; transports with ports ask for port 0, so the
    /// listener's [`endpoint`](Listener::endpoint) names the port it was given.
    fn local_endpoint(&self, unique: &str) -> String;

    /// What this transport offers on `endpoint` (with its options), or why it cannot serve it.
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities>;

    /// Binds `endpoint` and returns a listener.
    async fn bind(&self, endpoint: &Endpoint) -> Result<BoxListener>;

    /// Connects to a listener at `endpoint`, within its `connect_timeout` (else
    /// [`ErrorKind::Timeout`]).
    async fn connect(&self, endpoint: &Endpoint) -> Result<BoxConnection>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Accept, Boundaries, Delivery, Direction, Reach};
    use futures::task::{Context, Poll};
    use std::io::Write;

    #[test]
    fn frame_writer_splits_over_two_regions() {
        let (mut a, mut b) = ([0u8; 5], [0u8; 7]);
        // SAFETY: two distinct local arrays of the stated lengths, used only via the writer
        // while it lives.
        let mut w = unsafe { FrameWriter::from_raw_parts(a.as_mut_ptr(), 5, b.as_mut_ptr(), 7) };
        assert_eq!(w.len(), 12);
        w.write_all(b"abc").unwrap();
        w.write_all(b"").unwrap();
        w.write_all(b"defgh").unwrap(); // crosses the split
        assert!(!w.is_complete());
        assert!(w.finish("shm://t").is_err());
        w.write_all(b"ijkl").unwrap();
        assert!(w.is_complete());
        w.finish("shm://t").unwrap();
        let e = w.write_all(b"m").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(w.written(), 12);
        let e = w.finish("shm://t").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        assert!(e.to_string().contains("shm://t"), "{e}");
        assert_eq!(&a, b"abcde");
        assert_eq!(&b, b"fghijkl");
    }

    #[test]
    fn frame_writer_refuses_a_write_past_the_end_whole() {
        let mut buf = [MaybeUninit::new(0u8); 4];
        let mut w = FrameWriter::new(&mut buf);
        assert!(w.put(b"ab"));
        assert!(!w.put(b"cde"), "would pass len");
        assert_eq!(w.written(), 2);
        assert!(w.put(b"cd"));
        assert!(!w.is_complete(), "a refused write is remembered");
    }

    /// A connection that keeps the frames given to `start_send` (the default path).
    pub(crate) struct Collect {
        info: ConnectionInfo,
        pub(crate) sent: std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>,
    }

    impl Collect {
        /// A collecting connection on `tcp://127.0.0.1:1` with a 64-byte limit.
        pub(crate) fn new() -> Self {
            Collect {
                info: ConnectionInfo {
                    endpoint: Endpoint::parse("tcp://127.0.0.1:1").unwrap(),
                    peer: None,
                    capabilities: Capabilities {
                        direction: Direction::Duplex,
                        delivery: Delivery::Reliable,
                        ordered: true,
                        boundaries: Boundaries::Messages,
                        max_message: 64,
                        reach: Reach::Host,
                        peer_loss: true,
                        accept: Accept::PerPeer,
                    },
                },
                sent: Default::default(),
            }
        }
    }
    impl Stream for Collect {
        type Item = Result<Bytes>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
            Poll::Ready(None)
        }
    }
    impl Sink<Bytes> for Collect {
        type Error = Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<()> {
            self.sent.lock().unwrap().push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl Connection for Collect {
        fn info(&self) -> &ConnectionInfo {
            &self.info
        }
    }

    #[test]
    fn default_sized_send_queues_exactly_the_announced_bytes_or_nothing() {
        let mut c = Collect::new();
        for (len, wrote) in [(5usize, 4usize), (5, 6), (0, 1)] {
            let e = c
                .start_send_sized(len, &mut |w| {
                    let _ = w.write_all(&vec![1; wrote]);
                    Ok(())
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encode, "{len}/{wrote}");
            assert!(e.to_string().contains("tcp://127.0.0.1:1"), "{e}");
        }
        assert!(c.sent.lock().unwrap().is_empty(), "nothing queued");
        // Over `max_message` (64): refused before the encoder runs (the default used to
        // queue it).
        let e = c
            .start_send_sized(65, &mut |_| panic!("the encoder must not run"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        assert!(e.to_string().contains("tcp://127.0.0.1:1"), "{e}");
        // An encoder's own error is returned as it is.
        let e = c
            .start_send_sized(5, &mut |_| {
                Err(Error::new(ErrorKind::Timeout, "x", "gave up"))
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(c.sent.lock().unwrap().is_empty(), "nothing queued");
        c.start_send_sized(5, &mut |w| {
            assert!(w.put(b"hel") && w.put(b"lo"));
            Ok(())
        })
        .unwrap();
        c.start_send_sized(0, &mut |_| Ok(())).unwrap();
        assert_eq!(
            *c.sent.lock().unwrap(),
            [Bytes::from_static(b"hello"), Bytes::new()]
        );
    }
}
