//! `mailslot://` on Windows: `CreateMailslotW` on the receiving side, `CreateFileW` +
//! `WriteFile` on the sending side.
//!
//! The receiver reads on a dedicated thread (`ReadFile` with a 50 ms read timeout, so the
//! thread notices a drop) and hands messages to tokio through a bounded queue of
//! [`QUEUE`] messages; while that queue is full the thread stops reading and the OS keeps the
//! messages in the mailslot. Dropping the receiver waits for the thread (at most one read
//! timeout) so that the name is free again when the drop returns.
//!
//! Local writes complete as soon as the OS has queued the message in the mailslot; they do not
//! wait for the reader. Writes to a remote or broadcast mailslot run on tokio's blocking pool.

use super::{shared_receiver, Config};
use crate::common::datagram::{datagram_sink, DatagramSend, Outbox};
use crate::common::oneway::{receive_only, send_only};
use crate::common::windows::{
    is_not_found, last_error, open_blocking, os_error, owned, wide, Security,
};
use bytes::Bytes;
use ductwork_core::{
    BoxConnection, BoxListener, ConnectionInfo, Endpoint, Error, ErrorKind, Result,
};
use futures::{ready, Stream};
use std::{
    future::Future,
    io,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    thread::JoinHandle,
};
use tokio::sync::mpsc;
use windows_sys::Win32::{
    Foundation::{
        ERROR_ALREADY_EXISTS, ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA, ERROR_SEM_TIMEOUT,
        GENERIC_WRITE, INVALID_HANDLE_VALUE,
    },
    Storage::FileSystem::{
        CreateFileW, ReadFile, WriteFile, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE,
        OPEN_EXISTING,
    },
    System::{
        Mailslots::{CreateMailslotW, GetMailslotInfo},
        SystemServices::MAILSLOT_NO_MESSAGE,
    },
};

/// How many messages the reading thread may queue ahead of the receiver.
pub const QUEUE: usize = 64;
/// The read timeout that lets the reading thread notice the receiver went away.
const READ_TIMEOUT_MS: u32 = 50;

fn slot_path(server: Option<&str>, name: &str) -> String {
    format!(r"\\{}\mailslot\ductwork\{name}", server.unwrap_or("."))
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let caps = cfg.caps;
    let path = slot_path(None, &cfg.name);
    let security = Security::owner_only_for(ep)?;
    let max = caps.max_message;
    let name = wide(&path);
    // SAFETY: `name` is NUL-terminated and outlives the call; the security attributes stay
    // valid while `security` is alive, which is past the call.
    let h = unsafe {
        CreateMailslotW(
            name.as_ptr(),
            max as u32,
            READ_TIMEOUT_MS,
            security.as_ptr() as *const _,
        )
    };
    if h == INVALID_HANDLE_VALUE {
        let e = last_error();
        return Err(if os_error(&e) == Some(ERROR_ALREADY_EXISTS) {
            Error::new(
                ErrorKind::AddrInUse,
                ep,
                format!("the mailslot {path} exists (another process receives on it)"),
            )
            .with_source(e)
        } else {
            Error::bind(ep, format!("create the mailslot {path}"), e)
        });
    }
    // SAFETY: `h` is the valid mailslot handle CreateMailslotW just returned, owned by nobody
    // else; OwnedHandle closes it exactly once (in the reading thread, or here if the thread
    // cannot start and the closure is dropped).
    let handle = unsafe { OwnedHandle::from_raw_handle(h) };
    let (tx, rx) = mpsc::channel(QUEUE);
    let endpoint = ep.clone();
    let thread = std::thread::Builder::new()
        .name("ductwork-mailslot".into())
        .spawn(move || read_loop(handle, max, tx, endpoint))
        .map_err(|e| Error::io(ep, "start the mailslot reading thread", e))?;
    let conn = Receiver {
        rx,
        thread: Some(thread),
        done: false,
        info: ConnectionInfo {
            endpoint: ep.clone(),
            peer: None,
            capabilities: caps,
        },
    };
    Ok(shared_receiver(ep, conn))
}

/// Reads messages until the receiver is gone or reading fails, then closes the mailslot.
fn read_loop(owned: OwnedHandle, max: usize, tx: mpsc::Sender<Result<Bytes>>, ep: Endpoint) {
    let mut buf = vec![0u8; max + 1];
    while !tx.is_closed() {
        let n = match read(&owned, &mut buf) {
            Ok(n) => n,
            Err(e) if os_error(&e) == Some(ERROR_SEM_TIMEOUT) => continue,
            Err(e)
                if matches!(
                    os_error(&e),
                    Some(ERROR_INSUFFICIENT_BUFFER | ERROR_MORE_DATA)
                ) =>
            {
                // A message over our limit (Windows refuses such writes, Wine does not): drop
                // it, tell the receiver, go on; one foreign writer must not stop the receiver.
                let report = match discard_next(&owned) {
                    Ok(len) => Error::new(
                        ErrorKind::FrameTooLarge,
                        &ep,
                        format!(
                            "a message of {len} bytes, over the limit of {max} bytes, was \
                             received and dropped"
                        ),
                    ),
                    Err(e) => {
                        let _ =
                            tx.blocking_send(Err(Error::io(&ep, "drop an oversized message", e)));
                        return;
                    }
                };
                if tx.blocking_send(Err(report)).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::io(&ep, "read the mailslot", e)));
                return;
            }
        };
        if n > max {
            // The buffer holds max + 1 bytes: a longer message was cut (Wine delivers the
            // head of an oversized message instead of failing the read). Refuse it, go on.
            let e = Error::new(
                ErrorKind::FrameTooLarge,
                &ep,
                format!("a message over the limit of {max} bytes was received and dropped"),
            );
            if tx.blocking_send(Err(e)).is_err() {
                return;
            }
            continue;
        }
        let msg = Bytes::copy_from_slice(&buf[..n]);
        if tx.blocking_send(Ok(msg)).is_err() {
            return;
        }
    }
}

/// The largest oversized message the reading thread reads in order to drop it.
const MAX_DISCARD: u32 = 64 << 20;

/// Reads and drops the next message, which is too large for the normal buffer; returns its size.
fn discard_next(h: &OwnedHandle) -> io::Result<u32> {
    let mut next = 0u32;
    // SAFETY: the handle is an open mailslot; `next` is valid for a write; the other
    // out-parameters may be null.
    let ok = unsafe {
        GetMailslotInfo(
            h.as_raw_handle(),
            std::ptr::null_mut(),
            &mut next,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(last_error());
    }
    if next == MAILSLOT_NO_MESSAGE {
        return Ok(0);
    }
    if next > MAX_DISCARD {
        return Err(io::Error::other(format!(
            "the next message is {next} bytes, too large even to drop"
        )));
    }
    let mut buf = vec![0u8; next as usize];
    Ok(read(h, &mut buf)? as u32)
}

/// Reads one message into `buf`; its length.
fn read(h: &OwnedHandle, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0u32;
    // SAFETY: the handle is open for the borrow's duration; `buf` is valid for `buf.len()`
    // bytes (at most the 64 MiB discard limit, so the u32 cast is exact) and `n` for a write;
    // no OVERLAPPED (the handle is synchronous).
    let ok = unsafe {
        ReadFile(
            h.as_raw_handle(),
            buf.as_mut_ptr(),
            buf.len() as u32,
            &mut n,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(last_error());
    }
    Ok(n as usize)
}

/// The one receiving connection.
struct Receiver {
    rx: mpsc::Receiver<Result<Bytes>>,
    thread: Option<JoinHandle<()>>,
    done: bool,
    info: ConnectionInfo,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Closing the queue makes the thread stop at its next read timeout (or at once if it
        // waits on a full queue); joining means the mailslot is closed when drop returns.
        self.rx.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Stream for Receiver {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Ok(b)) => Poll::Ready(Some(Ok(b))),
            Some(Err(e)) => {
                // An oversized message is dropped and reported; anything else ends reading.
                if e.kind() != ErrorKind::FrameTooLarge {
                    self.done = true;
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

receive_only!(Receiver, super::send_on_receiver);

fn open(path: &str) -> io::Result<OwnedHandle> {
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated and outlives the call; the other arguments are flags
    // and null pointers the API accepts.
    let h = unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    owned(h)
}

fn write(h: &OwnedHandle, msg: &[u8]) -> io::Result<()> {
    let mut written = 0u32;
    // SAFETY: the handle is open for the borrow's duration; `msg` is valid for `msg.len()`
    // bytes (at most 200 KiB, so the u32 cast is exact) and `written` for a write.
    let ok = unsafe {
        WriteFile(
            h.as_raw_handle(),
            msg.as_ptr(),
            msg.len() as u32,
            &mut written,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(last_error());
    }
    if written as usize != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the mailslot took {written} of {} bytes", msg.len()),
        ));
    }
    Ok(())
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    let caps = cfg.caps;
    let path = slot_path(cfg.server.as_deref(), &cfg.name);
    let remote = cfg.server.is_some();
    let opened = if remote {
        let p = path.clone();
        open_blocking(ep, move || open(&p)).await?
    } else {
        open(&path)
    };
    let handle = opened.map_err(|e| {
        if is_not_found(&e) {
            Error::new(
                ErrorKind::NotFound,
                ep,
                format!("no receiver has created {path}"),
            )
            .with_source(e)
        } else {
            Error::io(ep, format!("open {path}"), e)
        }
    })?;
    Ok(Box::new(Sender {
        handle: Arc::new(handle),
        remote,
        writing: None,
        outbox: Outbox::default(),
        recv_reported: false,
        info: ConnectionInfo {
            endpoint: ep.clone(),
            peer: Some(path),
            capabilities: caps,
        },
    }))
}

/// A sending connection.
struct Sender {
    handle: Arc<OwnedHandle>,
    remote: bool,
    /// A remote write running on the blocking pool.
    writing: Option<tokio::task::JoinHandle<io::Result<()>>>,
    outbox: Outbox,
    recv_reported: bool,
    info: ConnectionInfo,
}

impl Sender {
    fn write_err(&self, e: io::Error) -> Error {
        Error::io(&self.info.endpoint, "write to the mailslot", e)
    }
}

send_only!(Sender, super::recv_on_sender);

impl DatagramSend for Sender {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn poll_send_datagram(&mut self, cx: &mut Context<'_>, d: &Bytes) -> Poll<Result<()>> {
        if !self.remote {
            // A local mailslot write only queues the message in the OS: it does not block.
            return Poll::Ready(write(&self.handle, d).map_err(|e| self.write_err(e)));
        }
        let task = self.writing.get_or_insert_with(|| {
            let (h, d) = (self.handle.clone(), d.clone());
            tokio::task::spawn_blocking(move || write(&h, &d))
        });
        let r = ready!(Pin::new(task).poll(cx));
        self.writing = None;
        Poll::Ready(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.write_err(e)),
            Err(e) => Err(Error::new(
                ErrorKind::Io,
                &self.info.endpoint,
                format!("write task failed: {e}"),
            )),
        })
    }
}

datagram_sink!(Sender);
