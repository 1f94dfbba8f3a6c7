//! Thousands of malformed inputs per listening transport while a good client keeps
//! exchanging messages with the same listener (a child process): the good client sees no
//! error, the listener never ends, accepts a fresh client afterwards, and its peak resident
//! memory stays within [`MEM_BOUND_KIB`] of what it was before the attack.
//!
//! The inputs come from raw OS sockets in this process (no ductwork code), [`INPUTS`] per
//! transport, chosen by a seeded generator (the seed is printed): garbage bytes, truncated
//! frames, headers over the size limit, resets mid-frame, bytes after the close marker,
//! stalled claims held open to the end; for tls also truncated and oversized records, cut
//! ClientHellos and garbage inside finished sessions; for shm cut and wrong hellos and
//! clients that leave mid-handshake; for udp and mailslot odd, empty and over-long
//! datagrams. Besides, [`KILLED`] child processes per stream transport are killed (SIGKILL)
//! with a frame half-written.
//!
//! On Windows (under Wine) tcp, pipe and shm run, with [`INPUTS`] of 500: the raw clients are
//! a TCP socket and a named pipe opened as a file, and there is no memory bound (no `/proc`).

use crate::roles::{good_frame, read_good};
#[cfg(unix)]
use crate::support::unix::private_socket;
use crate::support::{child::Child, must, within, XorShift};
#[cfg(target_os = "linux")]
use bytes::Bytes;
use ductwork_core::Endpoint;
use futures::{SinkExt, StreamExt};
use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Malformed inputs per transport (fewer under Wine, where each connection costs more).
pub const INPUTS: u64 = if cfg!(windows) { 500 } else { 2_000 };
/// Child processes killed mid-frame per stream transport.
const KILLED: usize = 3;
/// Stalled connections held open until the attack ends, at most.
const STALLED: usize = 100;
/// How much the listener's peak RSS may grow over the attack.
const MEM_BOUND_KIB: u64 = 64 * 1024;
/// The wait for one good round trip (a bound against hangs, not a speed claim).
const ROUND: Duration = Duration::from_secs(20);

/// A raw byte-stream connection to a listener.
enum Raw {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
    /// A named pipe opened as a file (Windows).
    #[cfg(windows)]
    Pipe(std::fs::File),
}

impl Raw {
    fn connect(addr: &Target) -> std::io::Result<Raw> {
        Ok(match addr {
            Target::Inet(a) => Raw::Tcp(std::net::TcpStream::connect(a)?),
            #[cfg(unix)]
            Target::Path(p) => Raw::Unix(std::os::unix::net::UnixStream::connect(p)?),
            #[cfg(windows)]
            Target::Path(p) => {
                Raw::Pipe(std::fs::OpenOptions::new().read(true).write(true).open(p)?)
            }
        })
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Raw::Tcp(s) => s.write_all(b),
            #[cfg(unix)]
            Raw::Unix(s) => s.write_all(b),
            #[cfg(windows)]
            Raw::Pipe(f) => f.write_all(b),
        }
    }

    /// Closes with a reset where the socket has one (tcp on Linux), else plainly.
    fn reset(self) {
        #[cfg(target_os = "linux")]
        if let Raw::Tcp(s) = &self {
            let _ = rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
        }
    }
}

/// Where raw inputs go.
#[derive(Clone)]
pub enum Target {
    Inet(String),
    Path(std::path::PathBuf),
}

/// The raw address of the listener at `ep`.
#[cfg(unix)]
pub fn target(ep: &Endpoint) -> Target {
    match ep.scheme() {
        "tcp" | "tls" | "udp" => Target::Inet(ep.address().to_string()),
        "unix" => Target::Path(ep.address().into()),
        s => Target::Path(private_socket(s, ep.address())),
    }
}

/// The raw address of the listener at `ep`: on Windows pipe and shm listen on named pipes.
#[cfg(windows)]
pub fn target(ep: &Endpoint) -> Target {
    match ep.scheme() {
        "pipe" => Target::Path(format!(r"\\.\pipe\ductwork-{}", ep.address()).into()),
        "shm" => Target::Path(format!(r"\\.\pipe\ductwork-shm-{}", ep.address()).into()),
        _ => Target::Inet(ep.address().to_string()),
    }
}

/// `lo + (0..span)` random bytes.
fn noise(rng: &mut XorShift, lo: u64, span: u64) -> Vec<u8> {
    let n = lo + rng.below(span.max(1));
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// One malformed input for a framed stream (tcp, unix, pipe; inside a tls session): bytes to
/// write, and how to leave (`true`: reset mid-way; the stalled kind is handled apart).
fn framed_input(rng: &mut XorShift, kind: u64) -> (Vec<u8>, bool) {
    let header = |n: u32| n.to_be_bytes().to_vec();
    match kind {
        // Garbage.
        0 => (noise(rng, 1, 300), false),
        // A frame cut short.
        1 => {
            let len = 1 + rng.below(4096) as u32;
            let mut b = header(len);
            b.extend(noise(rng, 0, len as u64));
            (b, false)
        }
        // A header over the limit (16 MiB by default), then some bytes.
        2 => {
            let len = (16 << 20) + 1 + rng.below(u32::MAX as u64 - (16 << 20) - 2) as u32;
            let mut b = header(len);
            b.extend(noise(rng, 0, 64));
            (b, false)
        }
        // Good frames, then garbage.
        3 => {
            let mut b = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let body = noise(rng, 0, 100);
                b.extend(header(body.len() as u32));
                b.extend(body);
            }
            b.extend(noise(rng, 1, 50));
            (b, false)
        }
        // Bytes after the close marker.
        4 => {
            let mut b = header(3);
            b.extend(b"abc\xff\xff\xff\xff");
            b.extend(noise(rng, 1, 20));
            (b, false)
        }
        // A reset in the middle of a frame.
        _ => {
            let mut b = header(4096);
            b.extend(noise(rng, 1, 4000));
            (b, true)
        }
    }
}

/// One malformed input for the shm set-up socket: the bytes and whether to reset.
fn shm_input(rng: &mut XorShift, kind: u64) -> (Vec<u8>, bool) {
    // The hello: the word, then a max_frame of 1 MiB (u64 LE).
    const HELLO: &[u8] = b"DWSHMhi2\0\0\x10\0\0\0\0\0";
    match kind {
        0 => (noise(rng, 1, 64), false),
        // A hello cut short.
        1 | 2 => (HELLO[..1 + rng.below(15) as usize].to_vec(), false),
        // A wrong hello of the right length (a word of another version, a limit of 0, ...).
        3 | 4 => {
            let mut h = HELLO.to_vec();
            let i = rng.below(16) as usize;
            h[i] ^= 1 + rng.below(255) as u8;
            (h, false)
        }
        // A hello, then gone before the listener's reply: the set-up is wasted work.
        _ => (HELLO.to_vec(), true),
    }
}

/// One malformed input for a tls listener, outside any session: the bytes and whether to
/// reset. `hello` is a real ClientHello.
fn tls_input(rng: &mut XorShift, kind: u64, hello: &[u8]) -> (Vec<u8>, bool) {
    match kind {
        0 => (noise(rng, 1, 300), false),
        // A handshake record cut short.
        1 => {
            let len = 1 + rng.below(16_000) as u16;
            let mut b = vec![0x16, 0x03, 0x01];
            b.extend(len.to_be_bytes());
            b.extend(noise(rng, 0, len as u64));
            (b, false)
        }
        // A record longer than TLS allows.
        2 => {
            let mut b = vec![0x16, 0x03, 0x03, 0xff, 0xff];
            b.extend(noise(rng, 0, 100));
            (b, false)
        }
        // A real ClientHello cut anywhere, or whole and then garbage.
        3 => (
            hello[..1 + rng.below(hello.len() as u64 - 1) as usize].to_vec(),
            false,
        ),
        _ => {
            let mut b = hello.to_vec();
            b.extend(noise(rng, 1, 100));
            (b, rng.below(2) == 0)
        }
    }
}

/// What an attack did.
#[derive(Debug, Default)]
pub struct Tried {
    pub inputs: u64,
    /// Inputs the OS refused to carry (connect or write failed: the listener had hung up).
    pub refused: u64,
    pub stalled: usize,
}

/// A rustls client for `ep` (trusting its `ca=`), for the tls inputs.
fn tls_client(ep: &Endpoint) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ep.option("ca").expect("a ca= option")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A fresh ClientHello's bytes.
fn client_hello(cfg: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// A finished tls session over `raw`, then `bytes` inside it.
fn tls_session_garbage(
    cfg: &Arc<rustls::ClientConfig>,
    addr: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let c = rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut s = rustls::StreamOwned::new(c, tcp);
    s.write_all(bytes)?;
    s.flush()
}

/// Sends [`INPUTS`] malformed inputs to the stream listener at `ep` (seeded by `seed`).
pub fn attack_stream(ep: &Endpoint, seed: u64) -> Tried {
    let to = target(ep);
    let mut rng = XorShift::new(seed);
    let tls = (ep.scheme() == "tls").then(|| tls_client(ep));
    let hello = tls.as_ref().map(client_hello).unwrap_or_default();
    let mut tried = Tried::default();
    let mut stalled = Vec::new();
    for _ in 0..INPUTS {
        tried.inputs += 1;
        let kind = rng.below(10);
        // One in ten: a connection that claims a frame (or says nothing) and stalls.
        if kind == 9 && stalled.len() < STALLED {
            match Raw::connect(&to) {
                Ok(mut s) => {
                    // shm and tls: silent (a set-up or handshake that never starts).
                    let claim: &[u8] = match ep.scheme() {
                        "shm" | "tls" => b"",
                        _ => b"\x01\0\0\0\xab",
                    };
                    let _ = s.write(claim);
                    stalled.push(s);
                }
                Err(_) => tried.refused += 1,
            }
            continue;
        }
        let (bytes, reset) = match (ep.scheme(), &tls) {
            ("shm", _) => shm_input(&mut rng, kind),
            (_, Some(cfg)) if kind == 8 => {
                let inner = rng.below(6);
                let (b, _) = framed_input(&mut rng, inner);
                let Target::Inet(addr) = &to else {
                    unreachable!()
                };
                if tls_session_garbage(cfg, addr, &b).is_err() {
                    tried.refused += 1;
                }
                continue;
            }
            (_, Some(_)) => tls_input(&mut rng, kind % 5, &hello),
            _ => framed_input(&mut rng, kind % 6),
        };
        let sent = Raw::connect(&to).and_then(|mut s| {
            s.write(&bytes)?;
            if reset {
                s.reset();
            }
            Ok(())
        });
        if sent.is_err() {
            tried.refused += 1;
        }
    }
    tried.stalled = stalled.len();
    tried
}

/// Sends [`INPUTS`] odd datagrams to the udp or mailslot listener at `ep` from 32 sockets.
#[cfg(target_os = "linux")]
pub fn attack_datagrams(ep: &Endpoint, seed: u64) -> Tried {
    let mut rng = XorShift::new(seed);
    let mut tried = Tried::default();
    let udp = ep.scheme() == "udp";
    let socks_udp: Vec<std::net::UdpSocket> = (0..if udp { 32 } else { 0 })
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let slot = private_socket("mailslot", ep.address());
    let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for _ in 0..INPUTS {
        tried.inputs += 1;
        let mut d = match rng.below(10) {
            0 => Vec::new(),
            1 => noise(&mut rng, 60_000, 10_000),
            _ => noise(&mut rng, 1, 1500),
        };
        if udp && !d.is_empty() {
            // A ductwork tag (data, hello, welcome, bye) or another, then anything.
            d[0] = rng.below(6) as u8;
        }
        let r = if udp {
            let s = &socks_udp[rng.below(32) as usize];
            s.send_to(&d, ep.address()).map(drop)
        } else {
            unix.send_to(&d, &slot).map(drop)
        };
        if r.is_err() {
            tried.refused += 1;
        }
    }
    tried
}

/// Role `die-mid-frame SCHEME ADDRESS`: connects raw, writes half a frame (for shm half a
/// hello), announces, and waits to be killed.
pub fn die_mid_frame(scheme: &str, addr: &str) -> Result<(), String> {
    let to = match scheme {
        "tcp" | "tls" => Target::Inet(addr.into()),
        _ => Target::Path(addr.into()),
    };
    let mut s = Raw::connect(&to).map_err(|e| format!("connect {addr}: {e}"))?;
    let half: &[u8] = match scheme {
        "shm" => b"DWSH",
        "tls" => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        _ => b"\0\0\x10\0half a frame",
    };
    s.write(half).map_err(|e| e.to_string())?;
    crate::support::child::announce_ready("half written");
    std::thread::sleep(Duration::from_secs(120));
    Err("not killed within 120 s".into())
}

/// What the good client saw.
#[derive(Debug, Default)]
pub struct Good {
    pub rounds: u64,
    /// udp only: messages whose echo did not come back within a second.
    pub lost: u64,
}

/// The good client: round trips of sequence-checked frames to `ep` until `stop` (at least
/// 50). Any error, a wrong or reordered echo fails it; on udp (best effort) a missing echo
/// is counted as lost, and late echoes are skipped.
pub async fn good_client(ep: Endpoint, stop: Arc<AtomicBool>) -> Result<Good, String> {
    let udp = ep.scheme() == "udp";
    // The endpoint's own connect deadline, and a margin: `within` only guards against hangs.
    let deadline = ep.connect_timeout().map_err(|e| e.to_string())? + Duration::from_secs(5);
    let mut c = within("good connect", deadline, ductwork_transports::connect(&ep))
        .await?
        .map_err(|e| format!("good connect: {e}"))?;
    let mut good = Good::default();
    let started = Instant::now();
    // Bounded in count and (below) in time.
    for seq in 0..10_000_000u64 {
        if (stop.load(Ordering::SeqCst) && seq >= 50)
            || started.elapsed() > Duration::from_secs(300)
        {
            break;
        }
        let f = good_frame(1, seq, 64);
        within("good send", ROUND, c.send(f.clone()))
            .await?
            .map_err(|e| format!("good send #{seq}: {e}"))?;
        good.rounds += 1;
        if udp {
            good.lost += u64::from(!udp_echo(&mut c, seq).await?);
            continue;
        }
        match within("good echo", ROUND, c.next()).await? {
            Some(Ok(back)) if back == f => {}
            other => return Err(format!("good echo #{seq}: {other:?}")),
        }
    }
    within("good close", ROUND, c.close())
        .await?
        .map_err(|e| format!("good close: {e}"))?;
    Ok(good)
}

/// Waits up to a second for the echo of `seq` on udp, skipping late echoes of earlier ones.
async fn udp_echo(c: &mut ductwork_core::BoxConnection, seq: u64) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    // Bounded by the deadline (and by a count).
    for _ in 0..1000 {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Err(_) => return Ok(false),
            Ok(Some(Ok(f))) => match read_good(&f) {
                Some((1, s)) if s == seq => return Ok(true),
                Some((1, s)) if s < seq => continue,
                _ => return Err(format!("udp echo of #{seq}: a wrong frame {f:?}")),
            },
            Ok(other) => return Err(format!("udp echo of #{seq}: {other:?}")),
        }
    }
    Ok(false)
}

/// The case for `scheme` (a duplex listening transport).
pub async fn case(scheme: &str) {
    let seed = crate::support::unique("seed")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    let mut child = Child::spawn("echo", &[crate::local_endpoint(scheme, "hostile")]).unwrap();
    let ep = crate::parse(&must("listener ready", child.ready()).await.unwrap());
    let pid = child.id().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(good_client(ep.clone(), stop.clone()));
    // The good client's first exchanges set the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = crate::memory(pid).map(|m| m.1);
    let t = Instant::now();
    let attack_ep = ep.clone();
    let tried = must(
        "attack",
        tokio::task::spawn_blocking(move || match attack_ep.scheme() {
            #[cfg(target_os = "linux")]
            "udp" => attack_datagrams(&attack_ep, seed),
            _ => attack_stream(&attack_ep, seed),
        }),
    )
    .await
    .unwrap();
    let killed = if scheme == "udp" {
        0
    } else {
        kill_mid_frame(scheme, &ep).await
    };
    let attack_time = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let good = must("good client", good).await.unwrap();
    let good = good.unwrap_or_else(|e| panic!("{scheme}: the good client under attack: {e}"));
    // Still accepting: a fresh client's round trips. It may queue behind the attack's
    // connections that the listener has not taken yet: a long deadline.
    let late = ep.with_option("connect_timeout", "60s");
    let t = Instant::now();
    let after = good_client(late, Arc::new(AtomicBool::new(true))).await;
    after.unwrap_or_else(|e| panic!("{scheme}: a new client after the attack: {e}"));
    let served_after = t.elapsed();
    let now = crate::memory(pid);
    println!(
        "hostile {scheme}: seed {seed:#x}, {} inputs ({} refused by the OS, {} stalled held), \
         {killed} killed mid-frame in {attack_time:?}; good client {} round trips, {} lost; \
         a new client served within {served_after:?}; listener VmHWM {} -> {}, VmRSS {}",
        tried.inputs,
        tried.refused,
        tried.stalled,
        good.rounds,
        good.lost,
        crate::kib(base),
        crate::kib(now.map(|m| m.1)),
        crate::kib(now.map(|m| m.0)),
    );
    if let (Some(base), Some((_, hwm))) = (base, now) {
        assert!(
            hwm.saturating_sub(base) <= MEM_BOUND_KIB,
            "{scheme}: the listener's peak RSS grew from {base} to {hwm} KiB under attack"
        );
    }
    if scheme == "udp" {
        assert!(
            good.lost * 10 <= good.rounds,
            "{scheme}: over 10% lost: {good:?}"
        );
    }
    // It exits 0 when told to: its accept never failed.
    must("listener exit", child.finish()).await.unwrap();
}

/// Starts [`KILLED`] processes that each write half a frame to the listener at `ep`, then
/// kills each by its pid; returns how many.
async fn kill_mid_frame(scheme: &str, ep: &Endpoint) -> usize {
    let addr = match target(ep) {
        Target::Inet(a) => a,
        Target::Path(p) => p.display().to_string(),
    };
    for i in 0..KILLED {
        let mut c = Child::spawn("die-mid-frame", &[scheme, addr.as_str()]).unwrap();
        must("half frame", c.ready())
            .await
            .unwrap_or_else(|e| panic!("{scheme}: mid-frame writer {i}: {e}"));
        must("kill", c.kill()).await.unwrap();
    }
    KILLED
}

/// The mailslot case: the shared receiver (a child) checks a good sender's sequence while
/// odd datagrams arrive from elsewhere.
#[cfg(target_os = "linux")]
pub async fn mailslot_case() {
    let mut child = Child::spawn(
        "slot-check",
        &[crate::local_endpoint("mailslot", "hostile")],
    )
    .unwrap();
    let ep = crate::parse(&must("receiver ready", child.ready()).await.unwrap());
    let pid = child.id().unwrap();
    let mut tx = must("connect", ductwork_transports::connect(&ep))
        .await
        .unwrap();
    let mut sent = 0u64;
    send_good(&mut tx, &mut sent, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, base) = crate::memory_kib(pid).unwrap();
    let attack_ep = ep.clone();
    let attack = tokio::task::spawn_blocking(move || attack_datagrams(&attack_ep, 0x5107));
    // The good sender goes on while the attack runs (bounded: 100 rounds).
    for _ in 0..100 {
        send_good(&mut tx, &mut sent, 20).await;
        if attack.is_finished() {
            break;
        }
    }
    let tried = must("attack", attack).await.unwrap();
    send_good(&mut tx, &mut sent, 100).await;
    let seen = slot_status_until(&mut child, sent).await;
    let (rss, hwm) = crate::memory_kib(pid).unwrap();
    println!(
        "hostile mailslot: {} datagrams ({} refused by the OS); good sender {sent} messages, \
         receiver saw {seen}; VmHWM {base} -> {hwm} KiB, VmRSS {rss} KiB",
        tried.inputs, tried.refused
    );
    assert!(seen.contains("misordered=0"), "mailslot: {seen}");
    assert!(
        hwm.saturating_sub(base) <= MEM_BOUND_KIB,
        "mailslot: VmHWM {base} -> {hwm}"
    );
    must("receiver exit", child.finish()).await.unwrap();
}

/// Sends the next `n` good frames on `tx`.
#[cfg(target_os = "linux")]
async fn send_good(tx: &mut ductwork_core::BoxConnection, sent: &mut u64, n: u64) {
    let frames: Vec<Bytes> = (*sent..*sent + n).map(|s| good_frame(1, s, 64)).collect();
    *sent += n;
    let mut st = futures::stream::iter(frames.into_iter().map(Ok));
    must("good sends", tx.send_all(&mut st))
        .await
        .unwrap_or_else(|e| panic!("mailslot: the good sender: {e}"));
}

/// Asks the slot-check child for its counts until it saw `sent` good messages.
#[cfg(target_os = "linux")]
async fn slot_status_until(child: &mut Child, sent: u64) -> String {
    let want = format!("good={sent} ");
    let mut last = String::new();
    // Bounded: 100 polls, 100 ms apart.
    for _ in 0..100 {
        child.say("status").await.unwrap();
        last = must("status", child.ready()).await.unwrap();
        if last.starts_with(&want) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mailslot: the receiver saw {last}, not all {sent} good messages");
}

macro_rules! hostile_tests {
    ($($name:ident => $scheme:literal,)+) => {$(
        #[test]
        fn $name() {
            crate::support::runtime().block_on(case($scheme));
        }
    )+};
}

hostile_tests! {
    hostile_tcp => "tcp",
    hostile_pipe => "pipe",
    hostile_shm => "shm",
}

#[cfg(target_os = "linux")]
hostile_tests! {
    hostile_unix => "unix",
    hostile_tls => "tls",
    hostile_udp => "udp",
}

#[cfg(target_os = "linux")]
#[test]
fn hostile_mailslot() {
    crate::support::runtime().block_on(mailslot_case());
}

/// Silent connections must not lock others out of a tls listener: with [`STALLED`] raw TCP
/// connections open that never start a handshake, a new client is still served within its
/// connect deadline (20 s, for a loaded machine), well before the silent ones' handshake
/// deadline (60 s here) would free slots they held.
#[cfg(target_os = "linux")]
#[test]
fn tls_silent_connections_do_not_lock_out_clients() {
    crate::support::runtime().block_on(async {
        let listen = crate::parse(&crate::local_endpoint("tls", "silent"))
            .with_option("handshake_timeout_ms", "60000")
            .to_string();
        let mut child = Child::spawn("echo", &[listen]).unwrap();
        let ep = crate::parse(&must("listener ready", child.ready()).await.unwrap());
        let silent: Vec<_> = (0..STALLED)
            .map(|_| std::net::TcpStream::connect(ep.address()).unwrap())
            .collect();
        let ep5 = ep
            .with_option("connect_timeout", "20s")
            .with_option("handshake_timeout_ms", "20000");
        let r = good_client(ep5, Arc::new(AtomicBool::new(true))).await;
        drop(silent);
        r.unwrap_or_else(|e| panic!("tls with {STALLED} silent connections open: {e}"));
        must("listener exit", child.finish()).await.unwrap();
    });
}

/// A tls `connect` keeps its `connect_timeout` when the TCP connection is made but the
/// server never answers the handshake (a stalled or overloaded listener): `Timeout` after
/// about a second, not the handshake's own 10 s.
#[cfg(target_os = "linux")]
#[test]
fn tls_connect_keeps_its_deadline_through_the_handshake() {
    crate::support::runtime().block_on(async {
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = mute.local_addr().unwrap();
        let local = crate::parse(&crate::local_endpoint("tls", "mute"));
        let ep = format!(
            "tls://{addr}?ca={}&connect_timeout=1s",
            local.option("ca").unwrap()
        );
        let t = Instant::now();
        let r = within(
            "tls connect",
            Duration::from_secs(30),
            ductwork_transports::connect(&ep),
        )
        .await
        .unwrap();
        let took = t.elapsed();
        let e = r.err().expect("connected to a mute listener");
        assert_eq!(e.kind(), ductwork_core::ErrorKind::Timeout, "{e}");
        assert!(
            took < Duration::from_secs(5),
            "{ep}: failed after {took:?}: {e}"
        );
        drop(mute);
    });
}
