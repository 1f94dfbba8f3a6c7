//! What the backends share, written once: framed byte streams, the one-pending-datagram sink,
//! the rules for local names, the pieces of one-way transports, and the OS plumbing under [`unix`] (private directory, socket
//! files, peer credentials) and `windows` (wide strings, owned handles, last-error, owner-only
//! security, named-pipe probes).
//!
//! A backend folder holds what is particular to its mechanism; anything a second backend
//! would copy belongs here. Each module is compiled only with the features that use it, so a
//! single-backend build carries no dead plumbing.

// Byte-stream transports (tcp, unix, and pipe, which needs `socket`) share this.
#[cfg(feature = "socket")]
pub(crate) mod framed;

// Datagram senders: udp and both mailslot layers.
#[cfg(any(feature = "socket", feature = "mailslot"))]
pub(crate) mod datagram;

#[cfg(any(feature = "pipe", feature = "mailslot", feature = "shm"))]
pub(crate) mod names;

// Listeners that keep accepting through transient errors, connects with a deadline.
#[cfg(any(feature = "socket", feature = "pipe", feature = "shm", feature = "tls"))]
pub(crate) mod faults;

// One-way transports: mailslot everywhere, copydata on Windows.
#[cfg(any(feature = "mailslot", all(windows, feature = "copydata")))]
pub(crate) mod oneway;

#[cfg(unix)]
pub(crate) mod unix;

#[cfg(all(
    windows,
    any(
        feature = "pipe",
        feature = "mailslot",
        feature = "shm",
        feature = "copydata"
    )
))]
pub(crate) mod windows;
