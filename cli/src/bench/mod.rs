//! `ductwork bench`: latency and throughput of every transport, next to raw OS baselines.
//!
//! For each transport this build has (or those named with `--transports`) and each payload
//! size, the bench starts a peer process (this same executable, `ductwork __peer`), warms up,
//! then measures the round-trip latency of typed messages (percentiles from an HdrHistogram)
//! and one-way throughput (see [`measure`] for the exact protocol). Every echoed message is
//! checked byte for byte; a reliable transport that loses or corrupts a message fails its cell.
//! A cell that fails or whose peer dies is skipped with a note after a deadline: the run goes
//! on.
//!
//! - **One-way transports** (mailslot, copydata): the parent binds endpoint A, the peer binds
//!   B; pings go over B and come back over A, so their latency is a real round trip through
//!   two one-way endpoints.
//! - **Best-effort transports** (udp): a ping without an echo within 200 ms counts as lost;
//!   throughput counts what arrived and the table shows the loss.
//! - **Baselines** (the `baselines` list): `raw-tcp` and `raw-unix` (plain tokio streams with a
//!   length header, no ductwork, no serde), `raw-cacheline` (busy-polled atomics on one shared
//!   cache line, 64 B), `raw-eventfd` (eventfd wake-ups, 64 B), `raw-memcpy` (one thread
//!   copying buffers) and `raw-shmcopy` (two processes copying messages into and out of a
//!   shared ring, busy-polled): the last two throughput only, at sizes of 64 KiB and up; see
//!   [`baseline`], [`raw`] and [`sys`].
//!   Built with the cargo feature `peer-iceoryx2` (Linux), also `peer-iceoryx2`: the same
//!   round trip over the iceoryx2 crate, every size (see `iox.rs`).
//! - **Variants**: `--transports` takes endpoint options after the scheme (`shm?spin=0`,
//!   `shm?capacity=8MiB`); each becomes its own row. The default run measures shm twice:
//!   spinning (`shm`) and always parked (`shm?spin=0`).
//!   Each transport row names its nearest baseline (the spinning `shm` row: `peer-iceoryx2`
//!   when built in) and the ratios: `p50` = latency / raw
//!   latency (lower is better), `throughput` = bytes/s / raw bytes/s (higher is better).
//! - **Patterns** (`--patterns`, see [`patterns`]): `unix+reqrep` and `shm+reqrep` (request/reply
//!   round trips through `ductwork::patterns`) and `unix+pubsub×100` (messages/s delivered to 100
//!   subscribers), compared with the plain channel row of the same transport in the same run.
//!   On by default at 64 B only: they add a few cells to a run of dozens (three per round
//!   when unix and shm are both measured), and the target is stated at 64 B;
//!   `--patterns all` measures every size and every reliable duplex transport, `none` skips.
//! - **Rounds** (`--rounds`, default 3): the cells of one size run that many times in turn,
//!   each for an equal share of `--duration` after its own warm-up, and the rounds are merged
//!   (histograms added, counts and times summed), so load drift hits a baseline and its
//!   transports alike.
//! - **nats** (`nats.rs`): measuring `nats://` needs a NATS server; the run starts a local
//!   `nats-server` when one is on the PATH and compares the `nats` rows with `raw-tcp` like
//!   `tcp`'s; without one they are skipped with a note.
//! - **Pinning** (`--pin`): `cross` puts parent and peer on two different CPUs, `same` on one,
//!   `none` lets the OS choose (Linux only; elsewhere the run is unpinned, with a note).
//!
//! Layout: each file uses only files further down this list, so their imports form no cycle.
//! - `run`: executes a plan's cells in rounds and builds the report's rows.
//! - [`plan`]: arguments -> [`plan::Plan`]: transports with their options, sizes, timing,
//!   pinning, and the cells to measure.
//! - [`baseline`]: the raw baselines, what each is and how to measure it.
//! - [`peer`]: the peer process, `ductwork __peer`.
//! - [`measure`], [`patterns`], [`raw`], [`sys`], `iox`, [`loan`]: how to measure a ductwork
//!   cell, a pattern cell, the raw streams and memcpy, shared memory (and CPU pinning),
//!   iceoryx2, and shm's zero-copy API (the `shm-loan` row).
//! - [`report`]: the table, the JSON file and the SVG plot.
//! - [`proto`]: what parent and peer share (peer spec, messages, the peer's handle).
//! - [`types`]: timing, results, the payload pattern.

pub mod baseline;
#[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
pub mod iox;
pub mod loan;
pub mod measure;
pub mod nats;
pub mod patterns;
pub mod peer;
pub mod plan;
pub mod proto;
pub mod raw;
pub mod report;
pub mod run;
pub mod sys;
pub mod types;

pub use plan::BenchArgs;

use crate::{EXIT_FAILURE, EXIT_USAGE};
use plan::{Names, Plan};
use report::{Machine, Report};

/// Runs `ductwork bench`; returns the exit code.
pub fn run(args: BenchArgs) -> i32 {
    match run_inner(&args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("ductwork bench: {msg}");
            code
        }
    }
}

/// Plan, run, report.
fn run_inner(args: &BenchArgs) -> Result<(), (i32, String)> {
    let fail = |m: String| (EXIT_FAILURE, m);
    // Before the plan pins this process: the server must not share the parent's CPU.
    let (_nats_server, nats_skipped) = nats::start(args);
    let mut plan = Plan::new(args).map_err(|m| (EXIT_USAGE, m))?;
    if let Some(note) = nats_skipped {
        plan.subjects.retain(|s| s.transport.scheme() != "nats");
        plan.notes.push(note);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    let mut names = Names::new().map_err(fail)?;
    plan.add_cells(&rt, &mut names)
        .map_err(|m| (EXIT_USAGE, m))?;
    let outcome = run::execute(&plan, &rt, &mut names);
    let p = plan.pinning;
    let mut notes = plan.notes;
    notes.extend(outcome.notes);
    let report = Report {
        machine: Machine {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: p.cpus,
            pin: p.pin,
            parent_cpu: p.parent_cpu,
            peer_cpu: p.peer_cpu,
            duration_s: plan.duration_s,
            rounds: plan.rounds,
            warmup_s: plan.timing.warmup.as_secs_f64(),
            elapsed_s: outcome.elapsed.as_secs_f64(),
        },
        results: outcome.results,
        baselines: outcome.baselines,
        patterns: outcome.patterns,
        notes,
    };
    print!("{}", report.table());
    report.write_json(&args.json).map_err(fail)?;
    report.write_svg(&args.plot).map_err(fail)?;
    println!(
        "\nwrote {} and {} ({:.1} s)",
        args.json.display(),
        args.plot.display(),
        outcome.elapsed.as_secs_f64()
    );
    Ok(())
}
