//! The portable shared-memory connection: two rings, a spin-then-park receive loop, and
//! backpressure, over doorbells and a liveness signal the OS layer provides.

#[cfg(any(target_os = "linux", windows))]
use super::setup::Slot;
use super::{
    caps,
    ring::{
        Consumer, Peeked, Pop, Producer, Record, RingError, SharedRegion, Slot as RingSlot, Which,
    },
    spin::{SpinMode, Spinner},
    Config,
};
use bytes::{Bytes, BytesMut};
use ductwork_core::{Connection, ConnectionInfo, Endpoint, Error, ErrorKind, FrameWriter, Result};
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
) -> ShmConnection {
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
    c
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

/// One shared-memory connection (see the module docs of [`super`]): a [`Connection`] like
/// any other, plus the zero-copy API of [`loan`](Self::loan) and
/// [`recv_in_place`](Self::recv_in_place). Get one from
/// [`Shm::connect_zero_copy`](super::Shm::connect_zero_copy) or
/// [`ShmListener::accept`](super::ShmListener::accept).
pub struct ShmConnection {
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
    /// The receiving side saw the peer process go. The OS layer's `peer_gone` flag is set
    /// by a watcher that may not have run yet, and a send after a `recv` that reported the
    /// loss must not look like it went through.
    rx_saw_gone: bool,
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
            rx_saw_gone: false,
            tx_closed: false,
            tx_broken: None,
            _slot: None,
        }
    }

    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(kind, &self.info.endpoint, detail)
    }

    fn ring_err(&self, e: RingError) -> Error {
        ring_error(&self.info.endpoint, e)
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
        wake_parked_consumer(&mut self.tx, &*self.os, &self.info.endpoint)
    }

    /// Gives a received message's room back to the sender (and wakes it if it waits).
    fn release(&mut self, at: Peeked) {
        self.rx.release(at);
        self.wake_producer();
    }

    /// One receive attempt without waiting: a copied-out frame.
    fn pop(&mut self) -> Option<Option<Result<Bytes>>> {
        self.next_with(|this, at| {
            let frame = copy_out(this.rx.record(&at), &mut this.rx_pool);
            this.release(at);
            frame
        })
    }

    /// One receive attempt without waiting: a message left in place.
    fn peek(&mut self) -> Option<Option<Result<Peeked>>> {
        self.next_with(|_, at| at)
    }

    /// One receive attempt without waiting: `found` takes a published message (and
    /// releases it, or leaves that to its caller). `None`: nothing yet; `Some(None)`: the
    /// clean end; `Some(Some(Err))`: the connection failed.
    #[inline]
    fn next_with<T>(
        &mut self,
        found: impl FnOnce(&mut Self, Peeked) -> T,
    ) -> Option<Option<Result<T>>> {
        match self.rx.peek() {
            Ok(Pop::Message(at)) => {
                self.spin_rx.done();
                Some(Some(Ok(found(self, at))))
            }
            Ok(Pop::Empty) => {
                // A skip record may have been consumed: its room is free again for a
                // producer that waits for space.
                self.wake_producer();
                None
            }
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
            let len = match &self.pending {
                Pending::None => break,
                Pending::Frame(f) => f.len(),
                Pending::Scratch => self.scratch.len(),
            };
            futures::ready!(self.poll_room(cx, len))?;
            let frame: &[u8] = match &self.pending {
                Pending::None => break,
                Pending::Frame(f) => f,
                Pending::Scratch => &self.scratch,
            };
            match self.tx.try_push(frame) {
                Ok(true) => {
                    self.spin_tx.done();
                    self.clear_pending();
                    return Poll::Ready(self.wake_consumer());
                }
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(self.fail_tx(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits (spin, then park) until a message of `len` bytes fits in the ring, or until the
    /// consumer closed (the push that follows reports it), or the ring is found corrupt (so
    /// does the push).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<Result<()>> {
        loop {
            if self.tx_parked {
                self.tx.cancel_wait();
                self.tx_parked = false;
            }
            let tx = &mut self.tx;
            if tx.has_space(len).unwrap_or(true) || tx.peer_closed() {
                return Poll::Ready(Ok(()));
            }
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
        if !self.rx_saw_gone && !self.os.peer_gone() {
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
        self.get_mut().poll_rx(cx, Self::pop)
    }
}

impl ShmConnection {
    /// Waits (spin, then park) until `attempt` finds something to report: a message, the
    /// clean end, an error. `attempt` is [`pop`](Self::pop) or [`peek`](Self::peek).
    fn poll_rx<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&mut Self) -> Option<Option<Result<T>>>,
    ) -> Poll<Option<Result<T>>> {
        let this = self;
        if this.rx_done {
            return Poll::Ready(None);
        }
        loop {
            if this.rx_parked {
                this.rx.cancel_park();
                this.rx_parked = false;
            }
            if let Some(item) = attempt(this) {
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
            // A skip record followed while looking freed room: a producer waiting for it
            // must hear of it before we sleep (our last store of `read`, then this load).
            this.wake_producer();
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
                this.rx_saw_gone = true;
                if let Some(item) = attempt(this) {
                    return Poll::Ready(item);
                }
                this.rx_done = true;
                return Poll::Ready(Some(Err(this.lost())));
            }
            return Poll::Pending;
        }
    }
}

/// The zero-copy API. A [`Loan`] is room for one message straight in the ring: the sender
/// writes the message there and [`commit`](Loan::commit)s it (no copy through a buffer of
/// its own). An [`InPlace`] is a received message left in the ring: the receiver reads it
/// there and the room goes back to the sender when the guard is dropped.
///
/// # What a misbehaving peer can do
/// The peer process can write any byte of the shared mapping at any time. With the copying
/// API (the [`Connection`], and [`InPlace::copy_to`]/[`InPlace::to_vec`]) and with a
/// [`Loan`]'s safe [`writer`](Loan::writer), every access to shared memory is a raw copy or an
/// atomic: a peer that scribbles on a message can garble that message (which the decoder
/// then refuses or delivers garbled) or make the connection fail with `Protocol`; it cannot
/// cause undefined behaviour, a panic, an out-of-bounds access or an unbounded wait. The
/// in-place slices ([`InPlace::as_slices`], [`Loan::as_mut_slices`]) are references into the
/// shared memory: a peer writing those bytes while the slices live is a data race,
/// undefined behaviour in this process. Those accessors are therefore `unsafe`, and their
/// contract is that the peer is trusted not to write a message between its publication and
/// its release (an honest ductwork peer never does).
impl ShmConnection {
    /// Loans room for a message of `len` bytes in the ring, waiting (spin, then park) while
    /// the ring is full. Write the message into the loan, then [`commit`](Loan::commit) it;
    /// a loan dropped without commit sends nothing. A frame still waiting from the
    /// [`Connection`] API goes first.
    ///
    /// Errors as for a send: `FrameTooLarge` over `max_message` (nothing happens, the
    /// connection stays usable), `Closed` after `close` or once the peer closed its
    /// receiving side, `ConnectionLost` once the peer process is gone.
    pub async fn loan(&mut self, len: usize) -> Result<Loan<'_>> {
        std::future::poll_fn(|cx| {
            futures::ready!(self.poll_pending(cx))?;
            self.check_send()?;
            if len > self.info.capabilities.max_message {
                return Poll::Ready(Err(self.too_large(len)));
            }
            self.poll_room(cx, len)
        })
        .await?;
        self.spin_tx.done();
        self.reserve_loan(len)
    }

    /// Claims the room [`loan`](Self::loan) waited for (or finds the ring full: `None`).
    fn reserve_loan(&mut self, len: usize) -> Result<Loan<'_>> {
        let ShmConnection {
            tx,
            os,
            info,
            tx_broken,
            ..
        } = self;
        match tx.reserve(len) {
            Ok(Some(slot)) => Ok(Loan {
                slot,
                os: &**os,
                endpoint: &info.endpoint,
            }),
            // Unreachable after `poll_room` (only the consumer changes the ring meanwhile,
            // and it only frees room), but never a panic.
            Ok(None) => Err(Error::new(
                ErrorKind::Io,
                &info.endpoint,
                "the ring had no room for the loan after waiting for it",
            )),
            Err(e) => {
                let err = ring_error(&info.endpoint, e);
                *tx_broken = Some(err.kind());
                Err(err)
            }
        }
    }

    /// Receives the next message without copying it out of the ring: read it through the
    /// guard, whose drop gives its room back to the sender. `None` once the peer closed and
    /// everything it sent was received. Errors as for the [`Connection`]'s `recv`. Until the
    /// guard is dropped the sender cannot reuse that room, so keep it briefly.
    pub async fn recv_in_place(&mut self) -> Result<Option<InPlace<'_>>> {
        match std::future::poll_fn(|cx| self.poll_rx(cx, Self::peek)).await {
            Some(Ok(at)) => Ok(Some(InPlace {
                conn: self,
                at: Some(at),
            })),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// Room for one message in the ring, from [`ShmConnection::loan`]. Nothing is sent until
/// [`commit`](Self::commit); dropping the loan sends nothing.
pub struct Loan<'a> {
    slot: RingSlot<'a>,
    os: &'a dyn OsLink,
    endpoint: &'a Endpoint,
}

impl Loan<'_> {
    /// The message length the loan was made for.
    pub fn len(&self) -> usize {
        self.slot.len()
    }

    /// Whether the loan is for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A writer straight into the loaned room (raw copies, so safe whatever the peer does).
    /// Bytes not written before [`commit`](Self::commit) carry what the ring held there
    /// before: earlier messages of this connection, or whatever the peer wrote.
    pub fn writer(&mut self) -> FrameWriter<'_> {
        let (first, first_len, second, second_len) = self.slot.regions();
        // SAFETY: `Slot::regions` guarantees both regions are valid for writes and disjoint
        // while the slot lives; the writer borrows `self` mutably, so it ends first, and no
        // other writer exists meanwhile. The consumer reads none of it before the commit.
        // `FrameWriter` writes by raw copies and forms no reference into the shared memory,
        // so a misbehaving peer writing there at the same time can only garble the message.
        unsafe { FrameWriter::from_raw_parts(first, first_len, second, second_len) }
    }

    /// The loaned room as one or two mutable slices (two when the record wraps at the end of
    /// the ring), to write or encode into in place.
    ///
    /// # Safety
    /// The slices point into memory the peer process can write. The caller promises that
    /// the peer does not read or write these bytes while the slices live. An honest ductwork
    /// peer never touches unpublished room; a misbehaving one (a bug, a hostile process)
    /// makes it a data race, which is undefined behaviour in this process.
    pub unsafe fn as_mut_slices(&mut self) -> (&mut [u8], &mut [u8]) {
        let (first, first_len, second, second_len) = self.slot.regions();
        // SAFETY: as in `writer`, both regions are valid, disjoint and not read by the
        // consumer before the commit while `self` is mutably borrowed; the peer's side is
        // the caller's promise.
        unsafe {
            (
                std::slice::from_raw_parts_mut(first, first_len),
                std::slice::from_raw_parts_mut(second, second_len),
            )
        }
    }

    /// Sends the message: publishes it in the ring and wakes the receiver if it sleeps.
    pub fn commit(self) -> Result<()> {
        wake_parked_consumer(self.slot.publish(), self.os, self.endpoint)
    }
}

/// A received message left in the ring, from [`ShmConnection::recv_in_place`]. Its room goes
/// back to the sender when the guard is dropped.
pub struct InPlace<'a> {
    conn: &'a mut ShmConnection,
    /// Always `Some` until drop.
    at: Option<Peeked>,
}

impl InPlace<'_> {
    fn record(&self) -> Option<Record<'_>> {
        self.at.as_ref().map(|at| self.conn.rx.record(at))
    }

    /// The message length.
    pub fn len(&self) -> usize {
        self.at.as_ref().map_or(0, Peeked::len)
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the message into `dst`, which must be exactly [`len`](Self::len) bytes long
    /// (else nothing is copied and `false` is returned). Safe whatever the peer does: a raw
    /// copy, so a peer writing the bytes meanwhile can only garble the copy.
    pub fn copy_to(&self, dst: &mut [u8]) -> bool {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `copy_to` only
        // writes initialized bytes through the view, so `dst` stays initialized.
        let dst = unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.record().is_some_and(|r| r.copy_to(dst))
    }

    /// Copies the message into a new Vec (safe whatever the peer does, as
    /// [`copy_to`](Self::copy_to)).
    pub fn to_vec(&self) -> Vec<u8> {
        self.record().map(|r| r.to_vec()).unwrap_or_default()
    }

    /// The message in place, as one or two slices (two when the record wraps at the end of
    /// the ring): no copy.
    ///
    /// # Safety
    /// The slices point into memory the peer process can write. The caller promises that
    /// the peer does not write these bytes while the slices live: an honest ductwork peer
    /// never writes a message before it was released (this guard dropped); a misbehaving one
    /// (a bug, a hostile process) makes it a data race, which is undefined behaviour in this
    /// process. Without that trust, use [`copy_to`](Self::copy_to).
    pub unsafe fn as_slices(&self) -> (&[u8], &[u8]) {
        match self.record() {
            // SAFETY: the record is published and unreleased while `self` lives (the
            // slices borrow it); the peer's side is the caller's promise, passed on.
            Some(r) => unsafe { r.into_slices() },
            None => (&[], &[]),
        }
    }

    /// Sends this message back to the peer on the same connection, copied ring to ring (no
    /// buffer in between; safe whatever the peer does), if the ring has room right now: an
    /// echo, or a relay. `false`: no room (nothing sent); copy the message out, drop this
    /// guard and use [`ShmConnection::loan`], which waits. Errors as for
    /// [`ShmConnection::loan`].
    pub fn try_send_back(&mut self) -> Result<bool> {
        let len = self.len();
        let conn = &mut *self.conn;
        if !matches!(conn.pending, Pending::None) {
            return Ok(false);
        }
        conn.check_send()?;
        if len > conn.info.capabilities.max_message {
            return Err(conn.too_large(len));
        }
        match conn.tx.has_space(len) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => return Err(conn.fail_tx(e)),
        }
        let (Some(at), Ok(Some(mut slot))) = (self.at.as_ref(), conn.tx.reserve(len)) else {
            // `has_space` said yes and only the consumer changed the ring since (freeing
            // room), so a refusal here is a peer that closed meanwhile: the next send says so.
            return Ok(false);
        };
        conn.rx.record(at).copy_to_slot(&mut slot);
        wake_parked_consumer(slot.publish(), &*conn.os, &conn.info.endpoint)?;
        Ok(true)
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        if let Some(at) = self.at.take() {
            self.conn.release(at);
        }
    }
}

/// After publishing through `tx`: rings the consumer's doorbell if it announced parking.
fn wake_parked_consumer(tx: &mut Producer, os: &dyn OsLink, endpoint: &Endpoint) -> Result<()> {
    if tx.consumer_needs_wake() {
        os.ring_data()
            .map_err(|e| Error::io(endpoint, "ring the peer's doorbell", e))?;
    }
    Ok(())
}

/// The error a ring problem means for the connection at `endpoint`.
fn ring_error(endpoint: &Endpoint, e: RingError) -> Error {
    match e {
        RingError::Corrupt(why) => Error::new(
            ErrorKind::Protocol,
            endpoint,
            format!("the peer corrupted the shared ring: {why}"),
        ),
        RingError::TooLarge { len, max } => Error::new(
            ErrorKind::FrameTooLarge,
            endpoint,
            format!("the peer sent a message of {len} bytes, over the limit of {max} bytes"),
        ),
        RingError::PeerClosed => Error::new(
            ErrorKind::Closed,
            endpoint,
            "the peer closed its receiving side; nothing more can be sent",
        ),
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
            // (Two: after a skip record back to the ring's start, which these sizes make
            // likely, the ring holds less until the receiver has followed it.)
            tx.feed(&big(1)).await.unwrap();
            tx.feed(&big(2)).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(big(1)));
            tx.flush().await.unwrap();
            tx.feed(&big(3)).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(big(2)));
            tx.flush().await.unwrap();
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
