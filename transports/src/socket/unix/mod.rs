//! `unix:///path`: framed Unix domain stream sockets (Unix only).
//!
//! The path is absolute (`unix:///run/orders.sock`), or relative to the working directory
//! only when spelled so (`unix://./orders.sock`, `unix://../run/orders.sock`): a relative
//! path keeps a deep directory under the 107-byte socket path limit. `unix://tmp/a.sock` is
//! refused with [`ErrorKind::InvalidEndpoint`], since it reads like `/tmp/a.sock`.
//!
//! The listener's socket file is owner-only (`0600`), or has the mode given by the `mode`
//! option (octal, e.g. `mode=0660`), from the moment it appears at the path: it is bound in a
//! private temporary directory, given its mode there and renamed into place, so there is no
//! window with the umask's mode and no symlink at the path is ever followed (see
//! `crate::common::unix`). Peer checks (`SO_PEERCRED`): a client may require the listener's uid
//! (`peer_uid=0`: a squatter's listener is refused with `PermissionDenied`), a listener may
//! admit only some uids (`allow_uids=1000,1001`; others are logged and disconnected at once);
//! the peer's uid, gid and pid are on `ConnectionInfo::peer_credentials`. A socket file left by a listener that died is
//! detected (connecting to it is refused) and replaced; one with a live listener behind it is
//! `AddrInUse`. The listener removes its socket file when dropped, if the file is still its own.
//! The connection-level pieces here are shared with `pipe://` on Unix.

use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Reach,
    Result, Transport,
};

#[cfg(unix)]
mod posix;
#[cfg(unix)]
use posix as imp;
#[cfg(not(unix))]
mod unsupported;
#[cfg(not(unix))]
use unsupported as imp;

/// Used by `pipe://` on Unix, which is a Unix socket at a private path.
#[cfg(all(unix, feature = "pipe"))]
pub(crate) use posix::{bind_path, connect_path};

const OPTIONS: &[&str] = &["mode", "peer_uid", "allow_uids"];

/// The Unix domain stream socket transport (`unix:///path`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unix;

/// Settings read from a `unix://` endpoint.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) struct Config {
    pub(crate) caps: Capabilities,
    /// The socket file's mode (`mode`, octal; default `0600`).
    pub(crate) mode: u32,
}

impl Config {
    fn new(ep: &Endpoint) -> Result<Config> {
        Ok(Config {
            caps: Unix.capabilities(ep)?,
            mode: mode(ep)?,
        })
    }
}

fn mode(ep: &Endpoint) -> Result<u32> {
    match ep.option("mode") {
        None => Ok(0o600),
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    ep,
                    format!("option `mode={m}` is not an octal file mode such as 0600"),
                )
            }),
    }
}

#[async_trait]
impl Transport for Unix {
    fn scheme(&self) -> &'static str {
        "unix"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("unix://{}/{unique}.sock", std::env::temp_dir().display())
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        ep.check_options(OPTIONS)?;
        super::stream_caps(ep, Reach::Host)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        imp::bind(ep, Config::new(ep)?).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        imp::connect(ep, Config::new(ep)?).await
    }
}
