//! Quick 64-byte round-trip latency check across two processes: shm (spinning), shm with
//! `spin=0` (always park), a Unix socket, and a raw cache-line ping-pong between two threads
//! as the hardware floor. Not the benchmark (that is `ductwork bench`); a sanity check.
//!
//! ```text
//! cargo run --release -p ductwork-transports --example shm_latency [ROUND_TRIPS]
//! # with the two processes pinned to different cores:
//! DW_PIN=0,1 target/release/examples/shm_latency
//! ```

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Child: bind, print READY, echo every frame until stdin closes.
async fn server(ep: String) {
    let mut l = ductwork_transports::bind(ep.as_str()).await.expect("bind");
    println!("READY {}", l.endpoint());
    let serve = async move {
        loop {
            let mut c = l.accept().await.expect("accept");
            while let Some(Ok(f)) = c.next().await {
                if c.send(f).await.is_err() {
                    break;
                }
            }
        }
    };
    let stdin = async {
        let mut buf = [0u8; 16];
        let mut s = tokio::io::stdin();
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! { _ = serve => {}, _ = stdin => {} }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Parent: round trips of `size`-byte messages against a child echo server; returns (p50,
/// p99) in ns.
fn measure(ep: &str, n: usize) -> (u64, u64) {
    measure_size(ep, n, 64)
}

fn measure_size(ep: &str, n: usize, size: usize) -> (u64, u64) {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = match pins() {
        Some((_, child_cpu)) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(child_cpu).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .arg("--server")
        .arg(ep)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let res = rt().block_on(async {
        let out = tokio::process::ChildStdout::from_std(out).expect("stdout");
        let line = BufReader::new(out)
            .lines()
            .next_line()
            .await
            .expect("read")
            .expect("READY");
        let bound = line.strip_prefix("READY ").expect("READY").to_string();
        let mut c = ductwork_transports::connect(bound.as_str())
            .await
            .expect("connect");
        let msg = Bytes::from(vec![7u8; size]);
        let mut times = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            c.send(msg.clone()).await.expect("send");
            let back = c.next().await.expect("open").expect("recv");
            let dt = t.elapsed().as_nanos() as u64;
            assert_eq!(back.len(), size);
            if i >= n / 10 {
                times.push(dt);
            }
        }
        let _ = c.close().await;
        let p10 = percentile(&mut times, 0.1);
        eprintln!("  ({ep}: p10 {p10} ns)");
        (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
    });
    drop(child.stdin.take());
    let _ = child.wait();
    res
}

/// Two threads bouncing one cache line: the floor any shared-memory round trip pays.
fn raw_ping_pong(n: usize) -> (u64, u64) {
    #[repr(align(128))]
    struct Line(AtomicU64);
    let a = Arc::new((Line(AtomicU64::new(0)), Line(AtomicU64::new(0))));
    let b = a.clone();
    let total = (n + n / 10) as u64;
    let t = std::thread::spawn(move || {
        for i in 1..=total {
            while b.0 .0.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            b.1 .0.store(i, Ordering::Release);
        }
    });
    let mut times = Vec::with_capacity(n);
    for i in 1..=total {
        let t0 = Instant::now();
        a.0 .0.store(i, Ordering::Release);
        while a.1 .0.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        if i > total - n as u64 {
            times.push(t0.elapsed().as_nanos() as u64);
        }
    }
    t.join().expect("join");
    (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
}

/// `DW_PIN=P,C`: after the raw ping-pong, pin this process to CPU P and the echo servers to
/// CPU C (with `taskset`), to see the numbers with the two processes on known cores.
fn pins() -> Option<(String, String)> {
    let v = std::env::var("DW_PIN").ok()?;
    let (p, c) = v.split_once(',')?;
    Some((p.to_string(), c.to_string()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--server") {
        rt().block_on(server(args[2].clone()));
        return;
    }
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let pid = std::process::id();
    let sock = std::env::temp_dir().join(format!("dw-lat-{pid}.sock"));
    let (raw50, raw99) = raw_ping_pong(n);
    println!("raw cache-line ping-pong (threads): p50 {raw50} ns, p99 {raw99} ns");
    if let Some((cpu, _)) = pins() {
        let pid = std::process::id().to_string();
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu, &pid])
            .stdout(Stdio::null())
            .status();
    }
    let cases = [
        ("shm (spin default)", format!("shm://lat-{pid}-a")),
        ("shm spin=0", format!("shm://lat-{pid}-b?spin=0")),
        ("shm spin=200us", format!("shm://lat-{pid}-c?spin=200us")),
        ("unix socket", format!("unix://{}", sock.display())),
    ];
    let mut results = Vec::new();
    for (name, ep) in &cases {
        let (p50, p99) = measure(ep, n);
        println!("{name:20} 64 B round trip: p50 {p50} ns, p99 {p99} ns");
        results.push(p50);
    }
    for (name, ep) in [
        ("shm 1 MiB", format!("shm://lat-{pid}-d")),
        ("unix 1 MiB", format!("unix://{}", sock.display())),
    ] {
        let (p50, p99) = measure_size(&ep, 200, 1 << 20);
        println!("{name:20} round trip: p50 {p50} ns, p99 {p99} ns");
    }
    println!(
        "ratios: shm/unix = {:.3} (target <= 0.2), shm/raw = {:.2} (target <= 3)",
        results[0] as f64 / results[3] as f64,
        results[0] as f64 / raw50 as f64
    );
}
