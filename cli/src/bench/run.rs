//! The runner: executes a [`Plan`]'s cells in rounds and merges each cell's rounds.
//!
//! The cells of one size form a group, and each group runs `rounds` times in turn, so load
//! drift hits a baseline and its transports alike. A cell whose round fails is dropped with a
//! note; the run goes on.

use super::{
    baseline::Env,
    loan, measure,
    plan::{Cell, Names, Plan, LOAN_BASELINES, LOAN_ROW},
    proto::one_way,
    report::{PatternRow, Row},
    types::{merge, Measured},
};
use indicatif::{ProgressBar, ProgressStyle};
use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

/// What a run produced: rows for the report.
pub struct Outcome {
    /// Transport rows, in the order subjects were chosen, then by size.
    pub results: Vec<Row>,
    /// Baseline rows, in report order, then by size.
    pub baselines: Vec<Row>,
    /// Pattern rows, each compared with its transport's plain row.
    pub patterns: Vec<PatternRow>,
    /// Cells that failed.
    pub notes: Vec<String>,
    /// How long the run took.
    pub elapsed: Duration,
}

/// A cell's rounds so far.
enum Slot {
    /// No round has run yet.
    Pending,
    /// The rounds so far, merged.
    Merged(Measured),
    /// A round failed: the cell is dropped.
    Failed,
}

impl Slot {
    /// Adds one more round.
    fn add(&mut self, m: Measured) {
        match self {
            Slot::Pending => *self = Slot::Merged(m),
            Slot::Merged(sum) => merge(sum, &m),
            Slot::Failed => {}
        }
    }
}

/// The order cells run in: indices into `cells` (sorted by size), each size's group repeated
/// `rounds` times.
fn schedule(cells: &[Cell], rounds: u32) -> Vec<usize> {
    let mut order = Vec::new();
    let mut start = 0;
    while start < cells.len() {
        let size = cells[start].size();
        let end = cells[start..]
            .iter()
            .position(|c| c.size() != size)
            .map_or(cells.len(), |n| start + n);
        for _ in 0..rounds {
            order.extend(start..end);
        }
        start = end;
    }
    order
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs every cell of `plan` in rounds.
pub fn execute(plan: &Plan, rt: &tokio::runtime::Runtime, names: &mut Names) -> Outcome {
    let order = schedule(&plan.cells, plan.rounds);
    let total = order.len() as u64;
    let pb = progress_bar(total);
    let started = Instant::now();
    let mut notes = Vec::new();
    let mut slots: Vec<Slot> = plan.cells.iter().map(|_| Slot::Pending).collect();
    for (i, &ci) in order.iter().enumerate() {
        let cell = &plan.cells[ci];
        if matches!(slots[ci], Slot::Failed) {
            pb.inc(1);
            continue;
        }
        let label = cell.label();
        pb.set_message(label.clone());
        if pb.is_hidden() {
            eprintln!("[{}/{total}] {label}", i + 1);
        }
        match measure_cell(plan, cell, rt, names) {
            Ok(m) => slots[ci].add(m),
            Err(e) => {
                let note = format!("{label}: failed: {e}");
                pb.println(format!("ductwork bench: {note}"));
                notes.push(note);
                slots[ci] = Slot::Failed;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (results, baselines, patterns) = rows(plan, slots);
    Outcome {
        results,
        baselines,
        patterns,
        notes,
        elapsed: started.elapsed(),
    }
}

/// One round of one cell.
fn measure_cell(
    plan: &Plan,
    cell: &Cell,
    rt: &tokio::runtime::Runtime,
    names: &mut Names,
) -> Result<Measured, String> {
    let t = plan.timing;
    let cpu = plan.pinning.peer_cpu;
    let limit = t.warmup + t.duration * 3 + Duration::from_secs(30);
    match cell {
        Cell::Raw { baseline, size } => {
            let socket = names.socket_path();
            let env = Env {
                rt,
                cpu,
                timing: t,
                limit,
                socket: &socket,
            };
            baseline.measure(*size, &env)
        }
        Cell::Dw { subject, size } => {
            let (ep, back) = names.endpoint(subject)?;
            let back = match subject.transport.capabilities(&ep) {
                Ok(c) if plan.two_endpoints || one_way(c.direction) => Some(back),
                _ => None,
            };
            let (rtt, tp) = rt.block_on(async {
                tokio::time::timeout(limit, measure::dw_cell(ep, back, *size, cpu, t))
                    .await
                    .unwrap_or_else(|_| Err(format!("no result within {limit:?}")))
            })?;
            Ok((Some(rtt), Some(tp)))
        }
        Cell::Loan { subject, size } => {
            let (ep, _) = names.endpoint(subject)?;
            let rtt = rt.block_on(async {
                tokio::time::timeout(limit, loan::measure(ep, *size, cpu, t))
                    .await
                    .unwrap_or_else(|_| Err(format!("no result within {limit:?}")))
            })?;
            Ok((Some(rtt), None))
        }
        Cell::Pattern {
            pattern,
            subject,
            size,
        } => {
            let (ep, control) = names.endpoint(subject)?;
            rt.block_on(async {
                let cell = pattern.measure(ep, control, *size, cpu, t);
                tokio::time::timeout(limit, cell)
                    .await
                    .unwrap_or_else(|_| Err(format!("no result within {limit:?}")))
            })
        }
    }
}

/// The report's rows from the merged cells: transport rows compared with their baselines,
/// pattern rows with their transport's plain row, all sorted for the report.
fn rows(plan: &Plan, slots: Vec<Slot>) -> (Vec<Row>, Vec<Row>, Vec<PatternRow>) {
    let mut results: Vec<(usize, Row, &[_])> = Vec::new();
    let mut baselines: Vec<(usize, Row)> = Vec::new();
    let mut patterns: Vec<(usize, PatternRow, String)> = Vec::new();
    for (cell, slot) in plan.cells.iter().zip(slots) {
        let Slot::Merged((rtt, tp)) = slot else {
            continue;
        };
        let order_of = |name: &str| plan.subjects.iter().position(|s| s.name == name);
        match cell {
            Cell::Pattern {
                pattern,
                subject,
                size,
            } => {
                let name = pattern.row_name(&subject.name);
                let row = PatternRow::new(*pattern, Row::new(name, *size, rtt, tp));
                let order = order_of(&subject.name).unwrap_or(usize::MAX);
                patterns.push((order, row, subject.name.clone()));
            }
            Cell::Dw { subject, size } => {
                let order = order_of(&subject.name);
                let row = Row::new(subject.name.clone(), *size, rtt, tp);
                results.push((order.unwrap_or(usize::MAX), row, &subject.baselines));
            }
            Cell::Loan { size, .. } => {
                let row = Row::new(LOAN_ROW.to_string(), *size, rtt, tp);
                results.push((usize::MAX, row, LOAN_BASELINES));
            }
            Cell::Raw { baseline, size } => {
                let row = Row::new(baseline.name().to_string(), *size, rtt, tp);
                baselines.push((baseline.rank(), row));
            }
        }
    }
    results.sort_by_key(|(order, r, _)| (*order, r.size));
    baselines.sort_by_key(|(rank, r)| (*rank, r.size));
    let baselines: Vec<Row> = baselines.into_iter().map(|(_, r)| r).collect();
    let results = results
        .into_iter()
        .map(|(_, mut row, compare_with)| {
            let names: Vec<&str> = compare_with.iter().map(|b| b.name()).collect();
            row.compare(&baselines, &names);
            row
        })
        .collect::<Vec<Row>>();
    patterns.sort_by_key(|(order, p, _)| (*order, p.row.size));
    let patterns = patterns
        .into_iter()
        .map(|(_, mut p, plain)| {
            p.row.compare(&results, &[plain.as_str()]);
            p
        })
        .collect();
    (results, baselines, patterns)
}
