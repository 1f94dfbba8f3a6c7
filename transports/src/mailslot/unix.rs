//! `mailslot://` on Unix: a Unix datagram socket at `mailslot-<name>.sock` in the private
//! per-user directory. The receiver binds it; each sender is an unbound datagram socket
//! connected to it. Datagrams keep boundaries, and on one host the kernel neither drops nor
//! reorders them: when the receiver's queue is full, the sender's send waits.

use super::{second_accept, SlotAddr};
use crate::local::unix::socket_path;
use crate::socket_file::{clear_stale, Probe};
use bytes::Bytes;
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Connection, ConnectionInfo, Endpoint,
    Error, ErrorKind, Listener, Result,
};
use futures::{ready, Sink, Stream};
use std::{
    io,
    os::fd::AsRawFd,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};
use tokio::net::UnixDatagram;

fn remote_unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "remote and broadcast mailslots (*/name, host/name) need Windows; on Unix mailslot:// \
         reaches this host only",
    )
}

pub(super) async fn bind(
    ep: &Endpoint,
    addr: &SlotAddr,
    caps: Capabilities,
) -> Result<BoxListener> {
    let path = socket_path(ep, "mailslot", &addr.name)?;
    clear_stale(
        ep,
        &path,
        Probe::Datagram,
        "another process is receiving on this mailslot",
    )
    .await?;
    let sock = UnixDatagram::bind(&path).map_err(|e| Error::bind(ep, "", e))?;
    let guard = PathGuard::new(path);
    std::fs::set_permissions(&guard.path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(ep, "set socket file permissions", e))?;
    let max = caps.max_message;
    let conn = Receiver {
        sock,
        buf: vec![0u8; max + 1].into_boxed_slice(),
        info: ConnectionInfo {
            endpoint: ep.clone(),
            peer: None,
            capabilities: caps,
        },
        _guard: guard,
    };
    Ok(Box::new(SlotListener {
        endpoint: ep.clone(),
        conn: Some(conn),
    }))
}

pub(super) async fn connect(
    ep: &Endpoint,
    addr: &SlotAddr,
    caps: Capabilities,
) -> Result<BoxConnection> {
    if addr.server.is_some() {
        return Err(remote_unsupported(ep));
    }
    let path = socket_path(ep, "mailslot", &addr.name)?;
    let sock = UnixDatagram::unbound().map_err(|e| Error::io(ep, "create socket", e))?;
    ensure_send_buffer(&sock, caps.max_message + 1024);
    sock.connect(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Error::new(
                ErrorKind::NotFound,
                ep,
                "the socket file exists but nothing receives on it",
            )
            .with_source(e)
        } else {
            Error::io(ep, "connect", e)
        }
    })?;
    Ok(Box::new(Sender {
        sock,
        pending: None,
        closed: false,
        recv_reported: false,
        info: ConnectionInfo {
            endpoint: ep.clone(),
            peer: Some(path.display().to_string()),
            capabilities: caps,
        },
    }))
}

/// Raises the socket's send buffer to at least `want` bytes if it is smaller, so that a
/// datagram of the endpoint's maximum size fits (Linux refuses datagrams larger than the send
/// buffer with `EMSGSIZE`). The kernel may cap the request (`net.core.wmem_max`); a message
/// that still does not fit then fails on send with `FrameTooLarge`.
fn ensure_send_buffer(sock: &UnixDatagram, want: usize) {
    let fd = sock.as_raw_fd();
    let mut cur: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a valid socket owned by `sock` for the duration of the call; `cur` and
    // `len` are valid for writes and `len` holds the size of `cur`.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut cur as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    if ok && (cur as usize) >= want {
        return;
    }
    let val = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is a valid socket; `val` is a c_int that lives across the call and the
    // length passed is its size.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Removes the socket file when the receiver goes away, if the file is still this one.
struct PathGuard {
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl PathGuard {
    fn new(path: PathBuf) -> PathGuard {
        let ino = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        PathGuard { path, ino }
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let still_ours = std::fs::metadata(Path::new(&self.path))
            .map(|m| Some((m.dev(), m.ino())) == self.ino)
            .unwrap_or(false);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct SlotListener {
    endpoint: Endpoint,
    conn: Option<Receiver>,
}

#[async_trait]
impl Listener for SlotListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        match self.conn.take() {
            Some(c) => Ok(Box::new(c)),
            None => Err(second_accept(&self.endpoint)),
        }
    }
}

/// The one receiving connection.
struct Receiver {
    sock: UnixDatagram,
    buf: Box<[u8]>,
    info: ConnectionInfo,
    _guard: PathGuard,
}

impl Connection for Receiver {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Stream for Receiver {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        let max = this.info.capabilities.max_message;
        let mut rb = tokio::io::ReadBuf::new(&mut this.buf);
        if let Err(e) = ready!(this.sock.poll_recv(cx, &mut rb)) {
            return Poll::Ready(Some(Err(Error::io(&this.info.endpoint, "receive", e))));
        }
        let n = rb.filled().len();
        if n > max {
            // The buffer holds max + 1 bytes, so a longer datagram was cut: refuse it, keep
            // receiving (one foreign writer must not stop the receiver for everyone).
            return Poll::Ready(Some(Err(Error::new(
                ErrorKind::FrameTooLarge,
                &this.info.endpoint,
                format!("a message over the limit of {max} bytes was received and dropped"),
            ))));
        }
        Poll::Ready(Some(Ok(Bytes::copy_from_slice(rb.filled()))))
    }
}

receive_only_sink!(Receiver);

/// A sending connection.
struct Sender {
    sock: UnixDatagram,
    pending: Option<Bytes>,
    closed: bool,
    recv_reported: bool,
    info: ConnectionInfo,
}

impl Sender {
    fn send_err(&self, e: io::Error) -> Error {
        let ep = &self.info.endpoint;
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) | Some(libc::ENOTCONN) => Error::new(
                ErrorKind::ConnectionLost,
                ep,
                "the receiver is gone (its socket is closed)",
            )
            .with_source(e),
            Some(libc::EMSGSIZE) | Some(libc::ENOBUFS) => Error::new(
                ErrorKind::FrameTooLarge,
                ep,
                "the system's socket buffer limit is below this message size \
                 (raise net.core.wmem_max or lower max_frame)",
            )
            .with_source(e),
            _ => Error::io(ep, "send", e),
        }
    }
}

impl Connection for Sender {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

send_only_stream!(Sender);

impl Sink<Bytes> for Sender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.closed {
            return Poll::Ready(Err(Error::new(
                ErrorKind::Closed,
                &self.info.endpoint,
                "send after close",
            )));
        }
        self.poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        ductwork_codec::check_len(item.len(), self.info.capabilities.max_message)
            .map_err(|e| Error::codec(&self.info.endpoint, e))?;
        self.pending = Some(item);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(d) = self.pending.clone() {
            let r = ready!(self.sock.poll_send(cx, &d));
            self.pending = None;
            r.map_err(|e| self.send_err(e))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}
