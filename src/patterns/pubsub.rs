//! Publish/subscribe: one publisher bound to an endpoint fans each message out to every
//! subscriber whose topic prefixes match.
//!
//! ```no_run
//! use ductwork::patterns::{Publisher, Subscriber};
//!
//! # async fn demo() -> ductwork::Result<()> {
//! let publisher = Publisher::<f64>::bind("unix:///tmp/prices.sock").await?;
//! // A subscriber receives what is published after `connect` returned, on matching topics.
//! let mut sub = Subscriber::<f64>::connect(publisher.endpoint(), &["prices.bolt"]).await?;
//! publisher.publish("prices.bolt.m8", &0.25).await?;
//! publisher.publish("prices.nut", &0.10).await?; // not for this subscriber
//! let msg = sub.recv().await?.unwrap();
//! assert_eq!((msg.topic.as_str(), msg.body), ("prices.bolt.m8", 0.25));
//! # Ok(()) }
//! ```
//!
//! Semantics:
//! - **Topics** are matched by prefix (`""` matches everything); a subscriber names its
//!   prefixes when it connects.
//! - **Late joiners** receive every message published after their [`Subscriber::connect`]
//!   returned (the publisher acknowledges a subscription before the subscriber is told it is
//!   in), and nothing from before.
//! - **Order**: one subscriber receives messages in the order they were published.
//! - **Slow subscribers** never grow the publisher's memory past
//!   [`PublisherOptions::max_queued_bytes`] per subscriber (and
//!   [`PublisherOptions::max_subscribers`] subscribers). What happens when a subscriber's queue
//!   is full is the endpoint's [`SlowSubscriber`] policy: by default its oldest queued messages
//!   are dropped, and the subscriber is told how many it missed
//!   ([`Subscriber::missed`]). `Wait` makes `publish` wait for it instead; `Disconnect` drops
//!   the subscriber.
//! - **Best-effort transports** (udp): messages may be lost like any datagram; the
//!   subscription itself is retried until acknowledged. One-way transports (mailslot,
//!   copydata) cannot carry publish/subscribe and say so.
//!
//! On the wire a subscriber sends [`SubscriberMsg`] and receives [`Publication`] frames,
//! postcard-encoded like every ductwork message.

use super::calls::Failure;
use super::serve::{accept_until, Background};
use super::{Backoff, Heartbeat, Heartbeats, LinkState};
use crate::{BoxConnection, Channel, Direction, Endpoint, Error, ErrorKind, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    collections::VecDeque,
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// What a subscriber sends to its publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriberMsg {
    /// Receive messages whose topic starts with one of these prefixes (replaces any earlier
    /// subscription of this connection).
    Subscribe {
        /// Topic prefixes; `""` matches every topic.
        topics: Vec<String>,
    },
    /// A heartbeat (see [`Heartbeats`]).
    Ping,
}

/// What a publisher sends to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Publication<T> {
    /// The subscription is in place: every later publication that matches reaches it.
    Subscribed,
    /// One published message.
    Message {
        /// The topic it was published on.
        topic: String,
        /// The message.
        body: T,
    },
    /// This many messages were dropped from this subscriber's full queue just before this.
    Missed {
        /// How many.
        count: u64,
    },
    /// The publisher will not take this subscriber (for example its subscriber limit).
    Refused {
        /// Why, naming the limit.
        reason: String,
    },
    /// A heartbeat, sent to an idle subscriber (see [`Heartbeats`]).
    Heartbeat,
}

/// The same layout as [`Publication`] for encoding without copying the topic or the body.
#[derive(Serialize)]
enum PublicationRef<'a, T> {
    #[allow(dead_code)]
    Subscribed,
    Message {
        topic: &'a str,
        body: &'a T,
    },
}

fn control_frame(p: &Publication<()>) -> Bytes {
    // Small fixed shapes: encoding cannot fail and is far below any frame limit.
    Bytes::from(postcard::to_allocvec(p).unwrap_or_default())
}

/// What the publisher does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowSubscriber {
    /// `publish` waits until that subscriber has room (one stalled subscriber then stalls the
    /// publisher).
    Wait,
    /// Drop that subscriber's oldest queued messages to make room, and tell it how many it
    /// missed. The default.
    #[default]
    DropOldest,
    /// Disconnect that subscriber.
    Disconnect,
}

/// Options for a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Bytes of encoded messages queued for one subscriber at most. Default: 1 MiB (a single
    /// larger message is still queued when the queue is empty).
    pub max_queued_bytes: usize,
    /// Subscribers at once; further ones are refused with a message naming this limit.
    /// Default: 1,024.
    pub max_subscribers: usize,
    /// What happens when a subscriber's queue is full. Default: [`SlowSubscriber::DropOldest`].
    pub slow: SlowSubscriber,
    /// Heartbeats to idle subscribers, and dropping subscribers silent past the bound.
    /// Default: `Auto` (on where the transport cannot see a dead peer).
    pub heartbeats: Heartbeats,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            max_queued_bytes: 1 << 20,
            max_subscribers: 1024,
            slow: SlowSubscriber::default(),
            heartbeats: Heartbeats::Auto,
        }
    }
}

/// How long a new connection may take to say what it subscribes to.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(10);

/// The publishing side: accepts subscribers in the background and fans messages out.
pub struct Publisher<T> {
    hub: Arc<Hub>,
    endpoint: Endpoint,
    background: Background,
    _msg: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("endpoint", &self.endpoint.to_string())
            .field("subscribers", &self.hub.lock().len())
            .finish_non_exhaustive()
    }
}

struct Hub {
    opts: PublisherOptions,
    max_message: usize,
    subs: Mutex<Vec<Arc<Sub>>>,
}

/// One subscriber's queue, shared by `publish` (which fills it) and its connection's task
/// (which drains it).
struct Sub {
    topics: Mutex<Vec<String>>,
    queue: Mutex<Queue>,
    /// Wakes the connection's task: frames to send.
    ready: Notify,
    /// Wakes publishers waiting for room (policy `Wait`), or for the subscriber's end.
    room: Notify,
    /// Cut the connection now, even in the middle of a send (policy `Disconnect`).
    cut: CancellationToken,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    missed: u64,
    gone: bool,
}

impl Sub {
    fn matches(&self, topic: &str) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.iter().any(|p| topic.starts_with(p.as_str()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, q: &mut Queue, frame: Bytes) {
        q.bytes += frame.len();
        q.frames.push_back(frame);
        self.ready.notify_one();
    }

    /// Queues `frame` under `policy`; false when the subscriber must be disconnected.
    async fn offer(&self, frame: &Bytes, max: usize, policy: SlowSubscriber) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut q = self.queue();
                if q.gone {
                    return true;
                }
                let fits = q.frames.is_empty() || q.bytes + frame.len() <= max;
                match policy {
                    _ if fits => {
                        self.push(&mut q, frame.clone());
                        return true;
                    }
                    SlowSubscriber::Disconnect => return false,
                    SlowSubscriber::DropOldest => {
                        while !q.frames.is_empty() && q.bytes + frame.len() > max {
                            let old = q.frames.pop_front().map_or(0, |f| f.len());
                            q.bytes -= old;
                            q.missed += 1;
                        }
                        self.push(&mut q, frame.clone());
                        return true;
                    }
                    SlowSubscriber::Wait => {}
                }
            }
            room.await;
        }
    }

    fn end(&self) {
        self.queue().gone = true;
        self.room.notify_waiters();
        self.ready.notify_one();
    }
}

impl<T: Serialize> Publisher<T> {
    /// Binds `endpoint` with default options and starts accepting subscribers.
    pub async fn bind(endpoint: impl TryInto<Endpoint, Error: Into<Error>>) -> Result<Self> {
        Self::bind_with(endpoint, PublisherOptions::default()).await
    }

    /// Binds `endpoint` with `opts` and starts accepting subscribers.
    pub async fn bind_with(
        endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
        opts: PublisherOptions,
    ) -> Result<Self> {
        let endpoint: Endpoint = endpoint.try_into().map_err(Into::into)?;
        let caps = crate::capabilities(&endpoint)?;
        if caps.direction != Direction::Duplex {
            return Err(one_way(&endpoint));
        }
        let listener = super::nats::publisher_listener(&endpoint).await?;
        let endpoint = listener.endpoint().clone();
        let hub = Arc::new(Hub {
            opts,
            max_message: caps.max_message,
            subs: Mutex::new(Vec::new()),
        });
        let h = hub.clone();
        let background = Background::spawn(endpoint.clone(), move |stop| {
            let conn_stop = stop.clone();
            accept_until(listener, stop, move |conn| {
                let (hub, stop) = (h.clone(), conn_stop.clone());
                async move {
                    serve_subscriber(conn, hub, stop).await;
                    Ok(())
                }
            })
        });
        let publisher = Publisher {
            hub,
            endpoint,
            background,
            _msg: PhantomData,
        };
        super::nats::linked(&publisher.endpoint, || publisher.subscribers() > 0).await?;
        Ok(publisher)
    }

    /// The endpoint the publisher is bound to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.hub.lock().len()
    }

    /// Bytes queued in the publisher for all subscribers now: what slow subscribers cost it,
    /// never more than `max_queued_bytes` (plus one message) per subscriber.
    pub fn queued_bytes(&self) -> usize {
        let subs: Vec<Arc<Sub>> = self.hub.lock().clone();
        subs.iter().map(|s| s.queue().bytes).sum()
    }

    /// Publishes `msg` on `topic` to every subscriber whose prefixes match; returns how many
    /// it was queued for. Encoded once, whatever the number of subscribers.
    pub async fn publish(&self, topic: &str, msg: &T) -> Result<usize> {
        super::nats::check_topic(&self.endpoint, topic)?;
        let frame = ductwork_codec::encode(
            &PublicationRef::Message { topic, body: msg },
            self.hub.max_message,
        )
        .map_err(|e| Error::codec(&self.endpoint, e))?;
        let subs: Vec<Arc<Sub>> = self.hub.lock().clone();
        let (max, policy) = (self.hub.opts.max_queued_bytes, self.hub.opts.slow);
        let mut queued = 0;
        for sub in subs.iter().filter(|s| s.matches(topic)) {
            if sub.offer(&frame, max, policy).await {
                queued += 1;
            } else {
                tracing::warn!(endpoint = %self.endpoint, "disconnecting a slow subscriber");
                self.hub.remove(sub);
                sub.end();
                sub.cut.cancel();
            }
        }
        Ok(queued)
    }

    /// Stops accepting, sends every subscriber what is queued for it and closes them; past
    /// `grace` the rest is dropped and this fails with [`ErrorKind::Timeout`].
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        self.background.shutdown(grace, "subscribers").await
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Sub>>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, sub: &Arc<Sub>) {
        self.lock().retain(|s| !Arc::ptr_eq(s, sub));
    }
}

fn one_way(endpoint: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        endpoint,
        "publish/subscribe needs a duplex transport; this one carries messages one way only",
    )
}

/// Reads one subscription request from a new connection.
async fn first_subscribe(conn: &mut BoxConnection) -> Option<Vec<String>> {
    let frame = tokio::time::timeout(SUBSCRIBE_WITHIN, conn.next()).await;
    match frame {
        Ok(Some(Ok(f))) => match ductwork_codec::decode::<SubscriberMsg>(&f) {
            Ok(SubscriberMsg::Subscribe { topics }) => Some(topics),
            Ok(SubscriberMsg::Ping) | Err(_) => None,
        },
        _ => None,
    }
}

/// One subscriber's connection: takes its subscription, then sends what `publish` queues
/// and takes any new subscription, until either side ends.
async fn serve_subscriber(mut conn: BoxConnection, hub: Arc<Hub>, stop: CancellationToken) {
    let endpoint = conn.info().endpoint.to_string();
    let hb = hub.opts.heartbeats.resolve(&conn.info().capabilities);
    let Some(topics) = first_subscribe(&mut conn).await else {
        tracing::debug!(endpoint = %endpoint, "a connection sent no subscription; closed");
        return;
    };
    let sub = Arc::new(Sub {
        topics: Mutex::new(topics),
        queue: Mutex::new(Queue::default()),
        ready: Notify::new(),
        room: Notify::new(),
        cut: CancellationToken::new(),
    });
    let full = {
        let mut subs = hub.lock();
        let full = subs.len() >= hub.opts.max_subscribers;
        if !full {
            // The acknowledgement is queued before the subscriber can see any publication, and
            // every later publish finds it in the list: a late joiner misses nothing after this.
            sub.push(&mut sub.queue(), control_frame(&Publication::Subscribed));
            subs.push(sub.clone());
        }
        full
    };
    if full {
        let reason = format!(
            "the publisher is at its limit of {} subscribers (max_subscribers)",
            hub.opts.max_subscribers
        );
        tracing::warn!(endpoint = %endpoint, "{reason}; a subscriber was refused");
        let _ = conn
            .send(control_frame(&Publication::Refused { reason }))
            .await;
        let _ = conn.close().await;
        return;
    }
    tracing::debug!(endpoint = %endpoint, "subscriber joined");
    // A subscriber cut for being slow is dropped at once: its socket may be full, so a
    // pending send would never finish.
    let why = tokio::select! {
        r = pump(&mut conn, &sub, &stop, hb) => r,
        _ = sub.cut.cancelled() => Ok(()),
    };
    hub.remove(&sub);
    sub.end();
    match why {
        Ok(()) => tracing::debug!(endpoint = %endpoint, "subscriber left"),
        Err(e) => tracing::info!(endpoint = %endpoint, error = %e, "subscriber lost"),
    }
}

async fn pump(
    conn: &mut BoxConnection,
    sub: &Sub,
    stop: &CancellationToken,
    hb: Option<Heartbeat>,
) -> Result<()> {
    let mut stopping = false;
    let (mut sent, mut heard) = (Instant::now(), Instant::now());
    let far = Duration::from_secs(86_400);
    loop {
        let (frames, missed, gone) = {
            let mut q = sub.queue();
            q.bytes = 0;
            let missed = std::mem::take(&mut q.missed);
            (std::mem::take(&mut q.frames), missed, q.gone)
        };
        if !frames.is_empty() || missed > 0 {
            sub.room.notify_waiters();
            if missed > 0 {
                conn.feed(control_frame(&Publication::Missed { count: missed }))
                    .await?;
            }
            for f in frames {
                conn.feed(f).await?;
            }
            conn.flush().await?;
            sent = Instant::now();
            continue;
        }
        if gone || stopping {
            return conn.close().await;
        }
        let (beat_at, dead_at) = match hb {
            Some(h) => (sent + h.interval, heard + h.bound()),
            None => (sent + far, heard + far),
        };
        tokio::select! {
            _ = sub.ready.notified() => {}
            _ = stop.cancelled(), if !stopping => stopping = true,
            _ = tokio::time::sleep_until(beat_at), if hb.is_some() => {
                conn.send(control_frame(&Publication::Heartbeat)).await?;
                sent = Instant::now();
            }
            _ = tokio::time::sleep_until(dead_at), if hb.is_some() => {
                return Err(Error::new(
                    ErrorKind::ConnectionLost,
                    &conn.info().endpoint,
                    "the subscriber was silent past the heartbeat bound",
                ));
            }
            msg = conn.next() => {
                heard = Instant::now();
                match msg {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(f)) => take_control(sub, &f),
                }
            }
        }
    }
}

/// Applies a subscriber's message: a new subscription (acknowledged), or a heartbeat.
fn take_control(sub: &Sub, frame: &[u8]) {
    match ductwork_codec::decode::<SubscriberMsg>(frame) {
        Ok(SubscriberMsg::Subscribe { topics }) => {
            *sub.topics.lock().unwrap_or_else(|p| p.into_inner()) = topics;
            let mut q = sub.queue();
            sub.push(&mut q, control_frame(&Publication::Subscribed));
        }
        Ok(SubscriberMsg::Ping) => {}
        Err(e) => tracing::warn!(error = %e, "undecodable subscriber message ignored"),
    }
}

/// One published message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<T> {
    /// The topic it was published on.
    pub topic: String,
    /// The message.
    pub body: T,
}

/// Options for a [`Subscriber`].
#[derive(Debug, Clone, Default)]
pub struct SubscriberOptions {
    /// Connect and subscribe again after the connection is lost (or the publisher closed
    /// it), waiting as this says between attempts and giving up past its limits (then
    /// `recv` fails, naming the endpoint, and the state is [`LinkState::GaveUp`]). Messages
    /// published in the gap are lost; [`Subscriber::gaps`] counts the gaps. `None` (the
    /// default): a lost subscriber ends.
    pub reconnect: Option<Backoff>,
    /// Heartbeats to the publisher, and losing it after its silence past the bound. Default:
    /// `Auto` (on where the transport cannot see a dead peer).
    pub heartbeats: Heartbeats,
}

/// The subscribing side: receives what the publisher publishes on its topics.
pub struct Subscriber<T> {
    endpoint: Endpoint,
    topics: Vec<String>,
    opts: SubscriberOptions,
    ch: Channel<SubscriberMsg, Publication<T>>,
    hb: Option<Heartbeat>,
    sent: Instant,
    heard: Instant,
    missed: u64,
    gaps: u64,
    /// A message that arrived before the acknowledgement (best-effort transports only).
    early: Option<Message<T>>,
    /// A reconnect under way (kept here, so that a cancelled `recv` does not restart it).
    retry: Option<Retry>,
    /// Set once resubscribing gave up: every later `recv` fails with it.
    gave_up: Option<Failure>,
    state: watch::Sender<LinkState>,
}

impl<T> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("endpoint", &self.endpoint.to_string())
            .field("topics", &self.topics)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

/// A subscriber's reconnect under way: since when, the attempt due next (from 1), and the
/// last attempt's error.
#[derive(Debug)]
struct Retry {
    since: std::time::Instant,
    attempt: u32,
    last: Option<Error>,
}

impl Retry {
    fn new() -> Self {
        Retry {
            since: std::time::Instant::now(),
            attempt: 1,
            last: None,
        }
    }
}

/// How often a subscription is sent again while unacknowledged, and for how long.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);

/// What one wait for the publisher produced.
enum Next<T> {
    Frame(Option<Publication<T>>),
    Lost(Error),
}

impl<T: DeserializeOwned> Subscriber<T> {
    /// Connects to a publisher and subscribes to topics starting with any of `topics` (`""`
    /// for all), with default options. Returns once the publisher has the subscription in
    /// place.
    pub async fn connect(
        endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
        topics: &[&str],
    ) -> Result<Self> {
        Self::connect_with(endpoint, topics, SubscriberOptions::default()).await
    }

    /// Like [`connect`](Self::connect) with `opts`.
    pub async fn connect_with(
        endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
        topics: &[&str],
        opts: SubscriberOptions,
    ) -> Result<Self> {
        let endpoint: Endpoint = endpoint.try_into().map_err(Into::into)?;
        if crate::capabilities(&endpoint)?.direction != Direction::Duplex {
            return Err(one_way(&endpoint));
        }
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ch, early, missed) = establish(&endpoint, &topics).await?;
        Ok(Subscriber {
            hb: opts.heartbeats.resolve(&ch.info().capabilities),
            endpoint,
            topics,
            opts,
            ch,
            sent: Instant::now(),
            heard: Instant::now(),
            missed,
            gaps: 0,
            early,
            retry: None,
            gave_up: None,
            state: watch::Sender::new(LinkState::Connected),
        })
    }

    /// The next message on this subscriber's topics; `Ok(None)` once the publisher closed
    /// (with `reconnect`, only when the subscriber is closed). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message<T>>> {
        if let Some(m) = self.early.take() {
            return Ok(Some(m));
        }
        if let Some(f) = &self.gave_up {
            return Err(f.error(&self.endpoint));
        }
        loop {
            let lost = match self.next().await {
                Next::Frame(Some(Publication::Message { topic, body })) => {
                    return Ok(Some(Message { topic, body }))
                }
                Next::Frame(Some(Publication::Missed { count })) => {
                    self.missed += count;
                    tracing::debug!(endpoint = %self.endpoint, count, "publisher dropped messages for this slow subscriber");
                    continue;
                }
                Next::Frame(Some(_)) => continue,
                Next::Frame(None) => None,
                Next::Lost(e) if e.kind() == ErrorKind::Decode => return Err(e),
                Next::Lost(e) => Some(e),
            };
            let Some(backoff) = self.opts.reconnect.clone() else {
                self.state.send_replace(LinkState::Lost);
                return lost.map_or(Ok(None), Err);
            };
            let why = lost.map_or_else(|| "the publisher closed".to_string(), |e| e.to_string());
            tracing::warn!(endpoint = %self.endpoint, why, "subscription lost; reconnecting");
            self.reconnect(&backoff).await?;
            if let Some(m) = self.early.take() {
                return Ok(Some(m));
            }
        }
    }

    /// Waits for the next frame, sending heartbeats and watching the publisher's silence
    /// when heartbeats are on.
    async fn next(&mut self) -> Next<T> {
        let far = Duration::from_secs(86_400);
        loop {
            let (beat_at, dead_at) = match self.hb {
                Some(h) => (self.sent + h.interval, self.heard + h.bound()),
                None => (self.sent + far, self.heard + far),
            };
            tokio::select! {
                r = self.ch.recv() => {
                    self.heard = Instant::now();
                    return match r {
                        Ok(p) => Next::Frame(p),
                        Err(e) => Next::Lost(e),
                    };
                }
                _ = tokio::time::sleep_until(beat_at), if self.hb.is_some() => {
                    self.sent = Instant::now();
                    if let Err(e) = self.ch.send(&SubscriberMsg::Ping).await {
                        return Next::Lost(e);
                    }
                }
                _ = tokio::time::sleep_until(dead_at), if self.hb.is_some() => {
                    let detail = "the publisher was silent past the heartbeat bound";
                    return Next::Lost(Error::new(ErrorKind::ConnectionLost, &self.endpoint, detail));
                }
            }
        }
    }

    /// Connects and subscribes again, with `backoff`, until it works or the backoff's limits
    /// say to give up (then the state says so, and the error is kept for every later `recv`).
    /// A `recv` cancelled meanwhile leaves the count and the clock in `retry`, for the next
    /// `recv` to go on with.
    async fn reconnect(&mut self, backoff: &Backoff) -> Result<()> {
        let since = self.retry.get_or_insert_with(Retry::new).since;
        loop {
            let attempt = self.retry.as_ref().map_or(1, |r| r.attempt);
            let Some(wait) = backoff.next_wait(attempt, since) else {
                break;
            };
            self.state.send_replace(LinkState::Reconnecting { attempt });
            tokio::time::sleep(wait).await;
            match establish(&self.endpoint, &self.topics).await {
                Ok((ch, early, missed)) => {
                    tracing::info!(endpoint = %self.endpoint, attempt, "resubscribed");
                    (self.ch, self.early, self.retry) = (ch, early, None);
                    self.missed += missed;
                    self.gaps += 1;
                    (self.sent, self.heard) = (Instant::now(), Instant::now());
                    self.state.send_replace(LinkState::Connected);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoint, attempt, error = %e, "resubscribe failed");
                    let attempt = attempt.saturating_add(1);
                    self.retry = Some(Retry {
                        since,
                        attempt,
                        last: Some(e),
                    });
                }
            }
        }
        let (failed, last) = self
            .retry
            .take()
            .map_or((0, None), |r| (r.attempt - 1, r.last));
        let e = backoff.gave_up(&self.endpoint, failed, since, last);
        tracing::warn!(endpoint = %self.endpoint, error = %e, "resubscribing gave up");
        self.gave_up = Some(Failure::of(&e));
        self.state
            .send_replace(LinkState::GaveUp { attempts: failed });
        Err(e)
    }

    /// Messages the publisher dropped for this subscriber because its queue was full.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Times the subscription was lost and made again (with `reconnect`): what was published
    /// in between is not counted in [`missed`](Self::missed).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// The link's state now and as it changes.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Unsubscribes and closes the connection; a publisher that is already gone is no error.
    pub async fn close(&mut self) -> Result<()> {
        self.opts.reconnect = None;
        self.state.send_replace(LinkState::Lost);
        super::close_result(self.ch.close().await)
    }
}

type Established<T> = (
    Channel<SubscriberMsg, Publication<T>>,
    Option<Message<T>>,
    u64,
);

/// Connects and subscribes; the subscription is in place when this returns. The request is
/// sent again while unacknowledged, for best-effort transports.
async fn establish<T: DeserializeOwned>(
    endpoint: &Endpoint,
    topics: &[String],
) -> Result<Established<T>> {
    let mut ch = Channel::new(super::nats::subscriber_connection(endpoint).await?);
    let msg = SubscriberMsg::Subscribe {
        topics: topics.to_vec(),
    };
    let deadline = Instant::now() + SUBSCRIBE_DEADLINE;
    let mut missed = 0;
    loop {
        ch.send(&msg).await?;
        let wait = (Instant::now() + RESUBSCRIBE_EVERY).min(deadline);
        match tokio::time::timeout_at(wait, acknowledged(&mut ch, &mut missed)).await {
            Ok(early) => return early.map(|early| (ch, early, missed)),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    endpoint,
                    format!(
                    "the publisher did not confirm the subscription within {SUBSCRIBE_DEADLINE:?}"
                ),
                ))
            }
        }
    }
}

/// Waits for the publisher's acknowledgement, or a first message, which implies it.
async fn acknowledged<T: DeserializeOwned>(
    ch: &mut Channel<SubscriberMsg, Publication<T>>,
    missed: &mut u64,
) -> Result<Option<Message<T>>> {
    loop {
        match ch.recv().await? {
            Some(Publication::Subscribed) => return Ok(None),
            Some(Publication::Message { topic, body }) => return Ok(Some(Message { topic, body })),
            Some(Publication::Missed { count }) => *missed += count,
            Some(Publication::Heartbeat) => {}
            Some(Publication::Refused { reason }) => {
                return Err(Error::new(ErrorKind::Refused, &ch.info().endpoint, reason))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    &ch.info().endpoint,
                    "the publisher closed the connection before confirming the subscription",
                ))
            }
        }
    }
}
