//! OS-specific parts of the bench: CPU pinning and the shared-memory baselines.
//!
//! - [`pin_current`]: `sched_setaffinity` on Linux; elsewhere pinning is reported unsupported
//!   and the bench runs unpinned.
//! - `raw-cacheline`: two processes share one memfd mapping; the parent stores a sequence
//!   number in one atomic, the peer busy-polls it and answers in a second atomic on the same
//!   cache line. The 64-byte payload is copied through two further lines of the mapping.
//! - `raw-eventfd`: the same payload exchange, but each side sleeps in `poll` on an eventfd
//!   the other side signals: the floor for any shared-memory transport that parks its reader.
//! - `raw-shmcopy`: one-way bulk throughput through a shared ring in a memfd mapping (the shm
//!   transport's default 4 MiB, or four messages if more): the parent copies each message in,
//!   the peer copies it out into its own buffer and checks it as every throughput row does.
//!   Busy-polled indices, no framing, no wake-ups: the least a shared-memory transport that
//!   copies in and out must do, on this machine's caches and cores.
//!
//! All three baselines pass their fds to the peer by inheritance (created without `CLOEXEC`, their
//! numbers given in the peer's spec). Every wait has a deadline, so a dead peer is an error,
//! never a hang. Linux only; other platforms skip them with a note.

#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(not(target_os = "linux"))]
use {
    super::types::{Rtt, Throughput, Timing},
    std::time::Instant,
};

/// Why the shared-memory baselines are missing elsewhere.
#[cfg(not(target_os = "linux"))]
const LINUX_ONLY: &str = "shared-memory baselines are Linux only";

/// The CPUs this process may run on, in order.
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Whether [`pin_current`] works on this platform.
#[cfg(not(target_os = "linux"))]
pub const CAN_PIN: bool = false;

/// Pins the calling thread (and threads it starts later) to `cpu`.
#[cfg(not(target_os = "linux"))]
pub fn pin_current(_cpu: usize) -> Result<(), String> {
    Err("CPU pinning is only implemented on Linux".into())
}

/// Whether this platform has the shared-memory baselines.
#[cfg(not(target_os = "linux"))]
pub const HAS_SHM_BASELINES: bool = false;

/// Unavailable here.
#[cfg(not(target_os = "linux"))]
pub fn shm_baseline(_spin: bool, _cpu: Option<usize>, _t: Timing) -> Result<Rtt, String> {
    Err(LINUX_ONLY.into())
}

/// Unavailable here.
#[cfg(not(target_os = "linux"))]
pub fn shmcopy_baseline(
    _size: usize,
    _cpu: Option<usize>,
    _t: Timing,
) -> Result<Throughput, String> {
    Err(LINUX_ONLY.into())
}

/// Unavailable here.
#[cfg(not(target_os = "linux"))]
pub fn cacheline_peer(_mem: i32, _deadline: Instant) -> Result<(), String> {
    Err(LINUX_ONLY.into())
}

/// Unavailable here.
#[cfg(not(target_os = "linux"))]
pub fn eventfd_peer(_mem: i32, _ping: i32, _pong: i32, _deadline: Instant) -> Result<(), String> {
    Err(LINUX_ONLY.into())
}

/// Unavailable here.
#[cfg(not(target_os = "linux"))]
pub fn shmcopy_peer(_mem: i32, _size: usize, _deadline: Instant) -> Result<(), String> {
    Err(LINUX_ONLY.into())
}

#[cfg(target_os = "linux")]
mod linux {
    use super::super::{
        proto::{command, Job, PeerSpec},
        types::{pattern, payload_ok, RoundTrips, Rtt, Throughput, Timing},
    };
    use rustix::{
        event::{eventfd, poll, EventfdFlags, PollFd, PollFlags},
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        fs::{ftruncate, memfd_create, MemfdFlags},
        mm::{mmap, munmap, MapFlags, ProtFlags},
        thread::{sched_getaffinity, sched_setaffinity, CpuSet},
    };
    use std::{
        process::{Child, Stdio},
        sync::atomic::{AtomicU64, Ordering},
        time::{Duration, Instant},
    };

    /// Whether this platform has the shared-memory baselines.
    pub const HAS_SHM_BASELINES: bool = true;

    /// Whether [`pin_current`] works on this platform.
    pub const CAN_PIN: bool = true;

    const MAP_LEN: usize = 4096;
    const PING: usize = 0;
    const PONG: usize = 8;
    const REQ: usize = 64;
    const REPLY: usize = 128;
    /// The baselines' payload size.
    pub const SHM_PAYLOAD: usize = 64;
    /// How long one round trip may take before the peer is declared dead.
    const STALL: Duration = Duration::from_secs(2);

    /// The CPUs this process may run on, in order.
    pub fn allowed_cpus() -> Vec<usize> {
        match sched_getaffinity(None) {
            Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
            Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
        }
    }

    /// Pins the calling thread (and threads it starts later) to `cpu`.
    pub fn pin_current(cpu: usize) -> Result<(), String> {
        if cpu >= CpuSet::MAX_CPU {
            return Err(format!("CPU {cpu} is out of range"));
        }
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set).map_err(|e| e.to_string())
    }

    /// A shared read-write mapping of a memfd, unmapped on drop.
    struct Shared {
        ptr: *mut u8,
        len: usize,
    }

    impl Shared {
        /// Maps the first `len` bytes of `fd`, which must be at least that long (checked:
        /// touching a page past the end of a memfd would raise SIGBUS).
        fn map(fd: impl AsFd, len: usize) -> Result<Shared, String> {
            let have = rustix::fs::fstat(&fd)
                .map_err(|e| format!("fstat: {e}"))?
                .st_size;
            if u64::try_from(have).map_or(true, |have| have < len as u64) {
                return Err(format!(
                    "the shared memfd holds {have} bytes, {len} are needed"
                ));
            }
            // SAFETY: a fresh shared mapping of `len` bytes of a memfd at least that long
            // (checked above); the kernel chooses the address, so no existing memory is
            // affected.
            let ptr = unsafe {
                mmap(
                    std::ptr::null_mut(),
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    fd,
                    0,
                )
            }
            .map_err(|e| format!("mmap: {e}"))?;
            Ok(Shared {
                ptr: ptr.cast(),
                len,
            })
        }

        fn atomic(&self, off: usize) -> &AtomicU64 {
            assert!(
                off + 8 <= self.len && off % 8 == 0,
                "atomic outside the mapping"
            );
            // SAFETY: `off` is 8-aligned inside the page-aligned mapping, which lives as long
            // as `self`; both processes access these words only atomically.
            unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
        }

        /// Copies `SHM_PAYLOAD` bytes from `from` to `to` within the mapping.
        ///
        /// Callers keep the protocol: a region is written only by the side whose turn it is
        /// (after an Acquire load of the other side's counter) and published with a Release
        /// store, so the two processes never access it at the same time.
        fn copy(&self, from: usize, to: usize) {
            // SAFETY: both ranges lie inside the mapping and do not overlap (REQ and REPLY are
            // 64 bytes apart); see the protocol note above for exclusivity.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(from), self.ptr.add(to), SHM_PAYLOAD)
            }
        }

        /// Copies `data` into the mapping at `to` (any length; range checked). Exclusivity as
        /// for `copy`.
        fn copy_in(&self, to: usize, data: &[u8]) {
            assert!(
                to <= self.len && data.len() <= self.len - to,
                "copy outside the mapping"
            );
            // SAFETY: the range lies inside the mapping (asserted); exclusivity as for `copy`.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(to), data.len()) }
        }

        /// Copies `out.len()` bytes of the mapping at `from` into `out` (range checked).
        /// Exclusivity as for `copy`.
        fn copy_out(&self, from: usize, out: &mut [u8]) {
            assert!(
                from <= self.len && out.len() <= self.len - from,
                "copy outside the mapping"
            );
            // SAFETY: the range lies inside the mapping (asserted); exclusivity as for `copy`.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(from), out.as_mut_ptr(), out.len())
            }
        }
    }

    impl Drop for Shared {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `map`; no reference into it outlives
            // `self` (`atomic` borrows from `self`).
            let _ = unsafe { munmap(self.ptr.cast(), self.len) };
        }
    }

    fn new_memfd(len: usize) -> Result<OwnedFd, String> {
        // No CLOEXEC: the peer inherits it.
        let fd = memfd_create("ductwork-bench", MemfdFlags::empty())
            .map_err(|e| format!("memfd_create: {e}"))?;
        ftruncate(&fd, len as u64).map_err(|e| format!("ftruncate: {e}"))?;
        Ok(fd)
    }

    /// Takes ownership of an fd number the parent left open for us.
    fn inherited(fd: i32) -> Result<OwnedFd, String> {
        if fd < 3 {
            return Err(format!("fd {fd} is not an inherited descriptor"));
        }
        // Check it is open before taking ownership.
        rustix::io::fcntl_getfd(
            // SAFETY: borrowing a number only for the validity check below.
            unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) },
        )
        .map_err(|e| format!("inherited fd {fd}: {e}"))?;
        // SAFETY: the parent created this descriptor without CLOEXEC for this peer and passed
        // its number in the spec; nothing else in this process owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn(
        job: Job,
        size: usize,
        cpu: Option<usize>,
        limit: Duration,
    ) -> Result<KillOnDrop, String> {
        let spec = PeerSpec {
            job,
            size,
            cpu,
            deadline_ms: limit.as_millis() as u64,
        };
        let child = command(&spec)?
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the peer process: {e}"))?;
        Ok(KillOnDrop(child))
    }

    /// Spins (yielding now and then, so a peer pinned to the same CPU can run) until `word`
    /// equals `want`, or fails after [`STALL`] or at `deadline`.
    fn spin_until(word: &AtomicU64, want: u64, deadline: Option<Instant>) -> Result<(), String> {
        spin_while(|| word.load(Ordering::Acquire) != want, deadline)
    }

    /// Spins as [`spin_until`] does while `busy` returns true.
    fn spin_while(mut busy: impl FnMut() -> bool, deadline: Option<Instant>) -> Result<(), String> {
        let start = Instant::now();
        let mut spins = 0u32;
        while busy() {
            std::hint::spin_loop();
            spins += 1;
            if spins % 1024 == 0 {
                std::thread::yield_now();
                let now = Instant::now();
                if now - start > STALL || deadline.is_some_and(|d| now > d) {
                    return Err("the other side stopped answering".into());
                }
            }
        }
        Ok(())
    }

    fn wait_fd(fd: &OwnedFd, limit: Duration) -> Result<(), String> {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: limit.as_secs() as i64,
            tv_nsec: limit.subsec_nanos() as i64,
        };
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Err("the other side stopped answering".into()),
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        let mut buf = [0u8; 8];
        rustix::io::read(fd, &mut buf).map_err(|e| format!("eventfd read: {e}"))?;
        Ok(())
    }

    fn signal(fd: &OwnedFd) -> Result<(), String> {
        rustix::io::write(fd, &1u64.to_ne_bytes()).map_err(|e| format!("eventfd write: {e}"))?;
        Ok(())
    }

    /// Parent side of `raw-cacheline` (`spin = true`) or `raw-eventfd`: warm up, then measure
    /// round trips for `t.duration`.
    pub fn shm_baseline(spin: bool, cpu: Option<usize>, t: Timing) -> Result<Rtt, String> {
        let mem = new_memfd(MAP_LEN)?;
        let shared = Shared::map(&mem, MAP_LEN)?;
        let limit = (t.warmup + t.duration) * 2 + STALL * 2;
        let efds = if spin {
            None
        } else {
            let ping = eventfd(0, EventfdFlags::empty()).map_err(|e| format!("eventfd: {e}"))?;
            let pong = eventfd(0, EventfdFlags::empty()).map_err(|e| format!("eventfd: {e}"))?;
            Some((ping, pong))
        };
        let job = match &efds {
            None => Job::Cacheline {
                mem: mem.as_raw_fd(),
            },
            Some((ping, pong)) => Job::Eventfd {
                mem: mem.as_raw_fd(),
                ping: ping.as_raw_fd(),
                pong: pong.as_raw_fd(),
            },
        };
        let _peer = spawn(job, SHM_PAYLOAD, cpu, limit)?;
        let mut payload = pattern(SHM_PAYLOAD);
        let mut back = vec![0u8; SHM_PAYLOAD];
        let mut round_trips = RoundTrips::new(t);
        let mut seq = 0u64;
        while round_trips.next() {
            seq += 1;
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            let t0 = Instant::now();
            shared.copy_in(REQ, &payload);
            shared.atomic(PING).store(seq, Ordering::Release);
            match &efds {
                None => spin_until(shared.atomic(PONG), seq, None)?,
                Some((ping, pong)) => {
                    signal(ping)?;
                    wait_fd(pong, STALL)?;
                    if shared.atomic(PONG).load(Ordering::Acquire) != seq {
                        return Err("the peer answered out of turn".into());
                    }
                }
            }
            shared.copy_out(REPLY, &mut back);
            let elapsed = t0.elapsed();
            if back != payload {
                return Err("the peer's reply differs from the request".into());
            }
            round_trips.record(elapsed);
        }
        Ok(round_trips.finish())
    }

    /// Peer side of `raw-cacheline`.
    pub fn cacheline_peer(mem: i32, deadline: Instant) -> Result<(), String> {
        let mem = inherited(mem)?;
        let shared = Shared::map(&mem, MAP_LEN)?;
        let mut seq = 0u64;
        loop {
            seq += 1;
            // The parent may pause between phases; only the deadline ends the wait.
            loop {
                match spin_until(shared.atomic(PING), seq, Some(deadline)) {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => continue,
                    Err(e) => return Err(e),
                }
            }
            shared.copy(REQ, REPLY);
            shared.atomic(PONG).store(seq, Ordering::Release);
        }
    }

    /// Peer side of `raw-eventfd`.
    pub fn eventfd_peer(mem: i32, ping: i32, pong: i32, deadline: Instant) -> Result<(), String> {
        let mem = inherited(mem)?;
        let ping = inherited(ping)?;
        let pong = inherited(pong)?;
        let shared = Shared::map(&mem, MAP_LEN)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("deadline passed".into());
            }
            wait_fd(&ping, left)?;
            let seq = shared.atomic(PING).load(Ordering::Acquire);
            shared.copy(REQ, REPLY);
            shared.atomic(PONG).store(seq, Ordering::Release);
            signal(&pong)?;
        }
    }

    /// `raw-shmcopy` header: the parent's count of messages written, the peer's count read
    /// and its count of wrong payloads, each on its own 128-byte line.
    const COPY_WRITE: usize = 0;
    const COPY_READ: usize = 128;
    const COPY_BAD: usize = 256;
    /// Where the slots start.
    const COPY_DATA: usize = 4096;

    /// The `raw-shmcopy` ring for `size`-byte messages: (slot length, slots, mapping length).
    /// At least the shm transport's default capacity, and room for four messages.
    fn copy_geometry(size: usize) -> (usize, u64, usize) {
        let slot = size.max(1).div_ceil(128) * 128;
        let cap = ductwork_transports::shm::DEFAULT_CAPACITY.max(4 * slot);
        let slots = cap / slot;
        (slot, slots as u64, COPY_DATA + slots * slot)
    }

    /// Parent side of `raw-shmcopy`: warm up, then copy `size`-byte messages into the ring
    /// for `t.duration`; the phase ends when the peer has copied the last one out.
    pub fn shmcopy_baseline(
        size: usize,
        cpu: Option<usize>,
        t: Timing,
    ) -> Result<Throughput, String> {
        let (warmup, dur) = (t.warmup, t.duration);
        let (slot, slots, len) = copy_geometry(size);
        let mem = new_memfd(len)?;
        let shared = Shared::map(&mem, len)?;
        let limit = (warmup + dur) * 2 + STALL * 2;
        let _peer = spawn(
            Job::ShmCopy {
                mem: mem.as_raw_fd(),
            },
            size,
            cpu,
            limit,
        )?;
        let payload = pattern(size);
        let mut written = 0u64;
        let mut result = None;
        for measuring in [false, true] {
            let phase = if measuring { dur } else { warmup };
            let first = written;
            let start = Instant::now();
            while start.elapsed() < phase || written == first {
                let w = written;
                spin_while(
                    || w - shared.atomic(COPY_READ).load(Ordering::Acquire) >= slots,
                    None,
                )?;
                shared.copy_in(COPY_DATA + (w % slots) as usize * slot, &payload);
                written += 1;
                shared.atomic(COPY_WRITE).store(written, Ordering::Release);
            }
            spin_while(
                || shared.atomic(COPY_READ).load(Ordering::Acquire) != written,
                None,
            )?;
            if measuring {
                let n = written - first;
                result = Some(Throughput::new(n, n, size, start.elapsed()));
            }
        }
        match shared.atomic(COPY_BAD).load(Ordering::Acquire) {
            0 => result.ok_or_else(|| "nothing was measured".to_string()),
            bad => Err(format!("the peer found {bad} wrong payloads")),
        }
    }

    /// Peer side of `raw-shmcopy`: copy each message out, check it, release its slot.
    pub fn shmcopy_peer(mem: i32, size: usize, deadline: Instant) -> Result<(), String> {
        let (slot, slots, len) = copy_geometry(size);
        let mem = inherited(mem)?;
        let shared = Shared::map(&mem, len)?;
        let expected = pattern(size);
        let mut buf = vec![0u8; size];
        let mut read = 0u64;
        loop {
            // The parent may pause between phases; only the deadline ends the wait.
            loop {
                let r = read;
                match spin_while(
                    || shared.atomic(COPY_WRITE).load(Ordering::Acquire) == r,
                    Some(deadline),
                ) {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => continue,
                    Err(e) => return Err(e),
                }
            }
            shared.copy_out(COPY_DATA + (read % slots) as usize * slot, &mut buf);
            read += 1;
            shared.atomic(COPY_READ).store(read, Ordering::Release);
            if !payload_ok(&buf, &expected) {
                shared.atomic(COPY_BAD).fetch_add(1, Ordering::Release);
            }
        }
    }
}
