//! Where `pipe://`, `mailslot://` and `shm://` put their Unix sockets, computed here once and
//! independently of the library, as a foreign client would (the rule is documented in
//! `transports/src/common/unix/private_dir.rs` and the README): `$DUCTWORK_RUNTIME_DIR`; else
//! `$XDG_RUNTIME_DIR/ductwork` when that is an absolute path to a private directory of ours;
//! else the first of `<temp dir>/ductwork-<euid>` and `$HOME/.cache/ductwork/run-<hostname>`
//! that is our private directory (or the first that is missing, if none is). The socket is
//! `<prefix>-<name>.sock` in it.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `dir` is a real directory of ours that no one else can use (a symlink is not).
fn ours_and_private(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == euid() && m.permissions().mode() & 0o077 == 0)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of its length.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
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

/// The per-user private directory.
pub fn private_dir() -> PathBuf {
    let abs = |v: &str| {
        std::env::var_os(v)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = abs("DUCTWORK_RUNTIME_DIR") {
        return d;
    }
    if let Some(d) = abs("XDG_RUNTIME_DIR").filter(|d| ours_and_private(d)) {
        return d.join("ductwork");
    }
    let mut dirs = vec![std::env::temp_dir().join(format!("ductwork-{}", euid()))];
    if let Some(home) = abs("HOME") {
        dirs.push(
            home.join(".cache/ductwork")
                .join(format!("run-{}", hostname())),
        );
    }
    if let Some(d) = dirs.iter().find(|d| ours_and_private(d)) {
        return d.clone();
    }
    let missing = dirs.iter().find(|d| std::fs::symlink_metadata(d).is_err());
    missing.unwrap_or(&dirs[0]).clone()
}

/// The socket of the `prefix` transport (`pipe`, `mailslot`, `shm`) for the name `name`.
pub fn private_socket(prefix: &str, name: &str) -> PathBuf {
    private_dir().join(format!("{prefix}-{name}.sock"))
}
