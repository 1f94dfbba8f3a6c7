//! `mailslot://` on Unix: a Unix datagram socket at `mailslot-<name>.sock` in the private
//! per-user directory. The receiver binds it; each sender is an unbound datagram socket
//! connected to it. Datagrams keep boundaries, and on one host the kernel neither drops nor
//! reorders them: when the receiver's queue is full, the sender's send waits.

use super::{shared_receiver, Config};
use crate::common::datagram::{datagram_sink, DatagramSend, Outbox};
use crate::common::oneway::{receive_only, send_only};
use crate::common::unix::{bind_socket_file, connect_error, socket_path, Probe, SocketFileGuard};
use bytes::Bytes;
use ductwork_core::{
    BoxConnection, BoxListener, ConnectionInfo, Endpoint, Error, ErrorKind, Result,
};
use futures::{ready, Stream};
use std::{
    io,
    os::fd::AsRawFd,
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

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let caps = cfg.caps;
    let path = socket_path(ep, "mailslot", &cfg.name)?;
    let (sock, guard) = bind_socket_file(
        ep,
        &path,
        Probe::Datagram,
        "another process is receiving on this mailslot",
        0o600,
        UnixDatagram::bind,
    )
    .await?;
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
    Ok(shared_receiver(ep, conn))
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    let caps = cfg.caps;
    if cfg.server.is_some() {
        return Err(remote_unsupported(ep));
    }
    let path = socket_path(ep, "mailslot", &cfg.name)?;
    let sock = UnixDatagram::unbound().map_err(|e| Error::io(ep, "create socket", e))?;
    ensure_send_buffer(&sock, caps.max_message + 1024);
    sock.connect(&path)
        .map_err(|e| connect_error(ep, e, "the socket file exists but nothing receives on it"))?;
    Ok(Box::new(Sender {
        sock,
        outbox: Outbox::default(),
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

/// The one receiving connection.
struct Receiver {
    sock: UnixDatagram,
    buf: Box<[u8]>,
    info: ConnectionInfo,
    _guard: SocketFileGuard,
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

receive_only!(Receiver, super::send_on_receiver);

/// A sending connection.
struct Sender {
    sock: UnixDatagram,
    outbox: Outbox,
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

send_only!(Sender, super::recv_on_sender);

impl DatagramSend for Sender {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn poll_send_datagram(&mut self, cx: &mut Context<'_>, d: &Bytes) -> Poll<Result<()>> {
        let r = ready!(self.sock.poll_send(cx, d));
        Poll::Ready(r.map(drop).map_err(|e| self.send_err(e)))
    }
}

datagram_sink!(Sender);
