//! A single-producer/single-consumer ring of variable-length messages in shared memory.
//!
//! Portable: no OS code. The operating-system layer maps a region (memfd on Linux, a named
//! section on Windows) and hands it to this module as a `SharedRegion`; everything here
//! works on offsets into that region, never on pointers stored in it.
//!
//! # Segment layout (all integers little-endian, all offsets from the start of the mapping)
//!
//! ```text
//! 0      segment header, 128 B: magic "DWSHMv3\n" (u64), capacity C (u64), zero padding
//! 128    ring A (server -> client): ring header, 512 B, then C data bytes
//! 640+C  ring B (client -> server): ring header, 512 B, then C data bytes
//! total  128 + 2 * (512 + C)             C is a multiple of 128, 4 KiB <= C <= 1 GiB
//! ```
//!
//! A ring header has four 128-byte lines (128 rather than 64 so the adjacent-line prefetcher
//! does not make the two sides share a line). Every field is written by exactly one side:
//!
//! ```text
//! +0    reserved: u64   (was `write` in layout v1; unused, left zero)
//! +128  read: u64       consumer  bytes ever consumed (monotonic; position = read % C)
//! +256  rx_park: u64    consumer  odd while the consumer is parked waiting for data
//!       rx_closed: u64  consumer  non-zero: the consumer is gone, sends fail with Closed
//! +384  tx_wait: u64    producer  odd while the producer is parked waiting for space
//!       tx_closed: u64  producer  1: no more messages will come (clean close); any other
//!                                 non-zero value: the producer went away uncleanly
//! ```
//!
//! `read` changes per message and sits alone on its line; the parking and closing words
//! change rarely, so reading them on every message stays a cache hit.
//!
//! # Records
//! A message is a record at an 8-aligned position: an 8-byte header word, then `len` payload
//! bytes, padded with zeros to a multiple of 8. A record that does not fit before the end of
//! the data area is split: its payload continues at offset 0 (the header word never splits,
//! since C and positions are multiples of 8).
//!
//! A *skip* record (header length [`SKIP_LEN`], an impossible message length) says "the rest
//! of this lap is unused, the next record starts at data offset 0". The producer writes one
//! when the ring has drained far enough that a large message fits at offset 0 (see
//! [`Producer::reserve`]): a ping-pong of large messages then keeps reusing the first few
//! records' memory, which stays in the cache, instead of walking the whole ring (new in
//! layout v3). A skip at offset 0 would skip a whole lap and is corruption.
//!
//! The header word is `len | stamp << 32` (`len: u32` low, `stamp: u32` high), where the
//! stamp is derived from the record's absolute position `pos` (bytes ever published before
//! it): `stamp = (pos / 8) as u32 ^ 0x5354_4d50`. The producer writes it *last*, with one
//! atomic store, after payload and padding: the header word doubles as the "published" flag,
//! so a consumer waiting for a message spins on the line that also carries the message's
//! first bytes (one cache-line transfer per message instead of two: a separate `write`
//! index, then the record). The word `EMPTY = u64::MAX` (an impossible length) means "no
//! record here yet".
//!
//! Before publishing a record that ends at position `p`, the producer stores `EMPTY` at `p`,
//! the next header slot. That slot therefore never holds stale bytes from an earlier lap
//! (which may be payload, and payload could imitate a header for a predictable position);
//! the creator of a segment writes `EMPTY` at position 0 of both rings. The slot must be
//! free, so a record of `r` bytes fits only if `write + r + 8 <= read + C` (`write` is the
//! producer's private count of bytes published): one word of slack, and the largest message
//! is C - 16 bytes (its record is C - 8 bytes).
//!
//! Cache lines (a performance matter only; nothing depends on it for correctness): a
//! waiting consumer loads the header word and prefetches the next 64-byte line, and a
//! producer writes a record that spans the header's line and the next one tail first: the
//! bytes in the next line, then the header's line (payload head, then header word). So a record of up to two lines reaches the
//! consumer in about one cache-line transfer, the producer's writes are not interrupted by
//! the consumer pulling a line back, and the consumer needs no other shared line per
//! message (the parking and closing words stay cached; `read` is loaded by the producer only
//! when its cached value says the ring is full).
//!
//! # Trust
//! The peer can write anything anywhere in the mapping at any time. Each side therefore
//! keeps its own index privately and only *reads* what the peer wrote, checking it before
//! use. The producer checks the consumer's `read`: 8-aligned, never moving back, and
//! `write - C <= read <= write`. The consumer checks the header word at its position: an
//! honest producer leaves only `EMPTY` or a header stamped for that position there, so any
//! other value is corruption; the length must be within the consumer's limit and its record
//! (plus the slack word) must fit in C. A violation is `RingError::Corrupt` (the connection
//! fails with `Protocol`), never a panic or an out-of-bounds access. Payload bytes are copied
//! out with raw pointer copies before anyone looks at them (no reference into shared memory
//! is ever formed), so a peer that scribbles on a message while we copy it can only garble
//! its own message. The stamp is an integrity check, not a defence: a hostile peer can write
//! well-stamped headers too, and can only harm its own connection by it.
//!
//! # Wake-ups (eventcount)
//! A consumer that finds the ring empty *announces* parking (`rx_park` to an odd value),
//! re-checks the ring, and only then waits on its doorbell. A producer publishes, then reads
//! `rx_park`, and rings the doorbell only if the consumer announced parking and that
//! announcement has not been rung yet. A busy stream therefore makes no system calls. The
//! same scheme runs in the other direction for a producer waiting for space (`tx_wait`).
//! This is the Dekker pattern: each side stores its word, then loads the other's, both with
//! `SeqCst` ordering, so the two stores and loads fall into one total order and at least one
//! side sees the other's store: either the consumer's re-check (a load of the header word at
//! its position) sees the message, or the producer sees the announcement. (`SeqCst` also
//! gives the Acquire/Release pairing the data needs: the store of a header word publishes
//! the record bytes and the `EMPTY` word before it, a store of `read` releases the bytes
//! before it for reuse. On x86 a `SeqCst` store is one `xchg`, cheaper than a store plus
//! `mfence`; loads cost the same as Acquire loads.)
//!
//! Closing: the producer stores `tx_closed` after its last header word. A consumer that finds
//! `EMPTY` at its position and `tx_closed` set looks at its position once more before
//! reporting the close, so every message published before the close is delivered.

use std::{
    mem::MaybeUninit,
    ptr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

/// Bytes per header line.
pub(crate) const LINE: usize = 128;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER: usize = LINE;
/// Size of one ring header.
pub(crate) const RING_HEADER: usize = 4 * LINE;
/// Size of a record header word (length + stamp).
pub(crate) const RECORD_HEADER: usize = 8;
/// The header word of a slot that holds no record (yet): an impossible length.
const EMPTY: u64 = u64::MAX;
/// The cache-line size the write order and the consumer's prefetch assume (a hint only:
/// correctness does not depend on it).
const CACHE_LINE: u64 = 64;
/// Mixed into every stamp, so that a zeroed word is not a valid header at position 0.
const STAMP_SALT: u32 = 0x5354_4d50;
/// The smallest ring capacity.
pub(crate) const MIN_CAPACITY: usize = 4096;
/// The largest ring capacity.
pub(crate) const MAX_CAPACITY: usize = 1 << 30;
/// The segment magic.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"DWSHMv3\n");
/// The magic of the first layout (a separate `write` index, no stamps), to name it in the
/// error.
const MAGIC_V1: u64 = u64::from_le_bytes(*b"DWSHMv1\n");
/// The magic of layout v2 (no skip records), to name it in the error.
const MAGIC_V2: u64 = u64::from_le_bytes(*b"DWSHMv2\n");
/// The length field of a skip record: the rest of the lap is unused (see "Records").
/// Never a message length (those are at most `MAX_CAPACITY`), and never `EMPTY`'s low half.
pub(crate) const SKIP_LEN: u32 = u32::MAX - 1;
/// Messages at least this long may start a new lap early (a skip record before them) when
/// the ring has drained enough: the producer then loads the consumer's `read`, a cache-line
/// transfer that a small message would feel but a large one's copy hides.
const SKIP_MIN: usize = 1024;

const OFF_READ: usize = LINE;
const OFF_RX_PARK: usize = 2 * LINE;
const OFF_RX_CLOSED: usize = 2 * LINE + 8;
const OFF_TX_WAIT: usize = 3 * LINE;
const OFF_TX_CLOSED: usize = 3 * LINE + 8;
/// `tx_closed` values written by a producer.
const CLOSED_CLEANLY: u64 = 1;
const ABANDONED: u64 = 2;

/// The bytes a segment with rings of `capacity` bytes needs.
pub(crate) fn segment_len(capacity: usize) -> usize {
    SEGMENT_HEADER + 2 * (RING_HEADER + capacity)
}

/// Rounds a requested capacity to a valid one (multiple of 128, within the limits), or says
/// why it cannot.
pub(crate) fn valid_capacity(requested: usize) -> Result<usize, String> {
    if requested < MIN_CAPACITY {
        return Err(format!(
            "capacity {requested} is below the minimum of {MIN_CAPACITY} bytes"
        ));
    }
    if requested > MAX_CAPACITY {
        return Err(format!(
            "capacity {requested} is over the maximum of {MAX_CAPACITY} bytes"
        ));
    }
    Ok(requested.div_ceil(LINE) * LINE)
}

/// The largest message a ring of `capacity` bytes carries: its record (header word and
/// payload) plus the `EMPTY` word after it fill the ring.
pub(crate) fn max_message(capacity: usize) -> usize {
    capacity - 2 * RECORD_HEADER
}

/// The stamp of a record at absolute position `pos`.
fn stamp(pos: u64) -> u32 {
    ((pos >> 3) as u32) ^ STAMP_SALT
}

/// The header word of a record of `len` payload bytes at absolute position `pos`.
fn header_word(pos: u64, len: usize) -> u64 {
    debug_assert!(len <= MAX_CAPACITY);
    header_word_raw(pos, len as u32)
}

/// The header word with length field `len` (a message length or [`SKIP_LEN`]) at `pos`.
fn header_word_raw(pos: u64, len: u32) -> u64 {
    len as u64 | (stamp(pos) as u64) << 32
}

/// A mapping both processes share.
///
/// # Safety
/// Implementors guarantee that `base()` points to `len()` bytes that stay mapped, readable
/// and writable for as long as the value lives, aligned to at least 128 bytes.
pub(crate) unsafe trait SharedRegion: Send + Sync + 'static {
    /// The start of the mapping.
    fn base(&self) -> *mut u8;
    /// The length of the mapping in bytes.
    fn len(&self) -> usize;
}

/// Writes the segment header of a fresh (zeroed) segment, and `EMPTY` at the first header
/// slot of both rings (a consumer may look there before its producer exists).
pub(crate) fn init_segment(region: &dyn SharedRegion, capacity: usize) {
    assert!(
        region.len() >= segment_len(capacity) && capacity % LINE == 0,
        "segment too small"
    );
    // SAFETY: the region is at least `segment_len(capacity)` bytes long and 128-aligned
    // (trait contract, asserted length), so the two u64 slots of the segment header and the
    // first word of each data area (at 128-aligned offsets below `segment_len(capacity)`)
    // are in bounds and aligned; the atomics make concurrent access by the peer well-defined.
    unsafe {
        let base = region.base();
        AtomicU64::from_ptr(base.cast()).store(MAGIC, Ordering::Relaxed);
        AtomicU64::from_ptr(base.add(8).cast()).store(capacity as u64, Ordering::Relaxed);
        for data in [
            SEGMENT_HEADER + RING_HEADER,
            SEGMENT_HEADER + 2 * RING_HEADER + capacity,
        ] {
            AtomicU64::from_ptr(base.add(data).cast()).store(EMPTY, Ordering::Relaxed);
        }
    }
}

/// Reads and checks the segment header of a mapping received from a peer: the magic, and a
/// capacity that is valid and fits in the mapping. Returns the capacity.
pub(crate) fn check_segment(region: &dyn SharedRegion) -> Result<usize, String> {
    if region.len() < SEGMENT_HEADER {
        return Err("the shared segment is smaller than its header".into());
    }
    // SAFETY: as in `init_segment`, the two u64 slots are within the (checked) length.
    let (magic, cap) = unsafe {
        (
            AtomicU64::from_ptr(region.base().cast()).load(Ordering::Relaxed),
            AtomicU64::from_ptr(region.base().add(8).cast()).load(Ordering::Relaxed),
        )
    };
    for (old, v) in [(MAGIC_V1, 1), (MAGIC_V2, 2)] {
        if magic == old {
            return Err(format!(
                "the shared segment has the older layout v{v}: the peer runs an older \
                 ductwork; both sides need the same version (layout v3)"
            ));
        }
    }
    if magic != MAGIC {
        return Err(
            "the shared segment has a wrong magic number (not a ductwork v3 segment)".into(),
        );
    }
    let cap = usize::try_from(cap).map_err(|_| "capacity out of range".to_string())?;
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) || cap % LINE != 0 {
        return Err(format!(
            "the shared segment announces an invalid capacity {cap}"
        ));
    }
    if region.len() < segment_len(cap) {
        return Err(format!(
            "the shared segment ({} bytes) is smaller than its capacity {cap} needs",
            region.len()
        ));
    }
    Ok(cap)
}

/// Which of the two rings of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// Server to client.
    A,
    /// Client to server.
    B,
}

/// What went wrong in a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingError {
    /// The peer broke the layout (an index or length out of bounds).
    Corrupt(String),
    /// A record announces a message larger than this side's limit.
    TooLarge {
        /// The announced length.
        len: usize,
        /// This side's limit.
        max: usize,
    },
    /// The consumer side is gone (it closed or dropped its connection).
    PeerClosed,
}

/// The part of a ring both ends share: the region, where this ring's header and data are,
/// and its capacity.
struct RingMem {
    /// Keeps the mapping alive for the two pointers below.
    _region: Arc<dyn SharedRegion>,
    /// This ring's header (`RING_HEADER` bytes), 128-aligned, inside the region.
    header: *mut u8,
    /// This ring's data area (`cap` bytes), inside the region. Both pointers are computed
    /// once, so the hot path makes no virtual call to find the mapping.
    data: *mut u8,
    cap: u64,
}

// SAFETY: the pointers point into the region, which `_region` keeps mapped for as long as
// this value lives, whichever thread holds it; all access through them is atomic or a raw
// copy, never a reference into shared memory.
unsafe impl Send for RingMem {}
// SAFETY: as above; `&RingMem` only allows the same atomic accesses and raw copies.
unsafe impl Sync for RingMem {}

impl RingMem {
    fn new(region: Arc<dyn SharedRegion>, capacity: usize, which: Which) -> RingMem {
        let header = match which {
            Which::A => SEGMENT_HEADER,
            Which::B => SEGMENT_HEADER + RING_HEADER + capacity,
        };
        assert!(
            region.len() >= segment_len(capacity) && capacity % LINE == 0 && capacity > 0,
            "ring outside its region (checked by check_segment)"
        );
        // SAFETY: `header + RING_HEADER + capacity <= segment_len(capacity) <= region.len()`
        // (asserted above), so both offsets stay inside the mapping.
        let (hdr, data) = unsafe {
            let base = region.base();
            (base.add(header), base.add(header + RING_HEADER))
        };
        RingMem {
            _region: region,
            header: hdr,
            data,
            cap: capacity as u64,
        }
    }

    /// One of the header words.
    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off < RING_HEADER);
        // SAFETY: `header + off` is 8-aligned (header is 128-aligned, off a multiple of 8) and
        // lies within the ring header (off < RING_HEADER), inside the region (checked in
        // `new`); the region outlives `self` (we hold an Arc). Only atomic accesses are made
        // to header words, by both processes.
        unsafe { AtomicU64::from_ptr(self.header.add(off).cast()) }
    }

    /// Copies `src` into the data area at ring position `pos`, splitting at the end.
    fn copy_in(&self, pos: u64, src: &[u8]) {
        let at = (pos % self.cap) as usize;
        let first = src.len().min(self.cap as usize - at);
        // SAFETY: `at < cap` and `first <= cap - at`, `src.len() - first <= cap` (callers
        // never copy more than `cap` bytes), so both destination ranges lie in the data area,
        // which is in the region. Raw copies, no references into shared memory.
        unsafe {
            let data = self.data;
            ptr::copy_nonoverlapping(src.as_ptr(), data.add(at), first);
            if first < src.len() {
                ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
            }
        }
    }

    /// Writes the 8 bytes at the 8-aligned ring position `pos` (a record header or the last
    /// word of a record): one store instead of a split-aware copy.
    fn write_word(&self, pos: u64, word: [u8; 8]) {
        debug_assert!(pos % 8 == 0);
        let at = (pos % self.cap) as usize;
        // SAFETY: `pos` is 8-aligned and `cap` a multiple of 8, so `at + 8 <= cap`: the word
        // lies in the data area. A fixed-size raw copy, no reference into shared memory.
        unsafe {
            let data = self.data;
            ptr::copy_nonoverlapping(word.as_ptr(), data.add(at), 8);
        }
    }

    /// The header slot at the 8-aligned ring position `pos`, as an atomic word.
    fn slot(&self, pos: u64) -> &AtomicU64 {
        debug_assert!(pos % 8 == 0);
        let at = (pos % self.cap) as usize;
        // SAFETY: `pos` is 8-aligned and `cap` a multiple of 8, so `at + 8 <= cap`: the word
        // lies in the data area, inside the region that `self` keeps mapped for the returned
        // lifetime; the data area is 128-aligned (region base 128-aligned, header and ring
        // sizes multiples of 128), so `data + at` is 8-aligned. Header slots are accessed
        // atomically while they can hold a header; the plain copies that reuse the bytes on
        // a later lap are ordered after the consumer is done with them (by `read`). No
        // reference to anything but the atomic is formed.
        unsafe { AtomicU64::from_ptr(self.data.add(at).cast()) }
    }

    /// Hints the CPU to fetch the 64-byte cache line after the one holding ring position
    /// `pos` (the first line of the data area after the last one). Not a memory access: no
    /// effect on what any load or store sees, and a no-op where no prefetch hint is available.
    #[inline]
    fn prefetch_line_after(&self, pos: u64) {
        let next = (pos % self.cap) / CACHE_LINE * CACHE_LINE + CACHE_LINE;
        let at = if next >= self.cap { 0 } else { next as usize };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `at < cap`, so the pointer lies in the data area; a prefetch is a hint that
        // never faults and neither reads nor writes memory as far as the program can tell.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.data.add(at).cast::<i8>().cast_const());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    /// Copies `dst.len()` bytes from ring position `pos` to `dst` (which may be uninitialized
    /// memory), splitting at the end. Callers pass at most `cap` bytes.
    fn copy_out_uninit(&self, pos: u64, dst: &mut [MaybeUninit<u8>]) {
        // SAFETY: `dst` is a slice of `dst.len()` writable bytes; the callers' length bound
        // is passed on.
        unsafe { self.copy_out_raw(pos, dst.as_mut_ptr().cast::<u8>(), dst.len()) }
    }

    /// Copies `len` bytes from ring position `pos` to `dst`, splitting at the end.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes and must not overlap the source bytes;
    /// `len <= cap`.
    unsafe fn copy_out_raw(&self, pos: u64, dst: *mut u8, len: usize) {
        debug_assert!(len as u64 <= self.cap);
        let at = (pos % self.cap) as usize;
        let first = len.min(self.cap as usize - at);
        // SAFETY: as in `copy_in`, with `len <= cap` guaranteed by the callers (a checked
        // record length); `dst` is valid for `len` bytes (the caller's promise). Raw copies,
        // no reference into shared memory.
        unsafe {
            let data = self.data;
            ptr::copy_nonoverlapping(data.add(at), dst, first);
            if first < len {
                ptr::copy_nonoverlapping(data, dst.add(first), len - first);
            }
        }
    }
}

/// A message found in the ring, not yet copied out: [`Consumer::try_pop_with`] hands it to
/// the caller, who copies it (once) into memory of its choosing.
pub(crate) struct Record<'a> {
    mem: &'a RingMem,
    pos: u64,
    len: usize,
}

impl Record<'_> {
    /// The payload length (checked: within the ring's capacity and the consumer's limit).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies the payload into `dst`, which must be exactly `len()` bytes long (else nothing
    /// is copied and `false` is returned). Afterwards every byte of `dst` is initialized.
    pub(crate) fn copy_to(&self, dst: &mut [MaybeUninit<u8>]) -> bool {
        if dst.len() != self.len {
            return false;
        }
        self.mem.copy_out_uninit(self.pos, dst);
        true
    }

    /// Copies the payload into a slot reserved for exactly its length (else nothing is
    /// copied and `false` is returned): ring to ring, by raw copies, so a peer writing
    /// either meanwhile can only garble the copy. Then publish the slot.
    pub(crate) fn copy_to_slot(&self, slot: &mut Slot<'_>) -> bool {
        if slot.len() != self.len {
            return false;
        }
        let (first, first_len, second, second_len) = slot.regions();
        // SAFETY: `Slot::regions` gives two disjoint regions valid for writes of
        // `first_len + second_len == len` bytes while the slot lives; they lie in the
        // producer's ring, the record in the consumer's (another ring of the segment, or
        // another segment), so source and destination do not overlap; `len <= cap - 16`
        // (a checked record), and `first_len <= len`.
        unsafe {
            self.mem.copy_out_raw(self.pos, first, first_len);
            self.mem
                .copy_out_raw(self.pos + first_len as u64, second, second_len);
        }
        true
    }

    /// Copies the payload into a new Vec of exactly its length.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        self.mem
            .copy_out_uninit(self.pos, &mut v.spare_capacity_mut()[..self.len]);
        // SAFETY: the first `len` bytes of the spare capacity were just written.
        unsafe { v.set_len(self.len) };
        v
    }
}

/// A published message [`Consumer::peek`] found and checked: where its payload lies. Only
/// `peek` makes one, so its length is always one the ring can hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Peeked {
    pos: u64,
    len: usize,
}

impl Peeked {
    /// The payload length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<'a> Record<'a> {
    /// The payload as one or two slices straight into the shared data area (two when the
    /// record wraps at the end of the ring), without copying.
    ///
    /// # Safety
    /// The peer process can write the shared memory at any time; a write to these bytes
    /// while the slices live is a data race, undefined behaviour. The caller promises that
    /// the peer does not write them while the slices are used: an honest ductwork producer
    /// never writes a published record before the consumer released it, so this holds
    /// unless the peer misbehaves (a bug, a hostile process, an attached debugger).
    pub(crate) unsafe fn into_slices(self) -> (&'a [u8], &'a [u8]) {
        let at = (self.pos % self.mem.cap) as usize;
        let first = self.len.min(self.mem.cap as usize - at);
        // SAFETY: as in `RingMem::copy_out_uninit`, both ranges lie in the data area
        // (`len <= cap - 16`, a checked record); the region lives as long as `self.mem` (`'a`).
        // Nothing else in this process writes them while the record is unreleased (the
        // producer side writes only released room); the peer's side is the caller's promise.
        unsafe {
            (
                std::slice::from_raw_parts(self.mem.data.add(at), first),
                std::slice::from_raw_parts(self.mem.data, self.len - first),
            )
        }
    }
}

fn record_len(payload: usize) -> u64 {
    (RECORD_HEADER + payload.div_ceil(8) * 8) as u64
}

/// The sending end of one ring.
pub(crate) struct Producer {
    mem: RingMem,
    /// Bytes ever published (the position of the next record). Private: the consumer learns
    /// of records from their header words.
    write: u64,
    /// The last `read` we loaded (and checked).
    read_cache: u64,
    /// The `rx_park` value we last rang the doorbell for.
    rang: u64,
    /// Our `tx_wait` value (odd while parked).
    wait: u64,
    closed: bool,
}

impl Producer {
    /// The sending end of ring `which` in a segment of rings of `capacity` bytes. The caller
    /// checked the segment (`check_segment`) or created it.
    pub(crate) fn new(region: Arc<dyn SharedRegion>, capacity: usize, which: Which) -> Self {
        let mem = RingMem::new(region, capacity, which);
        // A fresh ring starts at zero; a peer cannot have moved it yet in a way we must honour.
        Producer {
            mem,
            write: 0,
            read_cache: 0,
            rang: 0,
            wait: 0,
            closed: false,
        }
    }

    /// The largest payload this ring carries.
    pub(crate) fn max_message(&self) -> usize {
        max_message(self.mem.cap as usize)
    }

    /// The ring's capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.mem.cap as usize
    }

    /// Loads the consumer's `read` and checks it. SeqCst (at least Acquire): the consumer's
    /// store of `read` comes after it finished copying those bytes out, so once we see the new
    /// value we may overwrite them; SeqCst for the Dekker pairing with `producer_needs_wake`.
    fn load_read(&mut self) -> Result<u64, RingError> {
        let r = self.mem.word(OFF_READ).load(Ordering::SeqCst);
        let used = self.write.wrapping_sub(r);
        // `read` only moves forward, up to our `write`.
        let backwards = r.wrapping_sub(self.read_cache) > self.write.wrapping_sub(self.read_cache);
        if r % 8 != 0 || used > self.mem.cap || backwards {
            return Err(RingError::Corrupt(format!(
                "the peer's read index {r} is impossible (our write index is {})",
                self.write
            )));
        }
        self.read_cache = r;
        Ok(r)
    }

    /// Whether the consumer said it is gone.
    pub(crate) fn peer_closed(&self) -> bool {
        self.mem.word(OFF_RX_CLOSED).load(Ordering::SeqCst) != 0
    }

    /// Whether a message of `len` bytes would fit now (reloads `read` if needed): its record
    /// and the `EMPTY` word after it.
    pub(crate) fn has_space(&mut self, len: usize) -> Result<bool, RingError> {
        let need = record_len(len) + RECORD_HEADER as u64;
        if self.mem.cap - self.write.wrapping_sub(self.read_cache) >= need {
            return Ok(true);
        }
        self.load_read()?;
        Ok(self.mem.cap - self.write.wrapping_sub(self.read_cache) >= need)
    }

    /// Appends one message if it fits. `Ok(false)`: the ring is full right now (nothing was
    /// written). The caller checked `msg.len() <= max_message()`.
    pub(crate) fn try_push(&mut self, msg: &[u8]) -> Result<bool, RingError> {
        debug_assert!(msg.len() <= self.max_message());
        match self.reserve(msg.len())? {
            Some(mut slot) => {
                let filled = slot.fill(msg);
                debug_assert!(filled, "reserved for msg.len()");
                slot.publish();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Claims room for a record of `len` payload bytes, if it fits now: `Ok(None)` when the
    /// ring is full right now. The record's padding and the `EMPTY` word after it are
    /// written; the caller writes the payload into [`Slot::regions`] and calls
    /// [`Slot::publish`], which writes the header word. A slot dropped without `publish`
    /// publishes nothing (the header slot at `write` still holds `EMPTY`, so the consumer
    /// reads none of it, and the next record overwrites it).
    pub(crate) fn reserve(&mut self, len: usize) -> Result<Option<Slot<'_>>, RingError> {
        if self.peer_closed() {
            return Err(RingError::PeerClosed);
        }
        if len > self.max_message() {
            return Err(RingError::TooLarge {
                len,
                max: self.max_message(),
            });
        }
        if !self.has_space(len)? {
            return Ok(None);
        }
        if len >= SKIP_MIN {
            self.maybe_skip(len)?;
        }
        let rec = record_len(len);
        if rec > (RECORD_HEADER + len) as u64 {
            // Zero the record's last word (its padding) before the payload fills its head.
            self.mem.write_word(self.write + rec - 8, [0; 8]);
        }
        // The next header slot (free: `has_space` counted it) says "nothing here" before the
        // header word publishes this record, whose store orders it (Release) for the consumer.
        self.mem
            .slot(self.write.wrapping_add(rec))
            .store(EMPTY, Ordering::Relaxed);
        Ok(Some(Slot {
            producer: self,
            len,
        }))
    }
    /// Starts the next lap now (publishes a skip record) if the consumer has consumed
    /// everything and a record of `len` bytes and the `EMPTY` word after it fit before our
    /// position: a ping-pong of large messages then reuses the memory at the start of the
    /// ring (hot in the cache) rather than walking the whole ring. Only when the ring is
    /// empty, so a stream keeps the whole ring to buffer in; and only past the room the
    /// record needs at offset 0, so that the skip header at our position stays clear of the
    /// new record until the consumer read it. Costs a load of `read` only then.
    fn maybe_skip(&mut self, len: usize) -> Result<(), RingError> {
        let at = self.write % self.mem.cap;
        let need = record_len(len) + RECORD_HEADER as u64;
        if at < need {
            return Ok(());
        }
        if self.read_cache != self.write && self.load_read()? != self.write {
            return Ok(());
        }
        // Empty: the consumer is done with every byte, those at offset 0 included.
        let next = (self.write - at).wrapping_add(self.mem.cap);
        // As for any record: the slot the consumer looks at next says EMPTY before the skip
        // header (SeqCst, at least Release) sends it there.
        self.mem.slot(next).store(EMPTY, Ordering::Relaxed);
        self.mem
            .slot(self.write)
            .store(header_word_raw(self.write, SKIP_LEN), Ordering::SeqCst);
        self.write = next;
        Ok(())
    }

    /// After publishing: whether the consumer announced parking and must be woken. Call it
    /// after `try_push` or `close`; ring the doorbell when it returns true.
    pub(crate) fn consumer_needs_wake(&mut self) -> bool {
        // Dekker: our SeqCst store of a header word (or `tx_closed`) precedes this SeqCst load;
        // the consumer's SeqCst store of `rx_park` precedes its SeqCst re-check of the header
        // word at its position. In the single total order of these four operations at least
        // one of us sees the other's store, so no wake-up is lost.
        let park = self.mem.word(OFF_RX_PARK).load(Ordering::SeqCst);
        if park % 2 == 1 && park != self.rang {
            self.rang = park;
            true
        } else {
            false
        }
    }

    /// Announces that we are about to wait for space. Call `has_space` again after this and
    /// before waiting.
    pub(crate) fn announce_wait(&mut self) {
        if self.wait % 2 == 0 {
            self.wait += 1;
            // SeqCst, then `has_space` loads `read` SeqCst: pairs with the consumer's store of
            // `read` and load of `tx_wait` (Dekker, see `producer_needs_wake`).
            self.mem
                .word(OFF_TX_WAIT)
                .store(self.wait, Ordering::SeqCst);
        }
    }

    /// Withdraws a waiting announcement.
    pub(crate) fn cancel_wait(&mut self) {
        if self.wait % 2 == 1 {
            self.wait += 1;
            self.mem
                .word(OFF_TX_WAIT)
                .store(self.wait, Ordering::Relaxed);
        }
    }

    /// Says that no more messages will come. Returns whether the consumer must be woken.
    pub(crate) fn close(&mut self) -> bool {
        self.finish(CLOSED_CLEANLY)
    }

    /// Says that we go away without a clean close (a message was lost): after the published
    /// messages the consumer reports the connection lost. Returns whether to wake it.
    pub(crate) fn abandon(&mut self) -> bool {
        self.finish(ABANDONED)
    }

    fn finish(&mut self, how: u64) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.cancel_wait();
        // SeqCst (at least Release): everything published before is visible to a consumer
        // that sees the flag; SeqCst for the Dekker pairing in `consumer_needs_wake`.
        self.mem.word(OFF_TX_CLOSED).store(how, Ordering::SeqCst);
        self.consumer_needs_wake()
    }
}

/// Room for one record claimed by [`Producer::reserve`], not yet published.
pub(crate) struct Slot<'a> {
    producer: &'a mut Producer,
    len: usize,
}

impl<'a> Slot<'a> {
    /// The reserved payload length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The ring position of the payload's first byte.
    fn payload_pos(&self) -> u64 {
        self.producer.write + RECORD_HEADER as u64
    }

    /// Copies the payload in, which must be exactly the reserved length (else nothing is
    /// written and `false` is returned); then call [`publish`](Self::publish).
    ///
    /// A record that spans the header's cache line and the next one has the bytes in the
    /// next line written first, the head of the payload last: the consumer spins on the
    /// header's line and prefetches the next one (see [`Consumer::has_message`]), so each
    /// line changes hands once, complete, instead of being pulled back by the consumer
    /// between our stores to it. Other records are copied in one go (the split costs a
    /// second copy call, worth it only when it saves the consumer a cache-line transfer).
    pub(crate) fn fill(&mut self, msg: &[u8]) -> bool {
        if msg.len() != self.len {
            return false;
        }
        let pos = self.payload_pos();
        let mem = &self.producer.mem;
        let line_end = (self.producer.write / CACHE_LINE + 1) * CACHE_LINE;
        let end = pos + msg.len() as u64;
        if end > line_end && end <= line_end + CACHE_LINE {
            let head = (line_end - pos) as usize;
            mem.copy_in(line_end, &msg[head..]);
            mem.copy_in(pos, &msg[..head]);
        } else {
            mem.copy_in(pos, msg);
        }
        true
    }

    /// Where the payload goes, as raw memory in the shared data area: `(first, first_len,
    /// second, second_len)`, with `first_len + second_len` the payload length. The payload
    /// is split (`second_len > 0`) when the record runs past the end of the data area; its
    /// rest then starts at offset 0.
    ///
    /// Both regions are valid for writes for as long as the slot lives, do not overlap, and
    /// the consumer reads neither until [`publish`](Self::publish): they lie behind the
    /// record's header slot, which holds `EMPTY` until then, in room the consumer has
    /// released (`read` moved past it).
    /// A peer that breaks the protocol may still scribble on them at any time, so write them
    /// with raw copies only, never through a reference.
    pub(crate) fn regions(&mut self) -> (*mut u8, usize, *mut u8, usize) {
        let mem = &self.producer.mem;
        let at = (self.payload_pos() % mem.cap) as usize;
        let first = self.len.min(mem.cap as usize - at);
        // SAFETY: `at < cap`, so `data + at` stays inside the data area, which lies in the
        // mapping `mem` keeps alive; `data` itself is the start of the data area. The lengths
        // keep both regions inside it: `first <= cap - at`, and
        // `len - first <= len <= cap - 16` (`reserve` checked `len <= max_message`).
        let first_ptr = unsafe { mem.data.add(at) };
        (first_ptr, first, mem.data, self.len - first)
    }

    /// Publishes the record, exactly as `try_push` does: stores its header word with a
    /// SeqCst store, which makes the padding, payload and next `EMPTY` word written before
    /// visible to the consumer. Then call `consumer_needs_wake`.
    pub(crate) fn publish(self) -> &'a mut Producer {
        let p = self.producer;
        // SeqCst (at least Release): the record bytes written before become visible to a
        // consumer that loads this word; SeqCst for the Dekker pairing with the consumer's
        // parking.
        p.mem
            .slot(p.write)
            .store(header_word(p.write, self.len), Ordering::SeqCst);
        p.write = p.write.wrapping_add(record_len(self.len));
        p
    }
}

/// What `Consumer::try_pop` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pop<T = Vec<u8>> {
    /// One message, copied out of the ring.
    Message(T),
    /// Nothing yet.
    Empty,
    /// Nothing, and the producer closed cleanly: nothing more will come.
    Closed,
    /// Nothing, and the producer went away without closing cleanly.
    Abandoned,
}

/// The receiving end of one ring.
pub(crate) struct Consumer {
    mem: RingMem,
    /// Our private copy of `read`: the position of the next record.
    read: u64,
    /// Our `rx_park` value (odd while parked).
    park: u64,
    /// The `tx_wait` value we last rang the doorbell for.
    rang: u64,
    /// The largest message we accept.
    max: usize,
}

impl Consumer {
    /// The receiving end of ring `which`, accepting messages up to `max` bytes.
    pub(crate) fn new(
        region: Arc<dyn SharedRegion>,
        capacity: usize,
        which: Which,
        max: usize,
    ) -> Self {
        Consumer {
            mem: RingMem::new(region, capacity, which),
            read: 0,
            park: 0,
            rang: 0,
            max,
        }
    }

    /// Loads the header word at our position. SeqCst (at least Acquire): pairs with the
    /// producer's store of it, so the record bytes written before are visible to our copy;
    /// SeqCst for the Dekker pairing with our parking announcement.
    fn header(&self) -> u64 {
        self.mem.slot(self.read).load(Ordering::SeqCst)
    }

    /// The header word at our position, after following a skip record there (at most one:
    /// a skip leads to offset 0, where another one is corruption).
    fn header_past_skip(&mut self) -> Result<u64, RingError> {
        let header = self.header();
        if header as u32 != SKIP_LEN {
            return Ok(header);
        }
        let at = self.read % self.mem.cap;
        if (header >> 32) as u32 != stamp(self.read) || at == 0 {
            return Err(RingError::Corrupt(format!(
                "the skip record at position {} ({header:#018x}) is misplaced or misstamped",
                self.read
            )));
        }
        self.read = self.read.wrapping_add(self.mem.cap - at);
        // SeqCst (at least Release), as after a message: the producer may reuse the lap's
        // rest; SeqCst for the Dekker pairing in `producer_needs_wake`.
        self.mem.word(OFF_READ).store(self.read, Ordering::SeqCst);
        let next = self.header();
        if next as u32 == SKIP_LEN {
            return Err(RingError::Corrupt(format!(
                "a skip record at position {} follows a skip record",
                self.read
            )));
        }
        Ok(next)
    }

    /// Whether a message is published (cheap; for spinning: one load of the word the message
    /// arrives in). Errors count as "something to do": `try_pop` will report them.
    ///
    /// While the answer is no, it also prefetches the cache line after the header's: a small
    /// record (header and payload up to 56 bytes past a line boundary) spans both, and the
    /// producer writes that line before the header word, so the next look fetches both lines
    /// at once instead of the copy fetching the second after the header was seen.
    ///
    /// A skip record is followed here (it is no message to report): a spinning receiver
    /// goes on spinning at offset 0 for the message that comes next.
    pub(crate) fn has_message(&mut self) -> bool {
        let mut header = self.header();
        if header as u32 == SKIP_LEN {
            // An error leaves the bad word where `try_pop` finds and reports it.
            header = self.header_past_skip().unwrap_or(0);
        }
        if header != EMPTY {
            return true;
        }
        self.mem.prefetch_line_after(self.read);
        false
    }

    /// Whether there is anything for `try_pop` to report (a message, the close, an error).
    pub(crate) fn ready(&mut self) -> bool {
        self.has_message() || self.mem.word(OFF_TX_CLOSED).load(Ordering::SeqCst) != 0
    }

    /// Takes the next message, if one is published, copying it into a new Vec.
    pub(crate) fn try_pop(&mut self) -> Result<Pop, RingError> {
        self.try_pop_with(|rec| rec.to_vec())
    }

    /// Takes the next message, if one is published: `take` copies it out of the ring (see
    /// [`Record`]) into memory of the caller's choosing; the record's bytes are released to
    /// the producer once `take` returns.
    pub(crate) fn try_pop_with<T>(
        &mut self,
        take: impl FnOnce(Record<'_>) -> T,
    ) -> Result<Pop<T>, RingError> {
        Ok(match self.peek()? {
            Pop::Message(at) => {
                let msg = take(self.record(&at));
                self.release(at);
                Pop::Message(msg)
            }
            Pop::Empty => Pop::Empty,
            Pop::Closed => Pop::Closed,
            Pop::Abandoned => Pop::Abandoned,
        })
    }

    /// Finds the next message, if one is published, and checks its header, without
    /// consuming it: read it with [`record`](Self::record), then hand the [`Peeked`] back to
    /// [`release`](Self::release), which frees its room for the producer.
    pub(crate) fn peek(&mut self) -> Result<Pop<Peeked>, RingError> {
        let mut header = self.header_past_skip()?;
        if header == EMPTY {
            // SeqCst (at least Acquire): if the producer closed, every header word it stored
            // before is visible to the load below.
            if self.mem.word(OFF_TX_CLOSED).load(Ordering::SeqCst) == 0 {
                return Ok(Pop::Empty);
            }
            header = self.header_past_skip()?;
            if header == EMPTY {
                let how = self.mem.word(OFF_TX_CLOSED).load(Ordering::SeqCst);
                return Ok(if how == CLOSED_CLEANLY {
                    Pop::Closed
                } else {
                    Pop::Abandoned
                });
            }
        }
        if (header >> 32) as u32 != stamp(self.read) {
            return Err(RingError::Corrupt(format!(
                "the record header at position {} is {header:#018x}, neither a record for \
                 that position nor empty",
                self.read
            )));
        }
        let len = header as u32 as usize;
        if len > self.max {
            return Err(RingError::TooLarge { len, max: self.max });
        }
        if record_len(len) + RECORD_HEADER as u64 > self.mem.cap {
            return Err(RingError::Corrupt(format!(
                "a record announces {len} bytes, more than a ring of {} bytes holds",
                self.mem.cap
            )));
        }
        // len <= rec - 8 <= cap - 16: within bounds of the copy's contract.
        Ok(Pop::Message(Peeked {
            pos: self.read.wrapping_add(RECORD_HEADER as u64),
            len,
        }))
    }

    /// The payload of a message [`peek`](Self::peek) found.
    pub(crate) fn record(&self, at: &Peeked) -> Record<'_> {
        Record {
            mem: &self.mem,
            pos: at.pos,
            len: at.len,
        }
    }

    /// Consumes the message [`peek`](Self::peek) found: its room goes back to the producer.
    /// Call `producer_needs_wake` after.
    pub(crate) fn release(&mut self, at: Peeked) {
        debug_assert_eq!(at.pos, self.read + RECORD_HEADER as u64);
        self.read = self.read.wrapping_add(record_len(at.len));
        // SeqCst (at least Release): our reads of the record happen-before the producer's
        // reuse of these bytes (it loads `read`); SeqCst for the Dekker pairing in
        // `producer_needs_wake`.
        self.mem.word(OFF_READ).store(self.read, Ordering::SeqCst);
    }

    /// After consuming: whether the producer announced waiting for space and must be woken.
    pub(crate) fn producer_needs_wake(&mut self) -> bool {
        // Dekker: our SeqCst store of `read` (or `rx_closed`) precedes this SeqCst load; the
        // producer's SeqCst store of `tx_wait` precedes its SeqCst re-check of `read`: either
        // its re-check sees the space, or we see its announcement.
        let wait = self.mem.word(OFF_TX_WAIT).load(Ordering::SeqCst);
        if wait % 2 == 1 && wait != self.rang {
            self.rang = wait;
            true
        } else {
            false
        }
    }

    /// Announces that we are about to wait for a message. Call `ready` again after this and
    /// before waiting.
    pub(crate) fn announce_park(&mut self) {
        if self.park % 2 == 0 {
            self.park += 1;
            // SeqCst, then `ready` loads the header word SeqCst (Dekker, see
            // `consumer_needs_wake`).
            self.mem
                .word(OFF_RX_PARK)
                .store(self.park, Ordering::SeqCst);
        }
    }

    /// Withdraws a parking announcement.
    pub(crate) fn cancel_park(&mut self) {
        if self.park % 2 == 1 {
            self.park += 1;
            self.mem
                .word(OFF_RX_PARK)
                .store(self.park, Ordering::Relaxed);
        }
    }

    /// Says that we will read no more: the producer's sends fail with `PeerClosed`. Returns
    /// whether the producer must be woken (it waits for space).
    pub(crate) fn close(&mut self) -> bool {
        self.cancel_park();
        self.mem.word(OFF_RX_CLOSED).store(1, Ordering::SeqCst);
        self.producer_needs_wake()
    }
}

/// An in-process region for tests and the fuzz target: zeroed heap memory, 128-aligned.
pub(crate) struct HeapRegion {
    ptr: *mut u8,
    len: usize,
}

impl HeapRegion {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), LINE).expect("layout")
    }

    /// A zeroed region of `len` bytes.
    pub(crate) fn new(len: usize) -> HeapRegion {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        HeapRegion { ptr, len }
    }
}

// SAFETY: the allocation lives until drop, is `len` bytes and 128-aligned.
unsafe impl SharedRegion for HeapRegion {
    fn base(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

// SAFETY: the region is plain memory only accessed through atomics and raw copies.
unsafe impl Send for HeapRegion {}
// SAFETY: as above.
unsafe impl Sync for HeapRegion {}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// Runs a ring pair over a segment whose ring-A header words and data come from `input`
/// (fuzzing and randomized tests): any outcome but a panic or out-of-bounds access is fine.
///
/// Input: word 0 selects variants, word 1 is the consumer's `read` as the producer finds it,
/// word 2 the `tx_closed` flag, the rest the data area. When selected, the header words of
/// the record chain the consumer will walk get valid stamps (keeping their lengths), so the
/// fuzzer reaches the length checks and copies without guessing stamps.
pub(crate) fn fuzz_one(input: &[u8]) {
    let cap = MIN_CAPACITY;
    let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
    init_segment(&*region, cap);
    let word_of = |i: usize| -> u64 {
        let mut b = [0u8; 8];
        for (k, slot) in b.iter_mut().enumerate() {
            *slot = input.get(i * 8 + k).copied().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let header = SEGMENT_HEADER;
    let data = header + RING_HEADER;
    // The first words of input choose the indices and flags, small values more likely.
    let sel = word_of(0);
    let read = match sel % 2 {
        0 => word_of(1) % (2 * cap as u64 + 64),
        _ => word_of(1),
    };
    let closed = word_of(2) % 3;
    let rest = input.get(24..).unwrap_or(&[]);
    // SAFETY: header words of ring A inside the region; the data copy stays within the data
    // area (at most `cap` bytes).
    unsafe {
        let base = region.base();
        AtomicU64::from_ptr(base.add(header + OFF_READ).cast()).store(read, Ordering::Relaxed);
        AtomicU64::from_ptr(base.add(header + OFF_TX_CLOSED).cast())
            .store(closed, Ordering::Relaxed);
        ptr::copy_nonoverlapping(rest.as_ptr(), base.add(data), rest.len().min(cap));
    }
    let mem = RingMem::new(region.clone(), cap, Which::A);
    if sel & 2 != 0 {
        // Stamp the chain of records from position 0 the consumer will follow, keeping each
        // header's length (whatever its size: the consumer must refuse bad ones).
        let mut pos = 0u64;
        for _ in 0..64 {
            let w = mem.slot(pos).load(Ordering::Relaxed);
            if w == EMPTY {
                break;
            }
            let len = w as u32;
            mem.slot(pos)
                .store(header_word_raw(pos, len), Ordering::Relaxed);
            pos += if len == SKIP_LEN {
                cap as u64 - pos % cap as u64
            } else {
                record_len(len as usize)
            };
        }
    }
    let mut c = Consumer::new(region.clone(), cap, Which::A, max_message(cap));
    for _ in 0..64 {
        match c.try_pop() {
            Ok(Pop::Message(m)) => assert!(m.len() <= max_message(cap)),
            Ok(_) | Err(_) => break,
        }
    }
    // A consumer whose limit is above what the ring holds still refuses oversized records.
    let mut c = Consumer::new(region.clone(), cap, Which::A, usize::MAX);
    for _ in 0..64 {
        match c.try_pop() {
            Ok(Pop::Message(m)) => assert!(m.len() <= max_message(cap)),
            Ok(_) | Err(_) => break,
        }
    }
    let mut p = Producer::new(region.clone(), cap, Which::A);
    for len in [0usize, 1, 100, 2000, max_message(cap), SKIP_MIN, 1500] {
        let _ = p.try_push(&vec![0xab; len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cap: usize) -> (Producer, Consumer, Arc<dyn SharedRegion>) {
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
        init_segment(&*region, cap);
        assert_eq!(check_segment(&*region), Ok(cap));
        let p = Producer::new(region.clone(), cap, Which::A);
        let c = Consumer::new(region.clone(), cap, Which::A, max_message(cap));
        (p, c, region)
    }

    fn word(region: &Arc<dyn SharedRegion>, cap: usize, which: Which, off: usize) -> &AtomicU64 {
        let header = match which {
            Which::A => SEGMENT_HEADER,
            Which::B => SEGMENT_HEADER + RING_HEADER + cap,
        };
        // SAFETY: test helper; offsets are header words inside the region.
        unsafe { AtomicU64::from_ptr(region.base().add(header + off).cast()) }
    }

    /// A tiny deterministic generator (xorshift), so the randomized tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn empty_then_one_message() {
        let (mut p, mut c, _r) = pair(4096);
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        assert!(p.try_push(b"hello").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"hello".to_vec())));
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        assert!(p.try_push(b"").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![])));
    }

    #[test]
    fn exact_capacity_message_fits_an_empty_ring_at_any_position() {
        let cap = 4096;
        let (mut p, mut c, _r) = pair(cap);
        let big: Vec<u8> = (0..max_message(cap)).map(|i| i as u8).collect();
        for shift in [0usize, 8, 24, 1000, 4088] {
            // Move the indices to `shift`, then send a message filling the whole ring.
            if shift > 0 {
                assert!(p.try_push(&vec![9u8; shift - 8]).unwrap());
                assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m.len() == shift - 8));
            }
            assert!(p.try_push(&big).unwrap(), "shift {shift}");
            assert!(!p.try_push(b"").unwrap(), "ring must be full");
            assert_eq!(c.try_pop(), Ok(Pop::Message(big.clone())));
        }
    }

    #[test]
    fn padding_is_zeroed_over_old_bytes() {
        let cap = 4096;
        let (mut p, mut c, r) = pair(cap);
        // Move to the middle of the data area, scribble there, then send a short message.
        assert!(p.try_push(&[0xff; 4000]).unwrap());
        assert!(matches!(c.try_pop(), Ok(Pop::Message(_))));
        let at = p.write as usize % cap;
        let data = SEGMENT_HEADER + RING_HEADER + at;
        // SAFETY: test: the 16 bytes at `at` lie inside ring A's data area (at + 16 <= cap).
        unsafe { ptr::write_bytes(r.base().add(data), 0xee, 16) };
        let pos = p.write;
        assert!(p.try_push(b"abc").unwrap());
        let mut rec = [0u8; 16];
        // SAFETY: as above.
        unsafe { ptr::copy_nonoverlapping(r.base().add(data), rec.as_mut_ptr(), 16) };
        let mut want = [0u8; 16];
        want[..8].copy_from_slice(&(3 | (stamp(pos) as u64) << 32).to_le_bytes());
        want[8..11].copy_from_slice(b"abc");
        assert_eq!(rec, want);
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"abc".to_vec())));
    }

    /// Moves both indices to ring position `pos` (a multiple of 8) with one record.
    fn advance_to(p: &mut Producer, c: &mut Consumer, pos: usize) {
        assert!(pos >= 8 && pos % 8 == 0);
        assert!(p.try_push(&vec![7u8; pos - 8]).unwrap());
        assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m.len() == pos - 8));
    }

    /// Writes `msg` into a reserved slot through a `FrameWriter` over its raw regions.
    fn write_slot(slot: &mut Slot<'_>, msg: &[u8]) -> bool {
        let (a, alen, b, blen) = slot.regions();
        assert_eq!(alen + blen, msg.len());
        // SAFETY: test; `regions` guarantees the regions while the slot lives.
        let mut w = unsafe { ductwork_core::FrameWriter::from_raw_parts(a, alen, b, blen) };
        assert!(w.put(msg));
        w.is_complete()
    }

    #[test]
    fn reserved_records_are_published_as_try_push_publishes_them() {
        let cap = 4096;
        // Positions: at the start, in the middle, the payload split 8 / rest at the end, the
        // header in the last word (payload wholly at the start), and an exact fit.
        // And headers at every offset in a cache line, so `fill` (behind `try_push`) splits
        // the payload at the line boundary in every way: before, inside, after the payload.
        for (pos, len) in [
            (8, 100),
            (56, 100),
            (64, 56),
            (64, 57),
            (120, 3),
            (128, 0),
            (184, 300),
            (1000, 333),
            (cap - 16, 100),
            (cap - 8, 50),
            (8, 4080),
        ] {
            let (mut p1, mut c1, r1) = pair(cap);
            let (mut p2, mut c2, r2) = pair(cap);
            advance_to(&mut p1, &mut c1, pos);
            advance_to(&mut p2, &mut c2, pos);
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            assert!(p1.try_push(&msg).unwrap());
            let mut slot = p2.reserve(len).unwrap().expect("room");
            assert!(!slot.fill(&vec![0; len + 1]), "a wrong length is refused");
            let (_, first_len, _, second_len) = slot.regions();
            let split = (pos + 8) % cap;
            assert_eq!(first_len, len.min(cap - split), "pos {pos}");
            assert_eq!(second_len, len - first_len);
            assert!(write_slot(&mut slot, &msg));
            slot.publish();
            // Byte for byte the same segment (header words, record, padding).
            let (mut a, mut b) = (vec![0u8; segment_len(cap)], vec![0u8; segment_len(cap)]);
            // SAFETY: test; both regions are `segment_len(cap)` bytes.
            unsafe {
                ptr::copy_nonoverlapping(r1.base(), a.as_mut_ptr(), a.len());
                ptr::copy_nonoverlapping(r2.base(), b.as_mut_ptr(), b.len());
            }
            assert!(a == b, "pos {pos} len {len}: segments differ");
            assert_eq!(c2.try_pop(), Ok(Pop::Message(msg)));
            assert_eq!(c2.try_pop(), Ok(Pop::Empty));
        }
    }

    #[test]
    fn a_dropped_slot_publishes_nothing() {
        let cap = 4096;
        let (mut p, mut c, _r) = pair(cap);
        advance_to(&mut p, &mut c, cap - 16);
        {
            let mut slot = p.reserve(100).unwrap().expect("room");
            let (a, alen, b, blen) = slot.regions();
            // SAFETY: test; as in `write_slot`.
            let mut w = unsafe { ductwork_core::FrameWriter::from_raw_parts(a, alen, b, blen) };
            assert!(w.put(&[0xee; 60]));
            assert!(!w.put(&[0xee; 41]), "past the announced length");
            assert!(!w.is_complete());
        }
        assert_eq!(c.try_pop(), Ok(Pop::Empty), "nothing published");
        assert!(p.try_push(b"next").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"next".to_vec())));
        // Full ring: no slot; closed consumer: an error, as for try_push.
        assert!(p.try_push(&vec![1u8; 4000]).unwrap());
        assert!(p.reserve(100).unwrap().is_none());
        c.close();
        assert!(matches!(p.reserve(1), Err(RingError::PeerClosed)));
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_consume() {
        let (mut p, mut c, _r) = pair(4096);
        let mut n = 0;
        while p.try_push(&[n as u8; 100]).unwrap() {
            n += 1;
        }
        assert_eq!(n, 4096 / 112);
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![0; 100])));
        assert!(p.try_push(&[99; 100]).unwrap());
        for i in 1..n {
            assert_eq!(c.try_pop(), Ok(Pop::Message(vec![i as u8; 100])));
        }
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![99; 100])));
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
    }

    /// Pushes random messages of up to `max_len` bytes and pops (one turn in `pop_every`)
    /// for 20,000 turns, then drains: every message arrives whole and in order. Returns how
    /// many pushes started a new lap early (a skip record before them).
    fn random_push_pop(cap: usize, seed: u64, pop_every: u64, max_len: u64) -> u32 {
        let (mut p, mut c, _r) = pair(cap);
        let mut rng = Rng(seed);
        let mut sent = std::collections::VecDeque::new();
        let mut skips = 0;
        for round in 0..20_000u32 {
            if rng.next() % pop_every != 0 {
                let len = (rng.next() % max_len) as usize;
                let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
                let before = p.write;
                if p.try_push(&msg).unwrap() {
                    if p.write - before != record_len(len) {
                        skips += 1;
                    }
                    sent.push_back(msg);
                }
            } else {
                match c.try_pop().unwrap() {
                    Pop::Message(m) => assert_eq!(Some(m), sent.pop_front()),
                    Pop::Empty => assert!(sent.is_empty()),
                    Pop::Closed | Pop::Abandoned => unreachable!(),
                }
            }
        }
        while let Pop::Message(m) = c.try_pop().unwrap() {
            assert_eq!(Some(m), sent.pop_front());
        }
        assert!(sent.is_empty());
        skips
    }

    #[test]
    fn wrap_around_many_sizes_keeps_order_and_content() {
        random_push_pop(4096, 0x1234_5678, 3, 700);
    }

    #[test]
    fn a_ping_pong_of_large_messages_reuses_the_start_of_the_ring() {
        let cap = 1 << 16;
        let (mut p, mut c, r) = pair(cap);
        let len = 5000;
        let rec = record_len(len);
        for k in 0..101u32 {
            let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ k) as u8).collect();
            assert!(p.try_push(&msg).unwrap());
            // Two records at most, then a skip back to offset 0.
            assert!(
                p.write % cap as u64 <= 2 * rec,
                "message {k} ends at {}",
                p.write
            );
            assert_eq!(c.try_pop(), Ok(Pop::Message(msg)), "message {k}");
            assert_eq!(c.try_pop(), Ok(Pop::Empty));
        }
        // After an even number of messages the last one followed a skip record, whose
        // header is where the third record would have gone.
        let skip = slot_at_cap(&r, cap, 2 * rec as usize).load(Ordering::Relaxed);
        assert_eq!(skip as u32, SKIP_LEN);
        // Small messages never skip; neither does a large one while the ring holds data.
        let (mut p, mut c, _r) = pair(cap);
        for _ in 0..100 {
            assert!(p.try_push(&[1; SKIP_MIN - 1]).unwrap());
            assert!(matches!(c.try_pop(), Ok(Pop::Message(_))));
        }
        assert_eq!(p.write, 100 * record_len(SKIP_MIN - 1));
        let (mut p, mut c, _r) = pair(cap);
        assert!(p.try_push(&[1; 20_000]).unwrap());
        assert!(p.try_push(&[2; 20_000]).unwrap());
        assert!(matches!(c.try_pop(), Ok(Pop::Message(_))));
        assert!(p.try_push(&[3; 5000]).unwrap());
        assert_eq!(
            p.write,
            2 * record_len(20_000) + record_len(5000),
            "no skip"
        );
        for want in [2u8, 3] {
            assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m[0] == want));
        }
    }

    #[test]
    fn a_skip_then_close_delivers_the_message_then_closed() {
        let cap = 1 << 16;
        let (mut p, mut c, _r) = pair(cap);
        for _ in 0..2 {
            assert!(p.try_push(&[5; 4000]).unwrap());
            assert!(matches!(c.try_pop(), Ok(Pop::Message(_))));
        }
        assert!(p.try_push(&[6; 4000]).unwrap());
        assert_eq!(
            p.write % cap as u64,
            record_len(4000),
            "skipped to the start"
        );
        p.close();
        assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m == [6; 4000]));
        assert_eq!(c.try_pop(), Ok(Pop::Closed));
        // A slot reserved after a skip and dropped publishes nothing; the skip alone is
        // consumed as nothing.
        let (mut p, mut c, _r) = pair(cap);
        for _ in 0..2 {
            assert!(p.try_push(&[5; 4000]).unwrap());
            assert!(matches!(c.try_pop(), Ok(Pop::Message(_))));
        }
        let unsent = p.reserve(4000).unwrap().expect("room");
        assert_eq!(unsent.len(), 4000);
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        assert_eq!(c.read % cap as u64, 0, "the skip was followed");
        assert!(p.try_push(b"after").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"after".to_vec())));
    }

    #[test]
    fn misplaced_skip_records_are_errors_not_panics() {
        let cap = 4096;
        // At offset 0 (a whole lap), misstamped, and a skip leading to another skip.
        for (at, word, second) in [
            (0usize, header_word_raw(0, SKIP_LEN), None),
            (1000, header_word_raw(8, SKIP_LEN), None),
            (
                1000,
                header_word_raw(1000, SKIP_LEN),
                Some(header_word_raw(4096, SKIP_LEN)),
            ),
        ] {
            let (mut p, mut c, r) = pair(cap);
            if at > 0 {
                advance_to(&mut p, &mut c, at);
            }
            if let Some(w) = second {
                slot_at(&r, 0).store(w, Ordering::Relaxed);
            }
            slot_at(&r, at).store(word, Ordering::Relaxed);
            let got = c.try_pop();
            assert!(matches!(got, Err(RingError::Corrupt(_))), "{at}: {got:?}");
        }
        // A well-formed skip: followed, nothing delivered, then the record at offset 0.
        let (mut p, mut c, r) = pair(cap);
        advance_to(&mut p, &mut c, 1000);
        slot_at(&r, 0).store(header_word(4096, 3), Ordering::Relaxed);
        slot_at(&r, 1000).store(header_word_raw(1000, SKIP_LEN), Ordering::Relaxed);
        assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m.len() == 3));
    }

    #[test]
    fn random_sizes_with_skips_keep_order_and_content() {
        let skips = random_push_pop(1 << 14, 0xfeed_beef, 2, 3000);
        assert!(skips > 20, "skips happened: {skips}");
    }

    #[test]
    fn close_delivers_remaining_then_closed() {
        let (mut p, mut c, _r) = pair(4096);
        p.try_push(b"a").unwrap();
        p.try_push(b"b").unwrap();
        p.close();
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"a".to_vec())));
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"b".to_vec())));
        assert_eq!(c.try_pop(), Ok(Pop::Closed));
        assert_eq!(c.try_pop(), Ok(Pop::Closed));
    }

    #[test]
    fn abandon_delivers_remaining_then_abandoned() {
        let (mut p, mut c, _r) = pair(4096);
        p.try_push(b"a").unwrap();
        p.abandon();
        assert!(!p.close(), "closing twice does nothing");
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"a".to_vec())));
        assert_eq!(c.try_pop(), Ok(Pop::Abandoned));
    }

    #[test]
    fn consumer_close_makes_sends_fail() {
        let (mut p, mut c, _r) = pair(4096);
        assert!(!c.close());
        assert_eq!(p.try_push(b"x"), Err(RingError::PeerClosed));
    }

    #[test]
    fn too_large_for_the_consumer_limit() {
        let cap = 4096;
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
        init_segment(&*region, cap);
        let mut p = Producer::new(region.clone(), cap, Which::B);
        let mut c = Consumer::new(region.clone(), cap, Which::B, 100);
        p.try_push(&[1; 101]).unwrap();
        assert_eq!(c.try_pop(), Err(RingError::TooLarge { len: 101, max: 100 }));
    }

    #[test]
    fn wake_announcements() {
        let (mut p, mut c, _r) = pair(4096);
        p.try_push(b"x").unwrap();
        assert!(!p.consumer_needs_wake(), "nobody parked");
        c.try_pop().unwrap();
        c.announce_park();
        assert!(!c.ready());
        p.try_push(b"y").unwrap();
        assert!(p.consumer_needs_wake(), "parked consumer is woken");
        p.try_push(b"z").unwrap();
        assert!(!p.consumer_needs_wake(), "one wake per parking");
        c.cancel_park();
        c.announce_park();
        p.try_push(b"w").unwrap();
        assert!(p.consumer_needs_wake(), "a new parking is woken again");
        // The producer side.
        while p.try_push(&[0; 500]).unwrap() {}
        p.announce_wait();
        assert!(!p.has_space(500).unwrap());
        c.try_pop().unwrap();
        assert!(c.producer_needs_wake());
        c.try_pop().unwrap();
        assert!(!c.producer_needs_wake());
        p.cancel_wait();
    }

    /// The header slot at ring offset `at` of ring A's data area.
    fn slot_at(region: &Arc<dyn SharedRegion>, at: usize) -> &AtomicU64 {
        slot_at_cap(region, 4096, at)
    }

    /// The header slot at ring offset `at` of ring A's data area of `cap` bytes.
    fn slot_at_cap(region: &Arc<dyn SharedRegion>, cap: usize, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at < cap && region.len() >= segment_len(cap));
        // SAFETY: test helper; an 8-aligned word inside ring A's data area (checked above).
        unsafe { AtomicU64::from_ptr(region.base().add(SEGMENT_HEADER + RING_HEADER + at).cast()) }
    }

    #[test]
    fn a_wrong_header_word_is_an_error_not_a_panic() {
        let cap = 4096;
        for (at, bad) in [
            (0u64, 0u64),
            (0, header_word(8, 5)),
            (0, header_word(cap as u64, 5)),
            (0, EMPTY - 1),
            (0, 0xffff_ffff_0000_0000),
            (1000, header_word(1000u64.wrapping_sub(cap as u64), 3)),
            (1000, header_word(1000 + cap as u64, 3)),
            (1000, 12),
        ] {
            let (mut p, mut c, r) = pair(cap);
            if at > 0 {
                advance_to(&mut p, &mut c, at as usize);
            }
            assert_eq!(c.try_pop(), Ok(Pop::Empty));
            slot_at(&r, at as usize % cap).store(bad, Ordering::Relaxed);
            assert!(c.has_message(), "something to report");
            assert!(
                matches!(c.try_pop(), Err(RingError::Corrupt(_))),
                "header {bad:#x} at {at}"
            );
        }
    }

    #[test]
    fn stale_bytes_imitating_headers_are_never_delivered() {
        let cap = 4096;
        let (mut p, mut c, r) = pair(cap);
        // One record filling the ring whose payload is, at every 8-aligned ring offset, a
        // header word that would be valid there on the next lap (a zero-length message).
        let len = max_message(cap);
        let mut msg = vec![0u8; len];
        for (i, w) in msg.chunks_exact_mut(8).enumerate() {
            let at = 8 + 8 * i as u64;
            w.copy_from_slice(&header_word(at + cap as u64, 0).to_le_bytes());
        }
        assert!(p.try_push(&msg).unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(msg)));
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        // The next lap: after every message the next slot says EMPTY, never a stale fake.
        let mut rng = Rng(77);
        for k in 0..200u32 {
            let n = (rng.next() % 300) as usize;
            let m: Vec<u8> = (0..n).map(|i| (i as u32 ^ k) as u8).collect();
            assert!(p.try_push(&m).unwrap());
            assert_eq!(c.try_pop(), Ok(Pop::Message(m)), "message {k}");
            assert_eq!(c.try_pop(), Ok(Pop::Empty), "after message {k}");
            assert_eq!(
                slot_at(&r, (p.write % cap as u64) as usize).load(Ordering::Relaxed),
                EMPTY
            );
        }
    }

    #[test]
    fn a_record_ending_at_the_end_of_the_data_area_empties_offset_zero() {
        let cap = 4096;
        let (mut p, mut c, r) = pair(cap);
        advance_to(&mut p, &mut c, 8);
        // Leave a fake header for the next lap at offset 0.
        slot_at(&r, 0).store(header_word(cap as u64, 0), Ordering::Relaxed);
        // A record from position 8 to exactly `cap`: payload cap - 16 bytes.
        let big = vec![3u8; cap - 16];
        assert!(p.try_push(&big).unwrap());
        assert_eq!(slot_at(&r, 0).load(Ordering::Relaxed), EMPTY);
        assert_eq!(c.try_pop(), Ok(Pop::Message(big)));
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        assert!(p.try_push(b"wrapped").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(b"wrapped".to_vec())));
    }

    #[test]
    fn a_full_ring_keeps_one_word_of_slack() {
        let cap = 4096;
        let (mut p, mut c, _r) = pair(cap);
        // Two records (2048 and 2040 bytes) use all but the slack word.
        let (one, two) = (2040, 2032);
        assert!(p.try_push(&vec![1u8; one]).unwrap());
        assert!(p.try_push(&vec![2u8; two]).unwrap());
        assert_eq!(p.write, cap as u64 - 8);
        assert!(
            !p.has_space(0).unwrap(),
            "an empty record needs 8 + 8 bytes"
        );
        assert!(!p.try_push(b"").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![1u8; one])));
        assert!(p.try_push(b"").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![2u8; two])));
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![])));
        assert_eq!(c.try_pop(), Ok(Pop::Empty));
        // The largest message, and one byte more is refused before touching the ring.
        assert!(p.try_push(&vec![4u8; max_message(cap)]).unwrap());
        assert!(!p.try_push(b"").unwrap());
        assert_eq!(c.try_pop(), Ok(Pop::Message(vec![4u8; max_message(cap)])));
        assert!(matches!(
            p.reserve(max_message(cap) + 1),
            Err(RingError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_fresh_segment_is_empty_in_both_directions() {
        let cap = 4096;
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
        init_segment(&*region, cap);
        for which in [Which::A, Which::B] {
            let mut c = Consumer::new(region.clone(), cap, which, max_message(cap));
            assert!(!c.ready());
            assert_eq!(c.try_pop(), Ok(Pop::Empty));
        }
        // Without `init_segment` a zeroed slot is corruption, not a fake message.
        let raw: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
        let mut c = Consumer::new(raw, cap, Which::A, max_message(cap));
        assert!(matches!(c.try_pop(), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn garbage_read_index_is_an_error_not_a_panic() {
        let cap = 4096;
        for bad in [3u64, 8, cap as u64 * 2, u64::MAX - 7] {
            let (mut p, _c, r) = pair(cap);
            // Fill the ring so the producer must reload `read`.
            while p.try_push(&[0; 200]).unwrap() {}
            word(&r, cap, Which::A, OFF_READ).store(bad, Ordering::Relaxed);
            let got = p.try_push(&[0; 200]);
            if bad == 8 {
                // Plausible (one record consumed) but a lie about 8 bytes: not enough space
                // for 208 bytes, so still "full", and no error is the right answer.
                assert_eq!(got, Ok(false));
            } else {
                assert!(
                    matches!(got, Err(RingError::Corrupt(_))),
                    "read {bad}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn garbage_length_is_an_error_not_a_panic() {
        let cap = 4096;
        let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(segment_len(cap)));
        init_segment(&*region, cap);
        // Well-stamped headers with lengths the ring cannot hold: Corrupt even for a
        // consumer without a limit of its own; over the consumer's limit: TooLarge, before
        // anything is allocated.
        for (max, len, tolerant) in [
            (usize::MAX, cap - 15, false),
            (usize::MAX, cap, false),
            (usize::MAX, u32::MAX as usize - 1, false),
            (100, 101, true),
            (max_message(cap), u32::MAX as usize - 2, true),
        ] {
            let mut c = Consumer::new(region.clone(), cap, Which::A, max);
            let header = len as u64 | (stamp(0) as u64) << 32;
            slot_at(&region, 0).store(header, Ordering::Relaxed);
            let got = c.try_pop();
            if tolerant {
                assert!(
                    matches!(got, Err(RingError::TooLarge { .. })),
                    "{len}: {got:?}"
                );
            } else {
                assert!(matches!(got, Err(RingError::Corrupt(_))), "{len}: {got:?}");
            }
        }
        // The largest valid length is accepted.
        let mut c = Consumer::new(region.clone(), cap, Which::A, usize::MAX);
        slot_at(&region, 0).store(header_word(0, cap - 16), Ordering::Relaxed);
        assert!(matches!(c.try_pop(), Ok(Pop::Message(m)) if m.len() == cap - 16));
    }

    #[test]
    fn bad_segment_headers_are_refused() {
        let cap = 4096;
        let region = HeapRegion::new(segment_len(cap));
        assert!(check_segment(&region).is_err(), "zero magic");
        init_segment(&region, cap);
        assert_eq!(check_segment(&region), Ok(cap));
        // SAFETY: test: the capacity word of the segment header.
        let capw = unsafe { AtomicU64::from_ptr(region.base().add(8).cast()) };
        for bad in [0u64, 100, 4097, 8192, u64::MAX] {
            capw.store(bad, Ordering::Relaxed);
            assert!(check_segment(&region).is_err(), "capacity {bad}");
        }
        capw.store(cap as u64, Ordering::Relaxed);
        assert_eq!(check_segment(&region), Ok(cap));
        // A segment of the previous layout is named as such.
        // SAFETY: test: the magic word of the segment header.
        let magic = unsafe { AtomicU64::from_ptr(region.base().cast()) };
        magic.store(MAGIC_V1, Ordering::Relaxed);
        let e = check_segment(&region).unwrap_err();
        assert!(e.contains("layout v1") && e.contains("same version"), "{e}");
        magic.store(MAGIC_V2, Ordering::Relaxed);
        let e = check_segment(&region).unwrap_err();
        assert!(e.contains("layout v2") && e.contains("layout v3"), "{e}");
        magic.store(0x1234, Ordering::Relaxed);
        assert!(check_segment(&region).unwrap_err().contains("wrong magic"));
        let small = HeapRegion::new(16);
        assert!(check_segment(&small).is_err());
    }

    /// Randomized: whatever bytes the peer leaves in a segment (header words and data), the
    /// consumer and producer return messages or errors, never panic or touch memory outside.
    /// The fuzz target in `fuzz/` runs the same body on libFuzzer input.
    #[test]
    fn random_segment_contents_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut bytes = vec![0u8; 512];
            for b in bytes.iter_mut() {
                *b = rng.next() as u8;
            }
            fuzz_one(&bytes);
        }
    }

    #[test]
    fn fuzz_body_handles_short_and_empty_input() {
        fuzz_one(&[]);
        fuzz_one(&[0xff; 3]);
    }

    /// Concurrent producer and consumer threads with parking by spinning: the orderings hold
    /// under real concurrency.
    #[test]
    fn two_threads_stream_in_order() {
        let (mut p, mut c, _r) = pair(4096);
        const N: u32 = 200_000;
        let t = std::thread::spawn(move || {
            for i in 0..N {
                let len = (i % 50) as usize;
                let msg: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
                while !p.try_push(&msg).unwrap() {
                    std::hint::spin_loop();
                }
            }
            p.close();
        });
        let mut i = 0u32;
        loop {
            match c.try_pop().unwrap() {
                Pop::Message(m) => {
                    let len = (i % 50) as usize;
                    let want: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
                    assert_eq!(m, want, "message {i}");
                    i += 1;
                }
                Pop::Empty => std::hint::spin_loop(),
                Pop::Closed | Pop::Abandoned => break,
            }
        }
        assert_eq!(i, N);
        t.join().unwrap();
    }
}
