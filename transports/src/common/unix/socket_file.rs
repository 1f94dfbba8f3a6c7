//! Unix socket files: one rule for every backend that binds one (`unix://`, and the private
//! sockets behind `pipe://`, `mailslot://` and `shm://`).
//!
//! - **Before binding**: a path that holds something other than a socket, or a socket a live
//!   process answers on, is [`ErrorKind::AddrInUse`]; a socket file whose listener died
//!   (connecting is refused) is removed so the name can be bound again.
//! - **Right after binding** the file gets its mode (owner-only unless the endpoint widens it),
//!   before any client can be accepted.
//! - **When the listener goes**, its [`SocketFileGuard`] removes the file, if the file at that
//!   path is still the one it bound (a later listener may have replaced a stale one).

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// How to ask whether a live listener is behind a socket file.
pub(crate) enum Probe {
    /// Connect a stream socket (stream listeners: unix, pipe, shm).
    #[cfg_attr(not(any(feature = "socket", feature = "shm")), allow(dead_code))]
    Stream,
    /// Connect a datagram socket (datagram receivers: mailslot).
    #[cfg_attr(not(feature = "mailslot"), allow(dead_code))]
    Datagram,
}

/// Binds a new listener's socket at `path` by the rules in the module docs: clears a stale
/// file (`probe` asks whether a live listener is there; `live` is the error detail if one is),
/// binds with `bind`, and gives the file `mode`. The guard removes the file again.
pub(crate) async fn bind_socket_file<S>(
    ep: &Endpoint,
    path: &Path,
    probe: Probe,
    live: &str,
    mode: u32,
    bind: impl FnOnce(PathBuf) -> io::Result<S>,
) -> Result<(S, SocketFileGuard)> {
    clear_stale(ep, path, probe, live).await?;
    let sock = bind(path.to_path_buf()).map_err(|e| Error::bind(ep, "", e))?;
    let guard = SocketFileGuard::new(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(ep, "set socket file permissions", e))?;
    Ok((sock, guard))
}

/// The error for connecting to a socket file: refused means the file is there but no live
/// process behind it (a listener that died), which is [`ErrorKind::NotFound`] with `nobody`
/// as the detail; anything else is an I/O error.
#[cfg_attr(not(any(feature = "socket", feature = "mailslot")), allow(dead_code))]
pub(crate) fn connect_error(ep: &Endpoint, e: io::Error, nobody: &str) -> Error {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        Error::new(ErrorKind::NotFound, ep, nobody).with_source(e)
    } else {
        Error::io(ep, "connect", e)
    }
}

/// Removes a listener's socket file when dropped, if the file is still the one it bound.
pub(crate) struct SocketFileGuard {
    path: PathBuf,
    /// Device and inode of the file we bound, to tell it from a later listener's.
    ino: Option<(u64, u64)>,
}

impl SocketFileGuard {
    fn new(path: PathBuf) -> SocketFileGuard {
        let ino = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        SocketFileGuard { path, ino }
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        let still_ours = std::fs::metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.ino)
            .unwrap_or(false);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes `path` free for a new listener: nothing there, or a stale socket file (removed).
/// `live` is the detail given when a live listener holds it.
async fn clear_stale(ep: &Endpoint, path: &Path, probe: Probe, live: &str) -> Result<()> {
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
