//! `shm://` on other systems (no memfd/eventfd, not Windows): not supported yet.

use super::{Config, ListenerImpl, ShmConnection};
use ductwork_core::{Endpoint, Error, ErrorKind, Result};

fn unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "shm:// is implemented for Linux and Windows only",
    )
}

pub(super) async fn bind(ep: &Endpoint, _cfg: Config) -> Result<ListenerImpl> {
    Err(unsupported(ep))
}

pub(super) async fn connect(ep: &Endpoint, _cfg: Config) -> Result<ShmConnection> {
    Err(unsupported(ep))
}
