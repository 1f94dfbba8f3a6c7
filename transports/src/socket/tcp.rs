//! `tcp://host:port`: framed TCP streams.
//!
//! `connect` fails with `Timeout` after `connect_timeout` (default 10 s) when the listener
//! does not complete the handshake (its backlog is full, or a firewall drops the packets).

use super::{stream_caps, stream_source, StreamListener};
use crate::common::faults::connect_within;
use crate::common::framed::{byte_stream, framed};
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Endpoint, Error, Reach, Result,
    Transport,
};
use tokio::net::{TcpListener, TcpStream};

const OPTIONS: &[&str] = &["nodelay"];

/// The TCP transport (`tcp://host:port`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tcp;

byte_stream!(TcpStream);
stream_source!(TcpListener => TcpStream);

/// Settings read from a `tcp://` endpoint.
struct Config {
    caps: Capabilities,
    /// `nodelay` (default `true`: small messages leave at once).
    nodelay: bool,
}

impl Config {
    fn new(ep: &Endpoint) -> Result<Config> {
        Ok(Config {
            caps: Tcp.capabilities(ep)?,
            nodelay: ep.parse_option::<bool>("nodelay")?.unwrap_or(true),
        })
    }
}

fn wrap(stream: TcpStream, endpoint: Endpoint, caps: Capabilities, nodelay: bool) -> BoxConnection {
    let _ = stream.set_nodelay(nodelay);
    let peer = stream.peer_addr().ok().map(|a| a.to_string());
    framed(stream, endpoint, peer, caps)
}

#[async_trait]
impl Transport for Tcp {
    fn scheme(&self) -> &'static str {
        "tcp"
    }

    fn local_endpoint(&self, _unique: &str) -> String {
        "tcp://127.0.0.1:0".into()
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        ep.check_options(OPTIONS)?;
        ep.host_port()?; // "missing port" here, not the OS's "invalid socket address" later
        stream_caps(ep, Reach::Network)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let Config { caps, nodelay } = Config::new(ep)?;
        let listener = TcpListener::bind(ep.address())
            .await
            .map_err(|e| Error::bind(ep, "", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io(ep, "local address", e))?;
        Ok(Box::new(StreamListener::new(
            listener,
            ep.with_address(local.to_string()),
            move |stream, endpoint| wrap(stream, endpoint, caps.clone(), nodelay),
            Box::new(()),
        )))
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let cfg = Config::new(ep)?;
        let stream = connect_stream(ep).await?;
        Ok(wrap(stream, ep.clone(), cfg.caps, cfg.nodelay))
    }
}

/// A TCP connection to `ep`'s address within its `connect_timeout` (tcp's and tls's).
pub(crate) async fn connect_stream(ep: &Endpoint) -> Result<TcpStream> {
    connect_within(
        ep,
        "the listener did not complete the TCP handshake",
        async {
            TcpStream::connect(ep.address())
                .await
                .map_err(|e| Error::io(ep, "connect", e))
        },
    )
    .await
}
