//! `pipe://` on Unix: a framed Unix domain stream socket at `pipe-<name>.sock` in the private
//! per-user directory (see `crate::common::unix`). By default each side accepts only a peer
//! of its own uid (`SO_PEERCRED`): `peer_uid` and `allow_uids` change that (see
//! `PeerPolicy`).

use super::Config;
use crate::common::unix::{socket_path, PeerPolicy};
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
    let policy = PeerPolicy::from_endpoint(ep, true)?;
    let path = socket_path(ep, "pipe", &cfg.name)?;
    bind_path(ep, &path, 0o600, policy, cfg.caps).await
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    no_remote(ep, &cfg)?;
    let policy = PeerPolicy::from_endpoint(ep, true)?;
    let path = socket_path(ep, "pipe", &cfg.name)?;
    connect_path(ep, &path, &policy, cfg.caps).await
}
