//! `tcp://host:port`: framed TCP streams.

use crate::common::framed::{ByteStream, FramedConnection};
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, ConnectionInfo,
    Delivery, Direction, Endpoint, Error, Listener, Reach, Result, Transport,
};
use std::io;
use tokio::net::{TcpListener, TcpStream};

const OPTIONS: &[&str] = &["nodelay"];

/// The TCP transport (`tcp://host:port`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tcp;

impl ByteStream for TcpStream {
    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

fn nodelay(ep: &Endpoint) -> Result<bool> {
    Ok(ep.parse_option::<bool>("nodelay")?.unwrap_or(true))
}

fn wrap(stream: TcpStream, endpoint: Endpoint, caps: Capabilities, nodelay: bool) -> BoxConnection {
    let _ = stream.set_nodelay(nodelay);
    let peer = stream.peer_addr().ok().map(|a| a.to_string());
    Box::new(FramedConnection::new(
        stream,
        ConnectionInfo {
            endpoint,
            peer,
            capabilities: caps,
        },
    ))
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
        Ok(Capabilities {
            direction: Direction::Duplex,
            delivery: Delivery::Reliable,
            ordered: true,
            boundaries: Boundaries::FramedBytes,
            max_message: ep.max_frame()?,
            reach: Reach::Network,
            peer_loss: true,
            accept: Accept::PerPeer,
        })
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let caps = self.capabilities(ep)?;
        let nodelay = nodelay(ep)?;
        let listener = TcpListener::bind(ep.address())
            .await
            .map_err(|e| Error::io(ep, "bind", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io(ep, "local address", e))?;
        Ok(Box::new(TcpListen {
            listener,
            endpoint: ep.with_address(local.to_string()),
            caps,
            nodelay,
        }))
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let caps = self.capabilities(ep)?;
        let nodelay = nodelay(ep)?;
        let stream = TcpStream::connect(ep.address())
            .await
            .map_err(|e| Error::io(ep, "connect", e))?;
        Ok(wrap(stream, ep.clone(), caps, nodelay))
    }
}

struct TcpListen {
    listener: TcpListener,
    endpoint: Endpoint,
    caps: Capabilities,
    nodelay: bool,
}

#[async_trait]
impl Listener for TcpListen {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        let stream = super::accept_stream(&self.endpoint, || self.listener.accept()).await?;
        Ok(wrap(
            stream,
            self.endpoint.clone(),
            self.caps.clone(),
            self.nodelay,
        ))
    }
}
