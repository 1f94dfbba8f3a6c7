//! Where the local certificate lives on Windows: the user's own temp directory (under the
//! profile, which other users cannot read).

use std::{fs, io, path::Path, path::PathBuf};

/// `%TEMP%\ductwork`, created if missing.
pub(super) fn private_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join("ductwork");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A new file; fails rather than reuse whatever is at `path`.
pub(super) fn create_private(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}
