//! `tls://host:port`: the tcp transport inside TLS (rustls, with the `ring` crypto provider).
//!
//! Frames, close markers and capabilities are exactly tcp's (reliable, ordered, framed bytes,
//! network reach, a lost peer is noticed), carried inside one TLS 1.2/1.3 session per
//! connection. The server's name is always verified.
//!
//! # Options
//! One endpoint string serves both sides (a listener's endpoint is what its clients dial), so
//! each side ignores the other side's options. Paths are plain file paths to PEM files; they
//! cannot contain `&` or `?`.
//!
//! | option | side | meaning |
//! |---|---|---|
//! | `cert`, `key` | listener: required | its certificate chain (leaf first) and private key |
//! | `cert`, `key` | client: optional | its own certificate, sent when the listener asks for one |
//! | `ca` | client: required | the certificates it trusts; there are no platform roots |
//! | `server_name` | client | the name verified in the server's certificate and sent as SNI (default: the host) |
//! | `client_ca` | listener | ask clients for a certificate signed by one of these (mutual TLS) |
//! | `client_auth` | listener | with `client_ca`: `required` (default) or `optional` |
//! | `nodelay` | both | as tcp (default `true`) |
//! | `handshake_timeout_ms` | both | the handshake's deadline (default 10000) |
//!
//! # Failures
//! - A client that does not trust the server's certificate, or whose certificate the listener
//!   refuses or requires, fails with [`ErrorKind::PermissionDenied`]: at `connect`, or with
//!   TLS 1.3 (where the server judges the client's certificate after the client finished) at
//!   the first receive.
//! - A peer that does not speak TLS (a `tcp://` listener) is [`ErrorKind::Protocol`] at
//!   `connect`, or [`ErrorKind::Timeout`] when it says nothing before the deadline.
//! - A missing, unreadable or garbage PEM file is [`ErrorKind::InvalidEndpoint`] naming the
//!   option and the path (never the file's contents).
//! - The listener does every handshake in its own task with the deadline: a failed, slow or
//!   silent client is logged and dropped and never delays or ends `accept` for others. A
//!   connection takes one of [`MAX_HANDSHAKES`] handshake slots only once its first bytes
//!   arrive, so silent connections hold no slot; at most [`MAX_PENDING`] connections wait or
//!   shake hands at once, and one over that is closed at once (logged). Transient accept
//!   errors (out of descriptors) are logged and retried with a backoff, never returned.
//!
//! # A certificate for this machine
//! [`Transport::local_endpoint`] (used by `ductwork bench` and tests) makes, on first use, a
//! throw-away CA and a `localhost`/`127.0.0.1` certificate it signed, in one PEM file in the
//! user's private directory (Unix: the directory `pipe://` uses, `0700`; Windows: the user's
//! temp directory), and reuses it afterwards. The CA's key is never written, so that file
//! can vouch for nothing but this machine's loopback address.

mod config;
mod listener;
mod local;
mod stream;

#[cfg(unix)]
#[path = "unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

use crate::common::faults::connect_within;
use crate::common::framed::framed;
use crate::socket::stream_caps;
use config::Config;
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Reach,
    Result, Transport,
};
use std::time::Duration;
use tokio::net::TcpListener;

pub use listener::{MAX_HANDSHAKES, MAX_PENDING};

/// Every option `tls://` knows (see the module docs).
const OPTIONS: &[&str] = &[
    "cert",
    "key",
    "ca",
    "server_name",
    "client_ca",
    "client_auth",
    "nodelay",
    "handshake_timeout_ms",
];

/// The TLS transport (`tls://host:port`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tls;

#[async_trait]
impl Transport for Tls {
    fn scheme(&self) -> &'static str {
        "tls"
    }

    fn local_endpoint(&self, _unique: &str) -> String {
        local::endpoint()
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        ep.check_options(OPTIONS)?;
        ep.host_port()?;
        stream_caps(ep, Reach::Network)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let caps = self.capabilities(ep)?;
        let cfg = Config::new(ep)?;
        let acceptor = config::server(ep)?;
        let tcp = TcpListener::bind(ep.address())
            .await
            .map_err(|e| Error::bind(ep, "", e))?;
        let local = tcp
            .local_addr()
            .map_err(|e| Error::io(ep, "local address", e))?;
        let endpoint = ep.with_address(local.to_string());
        Ok(Box::new(listener::TlsListener::spawn(
            tcp, endpoint, acceptor, cfg, caps,
        )))
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let caps = self.capabilities(ep)?;
        let cfg = Config::new(ep)?;
        let (connector, name) = config::client(ep)?;
        // connect_timeout bounds the whole connect, TLS handshake included; the handshake
        // has its own (usually longer) deadline as well.
        let handshake = async {
            let tcp = crate::socket::connect_stream(ep).await?;
            let _ = tcp.set_nodelay(cfg.nodelay);
            let peer = tcp.peer_addr().ok().map(|a| a.to_string());
            match tokio::time::timeout(
                cfg.handshake,
                connector.connect(name, stream::buffered(tcp)),
            )
            .await
            {
                Ok(Ok(tls)) => Ok((tls, peer)),
                Ok(Err(e)) => Err(config::handshake_error(ep, e, true)),
                Err(_) => Err(timeout(ep, cfg.handshake, "the listener")),
            }
        };
        let (tls, peer) = connect_within(
            ep,
            "the listener did not finish the TCP and TLS handshakes",
            handshake,
        )
        .await?;
        Ok(framed(
            stream::TlsByteStream::new(tls.into()),
            ep.clone(),
            peer,
            caps,
        ))
    }
}

/// The handshake did not finish in time.
fn timeout(ep: &Endpoint, after: Duration, who: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        ep,
        format!(
            "TLS handshake not finished after {} ms: {who} does not answer TLS (is it a plaintext \
             listener, or busy?)",
            after.as_millis()
        ),
    )
}
