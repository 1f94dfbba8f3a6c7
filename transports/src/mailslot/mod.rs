//! `mailslot://name`: one-way messages from any number of senders to one receiver on this
//! host; `mailslot://*/name` broadcasts to every receiver of that name in the Windows domain.
//!
//! | | Windows | Unix |
//! |---|---|---|
//! | mechanism | mailslot `\\.\mailslot\ductwork\<name>` | Unix datagram socket `mailslot-<name>.sock` in a private directory |
//! | direction | one-way: `connect` sends, `bind` receives | same |
//! | delivery | local: reliable, ordered per sender, while the receiver lives; `*/name`: best-effort | same (no broadcast) |
//! | boundaries | messages (one frame per message, no header) | messages |
//! | max message | `max_frame`, default 64 KiB, at most 200 KiB; `*/name`: 424 bytes | same, no broadcast |
//! | slow receiver | writes never wait: the OS queues them in the mailslot | the sender's send waits (backpressure) |
//! | reach | host; `*/name` or `host/name`: network (send only) | host |
//! | peer loss | not reported | not reported (a send after the receiver died: `ConnectionLost`) |
//! | access | owner and SYSTEM only (protected DACL) | owner only (`0700` directory, `0600` socket) |
//!
//! Behaviour users must know, as the conformance suite (`mailslot::*`, Linux and Wine),
//! `tests/pipe_mailslot.rs` and `tests/native_clients.rs` check it:
//!
//! - **One shared receiver.** `bind` creates the mailslot; the first `accept` returns the one
//!   receiving connection, which merges the messages of every sender; later `accept` calls
//!   fail with `Unsupported`. The receiving stream never ends on its own: senders come and go
//!   without a connection, so a sender's `close` only releases its handle and a dead sender is
//!   not noticed (`peer_loss` is false).
//! - **One-way.** Receiving on a sending connection, or sending on the receiving connection,
//!   fails with `Unsupported`.
//! - **Reliable locally.** A message whose send completed while the receiver lives is
//!   delivered once, in order per sender (100,000 in order across processes in the suite);
//!   messages from different senders interleave in arrival order. A receiver that does not
//!   read loses nothing: on Unix the senders wait while its socket queue is full; on Windows
//!   a local write only queues the message in the OS (kernel memory, not bounded by ductwork)
//!   and the receiver's reading thread stops reading while its own queue of 64 messages is
//!   full.
//! - **A receiver that went away** is noticed by senders on Unix only (`ConnectionLost` on the
//!   next send). On Windows (observed under Wine) writes to a mailslot whose receiver closed
//!   still succeed and the messages are lost: use a duplex transport when the sender must
//!   know.
//! - **Sizes.** A message larger than the sending endpoint's limit is refused on send with
//!   `FrameTooLarge` and the connection stays usable. A larger message from a foreign writer
//!   (or a sender configured with a larger `max_frame`) yields one `FrameTooLarge` error on
//!   the receiver, which drops that message and goes on receiving: the contract's rule for
//!   shared receivers (`ductwork_core::transport`, *After an error*), under which an error
//!   that concerns one message (`Decode`, `FrameTooLarge`) never ends the receiver, and only a
//!   failure of the mailslot itself does (Wine accepts such writes and truncates them; the
//!   reader detects that with a buffer one byte larger than the limit). On Unix a 200 KiB
//!   message fills a socket's default send buffer, so large messages are sent one at a time as
//!   the receiver reads; the send buffer is raised when the system default is smaller than the
//!   limit needs. Broadcasts (`*/name`) are limited to 424 bytes by Windows and are untested
//!   here (Wine has no domain).
//! - **Names**: binding a name another live receiver holds is `AddrInUse`; sending to a name
//!   nobody receives is `NotFound`. On Unix a socket file left by a crashed receiver is
//!   replaced on the next bind; the directory rules are those of `pipe://` on Unix.
//! - **Windows threads**: the receiver reads on a dedicated thread (`ReadFile` with a 50 ms
//!   read timeout) bridged to tokio; dropping the receiver waits for that thread (at most one
//!   read timeout) so the name is free when the drop returns.
//!
//! Options: `max_frame` (default 64 KiB here, at most 200 KiB).

use crate::common::names::{check_name, split_server};
use crate::common::oneway::SharedReceiver;
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Connection,
    Delivery, Direction, Endpoint, Error, ErrorKind, Reach, Result, Transport, OPT_MAX_FRAME,
};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// The default largest message, when the endpoint does not set `max_frame`.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// The largest message a local mailslot carries on any platform (a Unix datagram must fit the
/// sender's socket buffer, 208 KiB by default on Linux).
pub const MAX_LOCAL_MESSAGE: usize = 200 * 1024;
/// The largest message Windows broadcasts to a domain (`mailslot://*/name`).
pub const MAX_BROADCAST_MESSAGE: usize = 424;

/// The mailslot transport (`mailslot://name`, `mailslot://*/name`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Mailslot;

/// Settings read from a `mailslot://` endpoint.
pub(crate) struct Config {
    /// What the endpoint offers.
    pub(crate) caps: Capabilities,
    /// The remote target (`*` for the domain, or a host), `None` for this machine.
    pub(crate) server: Option<String>,
    /// The mailslot name, checked.
    pub(crate) name: String,
}

impl Config {
    fn new(ep: &Endpoint) -> Result<Config> {
        ep.check_options(&[])?;
        let (server, name) = split_server(ep.address());
        if server.is_some_and(|s| s.is_empty() || s.contains(['\\', '/'])) {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                "expected mailslot://name, mailslot://*/name or mailslot://host/name",
            ));
        }
        check_name(ep, name)?;
        Ok(Config {
            caps: caps_for(ep, server.is_some())?,
            server: server.map(str::to_string),
            name: name.to_string(),
        })
    }
}

/// Capabilities of a local or (`remote`) a broadcast or remote mailslot.
fn caps_for(ep: &Endpoint, remote: bool) -> Result<Capabilities> {
    let limit = if remote {
        MAX_BROADCAST_MESSAGE
    } else {
        MAX_LOCAL_MESSAGE
    };
    let max = match ep.size_option(OPT_MAX_FRAME)? {
        None => DEFAULT_MAX_MESSAGE.min(limit),
        Some(m) if m <= limit => m,
        Some(m) => {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!(
                    "max_frame {m} is over the {} mailslot limit of {limit} bytes",
                    if remote { "remote" } else { "local" }
                ),
            ))
        }
    };
    Ok(Capabilities {
        direction: Direction::OneWay,
        delivery: if remote {
            Delivery::BestEffort
        } else {
            Delivery::Reliable
        },
        ordered: !remote,
        boundaries: Boundaries::Messages,
        max_message: max,
        reach: if remote { Reach::Network } else { Reach::Host },
        peer_loss: false,
        accept: Accept::Shared,
    })
}

/// The error for receiving on a sending connection.
pub(crate) fn recv_on_sender(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "a mailslot is one-way: this connection only sends (bind the endpoint to receive)",
    )
}

/// The error for sending on the receiving connection.
pub(crate) fn send_on_receiver(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "a mailslot is one-way: the receiving connection cannot send (connect to send)",
    )
}

/// The listener of a mailslot: its one receiving connection, for the first `accept`.
pub(crate) fn shared_receiver(ep: &Endpoint, receiver: impl Connection) -> BoxListener {
    Box::new(SharedReceiver::new(
        ep.clone(),
        Box::new(receiver),
        second_accept,
        Box::new(()),
    ))
}

/// The error for a second `accept`.
pub(crate) fn second_accept(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "a mailslot has one receiving connection, already accepted: it carries every sender's \
         messages",
    )
}

#[async_trait]
impl Transport for Mailslot {
    fn scheme(&self) -> &'static str {
        "mailslot"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("mailslot://{unique}")
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        Ok(Config::new(ep)?.caps)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let cfg = Config::new(ep)?;
        if cfg.server.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!(
                    "a mailslot can only be created on this machine: bind mailslot://{} to \
                     receive what others send to */{}",
                    cfg.name, cfg.name
                ),
            ));
        }
        imp::bind(ep, cfg).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        imp::connect(ep, Config::new(ep)?).await
    }
}
