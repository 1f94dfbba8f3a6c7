//! What request/reply costs on top of a plain channel round trip, counted, not timed: the
//! allocations a lone caller and its server make per call, next to a plain `Channel` echo over
//! the same transport in the same run. The server runs on its own thread and runtime, as it
//! would in its own process, so each side's allocations are counted apart.
//!
//! `cost_profile` (ignored) runs `DW_COST_N` round trips of `DW_COST_MODE` (`plain` or
//! `reqrep`) over `DW_COST_EP` for an instruction profiler (callgrind) to count.

use ductwork::patterns::{Client, ClientOptions, Server};
use ductwork::Channel;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts allocations per thread (a const thread-local: reading it allocates nothing).
struct Counting;

thread_local! {
    // Already const: the lint misfires on the windows-gnu target's thread-local expansion.
    #[cfg_attr(windows, allow(clippy::missing_const_for_thread_local))]
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a plain
// thread-local cell that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above, for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Plain,
    ReqRep,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Allocations of each side over the measured round trips.
#[derive(Debug, Clone, Copy)]
struct Counted {
    client: u64,
    server: u64,
}

/// The server's window: allocations on its thread from the request `from` arrived to the
/// request `to` arrived (the same boundaries for both modes).
#[derive(Default)]
struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    fn see(&self, v: u64, from: u64, to: u64) {
        if v == from {
            self.start.store(allocs(), Ordering::SeqCst);
        }
        if v == to {
            self.end.store(allocs(), Ordering::SeqCst);
        }
    }

    fn count(&self) -> u64 {
        self.end.load(Ordering::SeqCst) - self.start.load(Ordering::SeqCst)
    }
}

/// Runs `warm` then `n` round trips of `mode` over `ep`, the server on its own thread; counts
/// each side's allocations over the `n` only.
fn round_trips(mode: Mode, ep: &str, warm: u64, n: u64) -> Counted {
    // Bound on the server's own runtime (a listener is tied to the runtime it was made on).
    let (at_tx, at_rx) = std::sync::mpsc::channel();
    let ep = ep.to_string();
    let window = Arc::new(Window::default());
    let seen = window.clone();
    let (from, to) = (warm, warm + n);
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = ductwork::bind(ep.as_str()).await.unwrap();
            at_tx.send(listener.endpoint().clone()).unwrap();
            match mode {
                Mode::Plain => {
                    let mut listener = listener;
                    let mut ch: Channel<u64> =
                        ductwork::accept_channel(&mut listener).await.unwrap();
                    while let Some(v) = ch.recv().await.unwrap() {
                        seen.see(v, from, to);
                        ch.send(&v).await.unwrap();
                    }
                }
                Mode::ReqRep => {
                    let done = Arc::new(tokio::sync::Notify::new());
                    let told = done.clone();
                    let handler = move |v: u64| {
                        seen.see(v, from, to);
                        if v == to {
                            told.notify_one();
                        }
                        std::future::ready(v)
                    };
                    let server = Server::new(listener, handler).spawn();
                    done.notified().await;
                    server.shutdown(Duration::from_secs(10)).await.unwrap();
                }
            }
        })
    });
    let at = at_rx.recv().unwrap();
    let client = runtime().block_on(async {
        let mut start = 0;
        let count;
        match mode {
            Mode::Plain => {
                let mut ch: Channel<u64> = ductwork::connect_channel(&at).await.unwrap();
                for i in 1..=to {
                    if i == from + 1 {
                        start = allocs();
                    }
                    ch.send(&i).await.unwrap();
                    assert_eq!(ch.recv().await.unwrap(), Some(i));
                }
                count = allocs() - start;
                ch.close().await.unwrap();
            }
            Mode::ReqRep => {
                let opts = ClientOptions {
                    timeout: None,
                    ..ClientOptions::default()
                };
                let ch = ductwork::connect_channel(&at).await.unwrap();
                let client = Client::<u64, u64>::with_options(ch, opts);
                for i in 1..=to {
                    if i == from + 1 {
                        start = allocs();
                    }
                    assert_eq!(client.call(i).await.unwrap(), i);
                }
                count = allocs() - start;
                client.close().await.unwrap();
            }
        }
        count
    });
    server.join().unwrap();
    Counted {
        client,
        server: window.count(),
    }
}

fn endpoints(case: &str) -> Vec<String> {
    let pid = std::process::id();
    let mut v = vec!["tcp://127.0.0.1:0".to_string()];
    if cfg!(unix) {
        let dir = std::env::temp_dir();
        v.push(format!(
            "unix://{}/dw-cost-{case}-{pid}.sock",
            dir.display()
        ));
        v.push(format!("shm://dw-cost-{case}-{pid}"));
    }
    v.push(format!("pipe://dw-cost-{case}-{pid}"));
    v
}

/// A lone caller's call allocates nothing per call that a plain round trip does not, on
/// either side: 2,000 calls may cost a handful of allocations more (a map growing once), not
/// one or more per call.
#[test]
fn a_lone_call_allocates_no_more_than_a_plain_round_trip() {
    const N: u64 = 2_000;
    for ep in endpoints("alloc") {
        let plain = round_trips(Mode::Plain, &ep, 200, N);
        let reqrep = round_trips(Mode::ReqRep, &ep, 200, N);
        eprintln!("{ep}: plain {plain:?}, reqrep {reqrep:?} over {N} round trips");
        assert!(
            reqrep.client <= plain.client + 8,
            "{ep}: the client allocated {} times in {N} calls, a plain channel {}",
            reqrep.client,
            plain.client
        );
        assert!(
            reqrep.server <= plain.server + 8,
            "{ep}: the server allocated {} times for {N} calls, a plain echo {}",
            reqrep.server,
            plain.server
        );
    }
}

/// For an instruction profiler: `DW_COST_MODE=plain|reqrep DW_COST_N=20000
/// DW_COST_EP=unix:///tmp/x.sock valgrind --tool=callgrind ... --ignored cost_profile`.
#[test]
#[ignore = "a profiling aid, run by hand"]
fn cost_profile() {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let mode = match var("DW_COST_MODE", "reqrep").as_str() {
        "plain" => Mode::Plain,
        _ => Mode::ReqRep,
    };
    let n: u64 = var("DW_COST_N", "10000").parse().unwrap();
    let ep = var("DW_COST_EP", "tcp://127.0.0.1:0");
    eprintln!("{:?}", round_trips(mode, &ep, 100, n));
}
