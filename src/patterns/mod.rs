//! Messaging patterns for services, built on [`Channel`](crate::Channel) alone, so they work the
//! same over every transport (and every transport added later).
//!
//! - [`reqrep`]: request/reply. A [`Client`] that many tasks share over one connection (each
//!   request carries an id, a reply goes to its caller only, a deadline fails one request, a
//!   late reply is discarded) and a [`Server`] that runs handlers concurrently with a bound.
//! - [`pubsub`]: publish/subscribe. A [`Publisher`] fans each message out to every
//!   [`Subscriber`] whose topic prefixes match, with a per-endpoint policy for slow
//!   subscribers and bounded memory.
//!
//! The patterns know nothing of backends: they see frames through the typed channel and the
//! endpoint's [`Capabilities`](crate::Capabilities), as the layer diagram in the design notes
//! draws it.

mod liveness;
pub mod pubsub;
pub mod reqrep;
mod serve;

pub use liveness::{Backoff, Heartbeat, Heartbeats, LinkState};
pub use pubsub::{
    Message, Publisher, PublisherOptions, SlowSubscriber, Subscriber, SubscriberOptions,
};
pub use reqrep::{Client, ClientOptions, Reply, Request, Server, ServerHandle, ServerOptions};
