//! A shared mapping as the rings see it, written once for both OS layers: the pointer and
//! length, the [`SharedRegion`] promise, and unmapping on drop through the OS layer's
//! [`Unmap`] (`munmap` on Linux, `UnmapViewOfFile` on Windows).

use super::ring::SharedRegion;

/// The OS half of a [`Mapped`]: how to unmap it, and whatever it keeps alive.
pub(super) trait Unmap: Send + Sync + 'static {
    /// Unmaps the `len` bytes at `ptr` that this value's mapping call returned. Called once,
    /// when nothing uses the memory any more.
    fn unmap(&mut self, ptr: *mut u8, len: usize);
}

/// A live shared mapping of `len` bytes, unmapped on drop.
pub(super) struct Mapped<U: Unmap> {
    ptr: *mut u8,
    len: usize,
    os: U,
}

// SAFETY: the mapping is plain shared memory, only accessed through atomics and raw copies
// (see ring.rs); the pointer stays valid until drop.
unsafe impl<U: Unmap> Send for Mapped<U> {}
// SAFETY: as above.
unsafe impl<U: Unmap> Sync for Mapped<U> {}

impl<U: Unmap> Mapped<U> {
    /// Takes charge of a mapping.
    ///
    /// # Safety
    /// `ptr` must be a live shared mapping of `len` bytes, aligned to at least 128 bytes,
    /// that no access within `len` can fault (the object behind it cannot shrink), and that
    /// stays mapped until `os.unmap` is called.
    pub(super) unsafe fn new(ptr: *mut u8, len: usize, os: U) -> Mapped<U> {
        Mapped { ptr, len, os }
    }
}

// SAFETY: `new`'s contract is exactly the trait's: `ptr` is a live, 128-aligned mapping of
// `len` bytes that does not fault until drop.
unsafe impl<U: Unmap> SharedRegion for Mapped<U> {
    fn base(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl<U: Unmap> Drop for Mapped<U> {
    fn drop(&mut self) {
        // Nothing uses the memory any more: the rings hold the Arc that owns us.
        self.os.unmap(self.ptr, self.len);
    }
}
