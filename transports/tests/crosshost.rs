//! Cross-host proven (issue 12): two network namespaces joined by a veth pair stand for two
//! hosts; a listener runs in one (`ip netns exec`), a client in the other, over tcp, udp and
//! tls, with thousands of sequence-checked messages each. tcp and tls must deliver every
//! echo in order; udp is best-effort: no duplicate and no reordering, and the loss is
//! printed.
//!
//! Needs root and `ip` (iproute2). Without them each test says why and skips, except under
//! `CI=true` as root, where a missing `ip` or a failed namespace set-up is a failure. Each
//! test makes its own namespaces (`dwa<pid>n<k>`, `dwb<pid>n<k>`, so parallel runs do not
//! collide) and removes them when it ends, also when it fails ([`Netns`]'s `Drop`). Every
//! process it starts is stopped by its pid. Certificates for tls are made at test time with
//! rcgen, in a directory removed afterwards.
#![cfg(all(target_os = "linux", feature = "socket", feature = "tls"))]

mod support;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};
use support::{child::announce_ready, child::Child, must, within};

child_entry!(roles);

/// The listener's address (namespace A) and the client's (namespace B).
const ADDR_A: &str = "10.211.0.1";
const ADDR_B: &str = "10.211.0.2";
/// Messages per transport.
const MESSAGES: u64 = 5_000;
/// How a message starts (then its sequence number, u64 LE, and a body).
const MAGIC: &[u8; 8] = b"dw-xhost";

fn roles(role: &str, args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).cloned().ok_or(format!("{role}: argument {i}"));
    let rt = support::runtime();
    let r = match role {
        "echo" => rt.block_on(echo(&arg(0)?)),
        "client" => rt.block_on(client(&arg(0)?)),
        _ => Err(format!("unknown role {role}")),
    };
    // Not a drop, which would wait for the blocking read of stdin.
    rt.shutdown_background();
    r
}

/// Why this test cannot run here, if it cannot; under `CI=true` as root a missing `ip` is a
/// failure instead.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need root".into());
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        let why = "`ip` (iproute2) is missing".to_string();
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and under CI=true as root this test must run (add iproute2 to .ci/run)"
        );
        return Some(why);
    }
    None
}

/// Runs `ip ARGS`; an error with its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    /// Makes `dwa<pid>n<k>` (10.211.0.1/24) and `dwb<pid>n<k>` (10.211.0.2/24), joined.
    fn new() -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns {
            a: format!("dwa{tag}"),
            b: format!("dwb{tag}"),
        };
        // Interface names are at most 15 bytes: "dwa" + pid (<= 7 digits) + "n" + k.
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        // Once moved, the pair goes with the namespaces when they are removed.
        let moved = ip(&["link", "set", &va, "netns", &ns.a])
            .and_then(|()| ip(&["link", "set", &vb, "netns", &ns.b]));
        if let Err(e) = moved {
            let _ = ip(&["link", "del", &va]);
            return Err(e);
        }
        for (n, v, addr) in [(&ns.a, &va, ADDR_A), (&ns.b, &vb, ADDR_B)] {
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", v])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    /// The wrapper that runs a command in namespace `ns`.
    fn exec(ns: &str) -> [&str; 4] {
        ["ip", "netns", "exec", ns]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", n]) {
                eprintln!("crosshost: removing namespace {n}: {e}");
            }
        }
    }
}

/// Message `seq`: [`MAGIC`], `seq` and 100 bytes derived from it.
fn message(seq: u64) -> Bytes {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..100u64).map(|i| (i ^ seq) as u8));
    Bytes::from(v)
}

/// The sequence number of a frame made by [`message`], if it is one.
fn seq_of(f: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(f.strip_prefix(MAGIC)?.get(..8)?.try_into().ok()?);
    (message(seq) == f).then_some(seq)
}

/// Role `echo EP` (in namespace A): binds, announces, echoes every frame on every connection
/// until stdin closes.
async fn echo(ep: &str) -> Result<(), String> {
    let mut l = ductwork_transports::bind(ep)
        .await
        .map_err(|e| e.to_string())?;
    announce_ready(l.endpoint());
    let serve = async {
        loop {
            let mut c = l.accept().await.map_err(|e| format!("accept: {e}"))?;
            tokio::spawn(async move {
                while let Some(Ok(f)) = c.next().await {
                    if c.send(f).await.is_err() {
                        return;
                    }
                }
                let _ = c.close().await;
            });
        }
    };
    tokio::select! {
        r = serve => r,
        () = stdin_closed() => Ok(()),
    }
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Role `client EP` (in namespace B): sends [`MESSAGES`] numbered messages while it reads
/// the echoes. Reliable transports: every echo, in order, then a clean end after our close.
/// udp: until all came back or a second passes without one; no duplicate or reordering.
/// Announces `sent N received M`.
async fn client(ep: &str) -> Result<(), String> {
    let udp = ep.starts_with("udp:");
    let c = ductwork_transports::connect(ep)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut tx, mut rx) = c.split();
    let sender = tokio::spawn(async move {
        for seq in 0..MESSAGES {
            tx.send(message(seq))
                .await
                .map_err(|e| format!("send #{seq}: {e}"))?;
            // udp: bursts of 20 a millisecond apart, so that the sockets' buffers keep up.
            if udp && seq % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tx.close().await.map_err(|e| format!("close: {e}"))
    });
    let mut received = 0u64;
    let mut next = 0u64;
    let idle = if udp {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(60)
    };
    while received < MESSAGES {
        let f = match tokio::time::timeout(idle, rx.next()).await {
            Err(_) if udp => break,
            Err(_) => return Err(format!("no echo for {idle:?} after {received}")),
            Ok(Some(Ok(f))) => f,
            Ok(other) => return Err(format!("after {received} echoes: {other:?}")),
        };
        let seq = seq_of(&f).ok_or_else(|| format!("a corrupt echo after #{next}"))?;
        if seq < next || (!udp && seq != next) {
            return Err(format!(
                "expected #{next}, got #{seq}: duplicated or reordered"
            ));
        }
        next = seq + 1;
        received += 1;
    }
    sender.await.map_err(|e| e.to_string())??;
    if !udp {
        match tokio::time::timeout(idle, rx.next()).await {
            Ok(None) => {}
            other => return Err(format!("after every echo and our close: {other:?}")),
        }
    }
    announce_ready(format!("sent {MESSAGES} received {received}"));
    Ok(())
}

/// A CA and a server certificate for [`ADDR_A`] in `dir`: `ca.pem`, `server.pem`, `server.key`.
fn make_certs(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![ADDR_A.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Removes a directory when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The listener's endpoint to bind and the options a client adds, for `scheme`.
fn endpoints(scheme: &str, certs: &std::path::Path) -> (String, String) {
    let listen = format!("{scheme}://{ADDR_A}:0");
    if scheme != "tls" {
        return (listen, String::new());
    }
    let p = |n: &str| certs.join(n).display().to_string();
    (
        format!("{listen}?cert={}&key={}", p("server.pem"), p("server.key")),
        format!("?ca={}", p("ca.pem")),
    )
}

/// The case for `scheme`: listener in A, client in B.
async fn case(scheme: &str) {
    if let Some(why) = cannot_run() {
        eprintln!("crosshost {scheme}: skipped: {why}");
        return;
    }
    let certs = TempDir(std::env::temp_dir().join(support::unique("dw-xhost-certs")));
    make_certs(&certs.0);
    let ns = Netns::new().unwrap_or_else(|e| panic!("crosshost {scheme}: namespaces: {e}"));
    let (listen, client_opts) = endpoints(scheme, &certs.0);
    let mut listener = Child::spawn_wrapped(&Netns::exec(&ns.a), "echo", &[listen]).unwrap();
    let bound = must("listener ready", listener.ready()).await.unwrap();
    let port = bound
        .rsplit_once(':')
        .map(|(_, p)| p.split('?').next().unwrap_or(p));
    let target = format!("{scheme}://{ADDR_A}:{}{client_opts}", port.unwrap());
    let t = Instant::now();
    let mut client = Child::spawn_wrapped(&Netns::exec(&ns.b), "client", &[&target]).unwrap();
    let said = within("client", Duration::from_secs(120), client.ready())
        .await
        .unwrap_or_else(|e| panic!("crosshost {scheme}: {e}"))
        .unwrap_or_else(|e| panic!("crosshost {scheme}: the client in {}: {e}", ns.b));
    let took = t.elapsed();
    must("client exit", client.finish()).await.unwrap();
    let received: u64 = said.rsplit(' ').next().unwrap().parse().unwrap();
    println!(
        "crosshost {scheme}: {ADDR_B} ({}) -> {target} ({}): {said}, lost {} ({:.2}%), in {took:?}",
        ns.b,
        ns.a,
        MESSAGES - received,
        (MESSAGES - received) as f64 * 100.0 / MESSAGES as f64
    );
    if scheme != "udp" {
        assert_eq!(received, MESSAGES, "crosshost {scheme}");
    } else {
        assert!(received > 0, "crosshost udp: nothing came back");
    }
    must("listener exit", listener.finish()).await.unwrap();
}

#[test]
fn crosshost_tcp() {
    support::runtime().block_on(case("tcp"));
}

#[test]
fn crosshost_udp() {
    support::runtime().block_on(case("udp"));
}

#[test]
fn crosshost_tls() {
    support::runtime().block_on(case("tls"));
}
