//! The per-user private directory where `pipe://`, `mailslot://` and `shm://` keep their Unix
//! sockets (and `tls://` its local certificate).
//!
//! Listener and client find it by the same rule, with no communication, from the environment
//! and the file system:
//!
//! 1. `$DUCTWORK_RUNTIME_DIR` if set (an absolute path): exactly that directory.
//! 2. Else `$XDG_RUNTIME_DIR/ductwork` if `XDG_RUNTIME_DIR` is an absolute path to a directory
//!    of ours that no one else can use (as systemd-logind makes it: `0700`, ours).
//! 3. Else the first of these that exists as our private directory, or, if none does, the
//!    first that does not exist (created): `<temp dir>/ductwork-<uid>` (`$TMPDIR` or `/tmp`),
//!    then `$HOME/.cache/ductwork/run-<hostname>`. Another user who pre-creates
//!    `/tmp/ductwork-<uid>` (a directory, a symlink, a file) only sends us to the second, which
//!    lives in our home where no one else can create anything. Once that second directory
//!    exists it stays the choice, so listeners and clients keep agreeing.
//!
//! A directory is created with mode `0700`. An existing one is opened without following a
//! symlink and checked by descriptor (`fstat`): a real directory owned by the effective user
//! with no group or other access. One of ours that is open to others is refused with
//! `PermissionDenied` (something may have been planted in it: fix or remove it); one that is
//! someone else's (or a symlink or a file) is skipped as above, except where the rule names one
//! directory only (1. and 2.), where it is refused.
//!
//! Because no one else can create a socket in the directory, a client that reaches a socket in
//! it reaches a process of its own uid (or root); the transports check the listener's uid too.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The environment variable that names the private directory outright.
const RUNTIME_DIR_VAR: &str = "DUCTWORK_RUNTIME_DIR";

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The directories the rule allows, in order; with `only`, the first is the one answer.
struct Candidates {
    dirs: Vec<PathBuf>,
    only: bool,
}

fn candidates() -> Candidates {
    let abs = |v: &str| {
        std::env::var_os(v)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = abs(RUNTIME_DIR_VAR) {
        return Candidates {
            dirs: vec![d],
            only: true,
        };
    }
    if let Some(d) = abs("XDG_RUNTIME_DIR") {
        if matches!(inspect(&d), Found::Private) {
            return Candidates {
                dirs: vec![d.join("ductwork")],
                only: true,
            };
        }
    }
    let mut dirs = vec![std::env::temp_dir().join(format!("ductwork-{}", euid()))];
    if let Some(home) = abs("HOME") {
        dirs.push(
            home.join(".cache/ductwork")
                .join(format!("run-{}", hostname())),
        );
    }
    Candidates { dirs, only: false }
}

/// This host's name, so that a home directory shared between hosts (NFS) gives each its own
/// directory: a socket file is only reachable on the host that bound it.
fn hostname() -> String {
    let name = rustix::system::uname();
    let name = name.nodename().to_string_lossy();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "host".into()
    } else {
        safe
    }
}

/// What is at a candidate path, looked at by descriptor.
enum Found {
    /// Our directory, no group or other access.
    Private,
    /// Our directory, open to others (the mode).
    Open(u32),
    /// Nothing.
    Missing,
    /// Someone else's directory, a symlink, a file: not ours to use (why).
    Taken(String),
}

fn inspect(dir: &Path) -> Found {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let access = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let access = OFlags::RDONLY;
    let flags = access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(CWD, dir, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Found::Missing,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return Found::Taken("is not a directory (a symlink or file is there)".into())
        }
        Err(e) => return Found::Taken(format!("cannot be opened ({e})")),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return Found::Taken(format!("cannot be inspected ({e})")),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Found::Taken("is not a directory".into());
    }
    if st.st_uid != euid() {
        return Found::Taken(format!(
            "belongs to uid {}, not to you (uid {})",
            st.st_uid,
            euid()
        ));
    }
    match st.st_mode & 0o777 {
        m if m & 0o077 != 0 => Found::Open(m),
        _ => Found::Private,
    }
}

/// The private directory, created or checked (see the module docs).
pub(crate) fn private_dir(ep: &Endpoint) -> Result<PathBuf> {
    choose(ep, &candidates())
}

/// The first usable directory of `c`, by the rule in the module docs.
fn choose(ep: &Endpoint, c: &Candidates) -> Result<PathBuf> {
    // Twice at most: a directory we create may be taken by someone else in between.
    for _ in 0..2 {
        let mut missing = None;
        let mut taken = Vec::new();
        for dir in &c.dirs {
            match inspect(dir) {
                Found::Private => return Ok(dir.clone()),
                Found::Open(m) => {
                    return refuse(
                        ep,
                        dir,
                        &format!("has mode {m:o}: group or others have access"),
                    )
                }
                Found::Missing => {
                    missing.get_or_insert(dir);
                }
                Found::Taken(why) if c.only => return refuse(ep, dir, &why),
                Found::Taken(why) => taken.push(format!("{} {why}", dir.display())),
            }
        }
        let Some(dir) = missing else {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                format!(
                    "no private directory is usable: {}; set {RUNTIME_DIR_VAR} to a directory \
                     of yours",
                    taken.join("; ")
                ),
            ));
        };
        create(ep, dir)?;
    }
    refuse(ep, &c.dirs[0], "keeps changing while being created")
}

fn refuse<T>(ep: &Endpoint, dir: &Path, why: &str) -> Result<T> {
    Err(Error::new(
        ErrorKind::PermissionDenied,
        ep,
        format!(
            "the private directory {} {why}; remove it or fix it so that only you can use it",
            dir.display()
        ),
    ))
}

/// Creates `dir` with mode `0700` (its parents, in our home, with the default mode). Someone
/// else winning the race is seen by the next `inspect`.
fn create(ep: &Endpoint, dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        if !parent.exists() {
            let _ = std::fs::create_dir_all(parent);
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(
            ep,
            format!("create the private directory {}", dir.display()),
            e,
        )),
    }
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dw-dirtest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        d
    }

    fn ep() -> Endpoint {
        Endpoint::parse("pipe://t").unwrap()
    }

    fn only(d: &Path) -> Candidates {
        Candidates {
            dirs: vec![d.to_path_buf()],
            only: true,
        }
    }

    fn either(a: &Path, b: &Path) -> Candidates {
        Candidates {
            dirs: vec![a.to_path_buf(), b.to_path_buf()],
            only: false,
        }
    }

    #[test]
    fn creates_a_private_directory() {
        let d = scratch("new");
        assert_eq!(choose(&ep(), &only(&d)).unwrap(), d);
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A second look at our own private directory passes.
        assert_eq!(choose(&ep(), &only(&d)).unwrap(), d);
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn refuses_a_directory_of_ours_open_to_others() {
        let d = scratch("open");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = choose(&ep(), &either(&d, &scratch("open2"))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("mode 755"), "{e}");
        assert!(e.to_string().contains("pipe://t"), "{e}");
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_refused_where_named_and_skipped_where_there_is_a_fallback() {
        let target = scratch("target");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&target)
            .unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = choose(&ep(), &only(&link)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("not a directory"), "{e}");
        let fallback = scratch("fallback");
        assert_eq!(choose(&ep(), &either(&link, &fallback)).unwrap(), fallback);
        // Once the fallback exists it stays the choice, even when the first is free again.
        std::fs::remove_file(&link).unwrap();
        assert_eq!(choose(&ep(), &either(&link, &fallback)).unwrap(), fallback);
        assert!(!link.exists());
        std::fs::remove_dir(&fallback).unwrap();
        std::fs::remove_dir(&target).unwrap();
    }

    #[test]
    fn a_directory_owned_by_someone_else_is_refused_or_skipped() {
        if euid() != 0 {
            // Only root can give a directory away; the owner check runs in CI as root.
            return;
        }
        let d = scratch("owner");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
        let e = choose(&ep(), &only(&d)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("belongs to uid 4242"), "{e}");
        let fallback = scratch("owner-fallback");
        assert_eq!(choose(&ep(), &either(&d, &fallback)).unwrap(), fallback);
        // Both taken: the error names each and the way out.
        std::fs::remove_dir(&fallback).unwrap();
        std::fs::write(&fallback, b"").unwrap();
        let e = choose(&ep(), &either(&d, &fallback)).unwrap_err();
        assert!(e.to_string().contains("DUCTWORK_RUNTIME_DIR"), "{e}");
        std::fs::remove_file(&fallback).unwrap();
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
