//! Linux (and Unix) side of `shm://`: a Unix socket names the listener and carries the
//! set-up; each connection gets a sealed memfd with both rings and four eventfds.
//!
//! Set-up, per connection:
//! 1. The client connects to `<dir>/shm-<name>.sock` and sends the 16-byte hello: `DWSHMhi2`
//!    and its `max_frame` (u64 LE), which the listener keeps as the limit of what it sends.
//! 2. The server checks the client's credentials (same user) and its limits (`max_conns`,
//!    `max_memory`), creates a memfd (`MFD_ALLOW_SEALING`, sized but sparse, sealed against
//!    shrinking and growing so that neither side can make the other's mapping fault for a
//!    missing page of the file), writes the segment header, creates four eventfds
//!    (data/space doorbell for each side), and sends the 32-byte reply `DWSHMok2`, capacity,
//!    segment length, its `max_frame` (u64 LE each) with the five descriptors in one
//!    `SCM_RIGHTS` message. A refused client gets `DWSHMno2`, a reason code and a detail (the
//!    limit, the OS error) instead.
//! 3. The client checks the reply, the server's credentials, the memfd's size and seals, then
//!    maps it and checks the segment header.
//!
//! The Unix socket then stays open, idle, for the life of the connection: when a process
//! dies the kernel closes its end, the survivor's socket becomes readable with end-of-file,
//! and its waiting `recv`/`send` fail with `ConnectionLost`. A watcher task per connection
//! waits for that and sets a flag that every send reads (one atomic load), so a sender that
//! never waits learns of the death at its next send too, not once the ring is full.
//!
//! Memory is committed as used: the memfd is sparse and mapped without `MAP_POPULATE`, so
//! an idle connection costs the pages of its headers (two pages) and a busy one the pages
//! its messages went through, at most the whole segment. The header pages are allocated
//! with `fallocate` at set-up, so that a failure there is a refusal. A data page is
//! allocated when first written; a memfd lives on the kernel's internal tmpfs mount, which
//! has no size limit, so that allocation does not fail with `SIGBUS` the way a full
//! `/dev/shm` file would: out of memory is handled as for any anonymous memory (reclaim,
//! then the OOM killer or the memory cgroup's limit). The one exception is strict
//! overcommit (`vm.overcommit_memory=2`) with the commit limit reached, where the kernel
//! raises `SIGBUS` in the process that touches a new page; preallocating every ring to
//! avoid that cost 8 MiB per idle connection (and took the listener down with the OOM
//! killer at about 1,500 clients), so the rings are sparse and `max_conns`/`max_memory`
//! bound the worst case instead.
//!
//! Doorbells: each eventfd is registered with tokio (edge-triggered epoll). Ringing is one
//! `write(2)`; the woken side reads nothing (Linux signals an edge per write), so a parked
//! message costs the ringer's write and the waiter's `epoll_wait`, nothing else.

use super::{
    conn::Peer,
    conn::{connection, OsLink, ShmConnection},
    mapped::{Mapped, Unmap},
    ring::{self, SharedRegion},
    setup::{
        accept_reply, hello, os_detail, parse_reply, read_hello, refusal, spawn_setup, Accepted,
        Limits, QueuedListener, Reply, NO_OTHER_USER, NO_RESOURCES, REPLY_HEAD,
    },
    Config,
};
use crate::common::faults::{is_fatal_accept, Backoff};
use crate::common::unix::{bind_socket_file, credentials, peer_credentials, Probe};
use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use futures::task::AtomicWaker;
use rustix::{
    event::{eventfd, EventfdFlags},
    fs::{MemfdFlags, SealFlags},
    mm::{MapFlags, ProtFlags},
    net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    },
};
use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};
use tokio::{
    io::{unix::AsyncFd, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
    task::JoinHandle,
};

/// The set-up reply: the common head, the objects travel as `SCM_RIGHTS`.
const REPLY_LEN: usize = REPLY_HEAD;

/// `shm-<name>.sock` in the private per-user directory shared with `pipe://` and
/// `mailslot://` (see `crate::common::unix`: created 0700, refused if someone else could use it).
fn socket_path(ep: &Endpoint) -> Result<PathBuf> {
    crate::common::unix::socket_path(ep, "shm", ep.address())
}

// ----------------------------------------------------------------------------------------
// The mapping.

/// A shared mapping of a memfd.
type Mapping = Mapped<Munmap>;

/// Unmaps a memfd mapping with `munmap`.
struct Munmap;

impl Unmap for Munmap {
    fn unmap(&mut self, ptr: *mut u8, len: usize) {
        // SAFETY: `Mapped` calls this once, for exactly the range `map` mapped, when nothing
        // uses it any more.
        let _ = unsafe { rustix::mm::munmap(ptr.cast(), len) };
    }
}

/// Maps `len` bytes of `fd`. Pages are not populated: each is allocated (and faulted in)
/// when first touched, so memory follows use (see the module docs).
fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object;
    // `fd` is a memfd at least `len` bytes long, sealed against shrinking (callers check).
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    // SAFETY: `ptr` is a live MAP_SHARED mapping of `len` bytes (page-aligned, so
    // 128-aligned) until `Munmap` unmaps it, and the memfd is sealed against shrinking, so no
    // access within `len` faults.
    Ok(unsafe { Mapped::new(ptr.cast(), len, Munmap) })
}

/// Creates a sealed, sparse memfd for rings of `capacity` bytes and maps it; only the pages
/// of the headers are allocated now (see the module docs).
fn create_segment(capacity: usize) -> io::Result<(OwnedFd, Arc<Mapping>)> {
    let len = ring::segment_len(capacity);
    let fd = rustix::fs::memfd_create(
        "ductwork-shm",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    // The pages `init_segment` and every idle wait write (the segment header, both ring
    // headers and the first record word of each ring): allocated now, so that running out
    // of memory is a refusal here rather than a fault in `init_segment`.
    for start in [0, ring::SEGMENT_HEADER + ring::RING_HEADER + capacity] {
        let (from, to) = (
            start / 4096 * 4096,
            (start + 2 * ring::RING_HEADER).min(len),
        );
        rustix::fs::fallocate(
            &fd,
            rustix::fs::FallocateFlags::empty(),
            from as u64,
            (to - from) as u64,
        )?;
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    let map = Arc::new(map(&fd, len)?);
    ring::init_segment(&*map, capacity);
    Ok((fd, map))
}

/// Maps a memfd received from the server after checking its size and seals.
fn map_received(fd: &OwnedFd, len: usize) -> std::result::Result<Arc<Mapping>, String> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| format!("the shared segment is not a sealed memfd: {e}"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err("the shared segment is not sealed against shrinking".into());
    }
    let size = rustix::fs::fstat(fd)
        .map_err(|e| format!("fstat of the shared segment: {e}"))?
        .st_size;
    if size < 0 || (size as u64) < len as u64 {
        return Err(format!(
            "the shared segment has {size} bytes, less than the announced {len}"
        ));
    }
    map(fd, len)
        .map(Arc::new)
        .map_err(|e| format!("mmap of the shared segment: {e}"))
}

// ----------------------------------------------------------------------------------------
// Doorbells and liveness.

fn new_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// The OS side of one connection.
struct Link {
    /// Our doorbells: the peer rings them, we wait on them.
    data: AsyncFd<OwnedFd>,
    space: AsyncFd<OwnedFd>,
    /// The peer's doorbells.
    peer_data: OwnedFd,
    peer_space: OwnedFd,
    /// The Unix socket to the peer, for the receiving side's wait; a dup of it is the
    /// watcher's, which sets `gone`.
    gone_rx: AsyncFd<OwnedFd>,
    gone: Arc<Gone>,
    /// The watcher task, stopped with the link (it holds the dup of the socket).
    watcher: JoinHandle<()>,
}

/// The peer's death as the watcher saw it: a flag for every send, a waker for a waiting one.
#[derive(Default)]
struct Gone {
    flag: AtomicBool,
    waker: AtomicWaker,
}

/// Waits (on its own task) until the peer's end of the socket closes, then sets the flag and
/// wakes a sender waiting for space.
fn watch(socket: AsyncFd<OwnedFd>, gone: Arc<Gone>) -> JoinHandle<()> {
    tokio::spawn(async move {
        std::future::poll_fn(|cx| poll_gone(&socket, cx)).await;
        gone.flag.store(true, Ordering::Release);
        gone.waker.wake();
    })
}

impl Drop for Link {
    fn drop(&mut self) {
        // The watcher's future (and its dup of the socket) goes with the task, so the peer
        // sees the socket close once this connection is gone.
        self.watcher.abort();
    }
}

fn poll_eventfd(fd: &AsyncFd<OwnedFd>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    // The counter is never read: tokio registers the fd edge-triggered, and Linux reports
    // an edge for every write to an eventfd, even one that is still readable (mio's own
    // waker relies on the same). So clearing tokio's readiness is all a wait needs, and a
    // wake-up costs no read(2). The ringing side resets a saturated counter.
    let mut guard = ready!(fd.poll_read_ready(cx))?;
    guard.clear_ready();
    Poll::Ready(Ok(()))
}

fn poll_gone(fd: &AsyncFd<OwnedFd>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        let Ok(mut guard) = ready!(fd.poll_read_ready(cx)) else {
            return Poll::Ready(());
        };
        let mut buf = [0u8; 1];
        let peek = guard.try_io(|inner| {
            Ok(rustix::net::recv(
                inner.get_ref(),
                &mut buf,
                RecvFlags::PEEK | RecvFlags::DONTWAIT,
            )?)
        });
        match peek {
            // End of file (the peer's process closed the socket: it exited or died), an
            // error, or bytes the peer must never send after set-up: the peer is gone or
            // broken either way.
            Ok(_) => return Poll::Ready(()),
            Err(_would_block) => continue,
        }
    }
}

fn ring_eventfd(fd: &OwnedFd) -> io::Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) => Ok(()),
        // EAGAIN: the counter is saturated (nobody reads it, see `poll_eventfd`; only after
        // 2^64 rings or a peer writing huge values). Drain it and ring again.
        Err(rustix::io::Errno::AGAIN) => {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd, &mut buf);
            match rustix::io::write(fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

impl OsLink for Link {
    fn poll_data(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_eventfd(&self.data, cx)
    }
    fn poll_space(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_eventfd(&self.space, cx)
    }
    fn ring_data(&self) -> io::Result<()> {
        ring_eventfd(&self.peer_data)
    }
    fn ring_space(&self) -> io::Result<()> {
        ring_eventfd(&self.peer_space)
    }
    fn poll_gone_rx(&self, cx: &mut Context<'_>) -> Poll<()> {
        poll_gone(&self.gone_rx, cx)
    }
    fn poll_gone_tx(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.peer_gone() {
            return Poll::Ready(());
        }
        self.gone.waker.register(cx.waker());
        if self.peer_gone() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
    fn peer_gone(&self) -> bool {
        self.gone.flag.load(Ordering::Acquire)
    }
}

/// Makes a received descriptor non-blocking (the peer chose its flags) and registers it.
fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open and unchanged for
    // its whole life; nothing else closes or replaces this descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

fn link(
    socket: UnixStream,
    data: OwnedFd,
    space: OwnedFd,
    peer_data: OwnedFd,
    peer_space: OwnedFd,
) -> io::Result<Link> {
    let socket: OwnedFd = socket.into_std()?.into();
    let dup = async_fd(socket.try_clone()?)?;
    let gone = Arc::new(Gone::default());
    Ok(Link {
        data: async_fd(data)?,
        space: async_fd(space)?,
        peer_data,
        peer_space,
        gone_rx: async_fd(socket)?,
        gone: gone.clone(),
        watcher: watch(dup, gone),
    })
}

// ----------------------------------------------------------------------------------------
// Listener.

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<QueuedListener> {
    let path = socket_path(ep)?;
    let (listener, guard) = bind_socket_file(
        ep,
        &path,
        Probe::Stream,
        "another process is listening on this shm name",
        0o600,
        UnixListener::bind,
    )
    .await?;
    let ep2 = ep.clone();
    let limits = Limits::new(
        ep,
        cfg.max_conns,
        cfg.max_memory,
        ring::segment_len(cfg.capacity),
    );
    Ok(QueuedListener::start(ep, Box::new(guard), |tx| {
        accept_loop(listener, ep2, cfg, limits, tx)
    }))
}

/// Accepts sockets and runs each set-up in its own task (see `spawn_setup`). Transient accept
/// errors (out of descriptors, ...) are logged and retried with a backoff; only an error that
/// means the listening socket is broken ends the loop and reaches `accept`.
async fn accept_loop(
    listener: UnixListener,
    ep: Endpoint,
    cfg: Config,
    limits: Arc<Limits>,
    tx: Accepted,
) {
    let mut backoff = Backoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                let (ep2, limits, cfg) = (ep.clone(), limits.clone(), cfg.clone());
                spawn_setup(&tx, &ep, async move {
                    serve_handshake(stream, &ep2, cfg, &limits).await
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) if is_fatal_accept(&e) => {
                let _ = tx
                    .send(Err(Error::io(&ep, "accept (the listener is broken)", e)))
                    .await;
                return;
            }
            Err(e) => backoff.wait(&ep, "accept", &e).await,
        }
    }
}

async fn serve_handshake(
    mut stream: UnixStream,
    ep: &Endpoint,
    cfg: Config,
    limits: &Arc<Limits>,
) -> Result<ShmConnection> {
    let peer = peer_credentials(&stream);
    // The hello is read first, so that a refused client is reading when the refusal comes
    // (it would otherwise fail writing its hello to a closed socket and never hear why).
    let client_max_frame = read_hello(&mut stream, ep, REPLY_LEN).await?;
    let creds = credentials(&stream);
    if !cfg.policy.admits(creds) {
        let uid = creds.map_or("unknown".into(), |c| c.uid.to_string());
        let _ = stream
            .write_all(&refusal(REPLY_LEN, NO_OTHER_USER, 0))
            .await;
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            ep,
            format!("refused a client of uid {uid}"),
        ));
    }
    // Over a limit: refused before anything is made for the client.
    let slot = match limits.take() {
        Ok(slot) => slot,
        Err((code, limit)) => {
            let _ = stream.write_all(&refusal(REPLY_LEN, code, limit)).await;
            return Err(Error::new(
                ErrorKind::Refused,
                ep,
                format!("refused a client: the listener is at its limit ({limit})"),
            ));
        }
    };
    let setup = || -> io::Result<_> {
        let (memfd, map) = create_segment(cfg.capacity)?;
        Ok((
            memfd,
            map,
            [
                new_eventfd()?,
                new_eventfd()?,
                new_eventfd()?,
                new_eventfd()?,
            ],
        ))
    };
    let (memfd, map, [c_data, c_space, s_data, s_space]) = match setup() {
        Ok(made) => made,
        Err(e) => {
            // Tell the client why, so that it does not report a mere "closed".
            let _ = stream
                .write_all(&refusal(REPLY_LEN, NO_RESOURCES, os_detail(&e)))
                .await;
            return Err(Error::io(
                ep,
                "create the shared segment and doorbells for a client",
                e,
            ));
        }
    };
    let reply = accept_reply(REPLY_LEN, cfg.capacity, map.len(), cfg.max_frame);
    let fds = [
        memfd.as_fd(),
        c_data.as_fd(),
        c_space.as_fd(),
        s_data.as_fd(),
        s_space.as_fd(),
    ];
    send_with_fds(&stream, &reply, &fds, ep).await?;
    drop(memfd);
    let link = link(stream, s_data, s_space, c_data, c_space)
        .map_err(|e| Error::io(ep, "register the doorbells", e))?;
    let peer = Peer {
        name: peer,
        max_frame: client_max_frame,
        slot: Some(slot),
    };
    let capacity = cfg.capacity;
    Ok(connection(
        ep,
        cfg,
        map,
        capacity,
        true,
        Box::new(link),
        peer,
    ))
}

/// Sends the accepting reply with the five descriptors in one `SCM_RIGHTS` message.
async fn send_with_fds(
    stream: &UnixStream,
    reply: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>; 5],
    ep: &Endpoint,
) -> Result<()> {
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
            let mut ctl = SendAncillaryBuffer::new(&mut space);
            ctl.push(SendAncillaryMessage::ScmRights(fds));
            Ok(rustix::net::sendmsg(
                stream,
                &[IoSlice::new(reply)],
                &mut ctl,
                SendFlags::NOSIGNAL,
            )?)
        })
        .await
        .map_err(|e| Error::io(ep, "send the shared segment to the client", e))?;
    if sent != reply.len() {
        return Err(Error::new(ErrorKind::Io, ep, "short set-up reply"));
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Client.

/// Connects and sets up; `mod.rs` bounds the whole of it by `connect_timeout`.
pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<ShmConnection> {
    let path = socket_path(ep)?;
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::new(ErrorKind::NotFound, ep, "no listener has this shm name").with_source(e)
            }
            _ => Error::io(ep, "connect", e),
        })?;
    cfg.policy.check_listener(ep, credentials(&stream))?;
    let peer = peer_credentials(&stream);
    stream
        .write_all(&hello(cfg.max_frame))
        .await
        .map_err(|e| Error::io(ep, "send hello", e))?;
    let (reply, [memfd, c_data, c_space, s_data, s_space]) = receive_reply(&stream, ep).await?;
    let bad = |why: String| Error::new(ErrorKind::Protocol, ep, why);
    let map = map_received(&memfd, reply.seg_len).map_err(bad)?;
    drop(memfd);
    let cap = ring::check_segment(&*map).map_err(bad)?;
    let link = link(stream, c_data, c_space, s_data, s_space)
        .map_err(|e| Error::io(ep, "register the doorbells", e))?;
    let peer = Peer {
        name: peer,
        max_frame: reply.max_frame,
        slot: None,
    };
    Ok(connection(ep, cfg, map, cap, false, Box::new(link), peer))
}

/// Receives the listener's set-up reply and its five descriptors (memfd, client data, client
/// space, server data, server space), or the error that says why there are none.
async fn receive_reply(stream: &UnixStream, ep: &Endpoint) -> Result<(Reply, [OwnedFd; 5])> {
    let mut reply = [0u8; REPLY_LEN];
    let (n, fds, truncated) = stream
        .async_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
            let mut ctl = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut reply)],
                &mut ctl,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for msg in ctl.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = msg {
                    fds.extend(rights);
                }
            }
            Ok((got.bytes, fds, got.flags.contains(ReturnFlags::CTRUNC)))
        })
        .await
        .map_err(|e| Error::io(ep, "receive the shared segment", e))?;
    let bad = |why: &str| Error::new(ErrorKind::Protocol, ep, why.to_string());
    if n == 0 {
        return Err(Error::new(
            ErrorKind::ConnectionLost,
            ep,
            "the listener closed the connection during set-up without saying why (a \
             listener of an older ductwork version that does not know this hello does that)",
        ));
    }
    let reply = parse_reply(ep, &reply[..n], REPLY_LEN)?;
    match fds.try_into() {
        Ok(fds) => Ok((reply, fds)),
        // The kernel drops passed descriptors this process has no room for (MSG_CTRUNC).
        Err(_) if truncated => Err(Error::new(
            ErrorKind::Io,
            ep,
            "this process ran out of file descriptors: the kernel dropped the shared segment \
             and doorbells the listener passed (raise `ulimit -n` or close descriptors)",
        )),
        Err(_) => Err(bad("the listener passed the wrong number of descriptors")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(fd: &OwnedFd) -> Option<u64> {
        let mut buf = [0u8; 8];
        rustix::io::read(fd, &mut buf)
            .ok()
            .map(|_| u64::from_ne_bytes(buf))
    }

    #[test]
    fn ringing_a_saturated_doorbell_resets_it_and_rings() {
        let fd = new_eventfd().unwrap();
        ring_eventfd(&fd).unwrap();
        ring_eventfd(&fd).unwrap();
        assert_eq!(counter(&fd), Some(2), "rings add up while nobody reads");
        // The largest value an eventfd holds: one more write would block.
        rustix::io::write(&fd, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        ring_eventfd(&fd).unwrap();
        assert_eq!(counter(&fd), Some(1), "drained, then rung once");
        assert_eq!(counter(&fd), None, "nothing left");
    }
}
