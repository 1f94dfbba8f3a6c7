//! The per-user private directory where `pipe://` and `mailslot://` keep their Unix sockets.
//!
//! The directory is `$XDG_RUNTIME_DIR/ductwork` when `XDG_RUNTIME_DIR` is set (an absolute
//! path), else `/tmp/ductwork-<uid>`. It is created with mode `0700`. If it already exists it
//! must be a real directory (not a symlink) owned by the effective user with no group or other
//! access, or binding and connecting fail with `PermissionDenied`: another user could otherwise
//! squat or spy on the names. Both sides must agree on `XDG_RUNTIME_DIR` to meet.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::PathBuf,
};

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn dir_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("ductwork"),
        _ => std::env::temp_dir().join(format!("ductwork-{}", euid())),
    }
}

/// The private directory, created or checked (see the module docs).
pub(crate) fn private_dir(ep: &Endpoint) -> Result<PathBuf> {
    let dir = dir_path();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::io(
                ep,
                format!("create the private directory {}", dir.display()),
                e,
            ))
        }
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| {
        Error::io(
            ep,
            format!("inspect the private directory {}", dir.display()),
            e,
        )
    })?;
    let refuse = |why: String| {
        Err(Error::new(
            ErrorKind::PermissionDenied,
            ep,
            format!(
                "the private directory {} {why}; remove it or fix it so that only you can use it",
                dir.display()
            ),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("is not a directory (a symlink or file is there)".into());
    }
    if meta.uid() != euid() {
        return refuse(format!(
            "belongs to uid {}, not to you (uid {})",
            meta.uid(),
            euid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "has mode {:o}: group or others have access",
            meta.mode() & 0o777
        ));
    }
    Ok(dir)
}

/// The socket path for `<prefix>-<name>.sock` in the private directory, checked against the
/// Unix socket path limit. `name` must have passed [`super::check_name`].
pub(crate) fn socket_path(ep: &Endpoint, prefix: &str, name: &str) -> Result<PathBuf> {
    let path = private_dir(ep)?.join(format!("{prefix}-{name}.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!(
                "the socket path {} is {len} bytes; Unix socket paths are limited to \
                 {MAX_SOCKET_PATH} bytes (use a shorter name or a shorter XDG_RUNTIME_DIR)",
                path.display()
            ),
        ));
    }
    Ok(path)
}
