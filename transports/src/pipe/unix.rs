//! `pipe://` on Unix: a framed Unix domain stream socket at `pipe-<name>.sock` in the private
//! per-user directory (see `crate::common::unix`).

use super::Config;
use crate::common::unix::socket_path;
use crate::socket::{bind_path, connect_path};
use ductwork_core::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};

fn no_remote(ep: &Endpoint, cfg: &Config) -> Result<()> {
    if cfg.server.is_some() || cfg.remote {
        return Err(Error::new(
            ErrorKind::Unsupported,
            ep,
            "remote pipes need Windows; on Unix pipe:// reaches this host only (use tcp:// \
             across hosts)",
        ));
    }
    Ok(())
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    no_remote(ep, &cfg)?;
    let path = socket_path(ep, "pipe", &cfg.name)?;
    bind_path(ep, &path, 0o600, cfg.caps).await
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    no_remote(ep, &cfg)?;
    let path = socket_path(ep, "pipe", &cfg.name)?;
    connect_path(ep, &path, cfg.caps).await
}
