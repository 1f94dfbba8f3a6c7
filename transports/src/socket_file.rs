//! Unix socket files that outlive their listener: one rule for every backend that binds one
//! (`unix://`, and the private sockets behind `pipe://`, `mailslot://` and `shm://`).
//!
//! A path that holds something other than a socket, or a socket a live process answers on, is
//! [`ErrorKind::AddrInUse`]; a socket file whose listener died (connecting is refused) is
//! removed so the name can be bound again.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{io, os::unix::fs::FileTypeExt, path::Path};

/// How to ask whether a live listener is behind a socket file.
pub(crate) enum Probe {
    /// Connect a stream socket (stream listeners: unix, pipe, shm).
    #[cfg_attr(not(any(feature = "socket", feature = "shm")), allow(dead_code))]
    Stream,
    /// Connect a datagram socket (datagram receivers: mailslot).
    #[cfg_attr(not(feature = "mailslot"), allow(dead_code))]
    Datagram,
}

/// Makes `path` free for a new listener: nothing there, or a stale socket file (removed).
/// `live` is the detail given when a live listener holds it.
pub(crate) async fn clear_stale(
    ep: &Endpoint,
    path: &Path,
    probe: Probe,
    live: &str,
) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AddrInUse,
            ep,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    let answer = match probe {
        Probe::Stream => tokio::net::UnixStream::connect(path).await.map(drop),
        Probe::Datagram => tokio::net::UnixDatagram::unbound()
            .map_err(|e| Error::io(ep, "create socket", e))?
            .connect(path),
    };
    match answer {
        Ok(()) => Err(Error::new(ErrorKind::AddrInUse, ep, live)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(endpoint = %ep, "replacing a stale socket file");
            std::fs::remove_file(path).map_err(|e| Error::io(ep, "remove stale socket file", e))
        }
        Err(e) => Err(Error::io(ep, "probe existing socket file", e)),
    }
}
