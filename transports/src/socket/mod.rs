//! Socket transports: `tcp://host:port`, `udp://host:port` and `unix:///path`.
//!
//! - **tcp**: duplex, reliable, ordered, length-prefixed frames on a byte stream; crosses hosts.
//!   Options: `nodelay` (default `true`: small messages leave at once).
//! - **udp**: duplex, best-effort datagrams, one frame per datagram with a one-byte tag; a
//!   small handshake makes `connect` fail clearly when nothing listens. The listener
//!   demultiplexes peers by address into one connection each. Messages are capped at
//!   65,506 bytes. Options: `connect_timeout_ms` (default 2000), `max_peers` (default 1024).
//! - **unix**: like tcp, on one host, at a filesystem path. The socket file is made owner-only
//!   (`0600`) unless `mode=0660` (octal) widens it; a stale file left by a dead listener is
//!   replaced, a live one is [`ErrorKind::AddrInUse`](ductwork_core::ErrorKind). Unix only.
//!
//! Every option is an endpoint option; unknown options are rejected.

mod tcp;
mod udp;
mod unix;

pub use tcp::Tcp;
pub use udp::Udp;
pub use unix::Unix;

#[cfg(feature = "pipe")]
pub(crate) use unix::local_stream_caps;
#[cfg(all(unix, feature = "pipe"))]
pub(crate) use unix::{bind_path, connect_path};

use ductwork_core::{Endpoint, Error, Result};
use std::{future::Future, io};

/// The accept loop of the stream listeners (tcp, unix): the next client's stream. A client
/// that gave up before we accepted it is no reason to fail, so it is skipped.
pub(crate) async fn accept_stream<S, A, F>(
    ep: &Endpoint,
    mut accept: impl FnMut() -> F,
) -> Result<S>
where
    F: Future<Output = io::Result<(S, A)>>,
{
    loop {
        match accept().await {
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(Error::io(ep, "accept", e)),
        }
    }
}
