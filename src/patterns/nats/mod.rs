//! The patterns over `nats://`, natively: the same [`Client`](super::Client),
//! [`Server`](super::Server), [`Publisher`](super::Publisher) and
//! [`Subscriber`](super::Subscriber), speaking what any NATS client speaks instead of
//! ductwork connections through NATS. The public constructors call the dispatch functions
//! here first; every other scheme goes on to the generic code.
//!
//! # The mapping
//! The endpoint `nats://host:port/NAME` names the subject `NAME` (`PREFIX.NAME` when the
//! `prefix` option is given). Every other option (servers, TLS, credentials, `max_frame`) is
//! the transport's (see `ductwork_transports::nats`).
//!
//! - **Request/reply.** A call is one NATS request: the request's body (postcard, as on every
//!   transport, without the ductwork envelope) published to `NAME`, with the reply subject
//!   `INBOX.ID` under one wildcard subscription per client (`INBOX` a fresh `_INBOX.…`). Its
//!   deadline is the call's own; a reply after it, or for an id nobody waits for, is
//!   discarded. Servers subscribe to `NAME` in the queue group `ductwork`: any number of
//!   processes binding the same name form a pool, and NATS gives each request to one of them.
//!   A handler's answer is published to the request's reply subject; a handler that panicked
//!   is answered with the NATS service-API error headers (`Nats-Service-Error`, code 500),
//!   which the caller gets as [`ErrorKind::Remote`](crate::ErrorKind::Remote). No server at
//!   all: the NATS server's "no responders" status fails the call at once, as `Remote`
//!   naming the subject. A NATS client in another language can call a ductwork server (and
//!   answer a ductwork client) with plain NATS requests of postcard bodies.
//! - **Publish/subscribe.** `publish(topic, msg)` publishes the body (postcard) to the subject
//!   `NAME.TOPIC` (`NAME` alone for the empty topic): a topic is NATS subject tokens, joined by
//!   single dots, without spaces, control characters, `*` or `>`; another is refused by
//!   `publish` with [`ErrorKind::Encode`](crate::ErrorKind::Encode), as is a topic longer
//!   than 1,024 bytes (the NATS server would drop the connection for it). A subscriber's prefix becomes NATS subscriptions: a **token-aligned**
//!   prefix (`""`, or one ending in `.`, like `prices.`) is exactly `NAME.>` (with `NAME` for
//!   `""`) or `NAME.prices.>`, filtered by the NATS server alone. A prefix that ends inside a
//!   token (`prices.bo`) keeps ductwork's meaning, a string prefix (it matches
//!   `prices.bolt` and `prices.bolts.m8`): it subscribes to the enclosing subtree
//!   (`NAME.prices.>`, or `NAME.>` for `bo`) and the subscriber drops what does not match,
//!   so it costs the traffic of that subtree. Overlapping prefixes are merged into
//!   subscriptions that do not overlap, so no message arrives twice.
//! - A `Server` and a `Publisher` may share a name: requests go to `NAME`, publications to
//!   `NAME.TOPIC`, except for the empty topic, whose publications reach the servers' queue
//!   group as requests without a reply subject (ignored there). A subscriber skips messages
//!   that carry a reply subject (requests), so publish on a non-empty topic when a name has
//!   both.
//!
//! # Delivery
//! Core NATS delivers **at most once**. A request, reply or publication sent while a client
//! reconnects, or for a subscriber or server that is not keeping up (a *slow consumer*: more
//! than the `buffer` option's messages, 65,536 by default, waiting in its client), is
//! dropped: a call then fails at its deadline (the request may or may not have run: nothing
//! is retried), and a subscriber misses the publication without being told (its
//! [`missed`](super::Subscriber::missed) counts only what its publisher's own queue dropped).
//! A publisher's messages reach one subscriber in the order published. What NATS changes
//! from the other transports:
//! - A publisher has one link, to the NATS server, not one per subscriber:
//!   [`subscribers`](super::Publisher::subscribers) is 1 and `publish` returns 1 (NATS does
//!   not tell a publisher who listens). Its [`SlowSubscriber`](super::SlowSubscriber) policy and
//!   `max_queued_bytes` apply to that link (a reconnecting client, say).
//! - A subscriber's [`recv`](super::Subscriber::recv) never returns `Ok(None)` because a
//!   publisher left: publishers come and go on a subject. A subscription is in place at the
//!   NATS server the subscriber is connected to when `connect` returns; in a cluster it
//!   reaches the other nodes a moment later.
//! - A server handles up to [`max_in_flight`](super::ServerOptions::max_in_flight) requests
//!   at once in all (one NATS subscription, not one connection per client); requests it has
//!   not taken when it shuts down are not answered (their callers time out).
//! - There is no link to a server to lose: a killed server's calls in flight fail at their
//!   deadline, and the next call reaches another server of the pool (or "no responders").
//!   The client's own NATS connection reconnects by itself; heartbeats (when asked for) are
//!   answered while it is connected.

use crate::{BoxConnection, BoxListener, Channel, Endpoint, Error, ErrorKind, Result};
use serde::{de::DeserializeOwned, Serialize};

#[cfg(feature = "nats")]
mod bridge;
#[cfg(feature = "nats")]
mod pubsub;
#[cfg(feature = "nats")]
mod reqrep;
mod topics;

/// Whether the patterns take the NATS-native path for `ep`.
fn is_nats(ep: &Endpoint) -> bool {
    ep.scheme() == "nats"
}

/// A build without the `ductwork` crate's `nats` feature (where another crate turned the
/// transport on) refuses rather than take the non-native path, which NATS-native peers would
/// not understand.
#[cfg(not(feature = "nats"))]
fn needs_feature(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "request/reply and publish/subscribe over nats:// need the `ductwork` crate's `nats` \
         feature",
    )
}

/// A [`Client`](super::Client)'s channel: a NATS requester for `nats://`, else a connection.
pub(crate) async fn client_channel<O: Serialize, I: DeserializeOwned>(
    ep: &Endpoint,
) -> Result<Channel<O, I>> {
    if is_nats(ep) {
        #[cfg(feature = "nats")]
        return Ok(Channel::new(reqrep::connect(ep).await?));
        #[cfg(not(feature = "nats"))]
        return Err(needs_feature(ep));
    }
    crate::connect_channel(ep).await
}

/// A [`Server`](super::Server)'s listener: a queue-group subscription for `nats://`.
pub(crate) async fn server_listener(ep: &Endpoint) -> Result<BoxListener> {
    if is_nats(ep) {
        #[cfg(feature = "nats")]
        return reqrep::bind(ep).await;
        #[cfg(not(feature = "nats"))]
        return Err(needs_feature(ep));
    }
    crate::bind(ep).await
}

/// A [`Publisher`](super::Publisher)'s listener: one link to the NATS server for `nats://`.
pub(crate) async fn publisher_listener(ep: &Endpoint) -> Result<BoxListener> {
    if is_nats(ep) {
        #[cfg(feature = "nats")]
        return pubsub::bind(ep).await;
        #[cfg(not(feature = "nats"))]
        return Err(needs_feature(ep));
    }
    crate::bind(ep).await
}

/// A [`Subscriber`](super::Subscriber)'s connection: NATS subscriptions for `nats://`.
pub(crate) async fn subscriber_connection(ep: &Endpoint) -> Result<BoxConnection> {
    if is_nats(ep) {
        #[cfg(feature = "nats")]
        return pubsub::connect(ep).await;
        #[cfg(not(feature = "nats"))]
        return Err(needs_feature(ep));
    }
    crate::connect(ep).await
}

/// Over `nats://`, waits (a moment, at most [`LINK_WITHIN`]) until the publisher's hub has its
/// one subscriber, the NATS link, so that nothing published after `bind` returned is lost to
/// the race with the hub's accept task; elsewhere returns at once.
pub(crate) async fn linked(ep: &Endpoint, has_link: impl Fn() -> bool) -> Result<()> {
    if !is_nats(ep) {
        return Ok(());
    }
    let start = std::time::Instant::now();
    while !has_link() {
        if start.elapsed() > LINK_WITHIN {
            return Err(Error::new(
                ErrorKind::Bind,
                ep,
                format!("the publisher's link to the NATS server was not in place within {LINK_WITHIN:?}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    Ok(())
}

/// How long a publisher's hub may take to take its NATS link (two local tasks' first steps).
const LINK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Refuses a topic that is no NATS subject (checked by `publish` before it queues anything);
/// every topic is fine elsewhere.
pub(crate) fn check_topic(ep: &Endpoint, topic: &str) -> Result<()> {
    if !is_nats(ep) {
        return Ok(());
    }
    topics::check(topic).map_err(|why| {
        Error::new(
            ErrorKind::Encode,
            ep,
            format!("topic {topic:?} cannot be a NATS subject: {why}"),
        )
    })
}
