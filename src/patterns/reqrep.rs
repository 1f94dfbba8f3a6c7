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
//! On the wire the client sends [`Request`] (`id`, `body`) and the server answers [`Reply`]
//! (`Ok { id, body }` or `Failed { id, reason }`), each one postcard frame
//! (`docs/wire-format.md`), so a service in another language can speak it too.
//!
//! Semantics:
//! - **At most once.** A request that fails (deadline, connection lost) may or may not have run
//!   on the server; nothing is retried. Callers that retry must make the request idempotent.
//! - **Ids** are unique per client connection; a reply whose caller gave up (deadline, future
//!   dropped) is discarded with a `debug` event.
//! - **Broken connection.** When the connection fails or the server closes it, every waiting
//!   caller gets that error, and every later call fails at once with it.
//! - **No background task.** The caller whose reply is due reads the connection and hands
//!   other callers' replies to them, so a lone caller pays one lock and one map entry over a
//!   plain [`Channel`] round trip.
//! - The server polls a connection's handlers on that connection's task (up to
//!   [`ServerOptions::max_in_flight`] at once, then it stops reading, which pushes back on the
//!   client); a handler that burns CPU should hand work to `tokio::task::spawn_blocking`. A
//!   handler that panics is answered with `Failed`, and the server goes on.

use crate::{BoxListener, Channel, Endpoint, Error, ErrorKind, Result};
use futures::{
    future::FutureExt,
    stream::{FuturesUnordered, SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::{oneshot, Mutex as AsyncMutex};
use tokio_util::sync::CancellationToken;

/// A request on the wire: the caller's value tagged with an id unique on its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<T> {
    /// Chosen by the client; the reply carries it back.
    pub id: u64,
    /// The caller's request.
    pub body: T,
}

/// A reply on the wire: the handler's answer for request `id`, or why there is none.
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
}

impl<T> Reply<T> {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        match self {
            Reply::Ok { id, .. } | Reply::Failed { id, .. } => *id,
        }
    }
}

/// Options for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The deadline [`Client::call`] puts on each request; `None` waits as long as the
    /// connection lives. Default: 30 s.
    pub timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

type ClientChannel<Req, Resp> = Channel<Request<Req>, Reply<Resp>>;
type Waiter<Resp> = oneshot::Sender<Result<Resp>>;

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
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

struct Shared<Req, Resp> {
    endpoint: String,
    opts: ClientOptions,
    next_id: AtomicU64,
    tx: AsyncMutex<SplitSink<ClientChannel<Req, Resp>, Request<Req>>>,
    rx: AsyncMutex<SplitStream<ClientChannel<Req, Resp>>>,
    state: Mutex<State<Resp>>,
}

struct State<Resp> {
    /// Callers waiting for a reply, by request id.
    waiting: HashMap<u64, Waiter<Resp>>,
    /// Set once the connection failed: every later call fails with it.
    broken: Option<(ErrorKind, String)>,
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Connects to a [`Server`] at `endpoint` with default options.
    pub async fn connect(endpoint: impl TryInto<Endpoint, Error: Into<Error>>) -> Result<Self> {
        let ch = crate::connect_channel(endpoint).await?;
        Ok(Self::with_options(ch, ClientOptions::default()))
    }

    /// A client over a channel that is already connected to a server.
    pub fn new(ch: ClientChannel<Req, Resp>) -> Self {
        Self::with_options(ch, ClientOptions::default())
    }

    /// A client over `ch` with `opts`.
    pub fn with_options(ch: ClientChannel<Req, Resp>, opts: ClientOptions) -> Self {
        let endpoint = ch.info().endpoint.to_string();
        let (tx, rx) = ch.split();
        Client {
            shared: Arc::new(Shared {
                endpoint,
                opts,
                next_id: AtomicU64::new(1),
                tx: AsyncMutex::new(tx),
                rx: AsyncMutex::new(rx),
                state: Mutex::new(State {
                    waiting: HashMap::new(),
                    broken: None,
                }),
            }),
        }
    }

    /// Sends `req` and waits for its reply, within the options' deadline (30 s by default).
    ///
    /// Errors: [`ErrorKind::Timeout`] past the deadline, [`ErrorKind::Remote`] when the
    /// server's handler failed, or the connection's own error.
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

    /// Flushes and closes the sending side; the server finishes what it has and closes too.
    pub async fn close(&self) -> Result<()> {
        self.shared.tx.lock().await.close().await
    }
}

impl<Req, Resp> Shared<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    async fn call(&self, req: Req) -> Result<Resp> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, mut reply) = oneshot::channel();
        self.register(id, waiter)?;
        // Whatever ends this call (reply, error, deadline, a dropped future) forgets its id, so
        // a reply that comes later finds nobody and is discarded.
        let _forget = Forget { shared: self, id };
        let sent = self.tx.lock().await.send(Request { id, body: req }).await;
        if let Err(e) = sent {
            // Too large or not encodable: this request only. Anything else broke the link.
            return Err(match e.kind() {
                ErrorKind::FrameTooLarge | ErrorKind::Encode => e,
                _ => self.fail_all(e),
            });
        }
        // Wait for another reader to hand the reply over, or become the reader.
        let mut rx = tokio::select! {
            biased;
            r = &mut reply => return r.unwrap_or_else(|_| Err(self.broken_error())),
            rx = self.rx.lock() => rx,
        };
        if let Ok(r) = reply.try_recv() {
            return r;
        }
        self.read_until(id, &mut rx).await
    }

    /// Reads replies, handing each to its caller, until the one for `id` arrives.
    async fn read_until(
        &self,
        id: u64,
        rx: &mut SplitStream<ClientChannel<Req, Resp>>,
    ) -> Result<Resp> {
        loop {
            match rx.next().await {
                Some(Ok(reply)) if reply.id() == id => return self.outcome(reply),
                Some(Ok(reply)) => self.hand_over(reply),
                // A reply that does not decode names no caller; whoever sent it times out.
                // The connection stays usable (the contract's rule for Decode).
                Some(Err(e)) if e.kind() == ErrorKind::Decode => {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "undecodable reply dropped");
                }
                Some(Err(e)) => return Err(self.fail_all(e)),
                None => {
                    let e = Error::new(
                        ErrorKind::Closed,
                        &self.endpoint,
                        "the server closed the connection before replying",
                    );
                    return Err(self.fail_all(e));
                }
            }
        }
    }

    fn outcome(&self, reply: Reply<Resp>) -> Result<Resp> {
        match reply {
            Reply::Ok { body, .. } => Ok(body),
            Reply::Failed { reason, .. } => {
                Err(Error::new(ErrorKind::Remote, &self.endpoint, reason))
            }
        }
    }

    fn hand_over(&self, reply: Reply<Resp>) {
        let id = reply.id();
        let waiter = self.lock().waiting.remove(&id);
        match waiter {
            Some(w) => {
                let _ = w.send(self.outcome(reply));
            }
            None => tracing::debug!(endpoint = %self.endpoint, id, "late reply discarded"),
        }
    }

    fn register(&self, id: u64, waiter: Waiter<Resp>) -> Result<()> {
        let mut st = self.lock();
        if let Some((kind, detail)) = &st.broken {
            return Err(Error::new(*kind, &self.endpoint, detail.clone()));
        }
        st.waiting.insert(id, waiter);
        Ok(())
    }

    /// Marks the connection broken and fails every waiting caller with `e`; returns `e`.
    fn fail_all(&self, e: Error) -> Error {
        let waiting = {
            let mut st = self.lock();
            st.broken.get_or_insert((e.kind(), e.detail().to_string()));
            std::mem::take(&mut st.waiting)
        };
        if !waiting.is_empty() {
            tracing::debug!(endpoint = %self.endpoint, error = %e, callers = waiting.len(), "failing waiting calls");
        }
        for (_, w) in waiting {
            let _ = w.send(Err(Error::new(e.kind(), &self.endpoint, e.detail())));
        }
        e
    }

    fn broken_error(&self) -> Error {
        match &self.lock().broken {
            Some((kind, detail)) => Error::new(*kind, &self.endpoint, detail.clone()),
            None => Error::new(ErrorKind::Closed, &self.endpoint, "the client is gone"),
        }
    }
}

impl<Req, Resp> Shared<Req, Resp> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<Resp>> {
        // A panic while holding this lock leaves the map consistent (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a call's id from the waiting map when the call ends, however it ends.
struct Forget<'a, Req, Resp> {
    shared: &'a Shared<Req, Resp>,
    id: u64,
}

impl<Req, Resp> Drop for Forget<'_, Req, Resp> {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(&self.id);
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

    /// Ready until the connection broke; then the error that broke it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &self.shared.lock().broken {
            Some((kind, detail)) => Poll::Ready(Err(Error::new(
                *kind,
                &self.shared.endpoint,
                detail.clone(),
            ))),
            None => Poll::Ready(Ok(())),
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
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { max_in_flight: 64 }
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
        Ok(Self::new(crate::bind(endpoint).await?, handler))
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

    /// Serves in a background task until [`ServerHandle::shutdown`].
    pub fn spawn<Req, Resp, Fut>(self) -> ServerHandle
    where
        H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let stop = CancellationToken::new();
        let endpoint = self.endpoint().clone();
        let task = tokio::spawn(self.run(stop.clone()));
        ServerHandle {
            endpoint,
            stop,
            task,
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
            mut listener,
            handler,
            opts,
        } = self;
        let endpoint = listener.endpoint().to_string();
        let mut conns = tokio::task::JoinSet::new();
        let mut pause = Duration::from_millis(10);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = conns.join_next(), if !conns.is_empty() => log_end(&endpoint, done),
                r = listener.accept() => match r {
                    Ok(conn) => {
                        pause = Duration::from_millis(10);
                        let ch = Channel::new(conn);
                        let job = serve_connection(ch, handler.clone(), opts.max_in_flight, stop.clone());
                        conns.spawn(job);
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %endpoint, error = %e, retry_in = ?pause, "accept failed");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
        drop(listener);
        while let Some(done) = conns.join_next().await {
            log_end(&endpoint, done);
        }
    }
}

fn log_end(endpoint: &str, done: std::result::Result<Result<()>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(endpoint = %endpoint, error = %e, "connection ended"),
        Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "connection task failed"),
    }
}

/// Serves one connection: reads requests while fewer than `max` are in flight, sends each
/// reply as its handler finishes, and on `stop` or the client's close stops reading, answers
/// what it has and closes.
async fn serve_connection<Req, Resp, H, Fut>(
    mut ch: Channel<Reply<Resp>, Request<Req>>,
    handler: H,
    max: usize,
    stop: CancellationToken,
) -> Result<()>
where
    H: Fn(Req) -> Fut,
    Fut: Future<Output = Resp>,
    Req: DeserializeOwned,
    Resp: Serialize,
{
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            // By value: a borrowed reply held across the await would need `Resp: Sync`.
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => SinkExt::send(&mut ch, reply).await?,
            r = ch.recv(), if reading && in_flight.len() < max.max(1) => match r {
                Ok(Some(Request { id, body })) => in_flight.push(answer(id, handler(body))),
                Ok(None) => reading = false,
                // No id to answer: the caller times out. The connection stays usable.
                Err(e) if e.kind() == ErrorKind::Decode => {
                    tracing::warn!(endpoint = %ch.info().endpoint, error = %e, "undecodable request dropped");
                }
                Err(e) => return Err(e),
            },
            _ = stop.cancelled(), if reading => reading = false,
        }
    }
    ch.close().await
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

/// A server running in the background.
#[derive(Debug)]
pub struct ServerHandle {
    endpoint: Endpoint,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The endpoint the server is bound to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops accepting, lets in-flight requests finish and closes every connection. Past
    /// `grace`, whatever is still running is dropped and this fails with
    /// [`ErrorKind::Timeout`].
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.task.abort();
                Err(Error::new(
                    ErrorKind::Timeout,
                    &self.endpoint,
                    format!("requests still running after {grace:?} were dropped"),
                ))
            }
        }
    }
}
