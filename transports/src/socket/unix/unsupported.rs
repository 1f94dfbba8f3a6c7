//! `unix://` where there are no Unix domain sockets: every operation is `Unsupported`.

use super::Config;
use ductwork_core::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};

fn unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "unix:// sockets need a Unix platform; on Windows use pipe:// (named pipes)",
    )
}

pub(super) async fn bind(ep: &Endpoint, _cfg: Config) -> Result<BoxListener> {
    Err(unsupported(ep))
}

pub(super) async fn connect(ep: &Endpoint, _cfg: Config) -> Result<BoxConnection> {
    Err(unsupported(ep))
}
