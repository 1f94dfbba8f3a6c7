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
//!   [`raw`] and [`sys`].
//!   Built with the cargo feature `peer-iceoryx2` (Linux), also `peer-iceoryx2`: the same
//!   round trip over the iceoryx2 crate, every size (see `iox.rs`).
//! - **Variants**: `--transports` takes endpoint options after the scheme (`shm?spin=0`,
//!   `shm?capacity=8MiB`); each becomes its own row. The default run measures shm twice:
//!   spinning (`shm`) and always parked (`shm?spin=0`).
//!   Each transport row names its nearest baseline and the ratios: `p50` = latency / raw
//!   latency (lower is better), `throughput` = bytes/s / raw bytes/s (higher is better).
//! - **Rounds** (`--rounds`, default 3): the cells of one size run that many times in turn,
//!   each for an equal share of `--duration` after its own warm-up, and the rounds are merged
//!   (histograms added, counts and times summed), so load drift hits a baseline and its
//!   transports alike.
//! - **Pinning** (`--pin`): `cross` puts parent and peer on two different CPUs, `same` on one,
//!   `none` lets the OS choose (Linux only; elsewhere the run is unpinned, with a note).

#[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
pub mod iox;
pub mod measure;
pub mod peer;
pub mod raw;
pub mod report;
pub mod sys;

use super::{EXIT_FAILURE, EXIT_USAGE};
use clap::{Args, ValueEnum};
use ductwork::{Endpoint, ErrorKind, Transport};
use indicatif::{ProgressBar, ProgressStyle};
use measure::{Rtt, Throughput, Timing};
use peer::{BenchMsg, Job, Op, PeerSpec};
use report::{Machine, Report, Row};
use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

/// Default payload sizes: 64 B, 1 KiB, 64 KiB, 1 MiB.
pub const DEFAULT_SIZES: &[usize] = &[64, 1024, 64 * 1024, 1024 * 1024];
/// Default duration of each measurement, in seconds.
pub const DEFAULT_DURATION: f64 = 1.0;
/// Default number of rounds per cell.
pub const DEFAULT_ROUNDS: u32 = 3;

/// Where parent and peer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Parent and peer on two different CPUs.
    Cross,
    /// Parent and peer on the same CPU.
    Same,
    /// Let the OS choose.
    None,
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pin::Cross => "cross",
            Pin::Same => "same",
            Pin::None => "none",
        })
    }
}

/// Arguments of `ductwork bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Transports to measure, comma-separated, each optionally with endpoint options such as
    /// `shm?spin=0` (default: every transport in this build that can bind on this platform,
    /// plus `shm?spin=0`).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub transports: Option<Vec<String>>,
    /// Payload sizes, comma-separated, with optional KiB/MiB suffix (default: 64,1KiB,64KiB,1MiB).
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = parse_size_arg)]
    pub sizes: Option<Vec<usize>>,
    /// Seconds per measurement (latency and throughput each, all rounds together; default 1).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Rounds per cell (default 3): the cells of each size run this many times in turn, each
    /// round for an equal share of `--duration`, and the rounds are merged. A baseline and
    /// the transports compared with it thus sample the same moments of a machine whose load
    /// drifts, which keeps their ratios steady.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// CPU placement of parent and peer (default: cross when there are 2+ CPUs; pinning is
    /// Linux only, elsewhere the run is unpinned).
    #[arg(long, value_enum)]
    pub pin: Option<Pin>,
    /// Where to write the JSON results.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/ductwork-bench.json"
    )]
    pub json: PathBuf,
    /// Where to write the SVG plot.
    #[arg(long, value_name = "FILE", default_value = "target/ductwork-bench.svg")]
    pub plot: PathBuf,
    /// Testing aid: use the one-way setup (two endpoints, one per direction) for every
    /// transport, so that path is exercised on platforms without a one-way transport.
    #[arg(long, hide = true)]
    pub two_endpoints: bool,
}

fn parse_size_arg(s: &str) -> Result<usize, String> {
    let n = ductwork::parse_size(s)?;
    if n > 64 * 1024 * 1024 {
        return Err(format!("{s} is larger than the bench's limit of 64 MiB"));
    }
    Ok(n)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
        return Err(format!(
            "`{s}` must be more than 0 and at most 3600 seconds"
        ));
    }
    Ok(v)
}

/// The baselines and which transports compare with which.
pub const RAW_TCP: &str = "raw-tcp";
/// Plain Unix stream sockets.
pub const RAW_UNIX: &str = "raw-unix";
/// Busy-polled shared cache line.
pub const RAW_CACHELINE: &str = "raw-cacheline";
/// eventfd ping-pong.
pub const RAW_EVENTFD: &str = "raw-eventfd";
/// Single-thread memcpy bandwidth (throughput only).
pub const RAW_MEMCPY: &str = "raw-memcpy";
/// One-way copies through a shared ring between two processes (throughput only).
pub const RAW_SHMCOPY: &str = "raw-shmcopy";
/// The smallest size `raw-memcpy` and `raw-shmcopy` are measured at.
pub const MEMCPY_MIN_SIZE: usize = 64 * 1024;
/// Every baseline, in report order.
pub const ALL_BASELINES: &[&str] = &[
    RAW_CACHELINE,
    RAW_EVENTFD,
    RAW_SHMCOPY,
    RAW_MEMCPY,
    RAW_UNIX,
    RAW_TCP,
    PEER_IOX,
];
/// The same round trip over iceoryx2 (cargo feature `peer-iceoryx2`).
pub const PEER_IOX: &str = "peer-iceoryx2";
/// Whether this build measures [`PEER_IOX`] (on Linux; elsewhere it is skipped with a note).
const WANT_IOX: bool = cfg!(feature = "peer-iceoryx2");

/// The shm row with the spin budget set to zero (always park): measured by default next to
/// the spinning `shm` row.
pub const SHM_PARKED: &str = "shm?spin=0";

/// The baselines a row is compared with, nearest first. `name` is a scheme, optionally with
/// endpoint options (`shm?spin=0`).
pub fn baselines_for(name: &str) -> &'static [&'static str] {
    let (scheme, query) = name.split_once('?').unwrap_or((name, ""));
    match scheme {
        "tcp" => &[RAW_TCP],
        "unix" => &[RAW_UNIX],
        // On Unix, pipe:// and mailslot:// are Unix domain sockets.
        "pipe" | "mailslot" if cfg!(unix) => &[RAW_UNIX],
        // A parked receiver is woken by the OS, like the eventfd ping-pong; a spinning one
        // polls memory, like the cache-line ping-pong. Throughput compares with memcpy.
        "shm" if query.split('&').any(|kv| kv == "spin=0") => {
            if WANT_IOX {
                &[
                    RAW_EVENTFD,
                    RAW_CACHELINE,
                    RAW_SHMCOPY,
                    RAW_MEMCPY,
                    PEER_IOX,
                ]
            } else {
                &[RAW_EVENTFD, RAW_CACHELINE, RAW_SHMCOPY, RAW_MEMCPY]
            }
        }
        "shm" if WANT_IOX => &[
            RAW_CACHELINE,
            RAW_EVENTFD,
            RAW_UNIX,
            RAW_SHMCOPY,
            RAW_MEMCPY,
            PEER_IOX,
        ],
        "shm" => &[
            RAW_CACHELINE,
            RAW_EVENTFD,
            RAW_UNIX,
            RAW_SHMCOPY,
            RAW_MEMCPY,
        ],
        _ => &[],
    }
}

fn baseline_exists(name: &str) -> bool {
    match name {
        RAW_TCP | RAW_MEMCPY => true,
        RAW_UNIX => cfg!(unix),
        RAW_CACHELINE | RAW_EVENTFD | RAW_SHMCOPY => sys::HAS_SHM_BASELINES,
        PEER_IOX => cfg!(all(feature = "peer-iceoryx2", target_os = "linux")),
        _ => false,
    }
}

/// A transport to measure, with endpoint options (`shm?spin=0`).
#[derive(Clone)]
struct Subject {
    transport: Arc<dyn Transport>,
    options: Vec<(String, String)>,
    /// `scheme` or `scheme?key=value&...`, as rows are named.
    name: String,
}

impl Subject {
    /// `transport` with `options`, named `scheme` or `scheme?k=v&k=v`.
    fn new(transport: Arc<dyn Transport>, options: Vec<(String, String)>) -> Subject {
        let mut name = transport.scheme().to_string();
        for (i, (k, v)) in options.iter().enumerate() {
            name.push(if i == 0 { '?' } else { '&' });
            name.push_str(&format!("{k}={v}"));
        }
        Subject {
            transport,
            options,
            name,
        }
    }

    /// Adds this subject's options to `ep`.
    fn apply(&self, mut ep: Endpoint) -> Endpoint {
        for (k, v) in &self.options {
            ep = ep.with_option(k, v.clone());
        }
        ep
    }
}

/// Splits `scheme?k=v&k=v` into the scheme and its options.
fn parse_subject(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let (scheme, query) = match s.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (s, None),
    };
    let mut options = Vec::new();
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                options.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(format!(
                    "`{s}`: endpoint options must be key=value pairs joined by `&` \
                     (for example shm?spin=0)"
                ))
            }
        }
    }
    Ok((scheme.trim().to_ascii_lowercase(), options))
}

/// One measurement to make.
enum Cell {
    Dw { subject: Subject, size: usize },
    Raw { name: &'static str, size: usize },
}

impl Cell {
    fn size(&self) -> usize {
        match self {
            Cell::Dw { size, .. } | Cell::Raw { size, .. } => *size,
        }
    }

    fn label(&self) -> String {
        match self {
            Cell::Dw { subject, size } => format!("{} {}", subject.name, report::size(*size)),
            Cell::Raw { name, size } => format!("{name} {}", report::size(*size)),
        }
    }
}

/// Unique endpoints for this run.
struct Names {
    dir: PathBuf,
    n: u32,
}

impl Names {
    fn new() -> Result<Names, String> {
        let dir = std::env::temp_dir().join(format!("ductwork-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Names { dir, n: 0 })
    }

    /// A fresh endpoint for `scheme`, plus its one-way companion.
    fn endpoint(&mut self, scheme: &str) -> (Endpoint, Endpoint) {
        self.n += 1;
        let n = self.n;
        let pid = std::process::id();
        let make = |suffix: &str| {
            let s = match scheme {
                "tcp" | "udp" => format!("{scheme}://127.0.0.1:0"),
                "unix" => format!("unix://{}/dw-{n}{suffix}.sock", self.dir.display()),
                _ => format!("{scheme}://bench-{pid}-{n}{suffix}"),
            };
            Endpoint::parse(&s)
        };
        match (make(""), make("-back")) {
            (Ok(a), Ok(b)) => (a, b),
            // Only reachable with an unusual temp dir; fall back to a relative-free name.
            _ => {
                let a = Endpoint::parse(&format!("{scheme}://bench-{pid}-{n}"))
                    .unwrap_or_else(|_| Endpoint::parse("tcp://127.0.0.1:0").expect("valid"));
                (a.clone(), a)
            }
        }
    }

    fn socket_path(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.join(format!("raw-{}.sock", self.n))
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The encoded size of a bench message with a `size`-byte payload.
fn frame_len(size: usize) -> usize {
    let msg = BenchMsg {
        seq: u64::MAX,
        op: Op::Data,
        payload: vec![0; size],
    };
    ductwork::codec::encode(&msg, usize::MAX).map_or(usize::MAX, |b| b.len())
}

/// Runs `ductwork bench`; returns the exit code.
pub fn run(args: BenchArgs) -> i32 {
    match run_inner(args) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("ductwork bench: {msg}");
            code
        }
    }
}

fn run_inner(args: BenchArgs) -> Result<i32, (i32, String)> {
    let usage = |m: String| (EXIT_USAGE, m);
    let fail = |m: String| (EXIT_FAILURE, m);
    let all = ductwork::transports();
    let built: Vec<&str> = all.iter().map(|t| t.scheme()).collect();
    let explicit = args.transports.is_some();
    let chosen: Vec<Subject> = match &args.transports {
        None => {
            let mut v = Vec::new();
            for t in &all {
                v.push(Subject::new(t.clone(), Vec::new()));
                if t.scheme() == "shm" {
                    let (_, options) = parse_subject(SHM_PARKED).map_err(usage)?;
                    v.push(Subject::new(t.clone(), options));
                }
            }
            v
        }
        Some(names) => {
            let mut v: Vec<Subject> = Vec::new();
            for entry in names.iter().map(|n| n.trim()) {
                if entry.is_empty() {
                    continue;
                }
                let (name, options) = parse_subject(entry).map_err(usage)?;
                match all.iter().find(|t| t.scheme() == name) {
                    Some(t) => {
                        let subject = Subject::new(t.clone(), options);
                        if !v.iter().any(|x| x.name == subject.name) {
                            v.push(subject);
                        }
                    }
                    None if ductwork_known(&name) => {
                        return Err(usage(format!(
                            "transport `{name}` is not built into this binary (this build has: {})",
                            built.join(", ")
                        )))
                    }
                    None => {
                        return Err(usage(format!(
                            "unknown transport `{name}` (this build has: {})",
                            built.join(", ")
                        )))
                    }
                }
            }
            if v.is_empty() {
                return Err(usage("--transports names no transport".into()));
            }
            v
        }
    };
    let sizes = args.sizes.clone().unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    if sizes.is_empty() {
        return Err(usage("--sizes names no size".into()));
    }
    let dur_s = args.duration.unwrap_or(DEFAULT_DURATION);
    let rounds = args.rounds.unwrap_or(DEFAULT_ROUNDS);
    // Each round measures for its share of the duration, after its own warm-up.
    let duration = Duration::from_secs_f64(dur_s) / rounds;
    let timing = Timing {
        warmup: (duration / 5).min(Duration::from_millis(100)),
        duration,
        reply_limit: Duration::from_secs(5),
    };
    let mut notes: Vec<String> = Vec::new();

    // CPU placement.
    let cpus = sys::allowed_cpus();
    let mut pin = args.pin.unwrap_or(if sys::CAN_PIN && cpus.len() >= 2 {
        Pin::Cross
    } else {
        Pin::None
    });
    if pin == Pin::Cross && cpus.len() < 2 {
        notes.push("--pin cross needs 2 CPUs; running unpinned".into());
        pin = Pin::None;
    }
    let (parent_cpu, peer_cpu) = match pin {
        Pin::Cross => (Some(cpus[0]), Some(cpus[1])),
        Pin::Same => (cpus.first().copied(), cpus.first().copied()),
        Pin::None => (None, None),
    };
    let (parent_cpu, peer_cpu) = match parent_cpu.map(sys::pin_current) {
        Some(Err(e)) => {
            notes.push(format!("cannot pin ({e}); running unpinned"));
            pin = Pin::None;
            (None, None)
        }
        _ => (parent_cpu, peer_cpu),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    let mut names = Names::new().map_err(fail)?;

    // Which transports bind here, and which sizes each can carry.
    let mut cells: Vec<Cell> = Vec::new();
    let mut wanted_baselines: Vec<&'static str> = Vec::new();
    let mut dw_cells: Vec<Cell> = Vec::new();
    for subject in &chosen {
        let t = &subject.transport;
        let name = &subject.name;
        let (ep, _) = names.endpoint(t.scheme());
        let ep = subject.apply(ep);
        let probe =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t.bind(&ep)).await });
        match probe {
            Ok(Ok(l)) => drop(l),
            Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => {
                notes.push(format!("skipped {name}: {}", e.detail()));
                continue;
            }
            Ok(Err(e)) if e.kind() == ErrorKind::InvalidEndpoint && explicit => {
                return Err(usage(format!("--transports {name}: {e}")));
            }
            Ok(Err(e)) => {
                notes.push(format!("skipped {name}: cannot bind here: {e}"));
                continue;
            }
            Err(_) => {
                notes.push(format!("skipped {name}: bind did not finish in 5 s"));
                continue;
            }
        }
        let caps = match t.capabilities(&ep) {
            Ok(c) => c,
            Err(e) => {
                notes.push(format!("skipped {name}: {e}"));
                continue;
            }
        };
        for &size in &sizes {
            let len = frame_len(size);
            if len > caps.max_message {
                notes.push(format!(
                    "skipped {name} {}: a {len}-byte message exceeds its max_message of {} B",
                    report::size(size),
                    caps.max_message
                ));
                continue;
            }
            dw_cells.push(Cell::Dw {
                subject: subject.clone(),
                size,
            });
        }
        for b in baselines_for(name) {
            if !wanted_baselines.contains(b) {
                wanted_baselines.push(b);
            }
        }
    }
    if !explicit {
        wanted_baselines = ALL_BASELINES.to_vec();
        if !chosen.iter().any(|s| s.transport.scheme() == "shm") {
            wanted_baselines.retain(|b| *b != RAW_MEMCPY && *b != RAW_SHMCOPY);
        }
        if !WANT_IOX {
            wanted_baselines.retain(|b| *b != PEER_IOX);
        }
    }
    for &b in ALL_BASELINES {
        if !wanted_baselines.contains(&b) {
            continue;
        }
        if !baseline_exists(b) {
            notes.push(format!(
                "skipped baseline {b}: not available on this platform"
            ));
            continue;
        }
        if b == RAW_CACHELINE || b == RAW_EVENTFD {
            cells.push(Cell::Raw { name: b, size: 64 });
        } else if b == RAW_MEMCPY || b == RAW_SHMCOPY {
            // Copy bandwidth bounds bulk transfers only; small messages are bound by wake-ups.
            for &size in sizes.iter().filter(|&&s| s >= MEMCPY_MIN_SIZE) {
                cells.push(Cell::Raw { name: b, size });
            }
        } else {
            for &size in &sizes {
                cells.push(Cell::Raw { name: b, size });
            }
        }
    }
    // Order: by size, and within a size each baseline right before the transports that are
    // compared with it first, so a machine whose load drifts during the run skews the ratios
    // less. Transports without a baseline come last in their size.
    let nearest = |c: &Cell| match c {
        Cell::Dw { subject, .. } => baselines_for(&subject.name)
            .first()
            .and_then(|b| ALL_BASELINES.iter().position(|x| x == b))
            .unwrap_or(ALL_BASELINES.len()),
        Cell::Raw { name, .. } => ALL_BASELINES
            .iter()
            .position(|x| x == name)
            .unwrap_or(ALL_BASELINES.len()),
    };
    cells.extend(dw_cells);
    // The sort is stable: a baseline stays ahead of its transports, and transports keep the
    // order they were chosen in.
    cells.sort_by_key(|c| (c.size(), nearest(c)));

    // Run: the cells of one size form a group, and each group runs `rounds` times in turn.
    let mut schedule: Vec<usize> = Vec::new();
    let mut group_start = 0;
    while group_start < cells.len() {
        let size = cells[group_start].size();
        let group_end = cells[group_start..]
            .iter()
            .position(|c| c.size() != size)
            .map_or(cells.len(), |n| group_start + n);
        for _ in 0..rounds {
            schedule.extend(group_start..group_end);
        }
        group_start = group_end;
    }
    let total = schedule.len() as u64;
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    // Per cell: the merged rounds so far, or None once a round failed.
    type Measured = (Option<Rtt>, Option<Throughput>);
    let mut results: Vec<Option<Option<Measured>>> = vec![Some(None); cells.len()];
    let cell_limit = timing.warmup + timing.duration * 3 + Duration::from_secs(30);
    for (i, &ci) in schedule.iter().enumerate() {
        let cell = &cells[ci];
        if results[ci].is_none() {
            pb.inc(1);
            continue;
        }
        let label = cell.label();
        pb.set_message(label.clone());
        if pb.is_hidden() {
            eprintln!("[{}/{total}] {label}", i + 1);
        }
        let result: Result<Measured, String> = match cell {
            Cell::Raw { name, .. } if *name == RAW_CACHELINE || *name == RAW_EVENTFD => {
                shm_baseline(*name == RAW_CACHELINE, peer_cpu, timing)
            }
            Cell::Raw { name, size } if *name == RAW_MEMCPY => Ok((
                None,
                Some(raw::memcpy(*size, timing.warmup, timing.duration)),
            )),
            Cell::Raw { name, size } if *name == RAW_SHMCOPY => {
                shmcopy_baseline(*size, peer_cpu, timing)
            }
            Cell::Raw { name, size } if *name == PEER_IOX => iox_baseline(*size, peer_cpu, timing),
            Cell::Raw { name, size } => {
                let path = names.socket_path();
                rt.block_on(async {
                    tokio::time::timeout(cell_limit, raw_cell(name, *size, peer_cpu, timing, path))
                        .await
                        .unwrap_or_else(|_| Err(format!("no result within {cell_limit:?}")))
                })
                .map(|(r, t)| (Some(r), Some(t)))
            }
            Cell::Dw { subject, size } => {
                let (ep, back) = names.endpoint(subject.transport.scheme());
                let (ep, back) = (subject.apply(ep), subject.apply(back));
                let caps = subject.transport.capabilities(&ep);
                let back = match caps {
                    Ok(c) if args.two_endpoints || peer::one_way(c.direction) => Some(back),
                    _ => None,
                };
                rt.block_on(async {
                    tokio::time::timeout(
                        cell_limit,
                        measure::dw_cell(ep, back, *size, peer_cpu, timing),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no result within {cell_limit:?}")))
                })
                .map(|(r, t)| (Some(r), Some(t)))
            }
        };
        match result {
            Ok((rtt, tp)) => {
                let slot = &mut results[ci];
                *slot = Some(Some(match slot.take().flatten() {
                    None => (rtt, tp),
                    Some((mut r0, mut t0)) => {
                        if let (Some(a), Some(b)) = (r0.as_mut(), rtt.as_ref()) {
                            a.merge(b);
                        }
                        if let (Some(a), Some(b)) = (t0.as_mut(), tp.as_ref()) {
                            a.merge(b);
                        }
                        (r0, t0)
                    }
                }));
            }
            Err(e) => {
                let note = format!("{label}: failed: {e}");
                pb.println(format!("ductwork bench: {note}"));
                notes.push(note);
                results[ci] = None;
            }
        }
        pb.inc(1);
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut baselines: Vec<Row> = Vec::new();
    for (cell, result) in cells.iter().zip(results) {
        let Some(Some((rtt, tp))) = result else {
            continue;
        };
        match cell {
            Cell::Dw { subject, size } => rows.push(Row::new(subject.name.clone(), *size, rtt, tp)),
            Cell::Raw { name, size } => baselines.push(Row::new(name.to_string(), *size, rtt, tp)),
        }
    }
    pb.finish_and_clear();
    let elapsed = started.elapsed();

    for row in &mut rows {
        row.compare(&baselines);
    }
    // Report in transport order, then size.
    let order = |name: &str| {
        ALL_BASELINES
            .iter()
            .position(|b| *b == name)
            .or_else(|| chosen.iter().position(|s| s.name == name))
            .unwrap_or(usize::MAX)
    };
    rows.sort_by_key(|r| (order(&r.transport), r.size));
    baselines.sort_by_key(|r| (order(&r.transport), r.size));
    let report = Report {
        machine: Machine {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: cpus.len(),
            pin,
            parent_cpu,
            peer_cpu,
            duration_s: dur_s,
            rounds,
            warmup_s: timing.warmup.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
        },
        results: rows,
        baselines,
        notes,
    };
    print!("{}", report.table());
    report.write_json(&args.json).map_err(fail)?;
    report.write_svg(&args.plot).map_err(fail)?;
    println!(
        "\nwrote {} and {} ({:.1} s)",
        args.json.display(),
        args.plot.display(),
        elapsed.as_secs_f64()
    );
    Ok(0)
}

fn ductwork_known(name: &str) -> bool {
    ductwork_core::KNOWN_SCHEMES.contains(&name)
}

fn shm_baseline(
    spin: bool,
    cpu: Option<usize>,
    t: Timing,
) -> Result<(Option<Rtt>, Option<Throughput>), String> {
    #[cfg(target_os = "linux")]
    {
        sys::shm_baseline(spin, cpu, t.warmup, t.duration).map(|r| (Some(r), None))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (spin, cpu, t);
        Err("shared-memory baselines are Linux only".into())
    }
}

fn shmcopy_baseline(
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<(Option<Rtt>, Option<Throughput>), String> {
    #[cfg(target_os = "linux")]
    {
        sys::shmcopy_baseline(size, cpu, t.warmup, t.duration).map(|r| (None, Some(r)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (size, cpu, t);
        Err("shared-memory baselines are Linux only".into())
    }
}

fn iox_baseline(
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<(Option<Rtt>, Option<Throughput>), String> {
    #[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
    {
        iox::measure(size, cpu, t).map(|r| (Some(r), None))
    }
    #[cfg(not(all(feature = "peer-iceoryx2", target_os = "linux")))]
    {
        let _ = (size, cpu, t);
        Err("peer-iceoryx2 needs Linux and the cargo feature `peer-iceoryx2`".into())
    }
}

async fn raw_cell(
    name: &str,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
    path: PathBuf,
) -> Result<(Rtt, Throughput), String> {
    let deadline_ms = (t.duration * 4 + t.reply_limit * 4).as_millis() as u64;
    let spec = |job| PeerSpec {
        job,
        size,
        cpu,
        deadline_ms,
    };
    if name == RAW_TCP {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("raw-tcp bind: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
        let mut peer = measure::Peer::spawn(&spec(Job::RawTcp { addr }))?;
        let s = measure::or_peer_exit(&mut peer, async {
            tokio::time::timeout(t.reply_limit, l.accept())
                .await
                .map_err(|_| "raw-tcp: the peer did not connect".to_string())?
                .map_err(|e| format!("raw-tcp accept: {e}"))
        })
        .await?
        .0;
        let _ = s.set_nodelay(true);
        let r = measure::or_peer_exit(&mut peer, raw::measure(s, size, t)).await;
        let _ = peer.finish(Duration::from_secs(2)).await;
        return r;
    }
    #[cfg(unix)]
    {
        let l = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("raw-unix bind {}: {e}", path.display()))?;
        let mut peer = measure::Peer::spawn(&spec(Job::RawUnix {
            path: path.display().to_string(),
        }))?;
        let s = measure::or_peer_exit(&mut peer, async {
            tokio::time::timeout(t.reply_limit, l.accept())
                .await
                .map_err(|_| "raw-unix: the peer did not connect".to_string())?
                .map_err(|e| format!("raw-unix accept: {e}"))
        })
        .await?
        .0;
        let r = measure::or_peer_exit(&mut peer, raw::measure(s, size, t)).await;
        let _ = peer.finish(Duration::from_secs(2)).await;
        let _ = std::fs::remove_file(&path);
        r
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Err(format!("{name} is not available on this platform"))
    }
}
