//! `unix:///path` on Unix: framed Unix domain stream sockets. `bind_path` and `connect_path`
//! are also `pipe://` on Unix, which is a Unix socket at a private path.

use super::Config;
use crate::common::framed::{ByteStream, FramedConnection};
use crate::common::unix::{bind_socket_file, peer_credentials, Probe, SocketFileGuard};
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, ConnectionInfo, Endpoint, Error,
    ErrorKind, Listener, Result,
};
use std::{io, path::Path};
use tokio::net::{UnixListener, UnixStream};

impl ByteStream for UnixStream {
    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    bind_path(ep, Path::new(ep.address()), cfg.mode, cfg.caps).await
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    connect_path(ep, Path::new(ep.address()), cfg.caps).await
}

/// Binds a framed stream listener at `path`, replacing a stale socket file.
pub(crate) async fn bind_path(
    ep: &Endpoint,
    path: &Path,
    mode: u32,
    caps: Capabilities,
) -> Result<BoxListener> {
    let (listener, guard) = bind_socket_file(
        ep,
        path,
        Probe::Stream,
        "another process is listening on this socket",
        mode,
        UnixListener::bind,
    )
    .await?;
    Ok(Box::new(UnixListen {
        listener,
        endpoint: ep.clone(),
        caps,
        _guard: guard,
    }))
}

/// Connects a framed stream to the listener at `path`.
pub(crate) async fn connect_path(
    ep: &Endpoint,
    path: &Path,
    caps: Capabilities,
) -> Result<BoxConnection> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Error::new(
                ErrorKind::NotFound,
                ep,
                "the socket file exists but nothing listens on it",
            )
            .with_source(e)
        } else {
            Error::io(ep, "connect", e)
        }
    })?;
    Ok(wrap(stream, ep.clone(), caps))
}

fn wrap(stream: UnixStream, endpoint: Endpoint, caps: Capabilities) -> BoxConnection {
    let peer = peer_credentials(&stream);
    Box::new(FramedConnection::new(
        stream,
        ConnectionInfo {
            endpoint,
            peer,
            capabilities: caps,
        },
    ))
}

struct UnixListen {
    listener: UnixListener,
    endpoint: Endpoint,
    caps: Capabilities,
    _guard: SocketFileGuard,
}

#[async_trait]
impl Listener for UnixListen {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        let stream = crate::socket::accept_stream(&self.endpoint, || self.listener.accept()).await?;
        Ok(wrap(stream, self.endpoint.clone(), self.caps.clone()))
    }
}
