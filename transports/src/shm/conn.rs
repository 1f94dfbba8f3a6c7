//! The portable shared-memory connection: two rings, a spin-then-park receive loop, and
//! backpressure, over doorbells and a liveness signal the OS layer provides.

use super::ring::{Consumer, Pop, Producer, RingError};
use bytes::Bytes;
use ductwork_core::{Connection, ConnectionInfo, Error, ErrorKind, Result};
use futures::{Sink, Stream};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

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
}

/// Bounded, adaptive busy-waiting before parking.
///
/// Spinning pays off only when the peer runs on another core and answers within the budget.
/// A score tracks recent spins: a spin that saw the awaited event adds 4 (up to 16), one that
/// ran out of budget takes 1 away. At zero (spinning failed at least four times as often as
/// it worked, recently) we park at once, and probe with one full spin every 16th time. So a
/// ping-pong on two free cores spins, while two processes sharing one core (where the peer
/// cannot run while we spin) or a mostly idle connection soon stop burning CPU. The spin
/// itself is bounded by the budget (the `spin` option): it never holds a tokio worker longer.
pub(crate) struct Spinner {
    max: Duration,
    score: u32,
    skipped: u32,
}

impl Spinner {
    const SCORE_MAX: u32 = 16;

    pub(crate) fn new(max: Duration) -> Spinner {
        Spinner {
            max,
            score: Self::SCORE_MAX,
            skipped: 0,
        }
    }

    /// Spins until `ready()` or the budget runs out; returns whether `ready()` became true.
    pub(crate) fn spin(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        if self.max.is_zero() {
            return false;
        }
        if self.score == 0 {
            self.skipped = self.skipped.wrapping_add(1);
            if self.skipped % 16 != 0 {
                // One cheap chance for a peer that shares our core: let it run, look again.
                std::thread::yield_now();
                return ready();
            }
        }
        // The clock is read only after a first round, so that the common short wait pays
        // for no clock read at all.
        let mut start: Option<Instant> = None;
        loop {
            for _ in 0..64 {
                if ready() {
                    self.score = (self.score + 4).min(Self::SCORE_MAX);
                    return true;
                }
                std::hint::spin_loop();
            }
            match start {
                None => start = Some(Instant::now()),
                Some(t) if t.elapsed() >= self.max => break,
                Some(_) => {}
            }
        }
        self.score = self.score.saturating_sub(1);
        false
    }
}

/// One shared-memory connection. See the module docs of [`super`].
pub(crate) struct ShmConnection {
    tx: Producer,
    rx: Consumer,
    os: Box<dyn OsLink>,
    info: ConnectionInfo,
    spin_rx: Spinner,
    spin_tx: Spinner,
    /// A frame accepted by `start_send` that did not fit yet.
    pending: Option<Bytes>,
    /// The receiving side announced parking and has not withdrawn it.
    rx_parked: bool,
    tx_parked: bool,
    /// The stream has ended (None or an error was returned).
    rx_done: bool,
    /// We closed our sending side.
    tx_closed: bool,
    /// The sending side failed for good.
    tx_broken: Option<ErrorKind>,
}

impl ShmConnection {
    pub(crate) fn new(
        tx: Producer,
        rx: Consumer,
        os: Box<dyn OsLink>,
        info: ConnectionInfo,
        spin: Duration,
    ) -> ShmConnection {
        ShmConnection {
            tx,
            rx,
            os,
            info,
            spin_rx: Spinner::new(spin),
            spin_tx: Spinner::new(spin),
            pending: None,
            rx_parked: false,
            tx_parked: false,
            rx_done: false,
            tx_closed: false,
            tx_broken: None,
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
        match self.rx.try_pop() {
            Ok(Pop::Message(m)) => {
                self.wake_producer();
                Some(Some(Ok(Bytes::from(m))))
            }
            Ok(Pop::Empty) => None,
            Ok(Pop::Closed) => {
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
        while let Some(frame) = self.pending.as_ref() {
            if self.tx_parked {
                self.tx.cancel_wait();
                self.tx_parked = false;
            }
            match self.tx.try_push(frame) {
                Ok(true) => {
                    self.pending = None;
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
        let err = self.ring_err(e);
        self.tx_broken = Some(err.kind());
        self.pending = None;
        err
    }
}

impl Connection for ShmConnection {
    fn info(&self) -> &ConnectionInfo {
        &self.info
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
        this.poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        let this = self.get_mut();
        if this.tx_closed {
            return Err(this.err(ErrorKind::Closed, "send after close"));
        }
        if let Some(kind) = this.tx_broken {
            return Err(this.err(kind, "the connection failed earlier"));
        }
        let max = this.info.capabilities.max_message;
        if item.len() > max {
            return Err(this.err(
                ErrorKind::FrameTooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {max} bytes (ring capacity {} \
                     bytes; raise it with ?capacity=)",
                    item.len(),
                    this.tx.max_message() + super::ring::RECORD_HEADER
                ),
            ));
        }
        debug_assert!(this.pending.is_none(), "start_send without poll_ready");
        match this.tx.try_push(&item) {
            Ok(true) => this.wake_consumer(),
            Ok(false) => {
                this.pending = Some(item);
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
            let wake = if self.pending.is_none() && self.tx_broken.is_none() {
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
