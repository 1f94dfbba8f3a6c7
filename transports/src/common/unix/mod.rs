//! Unix plumbing for the backends that live at a filesystem path: the per-user private
//! directory ([`socket_path`]), one rule for binding a socket file without a window or a
//! symlink followed and removing it again ([`bind_socket_file`], [`SocketFileGuard`]), and the
//! peers' credentials (`SO_PEERCRED`) with the checks the endpoint options ask for
//! ([`PeerPolicy`]).

#[cfg(any(
    feature = "pipe",
    feature = "mailslot",
    feature = "shm",
    feature = "tls"
))]
#[cfg_attr(
    not(any(feature = "pipe", feature = "mailslot", feature = "shm")),
    allow(dead_code) // tls alone uses only `private_dir`
)]
mod private_dir;
#[cfg(any(feature = "socket", feature = "mailslot", feature = "shm"))]
mod socket_file;

#[cfg(any(feature = "pipe", feature = "mailslot", feature = "shm"))]
pub(crate) use private_dir::socket_path;
// tls:// keeps the local certificate there.
#[cfg(feature = "tls")]
pub(crate) use private_dir::private_dir;
#[cfg(any(feature = "socket", feature = "mailslot"))]
pub(crate) use socket_file::connect_error;
#[cfg(feature = "mailslot")]
pub(crate) use socket_file::SocketFileGuard;
#[cfg(any(feature = "socket", feature = "mailslot", feature = "shm"))]
pub(crate) use socket_file::{bind_socket_file, Probe};

#[cfg(any(feature = "socket", feature = "shm"))]
use ductwork_core::transport::PeerCredentials;
#[cfg(any(feature = "socket", feature = "shm"))]
use ductwork_core::{Endpoint, Error, ErrorKind, Result};

/// The kernel's word on who is at the other end of a Unix stream socket.
#[cfg(any(feature = "socket", feature = "shm"))]
pub(crate) fn credentials(stream: &tokio::net::UnixStream) -> Option<PeerCredentials> {
    stream.peer_cred().ok().map(|c| PeerCredentials {
        uid: c.uid(),
        gid: c.gid(),
        pid: c.pid().and_then(|p| u32::try_from(p).ok()),
    })
}

/// Who is at the other end of a Unix stream socket (`uid 1000, gid 1000, pid 42`), for
/// `ConnectionInfo::peer`, in the form `ConnectionInfo::peer_credentials` reads back; `None`
/// if the kernel will not say.
#[cfg(any(feature = "socket", feature = "shm"))]
pub(crate) fn peer_credentials(stream: &tokio::net::UnixStream) -> Option<String> {
    credentials(stream).map(|c| c.to_string())
}

/// Whom a Unix stream endpoint accepts at the other end, from its options:
///
/// - `peer_uid=<uid>` (client): the listener must run as this uid, else `connect` fails with
///   `PermissionDenied` ("the listener runs as uid 1001, not uid 0"). Catches a user who
///   squats a path before the real service binds it.
/// - `allow_uids=<uid>,<uid>,...` (listener): clients of other uids are refused: the listener
///   logs `refused a client of uid ...` at `warn`, writes a refusal in place of its hello
///   without waiting (`framed::refuse`) and closes that connection at once, and keeps
///   accepting others. The client's first receive or send fails with `PermissionDenied`:
///   "the listener refused this connection: your uid 1001 is not in its allow_uids".
///
/// Both read the credentials the kernel recorded (`SO_PEERCRED`), which the peer cannot forge.
/// `shm://` applies the same policy during its set-up (a refused client is told why).
#[cfg(any(feature = "socket", feature = "shm"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerPolicy {
    /// The uid the listener must have (client side).
    pub(crate) listener_uid: Option<u32>,
    /// The uids a listener admits (`None`: everyone the socket file's mode lets in).
    pub(crate) client_uids: Option<Vec<u32>>,
}

#[cfg(any(feature = "socket", feature = "shm"))]
impl PeerPolicy {
    /// The policy the endpoint's options give; with `same_user` (the private-directory
    /// transports) the default on both sides is this process's effective uid only.
    pub(crate) fn from_endpoint(ep: &Endpoint, same_user: bool) -> Result<PeerPolicy> {
        let me = rustix::process::geteuid().as_raw();
        let bad = |o: &str, v: &str| {
            Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!("option `{o}={v}` is not a uid (or a comma-separated list of uids)"),
            )
        };
        let listener_uid = match ep.option("peer_uid") {
            Some(v) => Some(v.parse::<u32>().map_err(|_| bad("peer_uid", v))?),
            None => same_user.then_some(me),
        };
        let client_uids = match ep.option("allow_uids") {
            Some(v) => Some(
                v.split(',')
                    .map(|u| u.trim().parse::<u32>().map_err(|_| bad("allow_uids", v)))
                    .collect::<Result<Vec<u32>>>()?,
            ),
            None => same_user.then(|| vec![me]),
        };
        Ok(PeerPolicy {
            listener_uid,
            client_uids,
        })
    }

    /// Client side: checks the listener's credentials.
    pub(crate) fn check_listener(
        &self,
        ep: &Endpoint,
        creds: Option<PeerCredentials>,
    ) -> Result<()> {
        let Some(want) = self.listener_uid else {
            return Ok(());
        };
        match creds {
            Some(c) if c.uid == want => Ok(()),
            Some(c) => Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                format!(
                    "the listener runs as uid {} (pid {}), not uid {want}: another user may \
                     hold this name; refusing to talk to it",
                    c.uid,
                    c.pid.map_or("unknown".into(), |p| p.to_string())
                ),
            )),
            None => Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                format!(
                    "the kernel does not say who the listener is, so uid {want} cannot be checked"
                ),
            )),
        }
    }

    /// Listener side: whether a client with these credentials may stay.
    pub(crate) fn admits(&self, creds: Option<PeerCredentials>) -> bool {
        match &self.client_uids {
            None => true,
            Some(uids) => creds.is_some_and(|c| uids.contains(&c.uid)),
        }
    }
}
