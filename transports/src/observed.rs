//! What every listener and connection made through [`crate::bind`] and [`crate::connect`] gets
//! without a line in its backend: a `tracing` span per connection (endpoint, transport, peer),
//! events for bind, accept, connect, close, peer loss and every error, and the counters of
//! [`Connection::stats`].
//!
//! Levels: `info` for a bind and for a peer lost; `debug` for accept, connect, a clean close
//! and errors that leave the connection usable (decode, too large); `warn` for protocol
//! violations and failed accepts. Events are emitted inside the connection's span, entered
//! only around them, so a connection costs no span bookkeeping per message. The library never
//! installs a subscriber: the application chooses where events go (e.g. `tracing-subscriber`
//! with `RUST_LOG=ductwork=debug`).

use bytes::Bytes;
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Connection, ConnectionInfo, Endpoint, Error,
    ErrorKind, FrameEncoder, FrameWriter, Listener, Result, Stats,
};
use futures::{Sink, Stream};
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tracing::Span;

/// Wraps a freshly bound listener.
pub(crate) fn listener(inner: BoxListener, scheme: &'static str) -> BoxListener {
    let span = tracing::info_span!("listener", endpoint = %inner.endpoint(), transport = scheme);
    span.in_scope(|| tracing::info!("bound"));
    Box::new(ObservedListener {
        inner,
        scheme,
        span,
    })
}

/// Reports a failed bind or connect (at `debug`: the caller gets the error too).
pub(crate) fn failed(what: &'static str, e: Error) -> Error {
    tracing::debug!(endpoint = %e.endpoint(), error = %e, "{what} failed");
    e
}

/// Wraps a connection this process opened.
pub(crate) fn connected(inner: BoxConnection, scheme: &'static str) -> BoxConnection {
    observe(inner, scheme, "connected")
}

fn observe(inner: BoxConnection, scheme: &'static str, how: &'static str) -> BoxConnection {
    let info = inner.info();
    let span = tracing::debug_span!(
        "connection",
        endpoint = %info.endpoint,
        transport = scheme,
        peer = info.peer.as_deref().unwrap_or("-"),
    );
    span.in_scope(|| tracing::debug!("{how}"));
    Box::new(Observed {
        inner,
        span,
        stats: Stats::default(),
        ended: false,
    })
}

struct ObservedListener {
    inner: BoxListener,
    scheme: &'static str,
    span: Span,
}

#[async_trait]
impl Listener for ObservedListener {
    fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        match self.inner.accept().await {
            Ok(conn) => Ok(observe(conn, self.scheme, "accepted")),
            Err(e) => {
                self.span
                    .in_scope(|| tracing::warn!(error = %e, "accept failed"));
                Err(e)
            }
        }
    }
}

impl Drop for ObservedListener {
    fn drop(&mut self) {
        self.span.in_scope(|| tracing::debug!("listener closed"));
    }
}

struct Observed {
    inner: BoxConnection,
    span: Span,
    stats: Stats,
    /// A clean end or a failure was reported already (each is logged once).
    ended: bool,
}

impl Observed {
    #[cold]
    fn failed(&mut self, e: &Error) {
        self.stats.errors += 1;
        let stats = self.stats;
        // Errors that leave the connection usable may come again; the end is logged once.
        let usable = matches!(
            e.kind(),
            ErrorKind::Decode | ErrorKind::Encode | ErrorKind::FrameTooLarge
        );
        let first_end = !usable && !std::mem::replace(&mut self.ended, true);
        self.span.in_scope(|| match e.kind() {
            ErrorKind::ConnectionLost if first_end => {
                tracing::info!(error = %e, ?stats, "peer lost")
            }
            ErrorKind::Protocol => tracing::warn!(error = %e, "protocol violation"),
            _ => tracing::debug!(error = %e, "error"),
        });
    }

    /// Logs a receive that brought no frame: an error, or the peer's clean close (once).
    fn seen<T>(&mut self, r: Poll<Option<Result<T>>>) -> Poll<Option<Result<T>>> {
        match &r {
            Poll::Ready(Some(Err(e))) => self.failed(e),
            Poll::Ready(None) if !std::mem::replace(&mut self.ended, true) => {
                let stats = self.stats;
                self.span
                    .in_scope(|| tracing::debug!(?stats, "peer closed"));
            }
            _ => {}
        }
        r
    }

    fn track<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let stats = self.stats;
        self.span
            .in_scope(|| tracing::debug!(?stats, "connection dropped"));
    }
}

impl Connection for Observed {
    fn info(&self) -> &ConnectionInfo {
        self.inner.info()
    }

    fn stats(&self) -> Option<Stats> {
        Some(self.stats)
    }

    fn start_send_sized(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut FrameWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        let r = self.inner.start_send_sized(len, encode);
        if r.is_ok() {
            self.stats.frames_out += 1;
            self.stats.bytes_out += len as u64;
        }
        self.track(r)
    }

    fn start_send_encoded(&mut self, frame: &mut dyn FrameEncoder) -> Result<usize> {
        let r = self.inner.start_send_encoded(frame);
        match &r {
            Ok(len) => {
                self.stats.frames_out += 1;
                self.stats.bytes_out += *len as u64;
            }
            Err(e) => self.failed(e),
        }
        r
    }

    fn poll_recv_with(
        &mut self,
        cx: &mut Context<'_>,
        take: &mut dyn FnMut(&[u8]),
    ) -> Poll<Option<Result<usize>>> {
        let r = self.inner.poll_recv_with(cx, take);
        if let Poll::Ready(Some(Ok(len))) = r {
            self.stats.frames_in += 1;
            self.stats.bytes_in += len as u64;
            return r;
        }
        self.seen(r)
    }
}

impl Stream for Observed {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            this.stats.frames_in += 1;
            this.stats.bytes_in += frame.len() as u64;
            return r;
        }
        this.seen(r)
    }
}

impl Sink<Bytes> for Observed {
    type Error = Error;

    /// Runs once per message: the result is looked at in place, not moved through `track`.
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_ready(cx);
        if let Poll::Ready(Err(e)) = &r {
            this.failed(e);
        }
        r
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<()> {
        let this = &mut *self;
        let len = frame.len() as u64;
        let r = Pin::new(&mut this.inner).start_send(frame);
        if r.is_ok() {
            this.stats.frames_out += 1;
            this.stats.bytes_out += len;
        }
        this.track(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(this.track(r)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_close(cx) {
            Poll::Ready(Ok(())) => {
                let stats = this.stats;
                this.span.in_scope(|| tracing::debug!(?stats, "closed"));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.failed(&e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
