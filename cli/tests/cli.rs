//! The `ductwork` binary, run as a real process: argument errors, the JSON written by a tiny
//! bench run (pattern rows included), a send/listen round trip through TCP between two
//! processes, and raw send/listen against typed `ductwork::Channel`s in this test process.
//!
//! Correctness only: nothing here asserts how fast anything is.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::{Child, ChildStderr, Command, Output, Stdio},
    time::Duration,
};

fn ductwork() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ductwork"))
}

fn run(args: &[&str]) -> Output {
    ductwork().args(args).output().expect("runs the binary")
}

/// A `ductwork bench` run whose JSON and SVG go to a private temp dir (removed on drop); it
/// must end within five minutes.
struct Bench {
    dir: PathBuf,
    out: Output,
}

impl Bench {
    /// Runs `ductwork bench ARGS --json .. --plot ..` with `env` added.
    fn run(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Bench {
        let dir = std::env::temp_dir().join(format!("ductwork-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = ductwork()
            .arg("bench")
            .args(args)
            .arg("--json")
            .arg(dir.join("out.json"))
            .arg("--plot")
            .arg(dir.join("out.svg"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_timeout(child, Duration::from_secs(300));
        Bench { dir, out }
    }

    /// The JSON the run wrote; the run must have succeeded.
    fn json(&self) -> serde_json::Value {
        assert!(self.out.status.success(), "{}", stderr(&self.out));
        serde_json::from_slice(&std::fs::read(self.dir.join("out.json")).unwrap()).unwrap()
    }

    /// The SVG the run wrote.
    fn svg(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.svg")).unwrap()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A row's `rtt_ns` holds ordered, non-zero percentiles.
fn assert_percentiles(rtt: &serde_json::Value) {
    let p = |k: &str| rtt[k].as_u64().unwrap_or_else(|| panic!("no {k} in {rtt}"));
    let (p50, p99, p999, max) = (p("p50"), p("p99"), p("p999"), p("max"));
    assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{rtt}");
}

/// The `transport` of every row under `key` (`results` or `baselines`).
fn row_names<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    let rows = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}: {v:#}"));
    rows.iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect()
}

/// The rows under `key` (`results` or `baselines`) of one transport or baseline.
fn rows_of<'a>(v: &'a serde_json::Value, key: &str, transport: &str) -> Vec<&'a serde_json::Value> {
    let rows = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}: {v:#}"));
    rows.iter()
        .filter(|r| r["transport"] == transport)
        .collect()
}

/// A JSON array of strings.
fn strings(v: &serde_json::Value) -> Vec<&str> {
    let items = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    items.iter().map(|n| n.as_str().unwrap()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_transport_is_a_usage_error() {
    let o = run(&["bench", "--transports", "tcp,carrier-pigeon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("unknown transport `carrier-pigeon`"), "{e}");
    assert!(
        e.contains("tcp"),
        "lists the transports this build has: {e}"
    );
}

#[test]
fn bad_size_is_a_usage_error() {
    let o = run(&["bench", "--sizes", "64,lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--sizes") && e.contains("lots"), "{e}");
}

#[test]
fn bad_pin_and_duration_are_usage_errors() {
    let o = run(&["bench", "--pin", "sideways"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sideways"), "{}", stderr(&o));
    for bad in ["--duration=-1", "--duration=0", "--duration=soon"] {
        let o = run(&["bench", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--duration"), "{}", stderr(&o));
    }
    for bad in ["--rounds=0", "--rounds=101", "--rounds=some"] {
        let o = run(&["bench", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--rounds"), "{}", stderr(&o));
    }
}

#[test]
fn tiny_bench_writes_table_json_and_svg() {
    let transports = if cfg!(unix) { "tcp,unix" } else { "tcp" };
    let b = Bench::run(
        "test",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64,1KiB",
            "--transports",
            transports,
            "--pin",
            "none",
        ],
        &[],
    );
    let v = b.json();
    let table = String::from_utf8_lossy(&b.out.stdout);
    assert!(
        table.contains("transport") && table.contains("p99.9"),
        "{table}"
    );

    assert_eq!(v["version"], 1);
    assert_eq!(v["machine"]["pin"], "none");
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    let results = v["results"].as_array().unwrap();
    let schemes: Vec<&str> = transports.split(',').collect();
    assert_eq!(results.len(), schemes.len() * 2, "{v:#}");
    for r in results {
        let t = r["transport"].as_str().unwrap();
        assert!(schemes.contains(&t), "{t}");
        assert!([64, 1024].contains(&r["size"].as_u64().unwrap()));
        assert_percentiles(&r["rtt_ns"]);
        let tp = &r["throughput"];
        assert!(tp["msgs_per_s"].as_f64().unwrap() > 0.0);
        assert!(tp["bytes_per_s"].as_f64().unwrap() > 0.0);
        // Reliable transports: everything sent arrived.
        assert_eq!(tp["sent"], tp["received"], "{r}");
        assert_eq!(r["baseline"], format!("raw-{t}").as_str(), "{r}");
        assert!(r["ratio"]["p50"].as_f64().unwrap() > 0.0);
        assert!(r["ratio"]["throughput"].as_f64().unwrap() > 0.0);
    }
    let baselines = row_names(&v, "baselines");
    for s in &schemes {
        assert!(
            baselines.contains(&format!("raw-{s}").as_str()),
            "{baselines:?}"
        );
    }
    let plot = b.svg();
    assert!(plot.starts_with("<?xml") && plot.trim_end().ends_with("</svg>"));
    assert!(plot.contains("raw-tcp"));
}

#[test]
fn one_way_setup_measures_through_two_endpoints() {
    // The setup one-way transports (mailslot, copydata) use: pings out over the peer's
    // endpoint, echoes back over ours. Forced here on tcp so every platform runs that path.
    let b = Bench::run(
        "2ep",
        &[
            "--two-endpoints",
            "--duration",
            "0.05",
            "--sizes",
            "1KiB",
            "--transports",
            "tcp",
        ],
        &[],
    );
    let v = b.json();
    let r = &v["results"][0];
    assert_eq!(r["transport"], "tcp", "{v:#}");
    assert!(r["rtt_ns"]["p50"].as_u64().unwrap() > 0);
    assert_eq!(r["throughput"]["sent"], r["throughput"]["received"]);
}

#[test]
fn a_peer_that_dies_fails_its_cell_and_the_run_goes_on() {
    let b = Bench::run(
        "dies",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64,1KiB",
            "--transports",
            "tcp",
        ],
        &[("DUCTWORK_BENCH_PEER_DIES_AFTER", "50")],
    );
    let v = b.json();
    // Both tcp cells failed (their peers died), the baselines (no ductwork peer) were measured.
    assert_eq!(v["results"].as_array().unwrap().len(), 0, "{v:#}");
    assert_eq!(v["baselines"].as_array().unwrap().len(), 2, "{v:#}");
    let notes = strings(&v["notes"]);
    assert_eq!(
        notes.iter().filter(|n| n.starts_with("tcp ")).count(),
        2,
        "{notes:?}"
    );
    assert!(notes.iter().all(|n| n.contains("failed")), "{notes:?}");
}

/// With the `peer-iceoryx2` feature, measuring shm also measures iceoryx2 between the same
/// two processes' CPUs, at every size, and the shm rows compare with it.
#[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
#[test]
fn iceoryx2_baseline_runs_next_to_shm() {
    let b = Bench::run(
        "iox",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64,1KiB",
            "--transports",
            "shm",
        ],
        &[],
    );
    let v = b.json();
    assert!(String::from_utf8_lossy(&b.out.stdout).contains("peer-iceoryx2"));
    let iox = rows_of(&v, "baselines", "peer-iceoryx2");
    let sizes: Vec<u64> = iox.iter().map(|b| b["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [64, 1024], "{v:#}");
    for b in &iox {
        let rtt = &b["rtt_ns"];
        assert_percentiles(rtt);
        assert!(rtt["samples"].as_u64().unwrap() >= 20, "{rtt}");
    }
    // Each measured shm row carries its ratio to the iceoryx2 row of its size.
    let shm = rows_of(&v, "results", "shm");
    assert!(!shm.is_empty(), "{v:#}");
    for r in shm {
        // 64 B: nearest is raw-eventfd, iceoryx2 comes after; 1 KiB: iceoryx2 is the only one.
        let vs_iox = if r["baseline"] == "peer-iceoryx2" {
            Some(&r["ratio"])
        } else {
            r["other_ratios"]
                .as_array()
                .and_then(|o| o.iter().find(|x| x["baseline"] == "peer-iceoryx2"))
        };
        assert!(
            vs_iox.is_some_and(|x| x["p50"].as_f64().unwrap() > 0.0),
            "{r}"
        );
    }
}

/// An iceoryx2 peer that crashes fails its row with a note, without a hang.
#[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
#[test]
fn an_iceoryx2_peer_that_dies_fails_its_row() {
    let b = Bench::run(
        "ioxdies",
        &["--duration", "0.05", "--sizes", "64", "--transports", "shm"],
        &[("DUCTWORK_BENCH_PEER_DIES_AFTER", "50")],
    );
    let v = b.json();
    let baselines = row_names(&v, "baselines");
    assert!(!baselines.contains(&"peer-iceoryx2"), "{v:#}");
    assert!(baselines.contains(&"raw-cacheline"), "{v:#}");
    let notes = strings(&v["notes"]);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("peer-iceoryx2 64 B: failed") && n.contains("exited")),
        "{notes:?}"
    );
}

#[test]
fn send_and_listen_round_trip_over_tcp() {
    let (listener, _stderr, endpoint) = listen(&["tcp://127.0.0.1:0", "--count", "3"]);
    let input = "{\"item\":\"bolt\",\"qty\":3,\"price\":-1.5}\n\n[1,-2,null,true,\"x\"]\n\"just a string\"\n";
    let sent = send(&endpoint, input.as_bytes());
    assert!(sent.status.success(), "{}", stderr(&sent));

    let out = wait_with_timeout(listener, Duration::from_secs(30));
    assert!(out.status.success());
    let got: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: Vec<serde_json::Value> = input
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn send_errors_name_the_endpoint() {
    // Nothing listens on this port (bound then released by us).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let o = send(&ep, b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&ep), "{}", stderr(&o));

    let o = run(&["send", "ftp://nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ftp://nowhere"), "{}", stderr(&o));
}

#[test]
fn send_rejects_a_line_that_is_not_json() {
    let (listener, _stderr, endpoint) = listen(&["tcp://127.0.0.1:0", "--connections", "1"]);
    let o = send(&endpoint, b"{\"ok\":1}\n{not json\n");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("line 2") && e.contains(&endpoint), "{e}");
    // The first message still arrived before the sender gave up.
    let out = wait_with_timeout(listener, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{\"ok\":1}");
}

/// Starts `ductwork listen ARGS`; returns it, its stderr (kept open: the listener logs there)
/// and the endpoint it bound, which its first stderr line names with the real port.
fn listen(args: &[&str]) -> (Child, BufReader<ChildStderr>, String) {
    let mut child = ductwork()
        .arg("listen")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, err, endpoint)
}

/// Runs `ductwork send ENDPOINT` with `input` on its stdin, then end of input.
fn send(endpoint: &str, input: &[u8]) -> Output {
    send_with(&[], endpoint, input)
}

/// Runs `ductwork send ARGS ENDPOINT` with `input` on its stdin, then end of input.
fn send_with(args: &[&str], endpoint: &str, input: &[u8]) -> Output {
    let mut child = ductwork()
        .arg("send")
        .args(args)
        .arg(endpoint)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Waits for `child`, killing it (and failing) if it takes longer than `limit`. Its piped
/// output is drained meanwhile, so a child that writes a lot cannot stall on a full pipe.
fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn bad_transport_options_are_usage_errors() {
    for (bad, says) in [
        ("shm?spin", "key=value"),
        ("tcp?=1", "key=value"),
        ("tcp?bogus=1", "unknown option `bogus`"),
    ] {
        let o = run(&["bench", "--transports", bad, "--duration", "0.05"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{bad}: {}", stderr(&o));
    }
}

/// `shm?spin=0` is a row of its own, compared first with the eventfd ping-pong (Linux), and
/// bulk sizes get a memcpy baseline (and on Linux a raw shared-ring copy) that shm throughput
/// is compared with.
#[test]
fn shm_variants_and_memcpy_baseline() {
    let b = Bench::run(
        "shm",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64,64KiB",
            "--transports",
            "shm,shm?spin=0",
            "--pin",
            "none",
        ],
        &[],
    );
    let v = b.json();
    let rows = v["results"].as_array().unwrap();
    let row = |t: &str, size: u64| {
        rows.iter()
            .find(|r| r["transport"] == t && r["size"] == size)
            .unwrap_or_else(|| panic!("no {t} {size} row: {v:#}"))
    };
    for t in ["shm", "shm?spin=0"] {
        for size in [64, 65536] {
            let r = row(t, size);
            assert!(r["rtt_ns"]["p50"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(r["throughput"]["sent"], r["throughput"]["received"], "{r}");
        }
        // Bulk throughput is compared with memcpy, measured in the same run.
        let bulk = row(t, 65536);
        let mut ratios = vec![(bulk["baseline"].clone(), bulk["ratio"].clone())];
        for r in bulk["other_ratios"].as_array().into_iter().flatten() {
            ratios.push((r["baseline"].clone(), r.clone()));
        }
        let mut bulk_baselines = vec!["raw-memcpy"];
        if cfg!(target_os = "linux") {
            bulk_baselines.push("raw-shmcopy");
        }
        for base in &bulk_baselines {
            let vs = ratios
                .iter()
                .find(|(b, _)| b == base)
                .unwrap_or_else(|| panic!("no {base} ratio: {bulk}"));
            assert!(vs.1["throughput"].as_f64().unwrap() > 0.0, "{bulk}");
        }
    }
    for base in ["raw-memcpy", "raw-shmcopy"] {
        let found = rows_of(&v, "baselines", base);
        if base == "raw-shmcopy" && !cfg!(target_os = "linux") {
            assert!(found.is_empty(), "{v:#}");
            continue;
        }
        assert_eq!(
            found.len(),
            1,
            "{base} is measured at bulk sizes only: {v:#}"
        );
        assert_eq!(found[0]["size"], 65536, "{v:#}");
        assert!(found[0]["throughput"]["bytes_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            found[0]["rtt_ns"].is_null(),
            "{base} measures throughput only"
        );
    }
    if cfg!(target_os = "linux") {
        assert_eq!(row("shm?spin=0", 64)["baseline"], "raw-eventfd");
        assert_eq!(row("shm", 64)["baseline"], "raw-cacheline");
    }
}

/// Rounds are merged: every row holds the samples of all its rounds, and the machine block
/// says how many. With a vanishing duration each round records exactly the minimum of 20
/// round trips, so two merged rounds hold exactly 40.
#[test]
fn rounds_are_merged_into_one_row() {
    let b = Bench::run(
        "rounds",
        &[
            "--duration",
            "0.000001",
            "--rounds",
            "2",
            "--sizes",
            "64",
            "--transports",
            "tcp",
            "--pin",
            "none",
        ],
        &[],
    );
    let v = b.json();
    assert_eq!(v["machine"]["rounds"], 2);
    let rows: Vec<&serde_json::Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["baselines"].as_array().unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "one tcp row and one raw-tcp row: {v:#}");
    for r in rows {
        assert_eq!(r["rtt_ns"]["samples"], 40, "{r}");
        let tp = &r["throughput"];
        assert_eq!(tp["sent"], tp["received"], "{r}");
    }
}

/// The pattern rows of the default run: request/reply over unix and shm and the fan-out to
/// 100 subscribers over unix, at 64 B, each with its ratio to the plain channel row of its
/// transport measured in the same run, in the table, the JSON and the plot.
#[cfg(unix)]
#[test]
fn pattern_rows_carry_their_ratio_to_the_plain_channel() {
    let b = Bench::run(
        "patterns",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64",
            "--transports",
            "unix,shm",
            "--pin",
            "none",
        ],
        &[],
    );
    let v = b.json();
    let table = String::from_utf8_lossy(&b.out.stdout);
    let plot = b.svg();
    assert_eq!(row_names(&v, "patterns").len(), 3, "{v:#}");
    for (name, plain, pattern) in [
        ("unix+reqrep", "unix", "reqrep"),
        ("shm+reqrep", "shm", "reqrep"),
        ("unix+pubsub×100", "unix", "pubsub"),
    ] {
        assert!(table.contains(name), "{table}");
        assert!(plot.contains(name), "the plot has a series for {name}");
        let rows = rows_of(&v, "patterns", name);
        assert_eq!(rows.len(), 1, "{v:#}");
        let r = rows[0];
        assert_eq!(r["size"], 64, "{r}");
        assert_eq!(r["pattern"], pattern, "{r}");
        // Compared with the plain channel row of the same transport, which the run measured.
        assert_eq!(r["baseline"], plain, "{r}");
        assert_eq!(rows_of(&v, "results", plain).len(), 1, "{v:#}");
        assert!(
            r["ratio_compares"].as_str().unwrap().contains("plain"),
            "{r}"
        );
        if pattern == "reqrep" {
            assert_percentiles(&r["rtt_ns"]);
            assert!(r["ratio"]["p50"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["throughput"].is_null(), "{r}");
            assert!(r["subscribers"].is_null(), "{r}");
        } else {
            assert_eq!(r["subscribers"], 100, "{r}");
            assert!(r["rtt_ns"].is_null(), "{r}");
            let tp = &r["throughput"];
            // Every message reached every subscriber.
            assert_eq!(tp["sent"], tp["received"], "{r}");
            assert_eq!(tp["sent"].as_u64().unwrap() % 100, 0, "{r}");
            assert!(tp["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["ratio"]["throughput"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

/// `--patterns none` measures no pattern row; `--patterns all` measures request/reply at
/// every size on any reliable duplex transport (here tcp, whose default run has none).
#[test]
fn patterns_option_chooses_the_rows() {
    let args = |which: &'static str| {
        [
            "--duration",
            "0.05",
            "--sizes",
            "64,1KiB",
            "--transports",
            "tcp",
            "--patterns",
            which,
        ]
    };
    let none = Bench::run("pat-none", &args("none"), &[]);
    assert!(row_names(&none.json(), "patterns").is_empty());
    let all = Bench::run("pat-all", &args("all"), &[]);
    let v = all.json();
    let rows = rows_of(&v, "patterns", "tcp+reqrep");
    let sizes: Vec<u64> = rows.iter().map(|r| r["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [64, 1024], "{v:#}");
    for r in rows {
        assert_eq!(r["baseline"], "tcp", "{r}");
        assert!(r["ratio"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    }
    let o = run(&["bench", "--patterns", "some"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--patterns"), "{}", stderr(&o));
}

/// A typed message as an application would define it (the example of docs/wire-format.md).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    item: String,
    qty: u32,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `listen --raw hex` prints the postcard bytes of what a typed `Channel` sends: an `Order`
/// (the bytes docs/wire-format.md gives for it) and a `u32`, over two connections.
#[test]
fn listen_raw_prints_the_frames_a_typed_channel_sends() {
    let (listener, _stderr, endpoint) =
        listen(&["tcp://127.0.0.1:0", "--raw", "hex", "--count", "3"]);
    let order = Order {
        id: 7,
        item: "bolt".into(),
        qty: 3,
    };
    runtime().block_on(async {
        let mut orders: ductwork::Channel<Order> =
            ductwork::connect_channel(endpoint.as_str()).await.unwrap();
        orders.send(&order).await.unwrap();
        orders
            .send(&Order {
                id: 300,
                item: String::new(),
                qty: 0,
            })
            .await
            .unwrap();
        orders.close().await.unwrap();
        let mut numbers: ductwork::Channel<u32> =
            ductwork::connect_channel(endpoint.as_str()).await.unwrap();
        numbers.send(&1_000_000).await.unwrap();
        numbers.close().await.unwrap();
    });
    let out = wait_with_timeout(listener, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // id 300 is the varint ac 02; 1,000,000 the varint c0 84 3d.
    assert_eq!(lines, ["0704626f6c7403", "ac020000", "c0843d"], "{stdout}");
}

/// `send --raw` lines reach a typed `Channel` receiver as the values they encode, in hex and
/// in base64, blank-free and spaced alike.
#[test]
fn send_raw_reaches_a_typed_receiver() {
    let rt = runtime();
    let mut listener = rt.block_on(ductwork::bind("tcp://127.0.0.1:0")).unwrap();
    let endpoint = listener.endpoint().to_string();
    for (encoding, input) in [
        ("hex", "07 04 62 6F 6C 74 03\r\nac020000\n"),
        ("base64", "BwRib2x0Aw==\nrAIAAA\n"),
    ] {
        // The sender's first frame waits for the listener's hello, written when it accepts:
        // accept while it runs.
        let ep = endpoint.clone();
        let sender =
            std::thread::spawn(move || send_with(&["--raw", encoding], &ep, input.as_bytes()));
        let got: Vec<Order> = rt.block_on(async {
            let mut ch: ductwork::Channel<Order> =
                ductwork::accept_channel(&mut listener).await.unwrap();
            let mut got = Vec::new();
            // Bounded: the sender sent two frames and closed.
            for _ in 0..3 {
                match ch.recv().await.unwrap() {
                    Some(o) => got.push(o),
                    None => break,
                }
            }
            got
        });
        let sent = sender.join().unwrap();
        assert!(sent.status.success(), "{encoding}: {}", stderr(&sent));
        let want = [
            Order {
                id: 7,
                item: "bolt".into(),
                qty: 3,
            },
            Order {
                id: 300,
                item: String::new(),
                qty: 0,
            },
        ];
        assert_eq!(got, want, "{encoding}");
    }
}

/// A line that is not hex or base64 stops `send --raw` with an error naming the line and
/// the column, after the good lines before it went out; nothing panics.
#[test]
fn send_raw_rejects_bad_lines_by_number() {
    for (encoding, input, says) in [
        ("hex", "0102\n0g\n", "`g` at column 2"),
        ("hex", "0102\n012\n", "odd number of hex digits"),
        ("base64", "AQI=\nA*==\n", "`*` at column 2"),
        ("base64", "AQI=\nQUJD=\n", "padding"),
    ] {
        let (listener, _stderr, endpoint) =
            listen(&["tcp://127.0.0.1:0", "--raw", "hex", "--connections", "1"]);
        let o = send_with(&["--raw", encoding], &endpoint, input.as_bytes());
        assert_eq!(
            o.status.code(),
            Some(1),
            "{encoding} {input:?}: {}",
            stderr(&o)
        );
        let e = stderr(&o);
        assert!(
            e.contains("stdin line 2") && e.contains(says) && e.contains(encoding),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        let out = wait_with_timeout(listener, Duration::from_secs(30));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0102");
    }
}

/// A pattern row whose peer dies (the request/reply server, the subscribers' process) fails
/// with a note like any cell, and the run goes on.
#[cfg(unix)]
#[test]
fn a_pattern_peer_that_dies_fails_its_row() {
    let b = Bench::run(
        "patdies",
        &[
            "--duration",
            "0.05",
            "--sizes",
            "64",
            "--transports",
            "unix",
        ],
        // Fewer than the 20 round trips every round makes at least.
        &[("DUCTWORK_BENCH_PEER_DIES_AFTER", "10")],
    );
    let v = b.json();
    assert!(row_names(&v, "patterns").is_empty(), "{v:#}");
    assert_eq!(row_names(&v, "baselines"), ["raw-unix"], "{v:#}");
    let notes = strings(&v["notes"]);
    for row in ["unix+reqrep", "unix+pubsub×100"] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("{row} 64 B: failed"))),
            "{row}: {notes:?}"
        );
    }
}

/// `listen` on a shared receiver keeps going after one sender's over-long message (issue 11,
/// defect 8: one 70,000-byte datagram made `ductwork listen mailslot://` exit and remove its
/// socket). The over-long message comes from another process, a sender configured with a
/// larger `max_frame` (to the receiver, a foreign writer); the listener reports it on stderr,
/// then prints a good sender's message, and exits normally after `--count 1`.
#[test]
fn listen_on_a_mailslot_survives_an_over_long_message() {
    let name = format!("cli-overlong-{}", std::process::id());
    let endpoint = format!("mailslot://{name}");
    let (listener, mut err, bound) = listen(&[&endpoint, "--raw", "hex", "--count", "1"]);
    assert_eq!(bound, endpoint);
    let big = "ab".repeat(70_000) + "\n";
    let out = send_with(
        &["--raw", "hex"],
        &format!("{endpoint}?max_frame=100000"),
        big.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = send_with(&["--raw", "hex"], &endpoint, b"0102\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = wait_with_timeout(listener, Duration::from_secs(60));
    let mut log = String::new();
    err.read_to_string(&mut log).unwrap();
    assert!(out.status.success(), "listen failed: {log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0102", "{log}");
    assert!(
        log.contains("skipped a message") && log.contains("65536"),
        "the over-long message is reported, naming the limit: {log}"
    );
}

/// Issue 11, defect 11, exactly: a listener with `max_frame=1KiB`, a sender (with the default
/// limit) of the lines `1`, a 20 KB string, `2` over tcp. The sender learns that line 2 was
/// refused (stderr names the line and the peer's limit; exit status 1), line 3 still arrives
/// on the same connection, and the listener prints `1` and `2`. (The sender exited 0, the
/// listener dropped the connection with FrameTooLarge and `2` never arrived.)
#[test]
fn send_learns_that_the_listener_refused_a_message() {
    let (listener, _stderr, endpoint) =
        listen(&["tcp://127.0.0.1:0?max_frame=1KiB", "--count", "2"]);
    // The sender's own limit is the default: only the listener's hello can refuse line 2.
    let plain = endpoint.split('?').next().unwrap().to_string();
    let input = format!("1\n\"{}\"\n2\n", "x".repeat(20_000));
    let sent = send(&plain, input.as_bytes());
    let e = stderr(&sent);
    assert_eq!(sent.status.code(), Some(1), "{e}");
    assert!(e.contains("stdin line 2 not sent"), "{e}");
    assert!(e.contains("peer's limit of 1024 bytes"), "{e}");
    let out = wait_with_timeout(listener, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
}

/// Issue 11, defect 10: `listen` serves connections at once. A client connects first and
/// stays idle (on tcp, and on udp, where one idle or killed sender used to wedge the
/// listener for good); a second client's messages are still printed.
#[test]
fn listen_serves_a_client_while_another_is_idle() {
    for scheme in ["tcp", "udp"] {
        let (listener, _stderr, endpoint) =
            listen(&[&format!("{scheme}://127.0.0.1:0"), "--count", "2"]);
        let rt = runtime();
        let idle = rt
            .block_on(ductwork::connect(endpoint.as_str()))
            .unwrap_or_else(|e| panic!("{scheme}: idle client: {e}"));
        let sent = send(&endpoint, b"1\n2\n");
        assert!(sent.status.success(), "{scheme}: {}", stderr(&sent));
        let out = wait_with_timeout(listener, Duration::from_secs(30));
        assert!(out.status.success(), "{scheme}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n", "{scheme}");
        drop(idle);
    }
}

/// Issue 11, defect 10: one valid 16 MiB frame holding a JSON array of nulls (80 MB as
/// text) is printed as one line of at most `--max-line` bytes (64 KiB by default) plus a
/// marker with the exact count of bytes elided, and the listener's peak memory stays small
/// (it went from 21 MiB to 1.1 GiB, and printed an 80 MB line). It goes on serving after it.
#[test]
fn listen_prints_a_huge_frame_in_bounded_output_and_memory() {
    use futures::SinkExt;
    use std::sync::mpsc;
    let (mut listener, _stderr, endpoint) = listen(&["tcp://127.0.0.1:0", "--count", "2"]);
    // Lines of stdout, read on a thread so that every wait below has a deadline.
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(listener.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let n = 16 * 1024 * 1024 - 5; // Array tag, a 4-byte varint count, n nulls: 16 MiB.
    let mut frame = vec![6u8];
    let mut count = n as u64;
    while count >= 0x80 {
        frame.push(count as u8 | 0x80);
        count >>= 7;
    }
    frame.push(count as u8);
    frame.resize(frame.len() + n, 0);
    assert_eq!(frame.len(), 16 * 1024 * 1024);
    let rt = runtime();
    let mut conn = rt.block_on(ductwork::connect(endpoint.as_str())).unwrap();
    rt.block_on(conn.send(bytes::Bytes::from(frame))).unwrap();
    let line = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("a line");
    let whole = 5 * n + 1; // "[" + n times "null" joined by "," + "]"
    let kept = 64 * 1024;
    assert_eq!(
        line.len(),
        kept + format!(" ... [{} bytes elided]", whole - kept).len()
    );
    assert!(line.starts_with("[null,null,"), "{}", &line[..40]);
    assert!(
        line.ends_with(&format!("null, ... [{} bytes elided]", whole - kept)),
        "{}",
        &line[line.len() - 60..]
    );
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{}/status", listener.id())).unwrap();
        let peak_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        // The frame's 16 MiB buffer (grown by doubling: a copy at each step) and the runtime.
        assert!(peak_kib < 160 * 1024, "listen peaked at {peak_kib} KiB");
    }
    // The envelope's string "after": variant 5, length 5, the bytes.
    rt.block_on(conn.send(bytes::Bytes::from_static(b"\x05\x05after")))
        .unwrap();
    let line = lines.recv_timeout(Duration::from_secs(60)).expect("a line");
    assert_eq!(line, "\"after\"");
    rt.block_on(conn.close()).unwrap();
    let out = wait_with_timeout(listener, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
}
