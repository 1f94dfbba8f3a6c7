//! `nats://` against real nats-server processes this test starts on loopback (see
//! `support/nats.rs`): failover in a three-node cluster, the pool of listeners, refusals, the
//! server's frame limit, credentials and TLS to the server. The contract cases run across two
//! processes in the conformance suite (`conformance -- nats::`).
#![cfg(feature = "nats")]

#[path = "support/nats.rs"]
mod nats_server;
mod support;

use bytes::Bytes;
use ductwork_core::{BoxConnection, BoxListener, ErrorKind, Result as DwResult};
use futures::{SinkExt, StreamExt};
use nats_server::NatsServer;
use std::time::{Duration, Instant};
use support::{must, unique};

/// Starts a server with `extra` arguments, or returns `None` after printing why the test is
/// skipped (in CI on Linux a missing server fails instead).
fn server(extra: &[String]) -> Option<NatsServer> {
    match NatsServer::start(extra) {
        Ok(s) => Some(s),
        Err(why) => {
            nats_server::skip(&why);
            None
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Connects to `ep`, retrying while nobody serves it yet (a listener's interest reaches the
/// other nodes of a cluster a moment after it bound), for at most 20 s.
async fn connect_when_served(ep: &str) -> BoxConnection {
    let start = Instant::now();
    loop {
        match ductwork_transports::connect(ep).await {
            Ok(c) => return c,
            Err(e)
                if e.kind() == ErrorKind::NotFound && start.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("connect {ep}: {e}"),
        }
    }
}

/// The frame of sequence number `seq`: the number, then a pattern that depends on it.
fn frame(seq: u64) -> Bytes {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend((0..24).map(|i| (seq as u8) ^ i));
    Bytes::from(v)
}

/// The sequence number of a frame made by [`frame`], checked whole.
fn seq_of(f: &[u8]) -> u64 {
    let seq = u64::from_be_bytes(f[..8].try_into().expect("8 bytes"));
    assert_eq!(f, &frame(seq)[..], "a corrupt frame");
    seq
}

/// Echoes every frame of one accepted connection, checking that the sequence numbers only
/// grow (best-effort may lose frames, never duplicate or reorder them). Returns how many
/// frames it saw, or the first error.
async fn echo_checked(mut l: BoxListener) -> Result<u64, String> {
    let mut c = l.accept().await.map_err(|e| e.to_string())?;
    let (mut seen, mut last) = (0u64, None::<u64>);
    while let Some(f) = c.next().await {
        let f = f.map_err(|e| format!("listener recv after {seen} frames: {e}"))?;
        let seq = seq_of(&f);
        if last.is_some_and(|l| seq <= l) {
            return Err(format!(
                "listener got #{seq} after #{last:?}: duplicate or reordered"
            ));
        }
        last = Some(seq);
        seen += 1;
        c.send(f).await.map_err(|e| format!("echo #{seq}: {e}"))?;
    }
    Ok(seen)
}

/// Three nodes with routes between them; the listener on A, the client on B (with C and A to
/// fail over to, in that order). A sequence-checked exchange, then B is killed with SIGKILL:
/// the client's NATS connection moves to C and the exchange goes on. What the declared
/// delivery (best-effort, ordered) allows: frames lost around the failover, counted; never a
/// duplicate, a reordering, or the end of the connection.
#[test]
fn cluster_failover_keeps_the_exchange_going() {
    let node = |routes: Option<String>| {
        let mut a = args(&["--cluster_name", "dw", "--cluster", "nats://127.0.0.1:-1"]);
        a.extend(routes.into_iter().flat_map(|r| ["--routes".to_string(), r]));
        server(&a)
    };
    let Some(a) = node(None) else { return };
    let (Some(mut b), Some(c)) = (node(a.route()), node(a.route())) else {
        return;
    };
    support::runtime().block_on(async {
        let name = unique("failover");
        let l = ductwork_transports::bind(format!("nats://{}/{name}", a.addr()))
            .await
            .unwrap();
        let listener = tokio::spawn(echo_checked(l));
        let client_ep = format!(
            "nats://{}/{name}?servers={},{}&randomize=false",
            b.addr(),
            c.addr(),
            a.addr()
        );
        let conn = must("connect through B", connect_when_served(&client_ep)).await;
        let (mut tx, mut rx) = conn.split();
        let mut exchange = Exchange::default();
        // Before the failure: every echo arrives (nothing is lost without a failure).
        exchange
            .run(&mut tx, &mut rx, 300, |e| e.received == 300)
            .await;
        assert_eq!(exchange.received, 300, "echoes before the failover");
        b.kill();
        let killed_at = exchange.sent;
        let started = Instant::now();
        exchange
            .run(&mut tx, &mut rx, 10_000, |e| {
                e.received_since(killed_at) >= 200
            })
            .await;
        let resumed = exchange.received_since(killed_at);
        let lost = exchange.sent - exchange.received;
        println!(
            "failover: {} frames sent, {} echoed, {lost} lost, exchange resumed within {:?}",
            exchange.sent,
            exchange.received,
            started.elapsed()
        );
        assert!(
            resumed >= 200,
            "only {resumed} echoes after B was killed: {exchange:?}"
        );
        drop((tx, rx));
        let seen = must("listener end", listener).await.unwrap().unwrap();
        assert!(seen >= exchange.received, "{seen} frames at the listener");
    });
    drop(c);
}

/// The client side of the failover exchange: frames sent and echoes checked so far.
#[derive(Debug, Default)]
struct Exchange {
    sent: u64,
    received: u64,
    last_echo: Option<u64>,
    echoes_since: Vec<u64>,
}

impl Exchange {
    /// Echoes received of frames numbered `from` and up.
    fn received_since(&self, from: u64) -> u64 {
        self.echoes_since.iter().filter(|s| **s >= from).count() as u64
    }

    /// Sends up to `max` more frames, one every 2 ms, reading echoes in between, until `done`
    /// (or 20 s). An echo that is not newer than the last one fails the test.
    async fn run<T, R>(&mut self, tx: &mut T, rx: &mut R, max: u64, done: impl Fn(&Self) -> bool)
    where
        T: futures::Sink<Bytes, Error = ductwork_core::Error> + Unpin,
        R: futures::Stream<Item = DwResult<Bytes>> + Unpin,
    {
        let (start, end) = (Instant::now(), self.sent + max);
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        while !done(self) && start.elapsed() < Duration::from_secs(20) {
            tokio::select! {
                _ = pace.tick(), if self.sent < end => {
                    tx.send(frame(self.sent)).await.expect("send");
                    self.sent += 1;
                }
                echo = rx.next() => {
                    let f = echo.expect("the connection ended").expect("recv");
                    let seq = seq_of(&f);
                    assert!(
                        self.last_echo.is_none_or(|l| seq > l),
                        "echo #{seq} after #{:?}: duplicate or reordered", self.last_echo
                    );
                    self.last_echo = Some(seq);
                    self.received += 1;
                    self.echoes_since.push(seq);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if self.sent >= end => {}
            }
        }
    }
}

/// Two listeners bind one name: both bind (no AddrInUse) and connections are shared between
/// them; once one is gone the other serves every connection.
#[test]
fn listeners_of_a_name_form_a_pool() {
    let Some(s) = server(&[]) else { return };
    support::runtime().block_on(async {
        let ep = format!("nats://{}/{}", s.addr(), unique("pool"));
        let mut first = ductwork_transports::bind(&ep).await.unwrap();
        let mut second = ductwork_transports::bind(&ep)
            .await
            .expect("a second bind joins");
        let caps = ductwork_transports::capabilities(&ep.parse().unwrap()).unwrap();
        assert_eq!(caps.accept, ductwork_core::Accept::Pooled);
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push(ductwork_transports::connect(&ep).await.unwrap());
        }
        let (mut a, mut b) = (0, 0);
        for _ in 0..40 {
            tokio::select! {
                r = first.accept() => { r.unwrap(); a += 1 }
                r = second.accept() => { r.unwrap(); b += 1 }
            }
        }
        // Each request goes to one member at random: all 40 to one has odds of 2^-39.
        assert!(a > 0 && b > 0, "one listener got all: {a} and {b}");
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..5 {
            let mut c = ductwork_transports::connect(&ep).await.unwrap();
            let mut s = must("accept", second.accept()).await.unwrap();
            c.send(Bytes::from(vec![i; 3])).await.unwrap();
            assert_eq!(must("recv", s.next()).await.unwrap().unwrap()[..], [i; 3]);
        }
    });
}

/// Nobody serving a name is NotFound, at once; a listener whose backlog is full refuses
/// with Refused saying so; a dropped connection ends its peer's stream cleanly.
#[test]
fn not_found_refused_and_drop() {
    let Some(s) = server(&[]) else { return };
    support::runtime().block_on(async {
        let ep = format!("nats://{}/{}", s.addr(), unique("refuse"));
        let e = ductwork_transports::connect(&ep)
            .await
            .err()
            .expect("no listener");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains(&ep), "{e}");
        let full = format!("{ep}?backlog=1");
        let mut l = ductwork_transports::bind(&full).await.unwrap();
        let c1 = ductwork_transports::connect(&full).await.unwrap();
        let e = ductwork_transports::connect(&full)
            .await
            .err()
            .expect("backlog full");
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert!(e.to_string().contains("backlog of 1"), "{e}");
        let mut s1 = must("accept", l.accept()).await.unwrap();
        drop(c1);
        assert!(must("recv after the peer dropped", s1.next())
            .await
            .is_none());
    });
}

/// The frame limit is the server's max_payload (here 64 KiB, from its configuration): a
/// connection says so, carries a frame of exactly that, and refuses one byte more, staying
/// usable; `max_frame` lowers it further.
#[test]
fn frame_limit_is_the_servers_max_payload() {
    let dir = std::env::temp_dir().join(unique("dw-nats-conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(&conf, "max_payload: 65536\n").unwrap();
    let s = server(&args(&["-c", &conf.display().to_string()]));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(s) = s else { return };
    support::runtime().block_on(async {
        let ep = format!("nats://{}/{}", s.addr(), unique("limit"));
        let mut l = ductwork_transports::bind(&ep).await.unwrap();
        let mut c = ductwork_transports::connect(&ep).await.unwrap();
        let mut peer = must("accept", l.accept()).await.unwrap();
        assert_eq!(c.info().capabilities.max_message, 65536);
        assert_eq!(peer.info().capabilities.max_message, 65536);
        let full = Bytes::from(vec![5u8; 65536]);
        c.send(full.clone()).await.unwrap();
        assert_eq!(must("recv", peer.next()).await.unwrap().unwrap(), full);
        let e = c.send(Bytes::from(vec![5u8; 65537])).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        c.send(Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(
            &must("recv", peer.next()).await.unwrap().unwrap()[..],
            b"ok"
        );
        let small = ductwork_transports::connect(format!("{ep}?max_frame=1000"))
            .await
            .unwrap();
        assert_eq!(small.info().capabilities.max_message, 1000);
    });
}

/// A round trip between a fresh client at `ep` and the listener `l`.
async fn round_trip(l: &mut BoxListener, ep: &str) -> Result<(), ductwork_core::Error> {
    let mut c = ductwork_transports::connect(ep).await?;
    let mut s = must("accept", l.accept()).await?;
    c.send(Bytes::from_static(b"ping")).await?;
    let got = must("recv", s.next()).await.expect("a frame")?;
    assert_eq!(&got[..], b"ping");
    Ok(())
}

/// What every refused credential must give: `PermissionDenied` at once (not a timeout, not a
/// retry loop), naming the endpoint, with no secret in the error or in anything logged while
/// connecting, at `debug` and above, async-nats's own events included. Not at `trace`:
/// async-nats 0.46 writes its whole CONNECT command there (target `async_nats::connection`,
/// token and password in clear), which the README's nats section warns about.
fn refused_without_secrets(ep: &str, secrets: &[&str]) {
    let (r, logs) = with_captured_logs(ductwork_transports::connect(ep));
    let e = r
        .err()
        .unwrap_or_else(|| panic!("{ep}: a wrong credential connected"));
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let shown = ep.parse::<ductwork_core::Endpoint>().unwrap().to_string();
    assert_eq!(e.endpoint(), shown, "{e}");
    let text = format!("{e} {e:?}");
    for secret in secrets {
        assert!(!text.contains(secret), "the error shows a secret: {text}");
        assert!(!logs.contains(secret), "the logs show a secret: {logs}");
    }
    assert!(
        logs.contains(&shown),
        "the refusal is not logged with the endpoint: {logs}"
    );
}

/// Tracing output as text.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Runs `f` on a current-thread runtime (so every task sees this thread's subscriber) and
/// returns its output with everything traced meanwhile at `debug` and above.
fn with_captured_logs<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(out.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    });
    let text = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    (r, text)
}

/// A token from a file or a variable: the right one connects; none or a wrong one is
/// refused as [`refused_without_secrets`] says.
#[test]
fn credentials_token() {
    let Some(s) = server(&args(&["--auth", "tok-s3cret"])) else {
        return;
    };
    let token = s.file("token");
    std::fs::write(&token, "tok-s3cret\n").unwrap();
    let wrong = s.file("wrong");
    std::fs::write(&wrong, "tok-WRONG\n").unwrap();
    let base = format!("nats://{}/{}", s.addr(), unique("auth"));
    let good = format!("{base}?token_file={}", token.display());
    support::runtime().block_on(async {
        let mut l = ductwork_transports::bind(&good).await.unwrap();
        round_trip(&mut l, &good).await.unwrap();
    });
    // The variable is this test's alone: no other test reads or writes it.
    std::env::set_var("DW_NATS_TEST_TOKEN", "tok-WRONG");
    for bad in [
        base.clone(),
        format!("{base}?token_file={}", wrong.display()),
        format!("{base}?token_env=DW_NATS_TEST_TOKEN"),
    ] {
        refused_without_secrets(&bad, &["s3cret", "WRONG"]);
    }
}

/// A user and password (from a variable or a file): the right pair connects; a wrong
/// password or an unknown user is refused as [`refused_without_secrets`] says.
#[test]
fn credentials_user_and_password() {
    let Some(s) = server(&args(&["--user", "bob", "--pass", "pw-s3cret"])) else {
        return;
    };
    // The variable is this test's alone: no other test reads or writes it.
    std::env::set_var("DW_NATS_TEST_PASSWORD", "pw-s3cret");
    let base = format!("nats://{}/{}", s.addr(), unique("auth"));
    support::runtime().block_on(async {
        let ep = format!("{base}?user=bob&password_env=DW_NATS_TEST_PASSWORD");
        let mut l = ductwork_transports::bind(&ep).await.unwrap();
        round_trip(&mut l, &ep).await.unwrap();
    });
    let wrong = s.file("wrong");
    std::fs::write(&wrong, "pw-WRONG\n").unwrap();
    for bad in [
        format!("{base}?user=bob&password_file={}", wrong.display()),
        format!("{base}?user=eve&password_env=DW_NATS_TEST_PASSWORD"),
    ] {
        refused_without_secrets(&bad, &["s3cret", "WRONG"]);
    }
}

/// An nkey: a user key generated here, its public half in the server's configuration, its
/// seed in a file (`nkey=`): that seed connects (the server checks a signature of its nonce);
/// another user's seed is refused as [`refused_without_secrets`] says, and neither seed
/// shows.
#[test]
fn credentials_nkey() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let dir = std::env::temp_dir().join(unique("dw-nats-nkey"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let s = server(&args(&["-c", &conf.display().to_string()]));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(s) = s else { return };
    let (seed, other_seed) = (user.seed().unwrap(), other.seed().unwrap());
    std::fs::write(s.file("user.nk"), &seed).unwrap();
    std::fs::write(s.file("other.nk"), &other_seed).unwrap();
    let base = format!("nats://{}/{}", s.addr(), unique("auth"));
    let good = format!("{base}?nkey={}", s.file("user.nk").display());
    support::runtime().block_on(async {
        let mut l = ductwork_transports::bind(&good).await.unwrap();
        round_trip(&mut l, &good).await.unwrap();
    });
    let bad = format!("{base}?nkey={}", s.file("other.nk").display());
    refused_without_secrets(&bad, &[&seed, &other_seed]);
    refused_without_secrets(&base, &[&seed, &other_seed]);
}

/// TLS to the server: a client trusting the server's CA (`ca=`) works; one trusting another
/// CA fails at connect (never hangs) without the NATS client ever going unencrypted.
#[test]
fn tls_to_the_server() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(unique("dw-nats-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |n: &str| dir.join(n).display().to_string();
    for prefix in ["", "other-"] {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        std::fs::write(
            path(&format!("{prefix}ca.pem")),
            ca.self_signed(&ca_key).unwrap().pem(),
        )
        .unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(path(&format!("{prefix}server.pem")), cert.pem()).unwrap();
        std::fs::write(path(&format!("{prefix}server.key")), key.serialize_pem()).unwrap();
    }
    let s = server(&args(&[
        "--tls",
        "--tlscert",
        &path("server.pem"),
        "--tlskey",
        &path("server.key"),
    ]));
    let Some(s) = s else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    support::runtime().block_on(async {
        let ep = format!(
            "nats://{}/{}?ca={}",
            s.addr(),
            unique("tls"),
            path("ca.pem")
        );
        let mut l = ductwork_transports::bind(&ep).await.unwrap();
        round_trip(&mut l, &ep).await.unwrap();
        let untrusted = ep.replace("/ca.pem", "/other-ca.pem");
        let e = must("connect", ductwork_transports::connect(&untrusted))
            .await
            .err()
            .expect("an untrusted server");
        assert!(
            e.to_string().contains("cannot connect to the NATS server"),
            "{e}"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reads_a_ports_file() {
    let p = r#"{"nats":["nats://127.0.0.1:46841"],"cluster":["nats://127.0.0.1:33093"]}"#;
    assert_eq!(nats_server::port_of(p, "nats"), Some(46841));
    assert_eq!(nats_server::port_of(p, "cluster"), Some(33093));
    assert_eq!(
        nats_server::port_of(r#"{"nats":["nats://127.0.0.1:1"]}"#, "cluster"),
        None
    );
}
