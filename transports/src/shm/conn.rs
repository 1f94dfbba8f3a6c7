//! The portable shared-memory connection: two rings, a spin-then-park receive loop, and
//! backpressure, over doorbells and a liveness signal the OS layer provides.

#[cfg(any(target_os = "linux", windows))]
use super::setup::Slot;
use super::{
    caps,
    ring::{Consumer, Pop, Producer, Record, RingError, SharedRegion, Which},
    spin::{SpinMode, Spinner},
    Config,
};
use bytes::{Bytes, BytesMut};
use ductwork_core::{
    BoxConnection, Connection, ConnectionInfo, Endpoint, Error, ErrorKind, FrameWriter, Result,
};
use futures::{Sink, Stream};
use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// What the set-up learnt about the peer, and what the connection holds for its listener.
#[cfg(any(target_os = "linux", windows))]
pub(crate) struct Peer {
    /// How the peer is named in [`ConnectionInfo::peer`].
    pub(crate) name: Option<String>,
    /// The peer's `max_frame` as the set-up handshake told it (the listener's reply, on the
    /// client side; the client's hello, on the listener's side): we send nothing larger.
    pub(crate) max_frame: usize,
    /// The listener's connection slot (on the listening side), given back on drop.
    pub(crate) slot: Option<Slot>,
}

/// The connection over a segment of two `cap`-byte rings, as both OS layers build it: the
/// server sends on ring A and receives on ring B, the client the other way round. Messages
/// are capped at the smaller of our `max_frame` and the peer's as far as we know it (and the
/// ring).
#[cfg(any(target_os = "linux", windows))]
pub(crate) fn connection(
    ep: &Endpoint,
    cfg: Config,
    region: Arc<dyn SharedRegion>,
    cap: usize,
    server: bool,
    os: Box<dyn OsLink>,
    peer: Peer,
) -> BoxConnection {
    let info = ConnectionInfo {
        endpoint: ep.clone(),
        peer: peer.name,
        capabilities: caps(cap, cfg.max_frame.min(peer.max_frame)),
    };
    let max = info.capabilities.max_message;
    let (out, inn) = if server {
        (Which::A, Which::B)
    } else {
        (Which::B, Which::A)
    };
    let mut c = ShmConnection::new(
        Producer::new(region.clone(), cap, out),
        Consumer::new(region, cap, inn, max),
        os,
        info,
        cfg.spin,
    );
    c._slot = peer.slot.map(|s| Box::new(s) as Box<dyn Send + Sync>);
    Box::new(c)
}

/// What the OS layer gives a connection: doorbells to wait on and to ring, and a signal that
/// the peer process is gone. Waits must not block the thread: they register the task's waker.
pub(crate) trait OsLink: Send + Sync + 'static {
    /// Ready once our "data arrived" doorbell rang (the ring is then re-checked; a spurious
    /// wake-up is harmless). Consumes the ring.
    fn poll_data(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ready once our "space freed" doorbell rang.
    fn poll_space(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Rings the peer's "data arrived" doorbell.
    fn ring_data(&self) -> io::Result<()>;
    /// Rings the peer's "space freed" doorbell.
    fn ring_space(&self) -> io::Result<()>;
    /// Ready once the peer process is gone (for the receiving side's waker).
    fn poll_gone_rx(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// Ready once the peer process is gone (for the sending side's waker).
    fn poll_gone_tx(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// Whether the peer process is known to be gone: a flag the OS layer's watcher (a task
    /// or thread) sets, so that every send can look at it without a system call.
    fn peer_gone(&self) -> bool;
}

/// One shared-memory connection. See the module docs of [`super`].
pub(crate) struct ShmConnection {
    tx: Producer,
    rx: Consumer,
    os: Box<dyn OsLink>,
    info: ConnectionInfo,
    spin_rx: Spinner,
    spin_tx: Spinner,
    /// A frame accepted by `start_send` or `start_send_sized` that did not fit yet.
    pending: Pending,
    /// The buffer typed sends encode into when the ring is full, reused: no allocation per
    /// message (it keeps the capacity of the largest such message, at most the ring capacity).
    scratch: BytesMut,
    /// The buffer large messages are copied out into; a frame handed out shares it, and
    /// once the application dropped that frame the next message reuses the memory (see
    /// `copy_out`).
    rx_pool: BytesMut,
    /// The receiving side announced parking and has not withdrawn it.
    rx_parked: bool,
    tx_parked: bool,
    /// The stream has ended (None or an error was returned).
    rx_done: bool,
    /// We closed our sending side.
    tx_closed: bool,
    /// The sending side failed for good.
    tx_broken: Option<ErrorKind>,
    /// The listener's connection slot, if any (see `setup::Limits`); dropped last.
    _slot: Option<Box<dyn Send + Sync>>,
}

/// A frame waiting for space in the ring.
#[derive(Debug)]
enum Pending {
    None,
    /// A frame given to `start_send`.
    Frame(Bytes),
    /// The frame in `scratch`, encoded by `start_send_sized` while the ring was full.
    Scratch,
}

/// Typed messages up to this long are encoded on the stack and then copied into the ring
/// (see `send_small`); longer ones are encoded straight into the ring.
const SMALL_SEND: usize = 128;

/// Messages at least this long are copied out into the reused `rx_pool` buffer; smaller ones
/// into an exact-size allocation (cheap at that size, and a small frame the application keeps
/// then never pins a large buffer).
const POOL_MIN: usize = 4096;

/// Copies a record out of the ring into a frame the application owns.
fn copy_out(rec: Record<'_>, pool: &mut BytesMut) -> Bytes {
    let len = rec.len();
    if len < POOL_MIN {
        return Bytes::from(rec.to_vec());
    }
    // `reserve` takes the memory back when every frame split off it earlier was dropped (the
    // steady state of a receive loop), so large messages cost no allocation and no page
    // faults; otherwise it allocates afresh and the old frames keep their memory.
    pool.clear();
    pool.reserve(len);
    if !rec.copy_to(&mut pool.spare_capacity_mut()[..len]) {
        // Unreachable (the slice has exactly `len` bytes), but never set_len over bytes
        // that were not written.
        return Bytes::from(rec.to_vec());
    }
    // SAFETY: `copy_to` returned true, so it initialized all `len` bytes of the spare
    // capacity, which `reserve` made at least `len` long.
    unsafe { pool.set_len(len) };
    pool.split().freeze()
}

impl ShmConnection {
    pub(crate) fn new(
        tx: Producer,
        rx: Consumer,
        os: Box<dyn OsLink>,
        info: ConnectionInfo,
        spin: SpinMode,
    ) -> ShmConnection {
        ShmConnection {
            tx,
            rx,
            os,
            info,
            spin_rx: Spinner::new(spin),
            spin_tx: Spinner::new(spin),
            pending: Pending::None,
            scratch: BytesMut::new(),
            rx_pool: BytesMut::new(),
            rx_parked: false,
            tx_parked: false,
            rx_done: false,
            tx_closed: false,
            tx_broken: None,
            _slot: None,
        }
    }

    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(kind, &self.info.endpoint, detail)
    }

    fn ring_err(&self, e: RingError) -> Error {
        match e {
            RingError::Corrupt(why) => self.err(
                ErrorKind::Protocol,
                format!("the peer corrupted the shared ring: {why}"),
            ),
            RingError::TooLarge { len, max } => self.err(
                ErrorKind::FrameTooLarge,
                format!("the peer sent a message of {len} bytes, over the limit of {max} bytes"),
            ),
            RingError::PeerClosed => self.err(
                ErrorKind::Closed,
                "the peer closed its receiving side; nothing more can be sent",
            ),
        }
    }

    fn lost(&self) -> Error {
        self.err(
            ErrorKind::ConnectionLost,
            "the peer process went away without closing (it may have crashed or been killed)",
        )
    }

    fn wake_producer(&mut self) {
        if self.rx.producer_needs_wake() {
            let _ = self.os.ring_space();
        }
    }

    fn wake_consumer(&mut self) -> Result<()> {
        if self.tx.consumer_needs_wake() {
            self.os
                .ring_data()
                .map_err(|e| Error::io(&self.info.endpoint, "ring the peer's doorbell", e))?;
        }
        Ok(())
    }

    /// One receive attempt without waiting.
    fn pop(&mut self) -> Option<Option<Result<Bytes>>> {
        let pool = &mut self.rx_pool;
        match self.rx.try_pop_with(|rec| copy_out(rec, pool)) {
            Ok(Pop::Message(m)) => {
                self.wake_producer();
                self.spin_rx.done();
                Some(Some(Ok(m)))
            }
            Ok(Pop::Empty) => None,
            Ok(Pop::Closed) => {
                self.spin_rx.abandon();
                self.rx_done = true;
                Some(None)
            }
            Ok(Pop::Abandoned) => {
                self.rx_done = true;
                Some(Some(Err(self.lost())))
            }
            Err(e) => {
                self.rx_done = true;
                Some(Some(Err(self.ring_err(e))))
            }
        }
    }

    /// Tries to move the pending frame into the ring, waiting for space (spin, then park).
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(kind) = self.tx_broken {
            return Poll::Ready(Err(self.err(kind, "the connection failed earlier")));
        }
        if !matches!(self.pending, Pending::None) {
            // A frame that waits must not enter the ring of a dead peer as if delivered.
            if let Err(e) = self.check_peer() {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            let frame: &[u8] = match &self.pending {
                Pending::None => break,
                Pending::Frame(f) => f,
                Pending::Scratch => &self.scratch,
            };
            if self.tx_parked {
                self.tx.cancel_wait();
                self.tx_parked = false;
            }
            match self.tx.try_push(frame) {
                Ok(true) => {
                    self.spin_tx.done();
                    self.clear_pending();
                    return Poll::Ready(self.wake_consumer());
                }
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(self.fail_tx(e))),
            }
            let len = frame.len();
            let tx = &mut self.tx;
            if self
                .spin_tx
                .spin(|| tx.has_space(len).unwrap_or(true) || tx.peer_closed())
            {
                continue;
            }
            self.tx.announce_wait();
            self.tx_parked = true;
            if self.tx.has_space(len).unwrap_or(true) || self.tx.peer_closed() {
                continue;
            }
            match self.os.poll_space(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => {
                    self.tx_broken = Some(ErrorKind::Io);
                    return Poll::Ready(Err(Error::io(
                        &self.info.endpoint,
                        "wait for space in the ring",
                        e,
                    )));
                }
                Poll::Pending => {}
            }
            if self.os.poll_gone_tx(cx).is_ready() {
                if self.tx.has_space(len).unwrap_or(true) || self.tx.peer_closed() {
                    continue;
                }
                self.tx_broken = Some(ErrorKind::ConnectionLost);
                return Poll::Ready(Err(self.lost()));
            }
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn fail_tx(&mut self, e: RingError) -> Error {
        self.spin_tx.abandon();
        let err = self.ring_err(e);
        self.tx_broken = Some(err.kind());
        self.clear_pending();
        err
    }

    fn clear_pending(&mut self) {
        if matches!(self.pending, Pending::Scratch) {
            self.scratch.clear();
        }
        self.pending = Pending::None;
    }

    /// Whether a new frame may be queued now.
    fn check_send(&mut self) -> Result<()> {
        if self.tx_closed {
            return Err(self.err(ErrorKind::Closed, "send after close"));
        }
        if let Some(kind) = self.tx_broken {
            return Err(self.err(kind, "the connection failed earlier"));
        }
        self.check_peer()
    }

    /// Fails the sending side once the OS layer saw the peer process go: `Closed` if the
    /// peer closed its receiving side first (a clean exit), else `ConnectionLost`. One
    /// atomic load while the peer lives, so every send can afford it: without it a sender
    /// would learn of the death only once the ring is full.
    fn check_peer(&mut self) -> Result<()> {
        if !self.os.peer_gone() {
            return Ok(());
        }
        let err = if self.tx.peer_closed() {
            self.ring_err(RingError::PeerClosed)
        } else {
            self.lost()
        };
        self.tx_broken = Some(err.kind());
        self.clear_pending();
        Err(err)
    }

    fn too_large(&self, len: usize) -> Error {
        let max = self.info.capabilities.max_message;
        self.err(
            ErrorKind::FrameTooLarge,
            format!(
                "message of {len} bytes exceeds the limit of {max} bytes (the smallest of the \
                 ring capacity {} bytes less 16, raised with ?capacity=, our max_frame and the \
                 peer's, announced at set-up); nothing was sent and the connection stays \
                 usable",
                self.tx.capacity()
            ),
        )
    }
}

impl Connection for ShmConnection {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Encodes a large message straight into the ring when the record fits now (no copy
    /// besides the encoder's own writes), else into the reused scratch buffer, pushed once
    /// there is room. A small one is encoded on the stack first (see `send_small`).
    fn start_send_sized(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        self.check_send()?;
        debug_assert!(
            matches!(self.pending, Pending::None),
            "start_send without poll_ready"
        );
        if len > self.info.capabilities.max_message {
            return Err(self.too_large(len));
        }
        if len <= SMALL_SEND {
            return self.send_small(len, encode);
        }
        let mut slot = match self.tx.reserve(len) {
            Ok(Some(slot)) => slot,
            Ok(None) => return self.encode_to_scratch(len, encode),
            Err(e) => return Err(self.fail_tx(e)),
        };
        let (first, first_len, second, second_len) = slot.regions();
        let done = {
            // SAFETY: `Slot::regions` guarantees both regions are valid for writes and
            // disjoint while `slot` lives, which outlives `w` (dropped at the end of this
            // block, before `publish`); the consumer does not read them before `publish`, and
            // this producer writes them only through `w`. `FrameWriter` writes by raw copies
            // and forms no reference into the shared memory, so a misbehaving peer writing
            // there at the same time can only garble this message.
            let mut w =
                unsafe { FrameWriter::from_raw_parts(first, first_len, second, second_len) };
            encode(&mut w).and_then(|()| w.finish(&self.info.endpoint))
        };
        // On error `slot` is dropped unpublished: the consumer never sees those bytes.
        done?;
        slot.publish();
        self.wake_consumer()
    }
}

impl ShmConnection {
    /// The sized send of a small message: encode on the stack, then copy into the ring with
    /// [`Slot::fill`](super::ring::Slot::fill)'s write order (the line the receiver spins on
    /// last, in one go), which saves the receiver a cache-line transfer; the extra copy of a
    /// few lines costs less. When the ring is full the frame waits in `scratch`.
    fn send_small(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut buf = [MaybeUninit::<u8>::uninit(); SMALL_SEND];
        let Some(region) = buf.get_mut(..len) else {
            return Err(self.too_large(len)); // unreachable: the caller checked `len`
        };
        let mut w = FrameWriter::new(region);
        encode(&mut w).and_then(|()| w.finish(&self.info.endpoint))?;
        // SAFETY: `finish` succeeded, so the writer received exactly `len` bytes in order
        // from the start of the `len`-byte region it was given: `buf[..len]` is initialized.
        let frame = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
        match self.tx.try_push(frame) {
            Ok(true) => self.wake_consumer(),
            Ok(false) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(frame);
                self.pending = Pending::Scratch;
                Ok(())
            }
            Err(e) => Err(self.fail_tx(e)),
        }
    }

    /// The sized send when the ring is full: encode into `scratch`, to be pushed by
    /// `poll_pending` once there is room.
    fn encode_to_scratch(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        self.scratch.clear();
        self.scratch.reserve(len);
        let mut w = FrameWriter::new(&mut self.scratch.spare_capacity_mut()[..len]);
        encode(&mut w).and_then(|()| w.finish(&self.info.endpoint))?;
        // SAFETY: `finish` succeeded, so the writer received exactly `len` bytes in order
        // from the start of the `len`-byte spare region (`reserve` made it) it was given:
        // the first `len` bytes of `scratch` (empty before) are initialized.
        unsafe { self.scratch.set_len(len) };
        self.pending = Pending::Scratch;
        Ok(())
    }
}

impl Stream for ShmConnection {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.rx_done {
            return Poll::Ready(None);
        }
        loop {
            if this.rx_parked {
                this.rx.cancel_park();
                this.rx_parked = false;
            }
            if let Some(item) = this.pop() {
                return Poll::Ready(item);
            }
            let rx = &mut this.rx;
            if this.spin_rx.spin(|| rx.ready()) {
                continue;
            }
            // Park: announce, re-check, then wait for the doorbell or the peer's death.
            this.rx.announce_park();
            this.rx_parked = true;
            if this.rx.ready() {
                continue;
            }
            match this.os.poll_data(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => {
                    this.rx_done = true;
                    return Poll::Ready(Some(Err(Error::io(
                        &this.info.endpoint,
                        "wait for the peer's doorbell",
                        e,
                    ))));
                }
                Poll::Pending => {}
            }
            if this.os.poll_gone_rx(cx).is_ready() {
                // The peer is gone: deliver what it published (and a clean close if it
                // closed before dying), then report the loss.
                this.rx.cancel_park();
                this.rx_parked = false;
                if let Some(item) = this.pop() {
                    return Poll::Ready(item);
                }
                this.rx_done = true;
                return Poll::Ready(Some(Err(this.lost())));
            }
            return Poll::Pending;
        }
    }
}

impl Sink<Bytes> for ShmConnection {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.tx_closed {
            return Poll::Ready(Err(this.err(ErrorKind::Closed, "send after close")));
        }
        // About to send: a peer known dead fails it now, not when the ring is full.
        if this.tx_broken.is_none() {
            this.check_peer()?;
        }
        this.poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        let this = self.get_mut();
        this.check_send()?;
        if item.len() > this.info.capabilities.max_message {
            return Err(this.too_large(item.len()));
        }
        debug_assert!(
            matches!(this.pending, Pending::None),
            "start_send without poll_ready"
        );
        match this.tx.try_push(&item) {
            Ok(true) => this.wake_consumer(),
            Ok(false) => {
                this.pending = Pending::Frame(item);
                Ok(())
            }
            Err(e) => Err(this.fail_tx(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if !this.tx_closed {
            futures::ready!(this.poll_pending(cx))?;
            this.tx_closed = true;
            if this.tx.close() {
                let _ = this.os.ring_data();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShmConnection {
    fn drop(&mut self) {
        // Best effort clean close: only if nothing is left unsent, so that a lost frame is
        // never reported to the peer as a clean end; otherwise the peer learns at once (after
        // the published messages) that the connection was lost.
        if !self.tx_closed {
            self.tx_closed = true;
            let wake = if matches!(self.pending, Pending::None) && self.tx_broken.is_none() {
                self.tx.close()
            } else {
                self.tx.abandon()
            };
            if wake {
                let _ = self.os.ring_data();
            }
        }
        // Tell the peer we read no more, and wake it if it waits for space.
        if self.rx.close() {
            let _ = self.os.ring_space();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ring::{self, HeapRegion, SharedRegion, Which};
    use std::sync::Arc;

    fn pair(cap: usize) -> (Producer, Consumer) {
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(ring::segment_len(cap)));
        ring::init_segment(&*region, cap);
        let p = Producer::new(region.clone(), cap, Which::A);
        let c = Consumer::new(region, cap, Which::A, ring::max_message(cap));
        (p, c)
    }

    fn take(c: &mut Consumer, pool: &mut BytesMut) -> Bytes {
        match c.try_pop_with(|rec| copy_out(rec, pool)) {
            Ok(Pop::Message(m)) => m,
            other => panic!("expected a message, got {:?}", other.map(|_| ())),
        }
    }

    /// Doorbells that never ring and a peer that never dies: the tests below only poll when
    /// the ring already has what they wait for.
    struct Quiet;
    impl OsLink for Quiet {
        fn poll_data(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_space(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn ring_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn ring_space(&self) -> io::Result<()> {
            Ok(())
        }
        fn poll_gone_rx(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
        fn poll_gone_tx(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
        fn peer_gone(&self) -> bool {
            false
        }
    }

    /// Two connected in-process connections over one segment with rings of `cap` bytes.
    fn conn_pair(cap: usize) -> (ShmConnection, ShmConnection) {
        conn_pair_with(cap, SpinMode::Fixed(std::time::Duration::ZERO))
    }

    /// [`conn_pair`] whose sides spin as `spin` says.
    fn conn_pair_with(cap: usize, spin: SpinMode) -> (ShmConnection, ShmConnection) {
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(ring::segment_len(cap)));
        ring::init_segment(&*region, cap);
        let max = ring::max_message(cap);
        let info = ConnectionInfo {
            endpoint: ductwork_core::Endpoint::parse("shm://sized-test").unwrap(),
            peer: None,
            capabilities: super::super::caps(cap, usize::MAX),
        };
        let a = ShmConnection::new(
            Producer::new(region.clone(), cap, Which::A),
            Consumer::new(region.clone(), cap, Which::B, max),
            Box::new(Quiet),
            info.clone(),
            spin,
        );
        let b = ShmConnection::new(
            Producer::new(region.clone(), cap, Which::B),
            Consumer::new(region, cap, Which::A, max),
            Box::new(Quiet),
            info,
            spin,
        );
        (a, b)
    }

    /// Receives one frame that must already be in the ring.
    fn recv_now(c: &mut ShmConnection) -> Option<Result<Bytes>> {
        c.pop().expect("a frame or an end is ready")
    }

    /// A sized send whose encoder writes `wrote` bytes of `0xaa` for an announced `len`.
    fn send_sized(c: &mut ShmConnection, len: usize, wrote: usize) -> Result<()> {
        c.start_send_sized(len, &mut |w| {
            let _ = w.put(&vec![0xaa; wrote]);
            Ok(())
        })
    }

    #[test]
    fn sized_sends_with_a_wrong_byte_count_publish_nothing() {
        let (mut a, mut b) = conn_pair(4096);
        // Move to the end of the ring so a direct record would wrap.
        send_sized(&mut a, 4072, 4072).unwrap();
        assert_eq!(recv_now(&mut b).unwrap().unwrap().len(), 4072);
        for (len, wrote) in [(100, 99), (100, 0), (100, 101), (0, 1)] {
            let e = send_sized(&mut a, len, wrote).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encode, "{len}/{wrote}: {e}");
            assert!(e.to_string().contains("shm://sized-test"), "{e}");
            assert!(b.pop().is_none(), "{len}/{wrote}: nothing published");
        }
        // A failing encoder: its own error, nothing published.
        let e = a
            .start_send_sized(100, &mut |w| {
                w.put(&[1; 50]);
                Err(Error::new(ErrorKind::Timeout, "x", "encoder gave up"))
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(b.pop().is_none());
        // Over the limit: refused before the encoder runs.
        let mut ran = false;
        let e = a
            .start_send_sized(4089, &mut |_| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        assert!(!ran);
        // The connection stays usable: a wrapped record arrives whole.
        let msg: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        a.start_send_sized(300, &mut |w| {
            w.put(&msg[..7]);
            w.put(&msg[7..]);
            Ok(())
        })
        .unwrap();
        assert_eq!(recv_now(&mut b).unwrap().unwrap()[..], msg[..]);
    }

    /// Fills a 4 KiB ring, then checks that a sized send of `len` bytes with a wrong byte
    /// count is refused and leaves nothing pending, that a right one waits in scratch, and
    /// that a flush after the receiver made room publishes it whole.
    fn full_ring_send_waits_in_scratch(len: usize) -> (ShmConnection, ShmConnection) {
        let (mut a, mut b) = conn_pair(4096);
        send_sized(&mut a, 4000, 4000).unwrap();
        let e = send_sized(&mut a, len, len - 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        assert!(matches!(a.pending, Pending::None));
        send_sized(&mut a, len, len).unwrap();
        assert!(matches!(a.pending, Pending::Scratch));
        assert_eq!(recv_now(&mut b).unwrap().unwrap().len(), 4000);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut a).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(matches!(a.pending, Pending::None));
        let got = recv_now(&mut b).unwrap().unwrap();
        assert!(got.len() == len && got.iter().all(|&x| x == 0xaa));
        (a, b)
    }

    #[test]
    fn sized_sends_to_a_full_ring_wait_in_scratch() {
        full_ring_send_waits_in_scratch(500);
    }

    #[test]
    fn small_sized_sends_to_a_full_ring_wait_in_scratch() {
        // Small frames take the stack path.
        let (mut a, mut b) = full_ring_send_waits_in_scratch(SMALL_SEND);
        // Small frames at every offset in a cache line arrive whole.
        for len in 0..=80 {
            let msg: Vec<u8> = (0..len).map(|i| (i * 3 + len) as u8).collect();
            a.start_send_sized(len, &mut |w| {
                w.put(&msg);
                Ok(())
            })
            .unwrap();
            assert_eq!(recv_now(&mut b).unwrap().unwrap()[..], msg[..], "len {len}");
        }
        assert!(b.pop().is_none());
    }

    #[test]
    fn typed_messages_round_trip_through_the_ring() {
        use ductwork_core::Channel;
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Msg {
            seq: u32,
            name: String,
            body: Vec<u8>,
        }
        let (a, b) = conn_pair(4096);
        let mut tx: Channel<Msg> = Channel::new(Box::new(a));
        let mut rx: Channel<Msg> = Channel::new(Box::new(b));
        let make = |seq: u32| Msg {
            seq,
            name: format!("m{seq}"),
            body: (0..(seq * 37 % 1500)).map(|i| (i ^ seq) as u8).collect(),
        };
        futures::executor::block_on(async {
            // Sizes that wrap the ring at every offset pattern, one message in flight.
            for seq in 0..300 {
                tx.send(&make(seq)).await.unwrap();
                assert_eq!(rx.recv().await.unwrap(), Some(make(seq)));
            }
            // Several in flight: the ones that do not fit wait in scratch until a flush.
            let big = |seq: u32| Msg {
                seq,
                name: String::new(),
                body: vec![seq as u8; 1500],
            };
            tx.feed(&big(1)).await.unwrap();
            tx.feed(&big(2)).await.unwrap();
            tx.feed(&big(3)).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(big(1)));
            tx.flush().await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(big(2)));
            assert_eq!(rx.recv().await.unwrap(), Some(big(3)));
            // Over the limit: FrameTooLarge naming the endpoint, the channel stays usable.
            let e = tx
                .send(&Msg {
                    seq: 0,
                    name: String::new(),
                    body: vec![0; 4096],
                })
                .await;
            let e = e.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
            assert!(e.to_string().contains("shm://sized-test"), "{e}");
            tx.send(&make(7)).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(make(7)));
            tx.close().await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), None);
        });
    }

    #[test]
    fn large_frames_reuse_the_pool_once_dropped() {
        let (mut p, mut c) = pair(1 << 16);
        let mut pool = BytesMut::new();
        let a: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        assert!(p.try_push(&a).unwrap());
        let first = take(&mut c, &mut pool);
        assert_eq!(first[..], a[..]);
        let addr = first.as_ptr();
        drop(first);
        let b = vec![0x5a; 20_000];
        assert!(p.try_push(&b).unwrap());
        let second = take(&mut c, &mut pool);
        assert_eq!(second[..], b[..]);
        assert_eq!(
            second.as_ptr(),
            addr,
            "the dropped frame's memory is reused"
        );
    }

    #[test]
    fn a_kept_frame_is_never_overwritten() {
        let (mut p, mut c) = pair(1 << 16);
        let mut pool = BytesMut::new();
        let mut kept = Vec::new();
        for round in 0..6u8 {
            // Sizes around the pooling threshold, large ones bigger than what is left.
            let len = [POOL_MIN, 5000, 100, 30_000, POOL_MIN - 1, 9000][round as usize];
            assert!(p.try_push(&vec![round; len]).unwrap());
            kept.push((round, len, take(&mut c, &mut pool)));
        }
        for (round, len, frame) in kept {
            assert_eq!(frame.len(), len);
            assert!(frame.iter().all(|&b| b == round), "frame {round} intact");
        }
    }

    #[test]
    fn waits_for_data_and_for_space_begin_and_end_with_the_event() {
        let (mut a, mut b) = conn_pair_with(4096, SpinMode::Learned);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // An empty ring: a wait begins (nothing learned yet, so it parks at once).
        assert!(Pin::new(&mut b).poll_next(&mut cx).is_pending());
        assert!(b.spin_rx.waiting());
        assert!(Pin::new(&mut b).poll_next(&mut cx).is_pending());
        assert!(b.spin_rx.waiting(), "a second look continues the same wait");
        // The message ends it; a message already there starts none.
        send_sized(&mut a, 3000, 3000).unwrap();
        assert!(matches!(
            Pin::new(&mut b).poll_next(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(!b.spin_rx.waiting());
        // A full ring: the sender's wait for space begins, and ends once the frame went in.
        send_sized(&mut a, 3000, 3000).unwrap();
        send_sized(&mut a, 3000, 3000).unwrap();
        assert!(matches!(a.pending, Pending::Scratch));
        assert!(!a.spin_tx.waiting());
        assert!(Pin::new(&mut a).poll_flush(&mut cx).is_pending());
        assert!(a.spin_tx.waiting());
        assert_eq!(recv_now(&mut b).unwrap().unwrap().len(), 3000);
        assert!(matches!(
            Pin::new(&mut a).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(!a.spin_tx.waiting());
        assert!(!b.spin_rx.waiting());
    }
}
