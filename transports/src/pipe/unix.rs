//! `pipe://` on Unix: a framed Unix domain stream socket at `pipe-<name>.sock` in the private
//! per-user directory (see `crate::local::unix`).

use super::PipeAddr;
use crate::local::unix::socket_path;
use crate::socket::{bind_path, connect_path};
use ductwork_core::{BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result};

fn no_remote(ep: &Endpoint, addr: &PipeAddr) -> Result<()> {
    if addr.server.is_some() || addr.remote {
        return Err(Error::new(
            ErrorKind::Unsupported,
            ep,
            "remote pipes need Windows; on Unix pipe:// reaches this host only (use tcp:// \
             across hosts)",
        ));
    }
    Ok(())
}

pub(super) async fn bind(
    ep: &Endpoint,
    addr: &PipeAddr,
    caps: Capabilities,
) -> Result<BoxListener> {
    no_remote(ep, addr)?;
    let path = socket_path(ep, "pipe", &addr.name)?;
    bind_path(ep, &path, 0o600, caps).await
}

pub(super) async fn connect(
    ep: &Endpoint,
    addr: &PipeAddr,
    caps: Capabilities,
) -> Result<BoxConnection> {
    no_remote(ep, addr)?;
    let path = socket_path(ep, "pipe", &addr.name)?;
    connect_path(ep, &path, caps).await
}
