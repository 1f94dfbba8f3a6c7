//! Unix plumbing for the backends that live at a filesystem path: the per-user private
//! directory ([`socket_path`]), one rule for binding a socket file and removing it again
//! ([`bind_socket_file`], [`SocketFileGuard`]), and how a peer's credentials are described.

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

/// Who is at the other end of a Unix stream socket (`pid 42, uid 1000`), for
/// `ConnectionInfo::peer`; `None` if the kernel will not say.
#[cfg(any(feature = "socket", feature = "shm"))]
pub(crate) fn peer_credentials(stream: &tokio::net::UnixStream) -> Option<String> {
    stream.peer_cred().ok().map(|c| match c.pid() {
        Some(pid) => format!("pid {pid}, uid {}", c.uid()),
        None => format!("uid {}", c.uid()),
    })
}
