//! `unix:///path` on Unix: framed Unix domain stream sockets. `bind_path` and `connect_path`
//! are also `pipe://` on Unix, which is a Unix socket at a private path.

use super::Config;
use crate::common::faults::connect_within;
use crate::common::framed::{byte_stream, framed, refuse};
use crate::common::unix::{
    bind_socket_file, connect_error, credentials, peer_credentials, PeerPolicy, Probe,
};
use crate::socket::{StreamListener, StreamSource};
use ductwork_codec::REFUSED_IDENTITY;
use ductwork_core::{BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result};
use std::{io, path::Path, time::Duration};
use tokio::net::{UnixListener, UnixStream};

byte_stream!(UnixStream);

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let policy = PeerPolicy::from_endpoint(ep, false)?;
    bind_path(ep, socket_path(ep)?, cfg.mode, policy, cfg.caps).await
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    let policy = PeerPolicy::from_endpoint(ep, false)?;
    connect_path(ep, socket_path(ep)?, &policy, cfg.caps).await
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

/// Binds a framed stream listener at `path`, replacing a stale socket file; clients that
/// `policy` does not admit are disconnected as they arrive.
pub(crate) async fn bind_path(
    ep: &Endpoint,
    path: &Path,
    mode: u32,
    policy: PeerPolicy,
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
    let listener = Checked {
        listener,
        policy,
        endpoint: ep.clone(),
    };
    Ok(Box::new(StreamListener::new(
        listener,
        ep.clone(),
        move |stream, endpoint| wrap(stream, endpoint, caps.clone()),
        Box::new(guard),
    )))
}

/// A Unix listener that disconnects the clients its policy does not admit.
struct Checked {
    listener: UnixListener,
    policy: PeerPolicy,
    endpoint: Endpoint,
}

impl StreamSource for Checked {
    type Stream = UnixStream;

    async fn accept_stream(&self) -> io::Result<UnixStream> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let creds = credentials(&stream);
            if self.policy.admits(creds) {
                return Ok(stream);
            }
            // One refused client is no reason to stop serving the others; it is told why
            // without waiting for it (it may not read), then closed.
            tracing::warn!(
                endpoint = %self.endpoint,
                "refused a client of {} (allow_uids: {:?})",
                creds.map_or("unknown credentials".into(), |c| c.to_string()),
                self.policy.client_uids.as_deref().unwrap_or_default()
            );
            let reason = match creds {
                Some(c) => format!("your uid {} is not in its allow_uids", c.uid),
                None => "the kernel did not say who you are, and it has allow_uids".into(),
            };
            refuse(&stream, &self.endpoint, REFUSED_IDENTITY, &reason);
        }
    }
}

/// Connects a framed stream to the listener at `path`, if `policy` accepts the listener.
pub(crate) async fn connect_path(
    ep: &Endpoint,
    path: &Path,
    policy: &PeerPolicy,
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
    policy.check_listener(ep, credentials(&stream))?;
    Ok(wrap(stream, ep.clone(), caps))
}

fn wrap(stream: UnixStream, endpoint: Endpoint, caps: Capabilities) -> BoxConnection {
    let peer = peer_credentials(&stream);
    framed(stream, endpoint, peer, caps)
}
