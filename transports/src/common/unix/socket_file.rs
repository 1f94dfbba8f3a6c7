//! Unix socket files: one rule for every backend that binds one (`unix://`, and the private
//! sockets behind `pipe://`, `mailslot://` and `shm://`).
//!
//! - **Before binding**: a path that holds something other than a socket, or a socket a live
//!   process answers on, is [`ErrorKind::AddrInUse`]; a socket file whose listener died
//!   (connecting to it is refused) is removed so the name can be bound again.
//! - **Binding, with no window and no symlink followed.** `bind(2)` creates the socket file
//!   with the process umask's mode, and a `chmod` by name afterwards both leaves a window in
//!   which others can connect and follows a symlink that another user who can write the
//!   directory swapped in (it once turned a root-owned `0644` file into `0666`). So the socket
//!   is bound inside a fresh temporary directory (`mkdirat`, mode `0700`) next to the target,
//!   reached through its descriptor (`/proc/self/fd/<dir>/s` on Linux, so no path component
//!   can be swapped); the file there is checked by descriptor (a socket, ours) and given its
//!   final mode, and only then renamed into place with `RENAME_NOREPLACE` (or hard-linked,
//!   where a file system lacks it). A rename never follows a symlink at its destination and,
//!   with `NOREPLACE`, never replaces anything: whatever appeared at the path meanwhile makes
//!   the bind fail with `AddrInUse`. Every step is relative to the directory's descriptor,
//!   opened once.
//! - **When the listener goes**, its [`SocketFileGuard`] removes the file, if the file at that
//!   path is still the one it bound (a later listener may have replaced a stale one).

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use std::{
    ffi::{OsStr, OsString},
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
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

/// The name of the socket inside the temporary directory.
const TEMP_NAME: &str = "s";

/// Binds a new listener's socket at `path` by the rules in the module docs: clears a stale
/// file (`probe` asks whether a live listener is there; `live` is the error detail if one is),
/// binds with `bind` (given the path to bind, which is not `path`), gives the file `mode` and
/// moves it to `path`. The guard removes the file again.
pub(crate) async fn bind_socket_file<S>(
    ep: &Endpoint,
    path: &Path,
    probe: Probe,
    live: &str,
    mode: u32,
    bind: impl FnOnce(PathBuf) -> io::Result<S>,
) -> Result<(S, SocketFileGuard)> {
    let (dir, parent, name) = open_parent(ep, path)?;
    clear_stale(ep, &dir, &name, path, probe, live).await?;
    let (sock, ino) = {
        let temp = TempDir::create(ep, &dir)?;
        let sock = bind(temp.socket_path(&parent)).map_err(|e| Error::bind(ep, "", e))?;
        let ino = temp.finish_socket(ep, mode)?;
        temp.move_into_place(ep, &name, live)?;
        (sock, ino)
    };
    Ok((sock, SocketFileGuard { dir, name, ino }))
}

/// Opens the directory that holds `path` (following symlinks in it: that part of the path is
/// the caller's choice) and returns it with the file name.
fn open_parent(ep: &Endpoint, path: &Path) -> Result<(OwnedFd, PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::openat(CWD, parent, dir_flags(), Mode::empty())
        .map_err(|e| Error::bind(ep, format!("open {}", parent.display()), e.into()))?;
    Ok((dir, parent.to_path_buf(), name.to_os_string()))
}

/// Flags to open a directory only to work relative to it.
fn dir_flags() -> OFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let access = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let access = OFlags::RDONLY;
    access | OFlags::DIRECTORY | OFlags::CLOEXEC
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `(st_dev, st_ino)` of a file, to tell it from another one later at the same name.
type Ino = (u64, u64);

/// The [`Ino`] of `st`.
// The field types differ between Unixes (`u64` on Linux, `i32` and `u64` on macOS).
#[allow(clippy::unnecessary_cast)]
fn ino(st: &rustix::fs::Stat) -> Ino {
    (st.st_dev as u64, st.st_ino as u64)
}

/// A fresh directory, mode `0700`, created by us next to the target, where the socket is
/// bound; removed (with anything left in it) when dropped.
struct TempDir<'a> {
    parent: &'a OwnedFd,
    name: String,
    fd: OwnedFd,
}

impl<'a> TempDir<'a> {
    /// Creates it with a name nobody else has taken (`mkdirat` fails on any existing entry,
    /// so we never use a directory we did not create), then opens it without following a
    /// symlink and checks by descriptor that it is our private directory.
    fn create(ep: &Endpoint, parent: &'a OwnedFd) -> Result<TempDir<'a>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let err = |what: &str, e: rustix::io::Errno| Error::bind(ep, what, e.into());
        let mut tries = 0;
        let name = loop {
            let name = format!(
                ".ductwork-bind-{}-{}-{:x}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                unpredictable()
            );
            match rustix::fs::mkdirat(parent, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => break name,
                Err(rustix::io::Errno::EXIST) if tries < 16 => tries += 1,
                Err(e) => return Err(err("create a private temporary directory", e)),
            }
        };
        let fd = rustix::fs::openat(
            parent,
            name.as_str(),
            dir_flags() | OFlags::NOFOLLOW,
            Mode::empty(),
        );
        let temp = match fd {
            Ok(fd) => TempDir { parent, name, fd },
            Err(e) => {
                // Whatever is at the name now is not ours to use; remove our directory if it
                // is still there (rmdir neither follows a symlink nor removes a non-empty one).
                let _ = rustix::fs::unlinkat(parent, name.as_str(), AtFlags::REMOVEDIR);
                return Err(err("open the temporary directory (it was replaced)", e));
            }
        };
        let st =
            rustix::fs::fstat(&temp.fd).map_err(|e| err("inspect the temporary directory", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory
            || st.st_uid != euid()
            || st.st_mode & 0o077 != 0
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                "cannot bind: the temporary directory was replaced by someone else's",
            ));
        }
        if st.st_mode & 0o700 != 0o700 {
            // A umask that takes the owner's own bits (0277): give them back, by descriptor.
            temp.chmod_owner_only()
                .map_err(|e| err("set the temporary directory's mode", e))?;
        }
        Ok(temp)
    }

    /// Sets the directory's mode to `0700` through its descriptor.
    fn chmod_owner_only(&self) -> rustix::io::Result<()> {
        let mode = Mode::from_raw_mode(0o700);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // An O_PATH descriptor cannot be fchmod'ed; its /proc link reaches the same inode.
        return rustix::fs::chmod(format!("/proc/self/fd/{}", self.fd.as_raw_fd()), mode);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return rustix::fs::fchmod(&self.fd, mode);
    }

    /// The path to bind: through our descriptor where the kernel offers one (Linux's
    /// `/proc/self/fd`), so that nobody can swap a directory on the way; else by name, and
    /// `finish_socket` checks by descriptor that the socket landed in our directory.
    fn socket_path(&self, parent: &Path) -> PathBuf {
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if cfg!(any(target_os = "linux", target_os = "android")) && proc.is_dir() {
            return proc.join(TEMP_NAME);
        }
        parent.join(&self.name).join(TEMP_NAME)
    }

    /// Checks by descriptor that our directory holds our socket, and gives it `mode`: in a
    /// directory only we can write, the name cannot have been swapped.
    fn finish_socket(&self, ep: &Endpoint, mode: u32) -> Result<Ino> {
        let st = rustix::fs::statat(&self.fd, TEMP_NAME, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::bind(ep, "inspect the new socket file", e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket || st.st_uid != euid() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                "cannot bind: the new socket file is not the socket we bound",
            ));
        }
        rustix::fs::chmodat(
            &self.fd,
            TEMP_NAME,
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|e| Error::io(ep, "set socket file permissions", e.into()))?;
        Ok(ino(&st))
    }

    /// Moves the finished socket to `name` in the parent directory, never replacing anything.
    fn move_into_place(&self, ep: &Endpoint, name: &OsStr, live: &str) -> Result<()> {
        let moved = rename_noreplace(&self.fd, self.parent, name);
        match moved {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => Err(Error::new(
                ErrorKind::AddrInUse,
                ep,
                format!("{live} (a file appeared at the path while binding)"),
            )),
            Err(e) => Err(Error::bind(ep, "move the socket into place", e.into())),
        }
    }
}

impl Drop for TempDir<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.fd, TEMP_NAME, AtFlags::empty());
        let _ = rustix::fs::unlinkat(self.parent, self.name.as_str(), AtFlags::REMOVEDIR);
    }
}

/// `renameat2(RENAME_NOREPLACE)` where the kernel and file system have it; else a hard link
/// (which also fails on an existing name and does not follow one) and an unlink.
fn rename_noreplace(from: &OwnedFd, to: &OwnedFd, name: &OsStr) -> rustix::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match rustix::fs::renameat_with(
        from,
        TEMP_NAME,
        to,
        name,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
        done => return done,
    }
    rustix::fs::linkat(from, TEMP_NAME, to, name, AtFlags::empty())?;
    let _ = rustix::fs::unlinkat(from, TEMP_NAME, AtFlags::empty());
    Ok(())
}

/// Bits another user cannot guess, so the temporary name cannot be squatted in advance
/// (squatting it would only make `mkdirat` fail and us pick another name).
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
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
    /// The directory that holds it, opened when binding: removal is relative to it.
    dir: OwnedFd,
    name: OsString,
    /// Device and inode of the file we bound, to tell it from a later listener's.
    ino: Ino,
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        let still_ours = rustix::fs::statat(&self.dir, &*self.name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| ino(&st) == self.ino)
            .unwrap_or(false);
        if still_ours {
            let _ = rustix::fs::unlinkat(&self.dir, &*self.name, AtFlags::empty());
        }
    }
}

/// Makes `name` in `dir` free for a new listener: nothing there, or a stale socket file
/// (removed). `live` is the detail given when a live listener holds it.
async fn clear_stale(
    ep: &Endpoint,
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    probe: Probe,
    live: &str,
) -> Result<()> {
    let Ok(st) = rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
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
            // Removes the name, whatever it now is; it never follows a symlink.
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| Error::io(ep, "remove stale socket file", e.into()))
        }
        Err(e) => Err(Error::io(ep, "probe existing socket file", e)),
    }
}
