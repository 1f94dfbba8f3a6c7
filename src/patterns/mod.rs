//! Messaging patterns for services, built on the [`Channel`](crate::Channel) and
//! [`Connection`](crate::Connection) contract alone, so they work the same over every transport
//! (and every transport added later).
//!
//! - [`reqrep`]: request/reply. A [`Client`] that many tasks share over one connection (each
//!   request carries an id, a reply goes to its caller only, a deadline fails one request, a
//!   late reply is discarded) and a [`Server`] that runs handlers concurrently with a bound.
//! - [`pubsub`]: publish/subscribe. A [`Publisher`] fans each message out to every
//!   [`Subscriber`] whose topic prefixes match, with a per-endpoint policy for slow
//!   subscribers and bounded memory.
//!
//! The patterns know nothing of backends: they see frames through the typed channel (or,
//! for request/reply, through the connection's frames with the envelope written by hand
//! around a postcard body: `envelope.rs`) and the endpoint's
//! [`Capabilities`](crate::Capabilities), as the layer diagram in the design notes draws it. One exception: over `nats://` (with the `nats` feature) they map natively onto
//! NATS (requests with inboxes, subjects, queue groups), so that NATS clients in any language
//! are peers; the public constructors dispatch on the scheme, and the mapping, with its
//! delivery semantics (at most once), is in `src/patterns/nats/mod.rs`.

mod calls;
mod envelope;
mod liveness;
pub mod nats;
pub mod pubsub;
pub mod reqrep;
mod serve;

pub use liveness::{Backoff, Heartbeat, Heartbeats, LinkState};
pub use pubsub::{
    Message, Publisher, PublisherOptions, SlowSubscriber, Subscriber, SubscriberOptions,
};
pub use reqrep::{Client, ClientOptions, Reply, Request, Server, ServerHandle, ServerOptions};

/// The result of closing a client-side link: a peer already gone (the server shut down, or a
/// reconnect reached a listener that was exiting) is no failure of close, because a client
/// sends nothing that waits in the link: every call has its reply or its error by then.
fn close_result(r: crate::Result<()>) -> crate::Result<()> {
    match r {
        Err(e) if e.kind() == crate::ErrorKind::ConnectionLost => {
            tracing::debug!(error = %e, "closing a link whose peer is gone");
            Ok(())
        }
        r => r,
    }
}
