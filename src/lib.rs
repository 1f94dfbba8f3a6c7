//! # ductwork
//!
//! Async, typed messaging over the operating system's IPC mechanisms, chosen by one line of
//! configuration. Application code sends and receives `serde` values and never cares whether
//! shared memory, a named pipe, a mailslot, a socket or a `WM_COPYDATA` window message carries
//! them:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum Request { Price { item: String } }
//! #[derive(Debug, Serialize, Deserialize)]
//! enum Reply { Price { cents: u64 } }
//!
//! # async fn demo() -> ductwork::Result<()> {
//! // The endpoint is the only transport-specific line: try "unix:///tmp/prices.sock",
//! // "shm://prices" or "pipe://prices" instead.
//! let mut ch = ductwork::connect_channel::<Request, Reply>("tcp://127.0.0.1:7000").await?;
//! ch.send(&Request::Price { item: "bolt".into() }).await?;
//! let reply = ch.recv().await?;
//! println!("{reply:?}");
//! ch.close().await?;
//! # Ok(()) }
//! ```
//!
//! - [`bind`] / [`connect`] dispatch on the endpoint's scheme (`tcp`, `udp`, `unix`, `shm`,
//!   `pipe`, `mailslot`, `copydata`); [`Channel`] adds types on top of any connection.
//! - [`config`] loads named endpoints from a TOML file, overridable by environment variables and
//!   command-line arguments, so a deployment picks its transport without a rebuild.
//! - The contract every transport keeps (ordering, close, dead peers, size limits) is documented
//!   in [`transport`](ductwork_core::transport) and checked by the conformance suite.

pub mod config;
pub mod patterns;

pub use config::Config;
pub use ductwork_codec as codec;
pub use ductwork_core::{
    parse_size, transport, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Channel,
    Connection, ConnectionInfo, Delivery, Direction, Endpoint, Error, ErrorKind, Listener,
    PeerCredentials, Reach, Result, Stats, Transport,
};
/// `shm://`'s own API beyond the common contract: the zero-copy path
/// ([`Shm::connect_zero_copy`](shm::Shm::connect_zero_copy), loans and in-place receives).
#[cfg(feature = "shm")]
pub use ductwork_transports::shm;
pub use ductwork_transports::{bind, capabilities, connect, transport_for, transports};

use serde::{de::DeserializeOwned, Serialize};

/// Connects to `endpoint` and wraps the connection in a typed [`Channel`] that sends `Out` and
/// receives `In`.
pub async fn connect_channel<Out, In>(
    endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
) -> Result<Channel<Out, In>>
where
    Out: Serialize,
    In: DeserializeOwned,
{
    let endpoint: Endpoint = endpoint.try_into().map_err(Into::into)?;
    Ok(Channel::new(connect(endpoint).await?))
}

/// Accepts the next connection on `listener` as a typed [`Channel`].
pub async fn accept_channel<Out, In>(listener: &mut BoxListener) -> Result<Channel<Out, In>>
where
    Out: Serialize,
    In: DeserializeOwned,
{
    Ok(Channel::new(listener.accept().await?))
}

/// The README's code, compiled and checked as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
