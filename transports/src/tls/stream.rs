//! The byte stream under a `tls://` connection: a TLS session over TCP, with the failures a
//! peer reports by alert put in words, and a close that still happens on drop.

use super::config::{alert_kind, alert_text, rustls_error};
use crate::common::framed::ByteStream;
use std::{
    io::{self, Write},
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// What TLS runs on: TCP read through a 64 KiB buffer. rustls asks for at most one record
/// (~16 KiB) per read; the buffer lets one system call fetch several, as tcp's own reads do
/// (writes pass straight through).
pub(super) type Tcp = BufReader<TcpStream>;

/// The buffered TCP stream under a TLS session.
pub(super) fn buffered(tcp: TcpStream) -> Tcp {
    BufReader::with_capacity(64 * 1024, tcp)
}

/// A TLS session over TCP (either side).
pub(super) struct TlsByteStream {
    inner: TlsStream<Tcp>,
    /// What the framed connection asked to write as it was dropped (its close marker): sent,
    /// sealed and followed by close_notify in our own `Drop`, where we have `&mut self`.
    on_drop: Mutex<Vec<u8>>,
}

impl TlsByteStream {
    pub(super) fn new(inner: TlsStream<Tcp>) -> TlsByteStream {
        TlsByteStream {
            inner,
            on_drop: Mutex::new(Vec::new()),
        }
    }
}

impl ByteStream for TlsByteStream {
    /// Plaintext cannot go straight to the socket: keep it for `Drop`, which encrypts it.
    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = self.on_drop.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend_from_slice(buf);
        Ok(buf.len())
    }
}

/// A received fatal alert (with TLS 1.3 a refused client certificate arrives as the first
/// read) in words, with the matching kind.
fn explain(e: io::Error) -> io::Error {
    match rustls_error(&e) {
        Some(rustls::Error::AlertReceived(alert)) => {
            let kind = match alert_kind(*alert) {
                ductwork_core::ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(kind, alert_text(*alert))
        }
        _ => e,
    }
}

impl AsyncRead for TlsByteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_read(cx, buf)
            .map_err(explain)
    }
}

impl AsyncWrite for TlsByteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_write(cx, buf)
            .map_err(explain)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(explain)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx).map_err(explain)
    }
}

/// Writes to the socket without waiting; a full socket ends the attempt.
struct NoWait<'a>(&'a TcpStream);

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seals `plain` and a close_notify into records and writes them, best effort.
fn seal_and_send<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>, plain: &[u8]) {
    if conn.writer().write_all(plain).is_err() {
        return;
    }
    conn.send_close_notify();
    // Bounded: each round writes at least one byte or stops.
    while conn.wants_write() {
        match conn.write_tls(&mut NoWait(tcp)) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

impl Drop for TlsByteStream {
    fn drop(&mut self) {
        let pending = std::mem::take(self.on_drop.get_mut().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        match &mut self.inner {
            TlsStream::Client(s) => {
                let (tcp, conn) = s.get_mut();
                seal_and_send(tcp.get_ref(), conn, &pending);
            }
            TlsStream::Server(s) => {
                let (tcp, conn) = s.get_mut();
                seal_and_send(tcp.get_ref(), conn, &pending);
            }
        }
    }
}
