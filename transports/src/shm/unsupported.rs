//! `shm://` on other systems (no memfd/eventfd, not Windows): not supported yet.

use super::Config;
use ductwork_core::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};

fn unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "shm:// is implemented for Linux and Windows only",
    )
}

pub(super) async fn bind(ep: &Endpoint, _cfg: Config) -> Result<BoxListener> {
    Err(unsupported(ep))
}

pub(super) async fn connect(ep: &Endpoint, _cfg: Config) -> Result<BoxConnection> {
    Err(unsupported(ep))
}
