//! The client side of one request/reply connection: the connection and every call on it
//! behind one lock, with no background task and no split of the connection.
//!
//! Two roles move between the calls: the *sender* (whose request is in the connection's
//! sending side; the others queue for it, in turn) and the *reader* (who reads replies,
//! keeps its own and hands the others to their calls). Each call is one future that, while
//! it holds the lock, sends its request if it holds the sending side, takes the free reading
//! side, reads until its own reply comes or the connection has nothing more, and otherwise
//! leaves its waker in its entry. A lone caller takes both roles in its first poll: one lock,
//! no entry, no hand-over, no wake-up of another task. A call that ends early (deadline,
//! dropped future) gives its roles to the next call and forgets its id, so its late reply
//! finds nobody and is discarded.
//!
//! An optional watcher (reconnect or heartbeats) reads while no call does, to notice a lost
//! connection while idle; a call takes the reading side from it and, done, wakes it to take
//! it back (the one wake-up per call a client with reconnect or heartbeats pays).

use super::envelope::{self, Undecodable};
use super::reqrep::{Reply, Request};
use crate::{BoxConnection, Channel, Error, ErrorKind, Result};
use futures::{Sink, Stream};
use serde::{de::DeserializeOwned, Serialize};
use std::{
    collections::VecDeque,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Instant,
};

pub(crate) type ClientChannel<Req, Resp> = Channel<Request<Req>, Reply<Resp>>;

/// Why a link ended, kept to fail later calls with the same error.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn of(e: &Error) -> Self {
        Failure {
            kind: e.kind(),
            detail: e.detail().to_string(),
        }
    }

    pub(crate) fn error(&self, endpoint: impl std::fmt::Display) -> Error {
        Error::new(self.kind, endpoint, self.detail.clone())
    }
}

/// Locks a std mutex whose data stays consistent even if a holder panicked (every change is
/// made whole before anything that could panic), so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection and the calls on it.
pub(crate) struct Link<Req, Resp> {
    pub(crate) endpoint: String,
    inner: Mutex<Inner<Req, Resp>>,
}

/// Who reads replies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Free,
    Call(u64),
    /// The watcher, which any call may take the reading side from.
    Watcher,
}

/// A call that waits for something another call may give it: its turn to send, the reading
/// side, or its reply.
struct Entry<Resp> {
    id: u64,
    waker: Option<Waker>,
    reply: Option<Result<Resp>>,
    /// In the queue for the sending side.
    queued: bool,
}

struct Inner<Req, Resp> {
    /// The connection, its frames read and written as envelopes (`envelope.rs`), not through
    /// the typed channel it came in.
    conn: BoxConnection,
    next_id: u64,
    /// The operation whose request is in the connection's sending side, until flushed.
    sender: Option<u64>,
    /// Operations waiting for the sending side, in turn.
    send_queue: VecDeque<u64>,
    reader: Reader,
    /// Waiting operations, by ascending id: few, so a sorted vector (no hashing, no
    /// allocation once it has grown) finds them.
    entries: Vec<Entry<Resp>>,
    /// Set once the link failed: every later operation on it fails with it.
    broken: Option<Failure>,
    /// When a frame last arrived; kept with heartbeats only.
    heard: Option<Instant>,
    /// The watcher's waker, if a watcher runs.
    watcher: Option<Waker>,
    _req: PhantomData<fn(Req)>,
}

/// What an operation sends.
pub(crate) enum Outgoing<Req> {
    /// A call: waits for its reply.
    Call(Req),
    /// A heartbeat: done once sent.
    Ping,
    /// Flush and close the sending side: done once closed.
    Close,
}

impl<Req, Resp> Link<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    pub(crate) fn new(ch: ClientChannel<Req, Resp>, heartbeats: bool) -> Self {
        let conn = ch.into_inner();
        Link {
            endpoint: conn.info().endpoint.to_string(),
            inner: Mutex::new(Inner {
                conn,
                next_id: 0,
                sender: None,
                send_queue: VecDeque::new(),
                reader: Reader::Free,
                entries: Vec::new(),
                broken: None,
                heard: heartbeats.then(Instant::now),
                watcher: None,
                _req: PhantomData,
            }),
        }
    }

    /// Sends `what` and, for a call, waits for its reply (`Ok(None)` for the others).
    pub(crate) fn op(&self, what: Outgoing<Req>) -> Op<'_, Req, Resp> {
        Op {
            link: self,
            is_call: matches!(what, Outgoing::Call(_)),
            what: Some(what),
            id: 0,
            sent: false,
            done: false,
        }
    }

    /// Marks the link broken and fails every waiting operation with `e`; returns `e`.
    pub(crate) fn fail_all(&self, e: Error) -> Error {
        lock(&self.inner).fail_all(&self.endpoint, e)
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.inner).broken.clone()
    }

    /// How long since a frame last arrived (zero without heartbeats).
    pub(crate) fn silence(&self) -> std::time::Duration {
        lock(&self.inner)
            .heard
            .map_or_else(Default::default, |h| h.elapsed())
    }

    /// The watcher's turn: reads while no call does. Ready only once the link failed.
    pub(crate) fn poll_watch(&self, cx: &mut Context<'_>) -> Poll<Failure> {
        let mut inner = lock(&self.inner);
        if let Some(f) = &inner.broken {
            return Poll::Ready(f.clone());
        }
        if !inner
            .watcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.watcher = Some(cx.waker().clone());
        }
        if inner.reader == Reader::Free {
            inner.reader = Reader::Watcher;
        }
        if inner.reader == Reader::Watcher {
            if let Poll::Ready(Err(e)) = inner.read(&self.endpoint, cx, None) {
                return Poll::Ready(Failure::of(&e));
            }
        }
        Poll::Pending
    }

    /// The watcher is gone: nobody reads for it any more.
    pub(crate) fn unwatch(&self) {
        let mut inner = lock(&self.inner);
        inner.watcher = None;
        if inner.reader == Reader::Watcher {
            inner.reader = Reader::Free;
        }
    }
}

impl<Req, Resp> Inner<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    fn entry(&mut self, id: u64) -> Option<&mut Entry<Resp>> {
        let at = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        Some(&mut self.entries[at])
    }

    /// The entry of `id`, made if missing, with `waker` to wake it.
    fn wait(&mut self, id: u64, waker: &Waker) -> &mut Entry<Resp> {
        let at = match self.entries.binary_search_by_key(&id, |e| e.id) {
            Ok(at) => at,
            Err(at) => {
                let e = Entry {
                    id,
                    waker: None,
                    reply: None,
                    queued: false,
                };
                self.entries.insert(at, e);
                at
            }
        };
        let e = &mut self.entries[at];
        if !e.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            e.waker = Some(waker.clone());
        }
        e
    }

    fn forget(&mut self, id: u64) -> Option<Entry<Resp>> {
        let at = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        Some(self.entries.remove(at))
    }

    /// Operation `id` is done or gone: forget its entry, give up its roles.
    fn leave(&mut self, id: u64) {
        if let Some(e) = self.forget(id) {
            if e.queued {
                self.send_queue.retain(|&q| q != id);
            }
        }
        if self.sender == Some(id) {
            self.release_sender();
        }
        if self.reader == Reader::Call(id) {
            self.release_reader();
        }
    }

    fn wake(&mut self, id: u64) {
        if let Some(w) = self.entry(id).and_then(|e| e.waker.take()) {
            w.wake();
        }
    }

    /// The sending side is free: the next in the queue gets it.
    fn release_sender(&mut self) {
        self.sender = self.send_queue.pop_front();
        if let Some(next) = self.sender {
            if let Some(e) = self.entry(next) {
                e.queued = false;
            }
            self.wake(next);
        }
    }

    /// The reading side is free: a call that waits for its reply gets it (and is woken), else
    /// the call stuck sending, else the watcher, if any, else whoever comes first.
    fn release_reader(&mut self) {
        self.reader = Reader::Free;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| !e.queued && e.reply.is_none())
        {
            self.reader = Reader::Call(e.id);
            if let Some(w) = e.waker.take() {
                w.wake();
            }
            return;
        }
        if let Some(sender) = self.sender {
            self.wake(sender); // sending, and may have to read for it to go on
            return;
        }
        // The watcher takes it when it runs (reading for it here would make this call wait,
        // on shm by a spin). Only a client with reconnect or heartbeats has one.
        if let Some(w) = &self.watcher {
            w.wake_by_ref();
        }
    }

    /// Reads replies, handing each to its entry, until the one for `own` arrives (`Ready`
    /// with it) or nothing more is there (`Pending`). `Ready(Err)` once the link failed.
    fn read(
        &mut self,
        endpoint: &str,
        cx: &mut Context<'_>,
        own: Option<u64>,
    ) -> Poll<Result<Resp>> {
        loop {
            let frame = match Pin::new(&mut self.conn).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            if let Some(heard) = &mut self.heard {
                *heard = Instant::now();
            }
            let frame = match frame {
                Some(Ok(frame)) => frame,
                // The contract's rule for Decode: the connection stays usable.
                Some(Err(e)) if e.kind() == ErrorKind::Decode => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "undecodable reply dropped");
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Err(self.fail_all(endpoint, e))),
                None => {
                    let e = Error::new(
                        ErrorKind::Closed,
                        endpoint,
                        "the server closed the connection before replying",
                    );
                    return Poll::Ready(Err(self.fail_all(endpoint, e)));
                }
            };
            match envelope::decode_reply::<Resp>(&frame, &endpoint) {
                Ok(Reply::Pong) => {}
                Ok(reply) if own.is_some() && reply.id() == own => {
                    return Poll::Ready(outcome(endpoint, reply))
                }
                Ok(reply) => self.hand_over(endpoint, reply),
                // A body that does not decode fails its own call; the connection stays usable.
                Err(Undecodable {
                    id: Some(id),
                    error,
                }) if Some(id) == own => return Poll::Ready(Err(error)),
                Err(Undecodable {
                    id: Some(id),
                    error,
                }) => self.deliver(endpoint, id, Err(error)),
                // An envelope that does not decode names no caller: whoever sent it times out.
                Err(Undecodable { id: None, error }) => {
                    tracing::warn!(endpoint = %endpoint, error = %error, "undecodable reply dropped");
                }
            }
        }
    }

    fn hand_over(&mut self, endpoint: &str, reply: Reply<Resp>) {
        let Some(id) = reply.id() else { return };
        self.deliver(endpoint, id, outcome(endpoint, reply));
    }

    /// Gives call `id` its outcome, if it still waits for one.
    fn deliver(&mut self, endpoint: &str, id: u64, outcome: Result<Resp>) {
        match self.entry(id) {
            Some(e) if e.reply.is_none() => {
                e.reply = Some(outcome);
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
            _ => tracing::debug!(endpoint = %endpoint, id, "late reply discarded"),
        }
    }

    /// Drives the sending side for `what`: ready, queue, flush (or close).
    fn send(
        &mut self,
        endpoint: &str,
        cx: &mut Context<'_>,
        id: u64,
        what: &mut Option<Outgoing<Req>>,
    ) -> Poll<Result<()>> {
        let mut conn = Pin::new(&mut self.conn);
        if let Some(Outgoing::Close) = what {
            return conn.poll_close(cx);
        }
        if let Some(out) = what {
            match conn.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let sent = match out {
                Outgoing::Call(body) => envelope::start_send(
                    &mut self.conn,
                    &endpoint,
                    envelope::CALL,
                    Some(id),
                    Some(&*body),
                ),
                _ => envelope::start_send::<()>(
                    &mut self.conn,
                    &endpoint,
                    envelope::PING,
                    None,
                    None,
                ),
            };
            // Dropped once queued (or refused): the request is in the connection now.
            *what = None;
            sent?;
            conn = Pin::new(&mut self.conn);
        }
        conn.poll_flush(cx)
    }

    /// Marks the link broken and fails every waiting operation with `e`; returns `e`.
    fn fail_all(&mut self, endpoint: &str, e: Error) -> Error {
        self.broken.get_or_insert_with(|| Failure::of(&e));
        let mut failed = 0;
        for entry in &mut self.entries {
            if entry.reply.is_none() {
                entry.reply = Some(Err(Error::new(e.kind(), endpoint, e.detail())));
                failed += 1;
            }
            if let Some(w) = entry.waker.take() {
                w.wake();
            }
        }
        if let Some(w) = &self.watcher {
            w.wake_by_ref();
        }
        if failed > 0 {
            tracing::debug!(endpoint = %endpoint, error = %e, callers = failed, "failing waiting calls");
        }
        e
    }
}

fn outcome<Resp>(endpoint: &str, reply: Reply<Resp>) -> Result<Resp> {
    match reply {
        Reply::Ok { body, .. } => Ok(body),
        Reply::Failed { reason, .. } => Err(Error::new(ErrorKind::Remote, endpoint, reason)),
        Reply::Pong => Err(Error::new(
            ErrorKind::Protocol,
            endpoint,
            "a pong is no reply",
        )),
    }
}

/// One operation on a link: see the module docs. Dropping it before it is done gives up its
/// roles and forgets its id.
pub(crate) struct Op<'a, Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    link: &'a Link<Req, Resp>,
    /// What to send, until it is queued in the connection (a close stays).
    what: Option<Outgoing<Req>>,
    /// Whether it waits for a reply once sent (a call).
    is_call: bool,
    /// 0 until first polled.
    id: u64,
    /// Whether the request left (was flushed).
    sent: bool,
    done: bool,
}

impl<Req, Resp> Unpin for Op<'_, Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
}

impl<Req, Resp> Future for Op<'_, Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    type Output = Result<Option<Resp>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let link = this.link;
        let mut inner = lock(&link.inner);
        let r = this.step(&mut inner, cx);
        if r.is_ready() {
            this.done = true;
            this.finish(&mut inner);
        }
        r
    }
}

impl<Req, Resp> Drop for Op<'_, Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    fn drop(&mut self) {
        if !self.done && self.id != 0 {
            let link = self.link;
            let mut inner = lock(&link.inner);
            inner.leave(self.id);
        }
    }
}

impl<Req, Resp> Op<'_, Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    /// One poll under the lock: reply handed over? else send if it is our turn, else read
    /// if nobody else does, else wait.
    fn step(
        &mut self,
        inner: &mut Inner<Req, Resp>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Resp>>> {
        let endpoint = &self.link.endpoint;
        if let Some(r) = inner.entry(self.id).and_then(|e| e.reply.take()) {
            return Poll::Ready(r.map(Some));
        }
        if let Some(f) = &inner.broken {
            return Poll::Ready(Err(f.error(endpoint)));
        }
        if self.id == 0 {
            inner.next_id += 1;
            self.id = inner.next_id;
        }
        let id = self.id;
        if !self.sent {
            if inner.sender.is_none() {
                inner.sender = Some(id);
            }
            if inner.sender != Some(id) {
                let e = inner.wait(id, cx.waker());
                if !e.queued {
                    e.queued = true;
                    inner.send_queue.push_back(id);
                }
                return Poll::Pending;
            }
            if let Poll::Ready(r) = inner.send(endpoint, cx, id, &mut self.what) {
                inner.release_sender();
                self.sent = true;
                match r {
                    Ok(()) if !self.is_call => return Poll::Ready(Ok(None)),
                    Ok(()) => {}
                    // Too large or not encodable: this request's failure only.
                    Err(e) if matches!(e.kind(), ErrorKind::FrameTooLarge | ErrorKind::Encode) => {
                        return Poll::Ready(Err(e))
                    }
                    Err(e) => return Poll::Ready(Err(inner.fail_all(endpoint, e))),
                }
            }
        }
        // Sent, or stuck sending: then read too, so that a server that waits for us to read
        // its replies before it reads on is not waiting for nobody.
        if matches!(inner.reader, Reader::Free | Reader::Watcher) {
            inner.reader = Reader::Call(id);
        }
        if inner.reader == Reader::Call(id) {
            // Once queued in the connection, its reply may come even before the flush ends.
            let own = (self.is_call && self.what.is_none()).then_some(id);
            if let Poll::Ready(r) = inner.read(endpoint, cx, own) {
                // A close that reads the end of the stream while its own close is under way is
                // done: the peer closed too (it may answer our close before we see it finish).
                let closing = matches!(self.what, Some(Outgoing::Close));
                if closing && matches!(&r, Err(e) if e.kind() == ErrorKind::Closed) {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(r.map(Some));
            }
        }
        inner.wait(id, cx.waker());
        Poll::Pending
    }

    fn finish(&mut self, inner: &mut Inner<Req, Resp>) {
        if self.id != 0 {
            inner.leave(self.id);
        }
    }
}
