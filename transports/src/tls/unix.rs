//! Where the local certificate lives on Unix: the per-user private directory (`0700`, checked
//! as `pipe://` checks it), in a file only the owner can read.

use std::{fs, io, os::unix::fs::OpenOptionsExt, path::Path, path::PathBuf};

/// The private directory, created or checked.
pub(super) fn private_dir() -> io::Result<PathBuf> {
    let ep = ductwork_core::Endpoint::parse("tls://127.0.0.1:0").map_err(io::Error::other)?;
    crate::common::unix::private_dir(&ep).map_err(io::Error::other)
}

/// A new file, mode `0600`; never follows a symlink planted at `path`.
pub(super) fn create_private(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}
