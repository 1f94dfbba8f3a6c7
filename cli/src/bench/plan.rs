//! From `ductwork bench`'s arguments to a plan: which transports (with their endpoint
//! options), which baselines, which sizes, how long, in how many rounds, on which CPUs.
//!
//! [`Plan::new`] reads the arguments (usage errors come from here) and places the processes;
//! [`Plan::add_cells`] probes each transport by binding it once and lists the cells to
//! measure, ordered so that each baseline runs right before the transports compared with it.

use super::{
    baseline::Baseline,
    patterns::Pattern,
    proto::{BenchMsg, Op},
    report, sys,
    types::{Pin, Timing},
};
use clap::{Args, ValueEnum};
use ductwork::{Capabilities, Direction, Endpoint, ErrorKind, Transport};
use std::{path::PathBuf, sync::Arc, time::Duration};

/// Default payload sizes: 64 B, 1 KiB, 64 KiB, 1 MiB.
pub const DEFAULT_SIZES: &[usize] = &[64, 1024, 64 * 1024, 1024 * 1024];
/// Default duration of each measurement, in seconds.
pub const DEFAULT_DURATION: f64 = 1.0;
/// Default number of rounds per cell.
pub const DEFAULT_ROUNDS: u32 = 3;
/// The shm row's options when the spin budget is zero (always park): measured by default
/// next to the spinning `shm` row.
const SHM_PARKED: (&str, &str) = ("spin", "0");

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
    /// Pattern rows (request/reply, and publish/subscribe to 100 subscribers), each compared
    /// with the plain channel row of its transport: `default` measures `unix+reqrep`,
    /// `shm+reqrep` and `unix+pubsub×100` at 64 B (each when its transport and 64 B are in the run);
    /// `all` measures request/reply on every reliable duplex transport and the fan-out on
    /// unix, at every size; `none` measures neither.
    #[arg(long, value_enum, value_name = "WHICH", default_value = "default")]
    pub patterns: PatternRows,
    /// Testing aid: use the one-way setup (two endpoints, one per direction) for every
    /// transport, so that path is exercised on platforms without a one-way transport.
    #[arg(long, hide = true)]
    pub two_endpoints: bool,
}

/// Which pattern rows a run measures (`--patterns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PatternRows {
    /// `unix+reqrep`, `shm+reqrep` and `unix+pubsub×100` at 64 B: a few seconds more.
    Default,
    /// Request/reply on every reliable duplex transport and the fan-out on unix, every size.
    All,
    /// None.
    None,
}

/// The payload size of the default pattern rows, the size the target names.
const PATTERN_SIZE: usize = 64;

impl PatternRows {
    /// The patterns measured for `subject` (with capabilities `caps`) at `size`.
    fn for_cell(self, subject: &Subject, caps: &Capabilities, size: usize) -> Vec<Pattern> {
        let scheme = subject.transport.scheme();
        let plain = subject.options.is_empty();
        let (reqrep, pubsub) = match self {
            PatternRows::None => (false, false),
            PatternRows::Default => {
                let at = size == PATTERN_SIZE && plain;
                (
                    at && matches!(scheme, "unix" | "shm"),
                    at && scheme == "unix",
                )
            }
            PatternRows::All => {
                let duplex = caps.direction == Direction::Duplex && caps.is_reliable();
                (duplex, duplex && scheme == "unix")
            }
        };
        let mut v = Vec::new();
        if reqrep {
            v.push(Pattern::ReqRep);
        }
        if pubsub {
            v.push(Pattern::PubSub);
        }
        v
    }
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

/// A transport to measure, with endpoint options (`shm?spin=0`): one row per size.
#[derive(Clone)]
pub struct Subject {
    /// The transport.
    pub transport: Arc<dyn Transport>,
    options: Vec<(String, String)>,
    /// `scheme` or `scheme?key=value&...`, as rows are named.
    pub name: String,
    /// The baselines its rows are compared with, nearest first.
    pub baselines: Vec<Baseline>,
}

impl Subject {
    /// `transport` with `options`.
    fn new(transport: Arc<dyn Transport>, options: Vec<(String, String)>) -> Subject {
        let mut name = transport.scheme().to_string();
        for (i, (k, v)) in options.iter().enumerate() {
            name.push(if i == 0 { '?' } else { '&' });
            name.push_str(&format!("{k}={v}"));
        }
        let parked = options
            .iter()
            .any(|(k, v)| (k.as_str(), v.as_str()) == SHM_PARKED);
        Subject {
            baselines: Baseline::for_transport(transport.scheme(), parked),
            transport,
            options,
            name,
        }
    }

    /// Parses `scheme?k=v&k=v` (options as [`Endpoint`] parses them) against the transports
    /// of this build.
    fn parse(entry: &str, built: &[Arc<dyn Transport>]) -> Result<Subject, String> {
        let (scheme, query) = match entry.split_once('?') {
            Some((s, q)) => (s, Some(q)),
            None => (entry, None),
        };
        let scheme = scheme.trim().to_ascii_lowercase();
        let Some(t) = built.iter().find(|t| t.scheme() == scheme) else {
            let names: Vec<&str> = built.iter().map(|t| t.scheme()).collect();
            // Whether `scheme` is a transport left out of this build or no transport at all,
            // only the transports compiled in can say; both get the same answer.
            return Err(format!(
                "unknown transport `{scheme}` (this build has: {}; others need their cargo \
                 feature)",
                names.join(", ")
            ));
        };
        let mut options = Vec::new();
        if let Some(q) = query {
            let hint = "endpoint options must be key=value pairs joined by `&` (for example \
                        shm?spin=0)";
            // `Endpoint` skips empty pairs; on the command line they are more likely a typo.
            if q.split('&').any(str::is_empty) {
                return Err(format!("`{entry}`: {hint}"));
            }
            let ep = Endpoint::parse(&format!("{}?{q}", t.local_endpoint("bench-options")))
                .map_err(|e| format!("`{entry}`: {}; {hint}", e.detail()))?;
            options = ep.options().map(|(k, v)| (k.into(), v.into())).collect();
        }
        Ok(Subject::new(t.clone(), options))
    }

    /// A fresh endpoint of this subject, `unique` telling it apart.
    pub fn endpoint(&self, unique: &str) -> Result<Endpoint, String> {
        let ep =
            Endpoint::parse(&self.transport.local_endpoint(unique)).map_err(|e| e.to_string())?;
        Ok(self
            .options
            .iter()
            .fold(ep, |ep, (k, v)| ep.with_option(k, v.clone())))
    }
}

/// The name of the row of shm's zero-copy API.
pub const LOAN_ROW: &str = "shm-loan";

/// What the `shm-loan` row is compared with, nearest first: iceoryx2 (which also loans and
/// reads in place) when built with it, then the cache-line ping-pong.
pub const LOAN_BASELINES: &[Baseline] = if cfg!(feature = "peer-iceoryx2") {
    &[Baseline::Iceoryx2, Baseline::Cacheline]
} else {
    &[Baseline::Cacheline]
};

/// One measurement to make (each round of it).
pub enum Cell {
    /// A ductwork transport.
    Dw {
        /// Which transport, with which options.
        subject: Subject,
        /// Payload size.
        size: usize,
    },
    /// A messaging pattern over a ductwork transport.
    Pattern {
        /// Which pattern.
        pattern: Pattern,
        /// Which transport, with which options.
        subject: Subject,
        /// Payload size.
        size: usize,
    },
    /// Round trips through shm's zero-copy API (the `shm-loan` row, see `loan.rs`).
    Loan {
        /// The plain shm subject, for its endpoint names.
        subject: Subject,
        /// Payload size.
        size: usize,
    },
    /// A baseline.
    Raw {
        /// Which baseline.
        baseline: Baseline,
        /// Payload size.
        size: usize,
    },
}

impl Cell {
    /// The payload size.
    pub fn size(&self) -> usize {
        match self {
            Cell::Dw { size, .. }
            | Cell::Pattern { size, .. }
            | Cell::Loan { size, .. }
            | Cell::Raw { size, .. } => *size,
        }
    }

    /// `shm 64 KiB`, `raw-tcp 1 KiB`.
    pub fn label(&self) -> String {
        match self {
            Cell::Dw { subject, size } => format!("{} {}", subject.name, report::size(*size)),
            Cell::Pattern {
                pattern,
                subject,
                size,
            } => format!(
                "{} {}",
                pattern.row_name(&subject.name),
                report::size(*size)
            ),
            Cell::Loan { size, .. } => format!("{LOAN_ROW} {}", report::size(*size)),
            Cell::Raw { baseline, size } => {
                format!("{} {}", baseline.name(), report::size(*size))
            }
        }
    }

    /// Where the cell runs within its size: right after its nearest baseline (transports
    /// without one come last); a pattern with its transport.
    fn rank(&self) -> usize {
        match self {
            Cell::Dw { subject, .. } | Cell::Pattern { subject, .. } => subject
                .baselines
                .first()
                .map_or(Baseline::ALL.len(), |b| b.rank()),
            Cell::Loan { .. } => LOAN_BASELINES[0].rank(),
            Cell::Raw { baseline, .. } => baseline.rank(),
        }
    }
}

/// Where parent and peer run.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// The placement in effect (`None` when pinning was asked for but failed).
    pub pin: Pin,
    /// CPUs this process may use.
    pub cpus: usize,
    /// The parent's CPU, when pinned.
    pub parent_cpu: Option<usize>,
    /// The peer's CPU, when pinned.
    pub peer_cpu: Option<usize>,
}

impl Pinning {
    /// Chooses the placement (`asked`, or cross when there are 2+ CPUs and pinning works) and
    /// pins this process; a placement that cannot be had falls back to unpinned, with a note.
    fn choose(asked: Option<Pin>, notes: &mut Vec<String>) -> Pinning {
        let cpus = sys::allowed_cpus();
        let default = if sys::CAN_PIN && cpus.len() >= 2 {
            Pin::Cross
        } else {
            Pin::None
        };
        let mut pin = asked.unwrap_or(default);
        if pin == Pin::Cross && cpus.len() < 2 {
            notes.push("--pin cross needs 2 CPUs; running unpinned".into());
            pin = Pin::None;
        }
        let (parent_cpu, peer_cpu) = match pin {
            Pin::Cross => (Some(cpus[0]), Some(cpus[1])),
            Pin::Same => (cpus.first().copied(), cpus.first().copied()),
            Pin::None => (None, None),
        };
        let unpinned = Pinning {
            pin: Pin::None,
            cpus: cpus.len(),
            parent_cpu: None,
            peer_cpu: None,
        };
        match parent_cpu.map(sys::pin_current) {
            Some(Err(e)) => {
                notes.push(format!("cannot pin ({e}); running unpinned"));
                unpinned
            }
            _ => Pinning {
                pin,
                parent_cpu,
                peer_cpu,
                ..unpinned
            },
        }
    }
}

/// Unique endpoints and socket paths for this run.
pub struct Names {
    dir: PathBuf,
    n: u32,
}

impl Names {
    /// A private scratch directory, removed on drop.
    pub fn new() -> Result<Names, String> {
        let dir = std::env::temp_dir().join(format!("ductwork-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Names { dir, n: 0 })
    }

    /// A fresh endpoint for `subject`, plus its one-way companion.
    pub fn endpoint(&mut self, subject: &Subject) -> Result<(Endpoint, Endpoint), String> {
        self.n += 1;
        let unique = format!("bench-{}-{}", std::process::id(), self.n);
        Ok((
            subject.endpoint(&unique)?,
            subject.endpoint(&format!("{unique}-back"))?,
        ))
    }

    /// A fresh Unix socket path in the scratch directory.
    pub fn socket_path(&mut self) -> PathBuf {
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

/// What a run measures, and how.
pub struct Plan {
    /// The transports asked for, in report order.
    pub subjects: Vec<Subject>,
    /// Whether `--transports` named them (else every transport in this build).
    pub explicit: bool,
    /// Payload sizes.
    pub sizes: Vec<usize>,
    /// The cells, by size, each baseline right before the transports compared with it.
    pub cells: Vec<Cell>,
    /// Rounds per cell.
    pub rounds: u32,
    /// Seconds per measurement, all rounds together.
    pub duration_s: f64,
    /// Warm-up and measuring time of one round.
    pub timing: Timing,
    /// CPU placement.
    pub pinning: Pinning,
    /// Use the one-way setup for every transport (testing aid).
    pub two_endpoints: bool,
    /// Which pattern rows to measure.
    pub patterns: PatternRows,
    /// Skipped cells so far.
    pub notes: Vec<String>,
}

impl Plan {
    /// Reads the arguments and pins this process; no cells yet. Errors are usage errors.
    pub fn new(args: &BenchArgs) -> Result<Plan, String> {
        let (subjects, explicit) = subjects(args.transports.as_deref())?;
        let sizes = args.sizes.clone().unwrap_or_else(|| DEFAULT_SIZES.to_vec());
        if sizes.is_empty() {
            return Err("--sizes names no size".into());
        }
        let duration_s = args.duration.unwrap_or(DEFAULT_DURATION);
        let rounds = args.rounds.unwrap_or(DEFAULT_ROUNDS);
        // Each round measures for its share of the duration, after its own warm-up.
        let duration = Duration::from_secs_f64(duration_s) / rounds;
        let timing = Timing {
            warmup: (duration / 5).min(Duration::from_millis(100)),
            duration,
            reply_limit: Duration::from_secs(5),
        };
        let mut notes = Vec::new();
        let pinning = Pinning::choose(args.pin, &mut notes);
        Ok(Plan {
            subjects,
            explicit,
            sizes,
            cells: Vec::new(),
            rounds,
            duration_s,
            timing,
            pinning,
            two_endpoints: args.two_endpoints,
            patterns: args.patterns,
            notes,
        })
    }

    /// Probes every subject (a transport that cannot bind here is skipped with a note) and
    /// lists the cells: each subject's sizes it can carry, and the baselines they need.
    /// Errors are usage errors (bad options named with `--transports`).
    pub fn add_cells(
        &mut self,
        rt: &tokio::runtime::Runtime,
        names: &mut Names,
    ) -> Result<(), String> {
        let mut dw_cells = Vec::new();
        let mut pattern_cells = Vec::new();
        let mut wanted: Vec<Baseline> = Vec::new();
        for subject in &self.subjects {
            let Some(caps) = probe(subject, self.explicit, rt, names, &mut self.notes)? else {
                continue;
            };
            for &size in &self.sizes {
                let len = frame_len(size);
                if len > caps.max_message {
                    self.notes.push(format!(
                        "skipped {} {}: a {len}-byte message exceeds its max_message of {} B",
                        subject.name,
                        report::size(size),
                        caps.max_message
                    ));
                    continue;
                }
                let subject = subject.clone();
                // The pattern envelopes (an id, a topic) add a few bytes to the frame.
                if len + 32 <= caps.max_message {
                    for pattern in self.patterns.for_cell(&subject, &caps, size) {
                        let subject = subject.clone();
                        pattern_cells.push(Cell::Pattern {
                            pattern,
                            subject,
                            size,
                        });
                    }
                }
                // The zero-copy row goes with plain shm (an 8-byte sequence number heads it).
                if subject.transport.scheme() == "shm"
                    && subject.options.is_empty()
                    && size + 8 <= caps.max_message
                {
                    let subject = subject.clone();
                    dw_cells.push(Cell::Loan { subject, size });
                }
                dw_cells.push(Cell::Dw { subject, size });
            }
            wanted.extend(&subject.baselines);
        }
        if !self.explicit {
            let shm = self.subjects.iter().any(|s| s.transport.scheme() == "shm");
            wanted = Baseline::ALL.to_vec();
            wanted.retain(|b| b.in_build() && (shm || !b.shm_only()));
        }
        for b in Baseline::ALL.into_iter().filter(|b| wanted.contains(b)) {
            match b.unavailable() {
                Some(why) => self
                    .notes
                    .push(format!("skipped baseline {}: {why}", b.name())),
                None => self.cells.extend(
                    b.sizes(&self.sizes)
                        .into_iter()
                        .map(|size| Cell::Raw { baseline: b, size }),
                ),
            }
        }
        self.cells.extend(dw_cells);
        // After the plain cells: within a size, each pattern runs after its transport's plain row.
        self.cells.extend(pattern_cells);
        // By size, and within a size each baseline right before the transports compared with
        // it first, so a machine whose load drifts during the run skews the ratios less. The
        // sort is stable: transports keep the order they were chosen in.
        self.cells.sort_by_key(|c| (c.size(), c.rank()));
        Ok(())
    }
}

/// The subjects `--transports` names (deduplicated), or by default every transport in this
/// build plus the parked shm row; and whether they were named.
fn subjects(named: Option<&[String]>) -> Result<(Vec<Subject>, bool), String> {
    let built = ductwork::transports();
    let Some(named) = named else {
        let mut v = Vec::new();
        for t in &built {
            v.push(Subject::new(t.clone(), Vec::new()));
            if t.scheme() == "shm" {
                let (k, val) = SHM_PARKED;
                v.push(Subject::new(t.clone(), vec![(k.into(), val.into())]));
            }
        }
        return Ok((v, false));
    };
    let mut v: Vec<Subject> = Vec::new();
    for entry in named.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let subject = Subject::parse(entry, &built)?;
        if !v.iter().any(|x| x.name == subject.name) {
            v.push(subject);
        }
    }
    if v.is_empty() {
        return Err("--transports names no transport".into());
    }
    Ok((v, true))
}

/// Binds `subject` once: its capabilities, `None` (with a note) if it cannot serve here.
fn probe(
    subject: &Subject,
    explicit: bool,
    rt: &tokio::runtime::Runtime,
    names: &mut Names,
    notes: &mut Vec<String>,
) -> Result<Option<Capabilities>, String> {
    let name = &subject.name;
    let ep = match names.endpoint(subject) {
        Ok((ep, _)) => ep,
        Err(e) => {
            notes.push(format!("skipped {name}: {e}"));
            return Ok(None);
        }
    };
    let t = &subject.transport;
    let probe =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t.bind(&ep)).await });
    let skip = match probe {
        Ok(Ok(l)) => {
            drop(l);
            match t.capabilities(&ep) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => e.to_string(),
            }
        }
        Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => e.detail().to_string(),
        Ok(Err(e)) if e.kind() == ErrorKind::InvalidEndpoint && explicit => {
            return Err(format!("--transports {name}: {e}"));
        }
        Ok(Err(e)) => format!("cannot bind here: {e}"),
        Err(_) => "bind did not finish in 5 s".into(),
    };
    notes.push(format!("skipped {name}: {skip}"));
    Ok(None)
}
