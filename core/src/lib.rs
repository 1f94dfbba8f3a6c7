//! ductwork's core: the transport contract and the typed layer on top of it.
//!
//! - [`Endpoint`]: `scheme://address?options`, the one line of configuration that picks a
//!   transport.
//! - [`Transport`], [`Listener`], [`Connection`]: the contract every backend implements; the
//!   [`transport`] module documents it rule by rule.
//! - [`Capabilities`]: what a transport honestly offers.
//! - [`Channel`]: typed `send`/`recv` and `Sink`/`Stream` over any connection.
//! - [`Error`]: one error type that always names the endpoint.

pub mod capabilities;
pub mod channel;
pub mod endpoint;
pub mod error;
pub mod transport;

pub use capabilities::{Accept, Boundaries, Capabilities, Delivery, Direction, Reach};
pub use channel::{Channel, FrameRef};
pub use endpoint::{
    parse_duration, parse_size, Endpoint, DEFAULT_CONNECT_TIMEOUT, MAX_CONNECT_TIMEOUT,
    OPT_CONNECT_TIMEOUT, OPT_CONNECT_TIMEOUT_MS, OPT_MAX_FRAME,
};
pub use error::{Error, ErrorKind, Result};
pub use transport::{
    BoxConnection, BoxListener, Connection, ConnectionInfo, FrameEncoder, FrameWriter, Listener,
    PeerCredentials, Stats, Transport,
};

/// Re-export for transports implementing the traits.
pub use async_trait::async_trait;
