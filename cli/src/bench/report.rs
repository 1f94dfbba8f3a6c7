//! Bench results: the table on stdout, the JSON file and the SVG plot.
//!
//! JSON shape (`version` 1):
//!
//! ```text
//! { "version": 1,
//!   "machine": { "os", "arch", "cpus", "pin", "parent_cpu", "peer_cpu", "duration_s",
//!                "rounds", "warmup_s", "elapsed_s" },
//!   "results":   [ ROW... ],     // one per transport and size
//!   "baselines": [ ROW... ],     // raw-cacheline, raw-eventfd, raw-memcpy, raw-unix, raw-tcp
//!                                // (and peer-iceoryx2 with that cargo feature)
//!   "patterns":  [ PATTERN_ROW... ], // +reqrep, +pubsub×100 rows (`--patterns`)
//!   "notes":     [ "skipped ...", ... ] }
//! ROW = { "transport", "size",
//!         "rtt_ns": { "p50", "p99", "p999", "max", "samples" } | null,
//!         "throughput": { "msgs_per_s", "bytes_per_s", "sent", "received", "loss" } | null,
//!         "baseline": "raw-tcp" | null,
//!         "ratio": { "p50", "throughput" } | null,   // vs `baseline`, same size
//!         "other_ratios": [ { "baseline", "p50", "throughput" } ] }
//! PATTERN_ROW = ROW + { "pattern": "reqrep" | "pubsub", "subscribers": 100 | null,
//!                       "ratio_compares": "..." }
//!         // "baseline" is the plain channel row of the same transport ("unix"), not a raw
//!         // baseline; "ratio_compares" says in words what "ratio" divides by what.
//! ```
//!
//! `ratio.p50` is the transport's median round trip divided by the baseline's (lower is
//! better, 1.0 = no overhead); `ratio.throughput` its bytes/s divided by the baseline's
//! (higher is better). The SVG is written by hand (no font or system dependencies) and opens
//! in any browser.

use super::{
    patterns::Pattern,
    types::{Pin, Rtt, Throughput},
};
use serde::Serialize;
use std::{fmt::Write as _, path::Path};

/// The machine and settings of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `std::env::consts::OS`.
    pub os: String,
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// CPU placement.
    pub pin: Pin,
    /// The parent's CPU, when pinned.
    pub parent_cpu: Option<usize>,
    /// The peer's CPU, when pinned.
    pub peer_cpu: Option<usize>,
    /// Seconds per measurement (all rounds together).
    pub duration_s: f64,
    /// Rounds each measurement was split into (merged in the results).
    pub rounds: u32,
    /// Seconds of warm-up per cell.
    pub warmup_s: f64,
    /// Seconds the whole run took.
    pub elapsed_s: f64,
}

/// A transport's numbers relative to a baseline of the same size.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The baseline compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Median round trip / the baseline's (lower is better).
    pub p50: Option<f64>,
    /// Bytes per second / the baseline's (higher is better).
    pub throughput: Option<f64>,
}

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Transport scheme (with options for a variant, `shm?spin=0`) or baseline name.
    pub transport: String,
    /// Payload size in bytes.
    pub size: usize,
    /// Round-trip latency.
    pub rtt_ns: Option<Rtt>,
    /// One-way throughput.
    pub throughput: Option<Throughput>,
    /// The nearest baseline, when one was measured.
    pub baseline: Option<String>,
    /// Ratios to `baseline`.
    pub ratio: Option<Ratio>,
    /// Ratios to further baselines (shm: raw-cacheline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_ratios: Vec<Ratio>,
}

impl Row {
    /// A row without comparisons.
    pub fn new(transport: String, size: usize, rtt: Option<Rtt>, tp: Option<Throughput>) -> Row {
        Row {
            transport,
            size,
            rtt_ns: rtt,
            throughput: tp,
            baseline: None,
            ratio: None,
            other_ratios: Vec::new(),
        }
    }

    /// Fills `baseline` and the ratios from the measured `baselines`, comparing with those
    /// named in `compare_with` (nearest first) that were measured at this row's size.
    pub fn compare(&mut self, baselines: &[Row], compare_with: &[&str]) {
        for name in compare_with {
            let Some(b) = baselines
                .iter()
                .find(|b| b.transport == *name && b.size == self.size)
            else {
                continue;
            };
            let p50 = match (&self.rtt_ns, &b.rtt_ns) {
                (Some(a), Some(b)) if b.p50 > 0 => Some(a.p50 as f64 / b.p50 as f64),
                _ => None,
            };
            let throughput = match (&self.throughput, &b.throughput) {
                (Some(a), Some(b)) if b.bytes_per_s > 0.0 => Some(a.bytes_per_s / b.bytes_per_s),
                _ => None,
            };
            if self.baseline.is_none() {
                self.baseline = Some(name.to_string());
                self.ratio = Some(Ratio {
                    baseline: None,
                    p50,
                    throughput,
                });
            } else {
                self.other_ratios.push(Ratio {
                    baseline: Some(name.to_string()),
                    p50,
                    throughput,
                });
            }
        }
    }
}

/// A pattern's row: measured like a transport row, compared with that transport's plain
/// channel row of the same size (its `baseline`).
#[derive(Debug, Clone, Serialize)]
pub struct PatternRow {
    /// The numbers, named `unix+reqrep`; `baseline` and `ratio` refer to the plain row.
    #[serde(flatten)]
    pub row: Row,
    /// `reqrep` or `pubsub`.
    pub pattern: &'static str,
    /// Subscribers (fan-out rows).
    pub subscribers: Option<usize>,
    /// What `ratio` compares, in words.
    pub ratio_compares: &'static str,
}

impl PatternRow {
    /// `pattern`'s row, not compared yet.
    pub fn new(pattern: Pattern, row: Row) -> PatternRow {
        PatternRow {
            row,
            pattern: pattern.name(),
            subscribers: pattern.subscribers(),
            ratio_compares: pattern.compares(),
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and settings.
    pub machine: Machine,
    /// One row per transport and size.
    pub results: Vec<Row>,
    /// The raw baselines.
    pub baselines: Vec<Row>,
    /// Pattern rows, each compared with its transport's plain row.
    pub patterns: Vec<PatternRow>,
    /// Skipped cells and failures.
    pub notes: Vec<String>,
}

/// `1 KiB`, `64 B`, `1.5 MiB`.
pub fn size(n: usize) -> String {
    const K: usize = 1024;
    if n >= K * K && n % (K * K) == 0 {
        format!("{} MiB", n / (K * K))
    } else if n >= K && n % K == 0 {
        format!("{} KiB", n / K)
    } else {
        format!("{n} B")
    }
}

/// `850 ns`, `12.3 µs`, `4.56 ms`.
pub fn nanos(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn ratio_text(r: &Ratio) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
    format!("{} / {}", f(r.p50), f(r.throughput))
}

/// The table's header.
const HEADER: [&str; 9] = [
    "transport",
    "size",
    "p50",
    "p99",
    "p99.9",
    "max",
    "msgs/s",
    "MB/s",
    "vs nearest baseline (p50 / MB/s)",
];

/// One row of the table, one string per column.
fn line(r: &Row) -> [String; 9] {
    let (p50, p99, p999, max) = match &r.rtt_ns {
        Some(t) => (nanos(t.p50), nanos(t.p99), nanos(t.p999), nanos(t.max)),
        None => ("n/a".into(), "".into(), "".into(), "".into()),
    };
    let (msgs, mbs) = match &r.throughput {
        Some(t) => {
            let mut m = format!("{:.1}", t.bytes_per_s / 1e6);
            if t.loss > 0.0 {
                let _ = write!(m, " ({:.1}% lost)", t.loss * 100.0);
            }
            (rate(t.msgs_per_s), m)
        }
        None => ("n/a".into(), "n/a".into()),
    };
    // One comparison per row, with the nearest baseline; the others are in the JSON.
    let vs = match (&r.baseline, &r.ratio) {
        (Some(b), Some(ratio)) => format!("{b} {}", ratio_text(ratio)),
        _ if is_baseline(&r.transport) => "(baseline)".into(),
        _ => "-".into(),
    };
    let name = r.transport.clone();
    [name, size(r.size), p50, p99, p999, max, msgs, mbs, vs]
}

/// `lines` under `HEADER` and a rule, in columns as wide as their widest cell: names and the
/// comparison left-aligned, numbers right-aligned.
fn columns(lines: &[[String; 9]]) -> String {
    let mut width = HEADER.map(|h| h.chars().count());
    for l in lines {
        for (w, c) in width.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut put = |cells: &[String]| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = " ".repeat(width[i].saturating_sub(c.chars().count()));
            if i == 0 || i == 8 {
                line.push_str(c);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(c);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    put(&HEADER.map(String::from));
    put(&width.map(|w| "-".repeat(w)));
    for l in lines {
        put(l);
    }
    out
}

impl Report {
    /// The aligned text table, then the machine, a legend and the notes.
    pub fn table(&self) -> String {
        let lines: Vec<[String; 9]> = self
            .baselines
            .iter()
            .chain(&self.results)
            .chain(self.patterns.iter().map(|p| &p.row))
            .map(line)
            .collect();
        let mut out = columns(&lines);
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\n{} {} with {} CPUs, pin {} (parent CPU {}, peer CPU {}), {:.2} s per measurement \
             in {} rounds",
            m.os,
            m.arch,
            m.cpus,
            m.pin,
            m.parent_cpu.map_or("any".into(), |c| c.to_string()),
            m.peer_cpu.map_or("any".into(), |c| c.to_string()),
            m.duration_s,
            m.rounds
        );
        let _ = writeln!(
            out,
            "p50..max: round trip of one typed message; MB/s: one-way payload bytes (10^6/s); \
             vs nearest baseline: latency ratio (lower is better) / throughput ratio (higher is \
             better) to the baseline named; the ratios to every other baseline are in the JSON."
        );
        if !self.patterns.is_empty() {
            let _ = writeln!(
                out,
                "+reqrep: request/reply round trip (patterns::Client to Server); +pubsub×N: \
                 messages/s delivered in all to N subscribers (payload MB/s likewise); both \
                 compared with the plain channel row of their transport, not a raw baseline."
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// Writes the JSON file (creating its directory).
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("version".into(), 1.into());
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        write_file(path, &text)
    }

    /// Writes the SVG plot (creating its directory).
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        write_file(path, &self.svg())
    }

    /// The plot: p50 round trip (bars) with p99 (ticks), and throughput, per size and series.
    pub fn svg(&self) -> String {
        let rows: Vec<&Row> = self
            .baselines
            .iter()
            .chain(&self.results)
            .chain(self.patterns.iter().map(|p| &p.row))
            .collect();
        let mut series: Vec<&str> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        for r in &rows {
            if !series.contains(&r.transport.as_str()) {
                series.push(&r.transport);
            }
            if !sizes.contains(&r.size) {
                sizes.push(r.size);
            }
        }
        sizes.sort_unstable();
        const W: f64 = 1000.0;
        const CH: f64 = 300.0;
        let (left, right) = (90.0, 180.0);
        let top1 = 60.0;
        let top2 = top1 + CH + 90.0;
        let height = top2 + CH + 70.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">ductwork bench: {} {}, {} CPUs, pin {}</text>"##,
            W / 2.0,
            self.machine.os,
            self.machine.arch,
            self.machine.cpus,
            self.machine.pin
        );
        let lat: Vec<(usize, &str, f64, Option<f64>)> = rows
            .iter()
            .filter_map(|r| {
                r.rtt_ns.as_ref().map(|t| {
                    (
                        r.size,
                        r.transport.as_str(),
                        t.p50 as f64 / 1e3,
                        Some(t.p99 as f64 / 1e3),
                    )
                })
            })
            .collect();
        let tput: Vec<(usize, &str, f64, Option<f64>)> = rows
            .iter()
            .filter_map(|r| {
                r.throughput
                    .as_ref()
                    .map(|t| (r.size, r.transport.as_str(), t.bytes_per_s / 1e6, None))
            })
            .collect();
        let geo = Geo {
            left,
            width: W - left - right,
            height: CH,
        };
        let styles = styles(&series);
        let plot = Plot {
            series: &series,
            styles: &styles,
            sizes: &sizes,
        };
        plot.chart(
            &mut s,
            &geo,
            top1,
            "Round-trip latency, µs (bar: p50, tick: p99; log scale, lower is better)",
            &lat,
        );
        plot.chart(
            &mut s,
            &geo,
            top2,
            "One-way throughput, MB/s (log scale, higher is better)",
            &tput,
        );
        plot.legend(&mut s, W - right + 20.0, top1);
        s.push_str("</svg>\n");
        s
    }
}

/// Whether a row is a baseline (a raw OS mechanism, or another library: `peer-`), not one of
/// ductwork's own rows.
fn is_baseline(name: &str) -> bool {
    name.starts_with("raw-") || name.starts_with("peer-")
}

/// How one series is drawn.
#[derive(Debug, Clone, PartialEq)]
struct Style {
    /// Its fill colour.
    fill: String,
    /// A baseline: drawn with a dashed outline.
    baseline: bool,
}

impl Style {
    /// The attributes of a bar or legend swatch in this style.
    fn attrs(&self) -> String {
        let mut a = format!(r#"fill="{}""#, self.fill);
        if self.baseline {
            a.push_str(r##" stroke="#000" stroke-width="1" stroke-dasharray="3,2""##);
        }
        a
    }
}

/// Colours for ductwork's rows (transports, variants, patterns): saturated, no greys, which
/// are the baselines'.
const PALETTE: [&str; 16] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#393b79", "#e7ba52", "#637939", "#7b4173", "#00a087", "#ff9896", "#aec7e8",
];

/// A style per series: each of ductwork's rows its own colour (from [`PALETTE`], then hues
/// spread around the wheel), each baseline its own shade of grey with a dashed outline, so
/// that no two series look alike and baselines stand apart from what is compared with them.
fn styles(series: &[&str]) -> Vec<Style> {
    let baselines = series.iter().filter(|s| is_baseline(s)).count();
    let (mut b, mut t) = (0usize, 0usize);
    series
        .iter()
        .map(|name| {
            if is_baseline(name) {
                // Dark to light, evenly spaced.
                let light = match baselines {
                    1 => 55,
                    n => 25 + 55 * b / (n - 1),
                };
                b += 1;
                Style {
                    fill: format!("hsl(0, 0%, {light}%)"),
                    baseline: true,
                }
            } else {
                let fill = PALETTE.get(t).map_or_else(
                    || format!("hsl({}, 70%, 45%)", (t * 137) % 360),
                    |c| c.to_string(),
                );
                t += 1;
                Style {
                    fill,
                    baseline: false,
                }
            }
        })
        .collect()
}

struct Geo {
    left: f64,
    width: f64,
    height: f64,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What both charts and the legend share: the series, how each is drawn, the sizes.
struct Plot<'a> {
    series: &'a [&'a str],
    styles: &'a [Style],
    sizes: &'a [usize],
}

impl Plot<'_> {
    /// The legend at (`x`, `top`): ductwork's rows, then the baselines under their own heading.
    fn legend(&self, s: &mut String, x: f64, top: f64) {
        let mut y = top;
        for (heading, baselines) in [("ductwork", false), ("baselines", true)] {
            let members: Vec<usize> = (0..self.series.len())
                .filter(|&i| self.styles[i].baseline == baselines)
                .collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{}" font-weight="bold">{heading}</text>"#,
                y + 11.0
            );
            y += 18.0;
            for i in members {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="14" height="14" {}/><text x="{}" y="{}">{}</text>"#,
                    self.styles[i].attrs(),
                    x + 20.0,
                    y + 11.0,
                    esc(self.series[i])
                );
                y += 18.0;
            }
            y += 8.0;
        }
    }

    /// One grouped bar chart on a log scale: groups are sizes, bars are series.
    fn chart(
        &self,
        s: &mut String,
        g: &Geo,
        top: f64,
        title: &str,
        data: &[(usize, &str, f64, Option<f64>)],
    ) {
        let (series, sizes) = (self.series, self.sizes);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="14">{}</text>"#,
            g.left,
            top - 12.0,
            esc(title)
        );
        let values = data
            .iter()
            .flat_map(|d| std::iter::once(d.2).chain(d.3))
            .filter(|v| *v > 0.0 && v.is_finite());
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">no data</text>"#,
                g.left + 10.0,
                top + 20.0
            );
            return;
        }
        let (dlo, dhi) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let y = |v: f64| top + g.height - (v.log10() - dlo) / (dhi - dlo) * g.height;
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            g.left, g.width, g.height
        );
        let mut d = dlo;
        while d <= dhi + 1e-9 {
            let v = 10f64.powf(d);
            let yy = y(v);
            let label = if v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            };
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                g.left,
                g.left + g.width,
                g.left - 6.0,
                yy + 4.0
            );
            d += 1.0;
        }
        let gw = g.width / sizes.len().max(1) as f64;
        let bw = gw * 0.8 / series.len().max(1) as f64;
        for (gi, &sz) in sizes.iter().enumerate() {
            let gx = g.left + gi as f64 * gw;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + gw / 2.0,
                top + g.height + 18.0,
                size(sz)
            );
            for (si, name) in series.iter().enumerate() {
                let Some(&(_, _, v, tick)) = data.iter().find(|d| d.0 == sz && d.1 == *name) else {
                    continue;
                };
                if !(v > 0.0 && v.is_finite()) {
                    continue;
                }
                let x = gx + gw * 0.1 + si as f64 * bw;
                let yv = y(v).min(top + g.height);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{yv:.1}" width="{:.1}" height="{:.1}" {}><title>{} {}: {v:.3}</title></rect>"#,
                    (bw - 1.0).max(1.0),
                    (top + g.height - yv).max(0.5),
                    self.styles[si].attrs(),
                    esc(name),
                    size(sz)
                );
                if let Some(t) = tick.filter(|t| *t > 0.0 && t.is_finite()) {
                    let yt = y(t);
                    let _ = writeln!(
                        s,
                        r##"<line x1="{x:.1}" y1="{yt:.1}" x2="{:.1}" y2="{yt:.1}" stroke="#000" stroke-width="2"/>"##,
                        x + (bw - 1.0).max(1.0)
                    );
                }
            }
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtt(p50: u64) -> Rtt {
        Rtt {
            p50,
            p99: p50 * 2,
            p999: p50 * 3,
            max: p50 * 4,
            samples: 100,
            hist: None,
        }
    }

    fn report(baselines: &[&str], transports: &[&str]) -> Report {
        let row = |name: &&str| Row::new(name.to_string(), 64, Some(rtt(1_000)), None);
        Report {
            machine: Machine {
                os: "linux".into(),
                arch: "x86_64".into(),
                cpus: 2,
                pin: Pin::Cross,
                parent_cpu: Some(0),
                peer_cpu: Some(1),
                duration_s: 1.0,
                rounds: 3,
                warmup_s: 0.2,
                elapsed_s: 9.0,
            },
            results: transports.iter().map(row).collect(),
            baselines: baselines.iter().map(row).collect(),
            patterns: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A row compared with three baselines shows only the nearest one, named, in the table;
    /// the JSON keeps all three.
    #[test]
    fn the_table_shows_one_comparison_per_row_and_the_json_all() {
        let mut r = report(&["raw-cacheline", "raw-eventfd", "raw-unix"], &["shm"]);
        let baselines = r.baselines.clone();
        r.results[0].compare(&baselines, &["raw-cacheline", "raw-eventfd", "raw-unix"]);
        let table = r.table();
        let shm = table.lines().find(|l| l.starts_with("shm ")).unwrap();
        assert!(shm.trim_end().ends_with("raw-cacheline 1.00x / -"), "{shm}");
        assert!(!shm.contains("raw-eventfd") && !shm.contains(';'), "{shm}");
        let v = serde_json::to_value(&r).unwrap();
        let others = v["results"][0]["other_ratios"].as_array().unwrap();
        assert_eq!(others.len(), 2, "{v:#}");
    }

    /// Every series of a full run gets its own look, and baselines (grey, dashed outline)
    /// look unlike ductwork's rows, in the legend and in the bars.
    #[test]
    fn every_series_has_its_own_colour_and_baselines_stand_apart() {
        let baselines = [
            "raw-cacheline",
            "raw-eventfd",
            "raw-shmcopy",
            "raw-memcpy",
            "raw-unix",
            "raw-tcp",
            "peer-iceoryx2",
        ];
        let transports: Vec<String> = (0..22).map(|i| format!("t{i}")).collect();
        let t: Vec<&str> = transports.iter().map(String::as_str).collect();
        let svg = report(&baselines, &t).svg();
        let mut fills = Vec::new();
        for name in baselines.iter().chain(&t) {
            let legend = svg
                .lines()
                .find(|l| l.contains(&format!(">{name}</text>")))
                .unwrap();
            // The swatch's attributes, `fill="..."` up to the end of the rect.
            let attrs = &legend[legend.find("fill=").unwrap()..legend.find("/><text").unwrap()];
            let baseline = is_baseline(name);
            assert_eq!(attrs.contains("stroke-dasharray"), baseline, "{legend}");
            assert_eq!(attrs.contains("hsl(0, 0%"), baseline, "{legend}");
            let bar = format!("{attrs}><title>{name} 64 B");
            assert!(svg.contains(&bar), "no bar drawn as {bar}");
            fills.push(attrs.split('"').nth(1).unwrap().to_string());
        }
        let n = fills.len();
        fills.sort_unstable();
        fills.dedup();
        assert_eq!(fills.len(), n, "colours repeat: {fills:?}");
    }
}
