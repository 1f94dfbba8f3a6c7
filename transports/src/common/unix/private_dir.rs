//! The per-user private directory where `pipe://`, `mailslot://` and `shm://` keep their Unix
//! sockets.
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
    path::{Path, PathBuf},
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
    check_dir(ep, &dir)?;
    Ok(dir)
}

/// Creates `dir` with mode `0700`, or checks that the existing one is private to us.
fn check_dir(ep: &Endpoint, dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
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
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
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
    Ok(())
}

/// The socket path for `<prefix>-<name>.sock` in the private directory, checked against the
/// Unix socket path limit. `name` must have passed
/// [`check_name`](crate::common::names::check_name).
pub(crate) fn socket_path(ep: &Endpoint, prefix: &str, name: &str) -> Result<PathBuf> {
    socket_path_in(ep, &private_dir(ep)?, prefix, name)
}

fn socket_path_in(ep: &Endpoint, dir: &Path, prefix: &str, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{prefix}-{name}.sock"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dw-dirtest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        d
    }

    fn ep() -> Endpoint {
        Endpoint::parse("pipe://t").unwrap()
    }

    #[test]
    fn creates_a_private_directory() {
        let d = scratch("new");
        check_dir(&ep(), &d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A second check of our own private directory passes.
        check_dir(&ep(), &d).unwrap();
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn refuses_a_directory_open_to_others() {
        let d = scratch("open");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_dir(&ep(), &d).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("mode 755"), "{e}");
        assert!(e.to_string().contains("pipe://t"), "{e}");
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn refuses_a_symlink() {
        let target = scratch("target");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&target)
            .unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = check_dir(&ep(), &link).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("not a directory"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir(&target).unwrap();
    }

    #[test]
    fn refuses_a_directory_owned_by_someone_else() {
        if euid() != 0 {
            // Only root can give a directory away; the owner check runs in CI as root.
            return;
        }
        let d = scratch("owner");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
        let e = check_dir(&ep(), &d).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("belongs to uid 4242"), "{e}");
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn socket_paths_are_limited() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(80)));
        let e = socket_path_in(&ep(), &long, "pipe", &"n".repeat(30)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint);
        assert!(e.to_string().contains("limited to 107 bytes"), "{e}");
        assert!(socket_path_in(&ep(), Path::new("/tmp/x"), "pipe", "n").is_ok());
    }
}
