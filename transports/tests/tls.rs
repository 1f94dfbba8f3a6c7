//! `tls://` failure modes, each with its message: an untrusted server, plaintext peers on
//! either side, bad PEM files, and mutual TLS required, optional and refused. Certificates
//! are made here with rcgen, in a temporary directory this test removes.
#![cfg(feature = "tls")]

use bytes::Bytes;
use ductwork_core::{BoxConnection, Error, ErrorKind};
use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Every bounded wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// One test's certificates, in a directory removed when the test ends: `ca.pem`,
/// `server.pem` + `server.key` (`localhost`, `127.0.0.1`), `client.pem` + `client.key`; the
/// same again with the prefix `other-` from a second CA that nobody trusts; and `garbage.pem`.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(test: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("dw-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for prefix in ["", "other-"] {
            let (ca, ca_key) = make_ca();
            write(
                &dir,
                &format!("{prefix}ca.pem"),
                &ca.self_signed(&ca_key).unwrap().pem(),
            );
            let issuer = Issuer::from_params(&ca, &ca_key);
            for who in ["server", "client"] {
                let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                let key = KeyPair::generate().unwrap();
                let cert = CertificateParams::new(names)
                    .unwrap()
                    .signed_by(&key, &issuer)
                    .unwrap();
                write(&dir, &format!("{prefix}{who}.pem"), &cert.pem());
                write(&dir, &format!("{prefix}{who}.key"), &key.serialize_pem());
            }
        }
        write(&dir, "garbage.pem", "not PEM SECRET-CONTENTS at all\n");
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `tls://127.0.0.1:0` with the server's certificate, plus `extra` options.
    fn server_ep(&self, extra: &str) -> String {
        format!(
            "tls://127.0.0.1:0?cert={}&key={}{extra}",
            self.path("server.pem"),
            self.path("server.key")
        )
    }

    /// `ca=` the CA file `name`.
    fn trust(&self, name: &str) -> String {
        format!("ca={}", self.path(name))
    }

    /// `&cert=..&key=..` of the client pair with `prefix`.
    fn identity(&self, prefix: &str) -> String {
        format!(
            "&cert={}&key={}",
            self.path(&format!("{prefix}client.pem")),
            self.path(&format!("{prefix}client.key"))
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_ca() -> (CertificateParams, KeyPair) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (ca, KeyPair::generate().unwrap())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The listener's address with client options instead of the server's.
fn client_ep(listener: &ductwork_core::BoxListener, opts: &str) -> String {
    match opts {
        "" => format!("tls://{}", listener.endpoint().address()),
        _ => format!("tls://{}?{opts}", listener.endpoint().address()),
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {DEADLINE:?}"))
}

/// A round trip between a fresh client at `l` with the client options `opts` and the next
/// connection `l` accepts.
async fn round_trip(l: &mut ductwork_core::BoxListener, opts: &str) {
    let ep = client_ep(l, opts);
    let ep = ep.as_str();
    let (c, s) = bounded("connect and accept", async {
        tokio::join!(ductwork_transports::connect(ep), l.accept())
    })
    .await;
    let (mut c, mut s): (BoxConnection, BoxConnection) = (c.unwrap(), s.unwrap());
    bounded("round trip", async {
        c.send(Bytes::from_static(b"ping")).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "ping".as_bytes());
        s.send(Bytes::from_static(b"pong")).await.unwrap();
        assert_eq!(c.next().await.unwrap().unwrap(), "pong".as_bytes());
        c.close().await.unwrap();
        assert!(s.next().await.is_none(), "clean close");
    })
    .await;
}

/// The error of connecting to `ep`, or, when the handshake completed before the server judged
/// us (TLS 1.3 client certificates), of the first receive.
async fn refusal(ep: &str) -> Error {
    bounded("refusal", async {
        match ductwork_transports::connect(ep).await {
            Err(e) => e,
            Ok(mut c) => match c.next().await {
                Some(Err(e)) => e,
                other => panic!("{ep}: expected a refusal, got {other:?}"),
            },
        }
    })
    .await
}

fn assert_err(e: &Error, kind: ErrorKind, ep: &str, words: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    let text = e.to_string();
    assert!(text.starts_with(ep), "names the endpoint {ep}: {text}");
    assert!(text.contains(words), "says `{words}`: {text}");
}

async fn bind(ep: &str) -> ductwork_core::BoxListener {
    ductwork_transports::bind(ep).await.unwrap()
}

/// A client that trusts another CA is refused at connect, naming what it checked; the
/// listener goes on serving a client that trusts the right CA.
#[tokio::test]
async fn an_untrusted_server_is_refused_and_the_listener_goes_on() {
    let c = Certs::new("untrusted");
    let mut l = bind(&c.server_ep("")).await;
    let ep = client_ep(&l, &c.trust("other-ca.pem"));
    let e = refusal(&ep).await;
    assert_err(
        &e,
        ErrorKind::PermissionDenied,
        &ep,
        "certificate is not trusted",
    );
    assert!(e.to_string().contains("other-ca.pem"), "{e}");
    // A name the certificate does not carry is refused too.
    let ep = client_ep(&l, &format!("{}&server_name=elsewhere", c.trust("ca.pem")));
    let e = refusal(&ep).await;
    assert_err(&e, ErrorKind::PermissionDenied, &ep, "`elsewhere`");
    round_trip(&mut l, &c.trust("ca.pem")).await;
}

/// A plaintext tcp:// client at a TLS listener gets an error, not a hang; a silent raw TCP
/// client holds no one up; the listener serves a TLS client after both.
#[tokio::test]
async fn plaintext_and_silent_clients_do_not_stop_the_listener() {
    let c = Certs::new("plain-client");
    let mut l = bind(&c.server_ep("&handshake_timeout_ms=60000")).await;
    let silent = std::net::TcpStream::connect(l.endpoint().address()).unwrap();
    let tcp = format!("tcp://{}", l.endpoint().address());
    let mut plain = ductwork_transports::connect(tcp.as_str()).await.unwrap();
    plain.send(Bytes::from_static(b"hello")).await.unwrap();
    let got = bounded("plaintext client's outcome", plain.next()).await;
    match got {
        Some(Err(e)) => assert!(e.to_string().starts_with(&tcp), "{e}"),
        other => panic!("a plaintext client must fail, got {other:?}"),
    }
    round_trip(&mut l, &c.trust("ca.pem")).await;
    drop(silent);
}

/// A TLS client at a plaintext tcp:// listener fails at connect with `Protocol`.
#[tokio::test]
async fn a_tls_client_at_a_plaintext_listener_fails_at_connect() {
    let c = Certs::new("plain-listener");
    let mut l = ductwork_transports::bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let ep = format!("tls://{}?{}", l.endpoint().address(), c.trust("ca.pem"));
    // The plaintext side reads the ClientHello as a frame header and hangs up.
    let server = tokio::spawn(async move {
        let mut s = l.accept().await.unwrap();
        let _ = s.next().await;
    });
    let e = refusal(&ep).await;
    assert_err(&e, ErrorKind::Protocol, &ep, "does not speak TLS");
    bounded("plaintext listener", server).await.unwrap();
    // A silent one: the handshake deadline.
    let quiet = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = format!(
        "tls://{}?{}&handshake_timeout_ms=300",
        quiet.local_addr().unwrap(),
        c.trust("ca.pem")
    );
    let e = refusal(&ep).await;
    assert_err(&e, ErrorKind::Timeout, &ep, "does not answer TLS");
}

/// Missing, garbage and keyless PEM files, and missing options, are `InvalidEndpoint`
/// naming the option and path; a key file's contents never appear in a message.
#[tokio::test]
async fn bad_pem_files_and_options_are_named() {
    let c = Certs::new("pem");
    let missing = c.path("missing.pem");
    let garbage = c.path("garbage.pem");
    let server = c.path("server.pem");
    let key = c.path("server.key");
    for (ep, words) in [
        (
            format!("tls://127.0.0.1:0?cert={missing}&key={key}"),
            format!("cert={missing}: cannot read"),
        ),
        (
            format!("tls://127.0.0.1:0?cert={garbage}&key={key}"),
            format!("cert={garbage}: no PEM certificate"),
        ),
        (
            format!("tls://127.0.0.1:0?cert={server}&key={garbage}"),
            format!("key={garbage}: no PEM private key"),
        ),
        (
            format!("tls://127.0.0.1:0?cert={server}&key={server}"),
            format!("key={server}: no PEM private key"),
        ),
        (
            format!("tls://127.0.0.1:0?cert={server}"),
            "`cert` and `key` go together".into(),
        ),
        (
            "tls://127.0.0.1:0".into(),
            "needs its certificate and key".into(),
        ),
        (
            c.server_ep("&client_auth=required"),
            "client_auth needs client_ca".into(),
        ),
        (c.server_ep("&bogus=1"), "unknown option `bogus`".into()),
    ] {
        let e = ductwork_transports::bind(ep.as_str()).await.err().unwrap();
        assert_err(&e, ErrorKind::InvalidEndpoint, &ep, &words);
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
    let l = bind(&c.server_ep("")).await;
    for (opts, words) in [
        (String::new(), "needs ca=PATH".to_string()),
        (
            format!("ca={missing}"),
            format!("ca={missing}: cannot read"),
        ),
        (
            format!("ca={garbage}"),
            format!("ca={garbage}: no PEM certificate"),
        ),
    ] {
        let ep = client_ep(&l, &opts);
        let e = ductwork_transports::connect(ep.as_str())
            .await
            .err()
            .unwrap();
        assert_err(&e, ErrorKind::InvalidEndpoint, &ep, &words);
    }
}

/// Mutual TLS required: no client certificate, or one from another CA, is refused; the right
/// one is served, and so is everyone after the refusals.
#[tokio::test]
async fn mutual_tls_required() {
    let c = Certs::new("mtls");
    let mut l = bind(&c.server_ep(&format!("&client_ca={}", c.path("ca.pem")))).await;
    let ep = client_ep(&l, &c.trust("ca.pem"));
    let e = refusal(&ep).await;
    assert_err(
        &e,
        ErrorKind::PermissionDenied,
        &ep,
        "requires a client certificate",
    );
    let ep = client_ep(
        &l,
        &format!("{}{}", c.trust("ca.pem"), c.identity("other-")),
    );
    let e = refusal(&ep).await;
    assert_err(
        &e,
        ErrorKind::PermissionDenied,
        &ep,
        "refused our certificate",
    );
    round_trip(&mut l, &format!("{}{}", c.trust("ca.pem"), c.identity(""))).await;
}

/// Mutual TLS optional: clients with and without a certificate are both served.
#[tokio::test]
async fn mutual_tls_optional() {
    let c = Certs::new("mtls-opt");
    let extra = format!("&client_ca={}&client_auth=optional", c.path("ca.pem"));
    let mut l = bind(&c.server_ep(&extra)).await;
    round_trip(&mut l, &c.trust("ca.pem")).await;
    round_trip(&mut l, &format!("{}{}", c.trust("ca.pem"), c.identity(""))).await;
}

/// The endpoint `local_endpoint` makes works as it is, for both sides.
#[tokio::test]
async fn the_local_endpoint_is_usable() {
    use ductwork_core::Transport;
    let ep = ductwork_transports::tls::Tls.local_endpoint("x");
    let mut l = bind(&ep).await;
    let opts = ep.split_once('?').unwrap().1.to_string();
    round_trip(&mut l, &opts).await;
}
