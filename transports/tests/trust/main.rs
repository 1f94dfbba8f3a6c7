//! The trust suite (issue 11): every listening transport under hostile input, killed peers,
//! a thousand concurrent clients and descriptor exhaustion, with the listener (or the
//! victim) in a child process and the figures printed (`--nocapture` shows them).
//!
//! - `hostile`: per listening transport, thousands of malformed inputs (garbage, truncated
//!   frames, oversized headers, resets and processes killed mid-frame) while a good client
//!   keeps exchanging messages: no error for it, and the listener's peak RSS (`VmHWM` from
//!   `/proc/PID/status`) bounded.
//! - `killed`: kill -9 of either side mid-send and mid-receive on every reliable transport:
//!   the survivor gets `ConnectionLost` or `Closed` (never a clean end, never a hang).
//! - `crowd`: a thousand concurrent clients (shm: [`crowd::SHM_CLIENTS`]) held at once by one
//!   listener, each exchanging sequence-checked messages: nothing lost, duplicated, reordered.
//! - `exhaust`: a tls listener out of descriptors keeps its established client and accepts
//!   again afterwards (tcp, unix, pipe and shm are in `faults.rs`).
//! - `parse`: what the `endpoint_parse` fuzz target found, as plain tests.
//!
//! Loopback only; every child is stopped by its pid (`support::child`).
//!
//! On Windows (under Wine in CI) the parts that mean something there run (the `cfg(windows)`
//! items): `hostile` on tcp, pipe and shm (no memory bound: the figures come from `/proc`),
//! `killed` on pipe and shm, `crowd` on tcp, pipe and shm with `crowd::WIN_CLIENTS`, and
//! `parse`.
//! `docs/reliability.md` says why each other part stays on Linux.
#![cfg(any(target_os = "linux", windows))]

#[path = "../support/mod.rs"]
mod support;

mod crowd;
#[cfg(target_os = "linux")]
mod exhaust;
mod hostile;
mod killed;
mod parse;
mod roles;

use ductwork_core::Endpoint;

child_entry!(roles::run);

/// The endpoint to bind for `scheme` in a test named `tag`, as the conformance suite makes it.
pub fn local_endpoint(scheme: &str, tag: &str) -> String {
    let t = ductwork_transports::transports()
        .into_iter()
        .find(|t| t.scheme() == scheme)
        .unwrap_or_else(|| panic!("{scheme}:// is not built in"));
    t.local_endpoint(&support::unique(tag))
}

/// Resident and peak resident memory of process `pid` in KiB (`VmRSS`, `VmHWM`); `None`
/// where there is no `/proc` (Windows).
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    if cfg!(target_os = "linux") {
        Some(memory_kib(pid).unwrap_or_else(|e| panic!("{e}")))
    } else {
        None
    }
}

/// A memory figure for a report line: KiB, or "n/a".
pub fn kib(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v} KiB"))
}

/// Resident and peak resident memory of process `pid` in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
/// (Windows has no such limit: unlimited.)
#[cfg(windows)]
pub fn raise_nofile() -> u64 {
    u64::MAX
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
#[cfg(target_os = "linux")]
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The endpoint a listener child announced.
pub fn parse(ep: &str) -> Endpoint {
    Endpoint::parse(ep).unwrap_or_else(|e| panic!("announced endpoint: {e}"))
}
