//! Request/reply: many callers share one connection; each reply reaches its own caller.
//!
//! ```no_run
//! use ductwork::patterns::{Client, Server};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Serialize, Deserialize)]
//! enum Op { Add(i64, i64), Sleep(u64) }
//!
//! # async fn demo() -> ductwork::Result<()> {
//! // Server: handlers run concurrently (64 in flight per connection by default).
//! let server = Server::bind("tcp://127.0.0.1:0", |op: Op| async move {
//!     match op {
//!         Op::Add(a, b) => a + b,
//!         Op::Sleep(ms) => { tokio::time::sleep(Duration::from_millis(ms)).await; 0 }
//!     }
//! })
//! .await?
//! .spawn();
//!
//! // Client: clone it into as many tasks as you like; each call waits for its own reply.
//! let client = Client::<Op, i64>::connect(server.endpoint()).await?;
//! assert_eq!(client.call(Op::Add(1, 2)).await?, 3);
//! // A deadline fails this call only; its late reply is discarded, never handed to another.
//! assert!(client.call_timeout(Op::Sleep(500), Duration::from_millis(10)).await.is_err());
//! assert_eq!(client.call(Op::Add(2, 2)).await?, 4);
//!
//! server.shutdown(Duration::from_secs(5)).await?; // finish what is in flight, then close
//! # Ok(()) }
//! ```
//!
//! On the wire the client sends [`Request`] (`Call { id, body }`, or a heartbeat `Ping`) and
//! the server answers [`Reply`] (`Ok { id, body }`, `Failed { id, reason }` or `Pong`), each
//! one postcard frame
//! (`docs/wire-format.md`), so a service in another language can speak it too.
//!
//! Semantics:
//! - **At most once.** A request that fails (deadline, connection lost) may or may not have run
//!   on the server; nothing is retried. Callers that retry must make the request idempotent.
//! - **Ids** are unique per client connection; a reply whose caller gave up (deadline, future
//!   dropped) is discarded with a `debug` event.
//! - **Broken connection.** When the connection fails or the server closes it, every waiting
//!   caller gets that error. Then, without [`ClientOptions::reconnect`], every later call
//!   fails at once with it; with it, the client connects again with exponential backoff and
//!   jitter ([`Client::state`] shows each step), later calls wait for the new connection
//!   within their deadline, and the calls that were in flight stay failed: nothing is retried.
//!   Past the [`Backoff`]'s limits (by default 5 minutes of failed attempts) the client gives
//!   up: its state becomes [`LinkState::GaveUp`] and every call fails with a
//!   `ConnectionLost` error that names the endpoint and says so.
//! - **Dead peers** on transports that cannot see one (udp): with [`Heartbeats`] (on there by
//!   default) the client pings when idle and counts the server lost after
//!   `interval * misses` of silence; the server drops a client silent that long.
//! - **No background task.** The connection and every call on it sit behind one lock; the
//!   caller whose reply is due reads the connection and hands other callers' replies to them.
//!   A lone caller sends and reads its own reply in the same poll of its own future: no
//!   split connection, no hand-over, no wake-up of another task, no allocation. (Only a
//!   client with reconnect or heartbeats runs a watcher task, which reads while nobody
//!   calls.)
//! - The server polls a connection's handlers on that connection's task (up to
//!   [`ServerOptions::max_in_flight`] at once, then it stops reading, which pushes back on the
//!   client); a handler that burns CPU should hand work to `tokio::task::spawn_blocking`. A
//!   handler that panics is answered with `Failed`, and the server goes on.
//! - **Bad frames.** A request whose body does not decode as the server's type, or whose
//!   answer is over the endpoint's frame limit, is answered with `Failed` (its caller gets
//!   [`ErrorKind::Remote`] saying why); a reply whose body does not decode fails its own call
//!   with [`ErrorKind::Decode`]. Either way the connection stays usable. A frame whose
//!   envelope does not decode names no caller: it is dropped with a `warn` event.

use super::calls::{lock, ClientChannel, Failure, Link, Outgoing};
use super::envelope::{self, Undecodable};
use super::serve::{accept_until, Background};
use super::{Backoff, Heartbeat, Heartbeats, LinkState};
use crate::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};
use futures::{
    future::{poll_fn, FutureExt},
    stream::FuturesUnordered,
    SinkExt, StreamExt,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<T> {
    /// A call: the caller's value tagged with an id unique on its connection.
    Call {
        /// Chosen by the client; the reply carries it back.
        id: u64,
        /// The caller's request.
        body: T,
    },
    /// A heartbeat; the server answers [`Reply::Pong`].
    Ping,
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<T> {
    /// The handler's answer.
    Ok {
        /// The request's id.
        id: u64,
        /// The answer.
        body: T,
    },
    /// The request reached the server but produced no answer (the handler panicked).
    Failed {
        /// The request's id.
        id: u64,
        /// Why, in words.
        reason: String,
    },
    /// The answer to a [`Request::Ping`].
    Pong,
}

impl<T> Reply<T> {
    /// The id of the request this answers (none for a pong).
    pub fn id(&self) -> Option<u64> {
        match self {
            Reply::Ok { id, .. } | Reply::Failed { id, .. } => Some(*id),
            Reply::Pong => None,
        }
    }
}

/// Options for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The deadline [`Client::call`] puts on each request; `None` waits as long as the
    /// connection lives. Default: 30 s.
    pub timeout: Option<Duration>,
    /// Connect again after the connection is lost, waiting as this says between attempts
    /// and giving up past its limits; `None` (the default) leaves a lost client lost. Calls
    /// in flight when the connection is lost fail either way; nothing is retried.
    pub reconnect: Option<Backoff>,
    /// Heartbeats, to notice a dead server on transports that cannot. Default: `Auto`.
    pub heartbeats: Heartbeats,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Some(Duration::from_secs(30)),
            reconnect: None,
            heartbeats: Heartbeats::Auto,
        }
    }
}

/// The calling side of request/reply; cheap to clone, and every clone shares the connection.
///
/// Implements [`tower_service::Service`], so tower's timeout, retry and concurrency-limit
/// layers apply to it.
pub struct Client<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            shared: self.shared.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.shared.endpoint.to_string())
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

/// What every clone of a client shares: the current link, and how to replace it.
struct Shared<Req, Resp> {
    endpoint: Endpoint,
    opts: ClientOptions,
    current: Mutex<Current<Req, Resp>>,
    state: watch::Sender<LinkState>,
}

enum Current<Req, Resp> {
    Up(Arc<Link<Req, Resp>>),
    Reconnecting,
    Down(Failure),
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Connects to a [`Server`] at `endpoint` with default options.
    pub async fn connect(endpoint: impl TryInto<Endpoint, Error: Into<Error>>) -> Result<Self> {
        Self::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connects to a [`Server`] at `endpoint` with `opts`.
    pub async fn connect_with(
        endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
        opts: ClientOptions,
    ) -> Result<Self> {
        let endpoint: Endpoint = endpoint.try_into().map_err(Into::into)?;
        let ch = super::nats::client_channel(&endpoint).await?;
        Ok(Self::start(endpoint, ch, opts))
    }

    /// A client over a channel that is already connected to a server, with default options.
    pub fn new(ch: ClientChannel<Req, Resp>) -> Self {
        Self::with_options(ch, ClientOptions::default())
    }

    /// A client over `ch` with `opts`; reconnecting, if asked, goes to `ch`'s endpoint.
    pub fn with_options(ch: ClientChannel<Req, Resp>, opts: ClientOptions) -> Self {
        let endpoint = ch.info().endpoint.clone();
        Self::start(endpoint, ch, opts)
    }

    fn start(endpoint: Endpoint, ch: ClientChannel<Req, Resp>, opts: ClientOptions) -> Self {
        let shared = Arc::new(Shared {
            endpoint,
            opts,
            current: Mutex::new(Current::Reconnecting),
            state: watch::Sender::new(LinkState::Connected),
        });
        shared.install(ch);
        Client { shared }
    }

    /// Sends `req` and waits for its reply, within the options' deadline (30 s by default).
    ///
    /// Errors: [`ErrorKind::Timeout`] past the deadline, [`ErrorKind::Remote`] when the
    /// server's handler failed, or the connection's own error. While the client reconnects,
    /// a call waits for the new connection (within its deadline).
    pub async fn call(&self, req: Req) -> Result<Resp> {
        match self.shared.opts.timeout {
            Some(deadline) => self.call_timeout(req, deadline).await,
            None => self.shared.call(req).await,
        }
    }

    /// Like [`call`](Self::call) with its own deadline. Past it this call fails with
    /// [`ErrorKind::Timeout`]; the request may still run, and its reply is discarded.
    pub async fn call_timeout(&self, req: Req, deadline: Duration) -> Result<Resp> {
        match tokio::time::timeout(deadline, self.shared.call(req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                &self.shared.endpoint,
                format!("no reply within {deadline:?}"),
            )),
        }
    }

    /// The link's state now and as it changes (connected, reconnecting, lost, gave up).
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Flushes and closes the connection (the server finishes what it has and closes too);
    /// calls made after this fail with [`ErrorKind::Closed`], and no reconnect follows. A
    /// server that is already gone is no error here.
    pub async fn close(&self) -> Result<()> {
        let closed = Failure {
            kind: ErrorKind::Closed,
            detail: "the client was closed".into(),
        };
        let link = match std::mem::replace(&mut *lock(&self.shared.current), Current::Down(closed))
        {
            Current::Up(link) => link,
            _ => return Ok(()),
        };
        self.shared.state.send_replace(LinkState::Lost);
        // A link that already failed has nothing left to flush: every call has its error.
        let r = match link.failure() {
            Some(_) => Ok(()),
            None => super::close_result(link.op(Outgoing::Close).await.map(drop)),
        };
        link.fail_all(Error::new(
            ErrorKind::Closed,
            &link.endpoint,
            "the client was closed",
        ));
        r
    }
}

impl<Req, Resp> Shared<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    async fn call(self: &Arc<Self>, req: Req) -> Result<Resp> {
        // The link as it is now, without the waiting `link` only a reconnect needs.
        let up = match &*lock(&self.current) {
            Current::Up(link) => Some(link.clone()),
            _ => None,
        };
        let link = match up {
            Some(link) => link,
            None => self.link().await?,
        };
        let r = match link.op(Outgoing::Call(req)).await {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err(Error::new(
                ErrorKind::Protocol,
                &self.endpoint,
                "a call ended without a reply",
            )),
            Err(e) => Err(e),
        };
        // Whatever broke a link failed the call that noticed it, so only a failed call looks.
        if r.is_err() {
            if let Some(f) = link.failure() {
                self.lost(&link, f);
            }
        }
        r
    }

    /// The current link; while reconnecting, waits for it.
    async fn link(&self) -> Result<Arc<Link<Req, Resp>>> {
        if let Current::Up(link) = &*lock(&self.current) {
            return Ok(link.clone());
        }
        // Subscribed before looking again, so no change between the look and the wait is
        // missed.
        let mut changes = self.state.subscribe();
        loop {
            match &*lock(&self.current) {
                Current::Up(link) => return Ok(link.clone()),
                Current::Down(f) => return Err(f.error(&self.endpoint)),
                Current::Reconnecting => {}
            }
            if changes.changed().await.is_err() {
                return Err(Error::new(
                    ErrorKind::Closed,
                    &self.endpoint,
                    "the client is gone",
                ));
            }
        }
    }

    /// Puts a fresh connection in place (unless the client was closed meanwhile).
    fn install(self: &Arc<Self>, ch: ClientChannel<Req, Resp>) {
        let heartbeat = self.opts.heartbeats.resolve(&ch.info().capabilities);
        let link = Arc::new(Link::new(ch, heartbeat.is_some()));
        {
            let mut cur = lock(&self.current);
            if matches!(*cur, Current::Down(_)) {
                return;
            }
            *cur = Current::Up(link.clone());
        }
        self.state.send_replace(LinkState::Connected);
        // A client that reconnects must notice a loss while idle too, not at its next call.
        if heartbeat.is_some() || self.opts.reconnect.is_some() {
            tokio::spawn(watch(link, Arc::downgrade(self), heartbeat));
        }
    }

    /// Reconnecting gave up with `e` after `attempts` failed attempts: the client is down for
    /// good (unless it was closed meanwhile), and waiting calls fail with `e`.
    fn give_up(&self, attempts: u32, e: Error) {
        let mut cur = lock(&self.current);
        if !matches!(*cur, Current::Reconnecting) {
            return;
        }
        tracing::warn!(endpoint = %self.endpoint, error = %e, "reconnecting gave up");
        *cur = Current::Down(Failure::of(&e));
        drop(cur);
        self.state.send_replace(LinkState::GaveUp { attempts });
    }

    /// `link` failed: reconnect if configured, else stay down. Only the first report of a
    /// link's failure acts; later ones (other callers, the heartbeat) find it replaced.
    fn lost(self: &Arc<Self>, link: &Arc<Link<Req, Resp>>, why: Failure) {
        let mut cur = lock(&self.current);
        match &*cur {
            Current::Up(l) if Arc::ptr_eq(l, link) => {}
            _ => return,
        }
        match self.opts.reconnect.clone() {
            Some(backoff) => {
                *cur = Current::Reconnecting;
                drop(cur);
                tracing::warn!(endpoint = %self.endpoint, error = %why.error(&self.endpoint), "connection lost; reconnecting");
                self.state
                    .send_replace(LinkState::Reconnecting { attempt: 1 });
                tokio::spawn(reconnect(Arc::downgrade(self), backoff));
            }
            None => {
                tracing::warn!(endpoint = %self.endpoint, error = %why.error(&self.endpoint), "connection lost");
                *cur = Current::Down(why);
                drop(cur);
                self.state.send_replace(LinkState::Lost);
            }
        }
    }
}

/// Connects again with `backoff` until it works, the backoff's limits say to give up, the
/// client is closed, or every client handle is gone.
async fn reconnect<Req, Resp>(shared: Weak<Shared<Req, Resp>>, backoff: Backoff)
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let since = Instant::now();
    let mut last = None;
    let mut attempt = 1u32;
    while let Some(wait) = backoff.next_wait(attempt, since) {
        if attempt > 1 {
            // The first attempt was announced with the loss.
            match shared.upgrade() {
                Some(s) => s.state.send_replace(LinkState::Reconnecting { attempt }),
                None => return,
            };
        }
        tokio::time::sleep(wait).await;
        let Some(s) = shared.upgrade() else { return };
        if !matches!(*lock(&s.current), Current::Reconnecting) {
            return; // closed meanwhile
        }
        match super::nats::client_channel(&s.endpoint).await {
            Ok(ch) => {
                tracing::info!(endpoint = %s.endpoint, attempt, "reconnected");
                s.install(ch);
                return;
            }
            Err(e) => {
                tracing::debug!(endpoint = %s.endpoint, attempt, error = %e, "reconnect attempt failed");
                last = Some(e);
            }
        }
        attempt = attempt.saturating_add(1);
    }
    if let Some(s) = shared.upgrade() {
        let failed = attempt - 1;
        s.give_up(failed, backoff.gave_up(&s.endpoint, failed, since, last));
    }
}

/// Watches one link while no caller reads it: reads (handing replies to their callers), and
/// with a heartbeat pings every interval and fails the link when the server has been silent
/// past the bound. Ends with the link, or when every client handle is gone.
async fn watch<Req, Resp>(
    link: Arc<Link<Req, Resp>>,
    shared: Weak<Shared<Req, Resp>>,
    hb: Option<Heartbeat>,
) where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let every = hb.map_or(Duration::from_secs(1), |h| h.interval);
    loop {
        let lost = tokio::time::timeout(every, poll_fn(|cx| link.poll_watch(cx))).await;
        if lost.is_ok() || shared.strong_count() == 0 {
            break;
        }
        let Some(hb) = hb else { continue };
        let silent = link.silence();
        if silent > hb.bound() {
            let detail = format!(
                "no answer to heartbeats for {silent:?} (bound {:?})",
                hb.bound()
            );
            link.fail_all(Error::new(
                ErrorKind::ConnectionLost,
                &link.endpoint,
                detail,
            ));
            break;
        }
        if let Err(e) = link.op(Outgoing::Ping).await {
            link.fail_all(e);
            break;
        }
    }
    link.unwatch();
    if let (Some(s), Some(f)) = (shared.upgrade(), link.failure()) {
        s.lost(&link, f);
    }
}

impl<Req, Resp> tower_service::Service<Req> for Client<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    type Response = Resp;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp>> + Send>>;

    /// Ready unless the client is lost for good; then the error that lost it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &*lock(&self.shared.current) {
            Current::Down(f) => Poll::Ready(Err(f.error(&self.shared.endpoint))),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.call(req).await })
    }
}

/// Options for a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Requests one connection may have in its handlers at once; past it the server stops
    /// reading that connection until one finishes. Default: 64.
    pub max_in_flight: usize,
    /// Heartbeats: with them on, a connection whose client has been silent (no request, no
    /// ping) past the bound is dropped. Clients send pings with the same setting. Default:
    /// `Auto` (on where the transport cannot see a dead peer).
    pub heartbeats: Heartbeats,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_in_flight: 64,
            heartbeats: Heartbeats::Auto,
        }
    }
}

/// The answering side of request/reply: a listener and a handler run for every request.
pub struct Server<H> {
    listener: BoxListener,
    handler: H,
    opts: ServerOptions,
}

impl<H> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.listener.endpoint().to_string())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<H> Server<H> {
    /// Binds `endpoint` and answers every request with `handler`.
    pub async fn bind(
        endpoint: impl TryInto<Endpoint, Error: Into<Error>>,
        handler: H,
    ) -> Result<Self> {
        let endpoint: Endpoint = endpoint.try_into().map_err(Into::into)?;
        Ok(Self::new(
            super::nats::server_listener(&endpoint).await?,
            handler,
        ))
    }

    /// Serves on a listener that is already bound.
    pub fn new(listener: BoxListener, handler: H) -> Self {
        Server {
            listener,
            handler,
            opts: ServerOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, opts: ServerOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The endpoint actually bound (with the real port when port 0 was asked).
    pub fn endpoint(&self) -> &Endpoint {
        self.listener.endpoint()
    }

    /// Serves in a background task until [`ServerHandle::shutdown`] (or until the handle is
    /// dropped).
    pub fn spawn<Req, Resp, Fut>(self) -> ServerHandle
    where
        H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let endpoint = self.endpoint().clone();
        ServerHandle {
            inner: Background::spawn(endpoint, |stop| self.run(stop)),
        }
    }

    /// Serves until `stop` is cancelled, then stops accepting, lets every connection finish
    /// the requests it has, and closes them.
    ///
    /// A failed accept (a client that gave up, no file descriptors left) is logged at `warn`
    /// and retried after a pause that doubles up to one second: it never ends the server.
    pub async fn run<Req, Resp, Fut>(self, stop: CancellationToken)
    where
        H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let Server {
            listener,
            handler,
            opts,
        } = self;
        let conn_stop = stop.clone();
        accept_until(listener, stop, move |conn| {
            serve_connection(conn, handler.clone(), &opts, conn_stop.clone())
        })
        .await;
    }
}

/// Serves one connection: reads requests while fewer than `max_in_flight` are in flight,
/// sends each reply as its handler finishes, and on `stop` or the client's close stops
/// reading, answers what it has and closes.
///
/// Frames are read and written as envelopes (`envelope.rs`), not through a typed channel.
fn serve_connection<Req, Resp, H, Fut>(
    mut conn: BoxConnection,
    handler: H,
    opts: &ServerOptions,
    stop: CancellationToken,
) -> impl Future<Output = Result<()>>
where
    H: Fn(Req) -> Fut,
    Fut: Future<Output = Resp>,
    Req: DeserializeOwned,
    Resp: Serialize,
{
    let max = opts.max_in_flight.max(1);
    let silence = opts
        .heartbeats
        .resolve(&conn.info().capabilities)
        .map(|h| h.bound());
    let endpoint = conn.info().endpoint.clone();
    async move {
        // The first handler in flight waits in `first`, later ones in `in_flight`: most
        // handlers finish when first polled, and the slot answers them with no allocation.
        let mut first = std::pin::pin!(None);
        let mut in_flight = FuturesUnordered::new();
        let mut reading = true;
        // Built once, not per request: a timer only with heartbeats, one cancellation waiter.
        let mut silent = silence.map(|d| Box::pin(tokio::time::sleep(d)));
        let mut stopped = std::pin::pin!(stop.cancelled());
        let (mut armed, mut turns): (Option<Waker>, u32) = (None, 0);
        while reading || first.is_some() || !in_flight.is_empty() {
            let busy = usize::from(first.is_some()) + in_flight.len();
            let mut wake = Wake {
                read: reading && busy < max,
                stop: reading.then_some(Stop {
                    token: &stop,
                    fut: stopped.as_mut(),
                    armed: &mut armed,
                    turns: &mut turns,
                }),
                silent: silent.as_mut().map(|t| t.as_mut()),
            };
            let event =
                poll_fn(|cx| wake.poll(cx, first.as_mut(), &mut in_flight, &mut conn)).await;
            if matches!(event, Event::Request(_) | Event::Undecodable(_)) {
                if let (Some(t), Some(d)) = (silent.as_mut(), silence) {
                    t.as_mut().reset(tokio::time::Instant::now() + d);
                }
            }
            match event {
                Event::Answered(reply) => send_reply(&mut conn, &endpoint, reply).await?,
                Event::Request(Request::Call { id, body }) => {
                    let work = answer(id, handler(body));
                    if first.is_some() {
                        in_flight.push(work);
                        continue;
                    }
                    first.set(Some(work));
                    // Polled at once: a handler that is done on its first poll is answered
                    // now, not a turn of the loop later, in the same poll when it can be.
                    let now = poll_fn(|cx| {
                        Poll::Ready(answer_now(cx, first.as_mut(), &mut conn, &endpoint))
                    })
                    .await;
                    match now {
                        Now::Done | Now::Waiting => {}
                        Now::Flush => poll_fn(|cx| conn.poll_flush_unpin(cx)).await?,
                        Now::Send(reply) => send_reply(&mut conn, &endpoint, reply).await?,
                        Now::Failed(e) => return Err(e),
                    }
                }
                Event::Request(Request::Ping) => {
                    send_reply::<Resp>(&mut conn, &endpoint, Reply::Pong).await?
                }
                Event::Undecodable(u) => {
                    answer_undecodable::<Resp>(&mut conn, &endpoint, u).await?
                }
                Event::Closed => reading = false,
                Event::Failed(e) => return Err(e),
                Event::Stop => reading = false,
                Event::Silent => {
                    return Err(Error::new(
                        ErrorKind::ConnectionLost,
                        &endpoint,
                        format!(
                            "the client was silent past the heartbeat bound ({:?})",
                            silence.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        poll_fn(|cx| conn.poll_close_unpin(cx)).await
    }
}

/// A request that does not decode: answered as failed when its envelope names it (its caller
/// learns why, at once), else dropped (the caller times out). The connection stays usable.
async fn answer_undecodable<Resp: Serialize>(
    conn: &mut BoxConnection,
    endpoint: &Endpoint,
    u: Undecodable,
) -> Result<()> {
    let Undecodable { id, error } = u;
    let Some(id) = id else {
        tracing::warn!(endpoint = %endpoint, error = %error, "undecodable request dropped");
        return Ok(());
    };
    tracing::warn!(endpoint = %endpoint, id, error = %error, "undecodable request answered as failed");
    let reason = format!("the server cannot decode the request: {}", error.detail());
    send_reply::<Resp>(conn, endpoint, Reply::Failed { id, reason }).await
}

/// Sends one reply and flushes it. A reply too large for the endpoint, or one that does not
/// encode, is answered as `Failed` instead: the caller learns why, and the connection stays.
async fn send_reply<Resp: Serialize>(
    conn: &mut BoxConnection,
    endpoint: &Endpoint,
    reply: Reply<Resp>,
) -> Result<()> {
    poll_fn(|cx| conn.poll_ready_unpin(cx)).await?;
    match envelope::start_send_reply(conn, endpoint, &reply) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::FrameTooLarge | ErrorKind::Encode) => {
            let Some(id) = reply.id() else { return Err(e) };
            tracing::warn!(endpoint = %endpoint, id, error = %e, "reply not sent; answered as failed");
            let reason = format!("the server could not send the reply: {e}");
            poll_fn(|cx| conn.poll_ready_unpin(cx)).await?;
            envelope::start_send_reply::<()>(conn, endpoint, &Reply::Failed { id, reason })?;
        }
        Err(e) => return Err(e),
    }
    poll_fn(|cx| conn.poll_flush_unpin(cx)).await
}

/// How far [`answer_now`] got.
enum Now<Resp> {
    /// The handler is not done: its reply goes out when it is.
    Waiting,
    /// Answered, and flushed.
    Done,
    /// Answered; the flush is still to be done.
    Flush,
    /// The reply, for [`send_reply`] to send (the connection was not ready, or the reply
    /// could not be queued as it is).
    Send(Reply<Resp>),
    /// The connection failed.
    Failed(Error),
}

/// Polls the handler in `slot` and, if it is done, sends its reply within this one poll when
/// the connection lets it: most requests are answered with no further await.
fn answer_now<F, Resp>(
    cx: &mut Context<'_>,
    slot: Pin<&mut Option<F>>,
    conn: &mut BoxConnection,
    endpoint: &Endpoint,
) -> Now<Resp>
where
    F: Future<Output = Reply<Resp>>,
    Resp: Serialize,
{
    let Some(reply) = poll_slot(cx, slot) else {
        return Now::Waiting;
    };
    match conn.poll_ready_unpin(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Now::Failed(e),
        Poll::Pending => return Now::Send(reply),
    }
    match envelope::start_send_reply(conn, endpoint, &reply) {
        Ok(()) => {}
        // `send_reply` answers these as failed.
        Err(e) if matches!(e.kind(), ErrorKind::FrameTooLarge | ErrorKind::Encode) => {
            return Now::Send(reply)
        }
        Err(e) => return Now::Failed(e),
    }
    match conn.poll_flush_unpin(cx) {
        Poll::Ready(Ok(())) => Now::Done,
        Poll::Ready(Err(e)) => Now::Failed(e),
        Poll::Pending => Now::Flush,
    }
}

/// Polls the future in `slot`, if any; once it is done, empties the slot and returns its output.
fn poll_slot<F: Future>(cx: &mut Context<'_>, mut slot: Pin<&mut Option<F>>) -> Option<F::Output> {
    let out = match slot.as_mut().as_pin_mut()?.poll(cx) {
        Poll::Ready(out) => out,
        Poll::Pending => return None,
    };
    slot.set(None);
    Some(out)
}

/// What a connection's loop waits for in one turn (the rest it leaves alone this turn).
struct Wake<'a, S> {
    /// Whether to read a request.
    read: bool,
    /// The stop signal, if still listened to.
    stop: Option<Stop<'a, S>>,
    /// The heartbeat deadline, if any.
    silent: Option<Pin<&'a mut tokio::time::Sleep>>,
}

/// A connection loop's view of the server's stop signal.
struct Stop<'a, S> {
    token: &'a CancellationToken,
    /// `token.cancelled()`.
    fut: Pin<&'a mut S>,
    /// The waker `fut` was last polled with.
    armed: &'a mut Option<Waker>,
    /// Turns since the token was last looked at before a read.
    turns: &'a mut u32,
}

/// A connection that always has a request to read looks at the stop token before reading
/// once in this many turns: often enough that a flood of requests cannot hold off a shutdown
/// for long, rarely enough to cost nothing per request (a look takes the token's lock).
const STOP_LOOK_EVERY: u32 = 32;

impl<S: Future> Stop<'_, S> {
    /// Whether the server is stopping, looked at once in [`STOP_LOOK_EVERY`] turns.
    fn seen_now_and_then(&mut self) -> bool {
        *self.turns += 1;
        if *self.turns < STOP_LOOK_EVERY {
            return false;
        }
        *self.turns = 0;
        self.token.is_cancelled()
    }

    /// Whether the server is stopping; makes sure this task is woken when it does.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        if self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        *self.armed = Some(cx.waker().clone());
        self.fut.as_mut().poll(cx).is_ready()
    }
}

/// What ends a connection loop's wait.
enum Event<Req, Resp> {
    /// A handler finished.
    Answered(Reply<Resp>),
    /// The client sent a request.
    Request(Request<Req>),
    /// The client sent a frame that does not decode.
    Undecodable(Undecodable),
    /// The client closed.
    Closed,
    /// The connection failed.
    Failed(Error),
    /// The server is stopping: read no more.
    Stop,
    /// The client was silent past the heartbeat bound.
    Silent,
}

impl<S: Future> Wake<'_, S> {
    /// Polls, in order: finished handlers (a request that cannot have arrived yet must not
    /// keep a finished reply waiting: on shm, polling the receive first spins for nothing),
    /// now and then the stop flag, the connection, the stop signal, the heartbeat.
    fn poll<Req, Resp, F>(
        &mut self,
        cx: &mut Context<'_>,
        mut first: Pin<&mut Option<F>>,
        in_flight: &mut FuturesUnordered<F>,
        conn: &mut BoxConnection,
    ) -> Poll<Event<Req, Resp>>
    where
        F: Future<Output = Reply<Resp>>,
        Req: DeserializeOwned,
    {
        if let Some(reply) = poll_slot(cx, first.as_mut()) {
            return Poll::Ready(Event::Answered(reply));
        }
        if !in_flight.is_empty() {
            if let Poll::Ready(Some(reply)) = in_flight.poll_next_unpin(cx) {
                return Poll::Ready(Event::Answered(reply));
            }
        }
        if self.stop.as_mut().is_some_and(|s| s.seen_now_and_then()) {
            return Poll::Ready(Event::Stop);
        }
        if self.read {
            if let Poll::Ready(r) = conn.poll_next_unpin(cx) {
                return Poll::Ready(match r {
                    Some(Ok(frame)) => {
                        match envelope::decode_request(&frame, &conn.info().endpoint) {
                            Ok(req) => Event::Request(req),
                            Err(u) => Event::Undecodable(u),
                        }
                    }
                    // The contract's rule for Decode: the connection stays usable.
                    Some(Err(e)) if e.kind() == ErrorKind::Decode => {
                        Event::Undecodable(Undecodable { id: None, error: e })
                    }
                    Some(Err(e)) => Event::Failed(e),
                    None => Event::Closed,
                });
            }
        }
        // Nothing to read (or no reading now): the stop signal, armed for a wake-up.
        if let Some(stop) = &mut self.stop {
            if stop.poll(cx) {
                return Poll::Ready(Event::Stop);
            }
        }
        if let Some(t) = &mut self.silent {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Silent);
            }
        }
        Poll::Pending
    }
}

async fn answer<Resp>(id: u64, work: impl Future<Output = Resp>) -> Reply<Resp> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(body) => Reply::Ok { id, body },
        Err(_) => Reply::Failed {
            id,
            reason: "the handler panicked".into(),
        },
    }
}

/// A server running in the background; dropping the handle stops it (without a grace period).
#[derive(Debug)]
pub struct ServerHandle {
    inner: Background,
}

impl ServerHandle {
    /// The endpoint the server is bound to.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    /// Stops accepting, lets in-flight requests finish and closes every connection. Past
    /// `grace`, whatever is still running is dropped and this fails with
    /// [`ErrorKind::Timeout`].
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        self.inner.shutdown(grace, "requests").await
    }
}
