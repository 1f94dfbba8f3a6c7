//! Test support shared by every suite in `transports/tests` (the conformance suite, `shm.rs`,
//! `pipe_mailslot.rs`, `native_clients.rs`, `native_copydata.rs`): one way to run this test
//! binary again as a child process, unique names, the private socket path, the raw Win32
//! writer, a hand postcard encoder for foreign clients and a tiny random generator.
//!
//! Included by each test crate with `mod support;` (or `#[path]`); every suite uses a part.
#![allow(dead_code)] // each suite uses only some of the helpers

pub mod child;
#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod win32;

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// The generous upper bound on any wait for a peer: the first process in a fresh Wine prefix
/// can take many seconds to start. Only a bound against hangs, never a performance claim.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A name no other test (in this or another process) uses: `tag`, this pid and a counter.
/// Only letters, digits and `-` if `tag` has only those, as `Transport::local_endpoint` wants.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// `f`'s output, or an error saying that `what` hung for `d`.
pub async fn within<T>(what: &str, d: Duration, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| format!("{what}: no result within {} s (hang)", d.as_secs()))
}

/// `f`'s output, or a panic saying that `what` hung for [`DEADLINE`].
pub async fn must<T>(what: &str, f: impl Future<Output = T>) -> T {
    within(what, DEADLINE, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A two-worker tokio runtime, as every suite's cases and child roles use.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A tiny deterministic generator (xorshift64), so randomized tests need no crate and a
/// failure can be replayed from its seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point.
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// postcard's integer encoding by hand (a LEB128 varint), as a client in another language
/// would write it.
pub fn postcard_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}
