//! Windows side of `shm://`: not implemented yet.
//!
//! The intended design (see `DESIGN.md`): a `CreateFileMappingW`/`MapViewOfFile` section per
//! connection with an owner-only security descriptor, named events as doorbells awaited on a
//! waiter thread bridged to tokio, and a named-pipe handshake that also serves as the liveness
//! signal. Until then `bind` and `connect` fail with `Unsupported`.

use super::Config;
use ductwork_core::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};

fn unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "shm:// on Windows is not implemented yet (use pipe:// meanwhile)",
    )
}

pub(super) async fn bind(ep: &Endpoint, _cfg: Config) -> Result<BoxListener> {
    Err(unsupported(ep))
}

pub(super) async fn connect(ep: &Endpoint, _cfg: Config) -> Result<BoxConnection> {
    Err(unsupported(ep))
}
