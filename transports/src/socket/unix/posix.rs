//! `unix:///path` on Unix: framed Unix domain stream sockets. `bind_path` and `connect_path`
//! are also `pipe://` on Unix, which is a Unix socket at a private path.

use super::Config;
use crate::common::faults::connect_within;
use crate::common::framed::{byte_stream, framed};
use crate::common::unix::{bind_socket_file, connect_error, peer_credentials, Probe};
use crate::socket::{stream_source, StreamListener};
use ductwork_core::{BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result};
use std::{io, path::Path, time::Duration};
use tokio::net::{UnixListener, UnixStream};

byte_stream!(UnixStream);
stream_source!(UnixListener => UnixStream);

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    bind_path(ep, socket_path(ep)?, cfg.mode, cfg.caps).await
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    connect_path(ep, socket_path(ep)?, cfg.caps).await
}

/// The socket path: absolute (`unix:///run/a.sock`), or relative to the working directory
/// when written so (`unix://./a.sock`). `unix://tmp/a.sock` is refused: it reads like
/// `/tmp/a.sock` but would silently mean `./tmp/a.sock`.
fn socket_path(ep: &Endpoint) -> Result<&Path> {
    let a = ep.address();
    if a.starts_with('/') || a.starts_with("./") || a.starts_with("../") {
        return Ok(Path::new(a));
    }
    Err(Error::new(
        ErrorKind::InvalidEndpoint,
        ep,
        format!(
            "`{a}` is not an absolute path: write unix:///{a} for /{a}, or unix://./{a} \
             for a path relative to the working directory"
        ),
    ))
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
    Ok(Box::new(StreamListener::new(
        listener,
        ep.clone(),
        move |stream, endpoint| wrap(stream, endpoint, caps.clone()),
        Box::new(guard),
    )))
}

/// Connects a framed stream to the listener at `path`.
pub(crate) async fn connect_path(
    ep: &Endpoint,
    path: &Path,
    caps: Capabilities,
) -> Result<BoxConnection> {
    let stream = connect_within(ep, "the listener's backlog stayed full", async {
        let mut pause = Duration::from_millis(1);
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => return Ok(s),
                // The backlog is full: the listener is alive but not accepting (busy,
                // stopped, out of descriptors). Wait for room, within the deadline.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(connect_error(
                        ep,
                        e,
                        "the socket file exists but nothing listens on it",
                    ))
                }
            }
        }
    })
    .await?;
    Ok(wrap(stream, ep.clone(), caps))
}

fn wrap(stream: UnixStream, endpoint: Endpoint, caps: Capabilities) -> BoxConnection {
    let peer = peer_credentials(&stream);
    framed(stream, endpoint, peer, caps)
}
