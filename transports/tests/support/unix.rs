//! Where `pipe://`, `mailslot://` and `shm://` put their Unix sockets, computed here once and
//! independently of the library, as a foreign client would (the rule is documented in
//! `transports/src/local/unix.rs`): `$XDG_RUNTIME_DIR/ductwork` when that is an absolute path,
//! else `<temp dir>/ductwork-<euid>`; the socket is `<prefix>-<name>.sock` in it.

use std::path::PathBuf;

/// The per-user private directory.
pub fn private_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("ductwork"),
        _ => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("ductwork-{uid}"))
        }
    }
}

/// The socket of the `prefix` transport (`pipe`, `mailslot`, `shm`) for the name `name`.
pub fn private_socket(prefix: &str, name: &str) -> PathBuf {
    private_dir().join(format!("{prefix}-{name}.sock"))
}
