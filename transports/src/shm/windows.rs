//! Windows side of `shm://`: a named pipe names the listener and carries the set-up; each
//! connection gets an unnamed pagefile-backed section with both rings and four unnamed
//! auto-reset events, duplicated straight into the client process.
//!
//! Set-up, per connection:
//! 1. The client opens `\\.\pipe\ductwork-shm-<name>` (local clients only) and sends the
//!    16-byte hello: `DWSHMhi2` and its `max_frame` (u64 LE), which the listener keeps as the
//!    limit of what it sends.
//! 2. The server learns the client's process id from the pipe
//!    (`GetNamedPipeClientProcessId`), opens it (`PROCESS_DUP_HANDLE | SYNCHRONIZE`: this
//!    fails for a process of another user), checks its limits (`max_conns`, `max_memory`;
//!    over one the client gets `DWSHMno2` naming it), creates the section
//!    (`CreateFileMappingW`) and
//!    the events (`CreateEventW`), maps the section, writes the segment header, duplicates the
//!    section and the four events into the client (`DuplicateHandle`) and sends the 72-byte
//!    reply `DWSHMok2`, capacity, segment length, its `max_frame` and the five handle values
//!    (u64 LE each).
//!    No object has a name, so nothing can be squatted or opened by a third process.
//! 3. The client checks the reply and maps exactly the announced length (`MapViewOfFile`
//!    fails if the section is smaller), then checks the segment header.
//!
//! Waiting: one thread per connection blocks in `WaitForMultipleObjects` on our two doorbell
//! events, the peer's process handle and a stop event, and wakes the tokio tasks through
//! `AtomicWaker`s: no tokio worker ever blocks. The peer's process handle is the liveness
//! signal: it becomes signalled when the peer exits or is killed, and the thread then sets
//! the flag every send reads.
//!
//! Memory: the section is pagefile-backed and committed (`SEC_COMMIT`, the default): the
//! system charges its size against the commit limit at creation, so no access can fault for
//! want of backing, and a listener out of commit refuses the client instead. Physical pages
//! are still demand-zero, allocated when first touched, so an idle connection's working set
//! is its header pages. `SEC_RESERVE` would make the commit follow use too, but then each
//! side must commit pages (`VirtualAlloc`) before writing them, and a page the peer did not
//! commit yet faults; the commit charge is bounded by `max_conns` and `max_memory` instead.

use super::{
    conn::{connection, OsLink, Peer, ShmConnection},
    mapped::{Mapped, Unmap},
    ring,
    setup::{
        accept_reply, hello, os_detail, parse_reply, read_hello, refusal, spawn_setup, word,
        Accepted, Limits, QueuedListener, NO_RESOURCES, REPLY_HEAD,
    },
    Config,
};
use crate::common::faults::{is_fatal_accept, Backoff};
use crate::common::windows::{is_not_found, last_error, os_error, owned, pipe_exists, raw};
use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use futures::task::AtomicWaker;
use std::{
    io,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::windows::named_pipe::{ClientOptions, NamedPipeServer, PipeMode, ServerOptions},
};
use windows_sys::Win32::{
    Foundation::{
        DuplicateHandle, DUPLICATE_SAME_ACCESS, ERROR_ACCESS_DENIED, ERROR_NO_DATA,
        ERROR_PIPE_BUSY, HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0,
    },
    System::{
        Memory::{
            CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, FILE_MAP_ALL_ACCESS,
            MEMORY_MAPPED_VIEW_ADDRESS, PAGE_READWRITE,
        },
        Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId},
        Threading::{
            CreateEventW, GetCurrentProcess, OpenProcess, SetEvent, WaitForMultipleObjects,
            INFINITE, PROCESS_DUP_HANDLE, PROCESS_SYNCHRONIZE,
        },
    },
};

/// The set-up reply: the common head, then the five handle values.
const REPLY_LEN: usize = REPLY_HEAD + 5 * 8;

fn pipe_path(ep: &Endpoint) -> String {
    format!(r"\\.\pipe\ductwork-shm-{}", ep.address())
}

// ----------------------------------------------------------------------------------------
// The mapping.

/// A view of a section.
type View = Mapped<Section>;

/// Unmaps a view with `UnmapViewOfFile`, then closes the section.
struct Section {
    /// Kept open as long as the view (the view alone would keep the section alive too;
    /// explicit).
    _handle: OwnedHandle,
}

impl Unmap for Section {
    fn unmap(&mut self, ptr: *mut u8, _len: usize) {
        // SAFETY: `Mapped` calls this once, for the view `map_view` mapped, when nothing uses
        // it any more.
        unsafe { UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: ptr.cast() }) };
    }
}

/// Maps `len` bytes of `section`; fails if the section is smaller.
fn map_view(section: OwnedHandle, len: usize) -> io::Result<View> {
    // SAFETY: a valid section handle; the system chooses the address. Fails if the
    // section is smaller than `len`.
    let v = unsafe { MapViewOfFile(raw(&section), FILE_MAP_ALL_ACCESS, 0, 0, len) };
    if v.Value.is_null() {
        return Err(last_error());
    }
    // SAFETY: `v` is a live view of `len` bytes (64 KiB-aligned) until `Section` unmaps it;
    // sections cannot shrink, so no access within `len` faults.
    Ok(unsafe { Mapped::new(v.Value.cast(), len, Section { _handle: section }) })
}

fn create_section(len: usize) -> io::Result<OwnedHandle> {
    let len = len as u64;
    // SAFETY: pagefile-backed (INVALID_HANDLE_VALUE), unnamed, default security (the handle
    // is only ever duplicated into our peer).
    owned(unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_READWRITE,
            (len >> 32) as u32,
            len as u32,
            std::ptr::null(),
        )
    })
}

fn new_event() -> io::Result<OwnedHandle> {
    // SAFETY: an unnamed auto-reset event, initially unsignalled.
    owned(unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) })
}

/// Duplicates `h` into `process`, returning the handle value valid there.
fn dup_into(process: &OwnedHandle, h: &OwnedHandle) -> io::Result<u64> {
    let mut out: HANDLE = std::ptr::null_mut();
    // SAFETY: both handles are valid; `out` is valid for a write.
    let ok = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            raw(h),
            raw(process),
            &mut out,
            0,
            0,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if ok == 0 {
        return Err(last_error());
    }
    Ok(out as usize as u64)
}

fn open_process(pid: u32, access: u32) -> io::Result<OwnedHandle> {
    // SAFETY: plain call; the result is checked.
    owned(unsafe { OpenProcess(access, 0, pid) })
}

// ----------------------------------------------------------------------------------------
// Doorbells and liveness.

/// Handles the waiter thread needs; shared so they outlive it.
struct Handles {
    data: OwnedHandle,
    space: OwnedHandle,
    peer_process: OwnedHandle,
    stop: OwnedHandle,
}

#[derive(Default)]
struct Flags {
    data: AtomicBool,
    space: AtomicBool,
    gone: AtomicBool,
    w_data: AtomicWaker,
    w_space: AtomicWaker,
    w_gone_rx: AtomicWaker,
    w_gone_tx: AtomicWaker,
}

struct Link {
    flags: Arc<Flags>,
    handles: Arc<Handles>,
    peer_data: OwnedHandle,
    peer_space: OwnedHandle,
    /// Kept open for the life of the connection.
    _pipe: Box<dyn Send + Sync>,
}

fn waiter(handles: Arc<Handles>, flags: Arc<Flags>) {
    let list = [
        raw(&handles.data),
        raw(&handles.space),
        raw(&handles.peer_process),
        raw(&handles.stop),
    ];
    loop {
        // SAFETY: four valid handles, kept alive by `handles` for the whole call.
        let r = unsafe { WaitForMultipleObjects(4, list.as_ptr(), 0, INFINITE) };
        match r.wrapping_sub(WAIT_OBJECT_0) {
            0 => {
                flags.data.store(true, Ordering::SeqCst);
                flags.w_data.wake();
            }
            1 => {
                flags.space.store(true, Ordering::SeqCst);
                flags.w_space.wake();
            }
            3 => return,
            // The peer process ended (2), or waiting failed: either way we can no longer
            // hear from the peer.
            _ => {
                flags.gone.store(true, Ordering::SeqCst);
                flags.w_gone_rx.wake();
                flags.w_gone_tx.wake();
                flags.w_data.wake();
                flags.w_space.wake();
                return;
            }
        }
    }
}

fn poll_flag(flag: &AtomicBool, waker: &AtomicWaker, cx: &mut Context<'_>, clear: bool) -> bool {
    let take = |f: &AtomicBool| {
        if clear {
            f.swap(false, Ordering::SeqCst)
        } else {
            f.load(Ordering::SeqCst)
        }
    };
    if take(flag) {
        return true;
    }
    waker.register(cx.waker());
    take(flag)
}

fn set(h: &OwnedHandle) -> io::Result<()> {
    // SAFETY: a valid event handle.
    if unsafe { SetEvent(raw(h)) } == 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

impl OsLink for Link {
    fn poll_data(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if poll_flag(&self.flags.data, &self.flags.w_data, cx, true) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn poll_space(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if poll_flag(&self.flags.space, &self.flags.w_space, cx, true) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn ring_data(&self) -> io::Result<()> {
        set(&self.peer_data)
    }
    fn ring_space(&self) -> io::Result<()> {
        set(&self.peer_space)
    }
    fn poll_gone_rx(&self, cx: &mut Context<'_>) -> Poll<()> {
        if poll_flag(&self.flags.gone, &self.flags.w_gone_rx, cx, false) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
    fn poll_gone_tx(&self, cx: &mut Context<'_>) -> Poll<()> {
        if poll_flag(&self.flags.gone, &self.flags.w_gone_tx, cx, false) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
    fn peer_gone(&self) -> bool {
        self.flags.gone.load(Ordering::Acquire)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The waiter thread returns; it holds its own Arc of the handles.
        let _ = set(&self.handles.stop);
    }
}

fn link(
    pipe: Box<dyn Send + Sync>,
    peer_process: OwnedHandle,
    data: OwnedHandle,
    space: OwnedHandle,
    peer_data: OwnedHandle,
    peer_space: OwnedHandle,
) -> io::Result<Link> {
    let handles = Arc::new(Handles {
        data,
        space,
        peer_process,
        stop: new_event()?,
    });
    let flags = Arc::new(Flags::default());
    let (h, f) = (handles.clone(), flags.clone());
    std::thread::Builder::new()
        .name("ductwork-shm-wait".into())
        .spawn(move || waiter(h, f))?;
    Ok(Link {
        flags,
        handles,
        peer_data,
        peer_space,
        _pipe: pipe,
    })
}

// ----------------------------------------------------------------------------------------
// Listener.

fn create_instance(path: &str, first: bool) -> io::Result<NamedPipeServer> {
    ServerOptions::new()
        .pipe_mode(PipeMode::Byte)
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .create(path)
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<QueuedListener> {
    let path = pipe_path(ep);
    let in_use = || {
        Error::new(
            ErrorKind::AddrInUse,
            ep,
            "another process is listening on this shm name",
        )
    };
    if pipe_exists(&path) {
        return Err(in_use());
    }
    let first = create_instance(&path, true).map_err(|e| match os_error(&e) {
        Some(ERROR_ACCESS_DENIED) | Some(ERROR_PIPE_BUSY) => in_use().with_source(e),
        _ => Error::bind(ep, "create the named pipe", e),
    })?;
    let ep2 = ep.clone();
    let limits = Limits::new(
        ep,
        cfg.max_conns,
        cfg.max_memory,
        ring::segment_len(cfg.capacity),
    );
    Ok(QueuedListener::start(ep, Box::new(()), |tx| {
        accept_loop(first, path, ep2, cfg, limits, tx)
    }))
}

/// Keeps one pipe instance waiting, and runs each connected client's set-up in its own task
/// (see `spawn_setup`). Transient errors (no next instance, a failed wait) are logged and
/// retried with a backoff; only a broken pipe handle ends the loop and reaches `accept`.
async fn accept_loop(
    mut next: NamedPipeServer,
    path: String,
    ep: Endpoint,
    cfg: Config,
    limits: Arc<Limits>,
    tx: Accepted,
) {
    let mut backoff = Backoff::default();
    loop {
        let r = next.connect().await;
        // Always keep an instance waiting: create the next one before handing this out.
        let fresh = match create_instance(&path, false) {
            Ok(f) => f,
            Err(e) => {
                // `next` is kept: when it is connected its client fails its set-up and
                // retries; when it is not, it waits again.
                backoff.wait(&ep, "create the next pipe instance", &e).await;
                continue;
            }
        };
        let conn = std::mem::replace(&mut next, fresh);
        match r {
            Ok(()) => backoff.reset(),
            Err(e) if os_error(&e) == Some(ERROR_NO_DATA) => continue,
            Err(e) if is_fatal_accept(&e) => {
                let _ = tx
                    .send(Err(Error::io(&ep, "accept (the listener is broken)", e)))
                    .await;
                return;
            }
            Err(e) => {
                backoff.wait(&ep, "accept", &e).await;
                continue;
            }
        }
        let (ep2, limits) = (ep.clone(), limits.clone());
        spawn_setup(&tx, &ep, async move {
            serve_handshake(conn, &ep2, cfg, &limits).await
        });
    }
}

async fn serve_handshake(
    mut pipe: NamedPipeServer,
    ep: &Endpoint,
    cfg: Config,
    limits: &Arc<Limits>,
) -> Result<ShmConnection> {
    let client_max_frame = read_hello(&mut pipe, ep, REPLY_LEN).await?;
    // Over a limit: refused before anything is made for the client.
    let slot = match limits.take() {
        Ok(slot) => slot,
        Err((code, limit)) => {
            let _ = pipe.write_all(&refusal(REPLY_LEN, code, limit)).await;
            return Err(Error::new(
                ErrorKind::Refused,
                ep,
                format!("refused a client: the listener is at its limit ({limit})"),
            ));
        }
    };
    let mut pid = 0u32;
    // SAFETY: the pipe handle is valid while `pipe` lives; `pid` is valid for a write.
    if unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(Error::io(ep, "identify the client process", last_error()));
    }
    let setup = || -> io::Result<_> {
        let client = open_process(pid, PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE)?;
        let len = ring::segment_len(cfg.capacity);
        let section = create_section(len)?;
        let dup_section = dup_into(&client, &section)?;
        let view = Arc::new(map_view(section, len)?);
        ring::init_segment(&*view, cfg.capacity);
        let events = [new_event()?, new_event()?, new_event()?, new_event()?];
        let mut values = [dup_section, 0, 0, 0, 0];
        for (i, e) in events.iter().enumerate() {
            values[i + 1] = dup_into(&client, e)?;
        }
        Ok((client, view, len, events, values))
    };
    let (client, view, len, [c_data, c_space, s_data, s_space], values) = match setup() {
        Ok(made) => made,
        Err(e) => {
            // Tell the client why, so that it does not report a mere "closed".
            let _ = pipe
                .write_all(&refusal(REPLY_LEN, NO_RESOURCES, os_detail(&e)))
                .await;
            return Err(Error::io(ep, "set up the shared segment for the client", e));
        }
    };
    let mut reply = accept_reply(REPLY_LEN, cfg.capacity, len, cfg.max_frame);
    for (i, v) in values.iter().enumerate() {
        let at = REPLY_HEAD + 8 * i;
        reply[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    pipe.write_all(&reply)
        .await
        .map_err(|e| Error::io(ep, "send the set-up reply", e))?;
    let link = link(Box::new(pipe), client, s_data, s_space, c_data, c_space)
        .map_err(|e| Error::io(ep, "start the doorbell waiter", e))?;
    let peer = Peer {
        name: Some(format!("pid {pid}")),
        max_frame: client_max_frame,
        slot: Some(slot),
    };
    Ok(connection(
        ep,
        cfg,
        view,
        cfg.capacity,
        true,
        Box::new(link),
        peer,
    ))
}

// ----------------------------------------------------------------------------------------
// Client.

/// Connects and sets up; `mod.rs` bounds the whole of it by `connect_timeout`.
pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<ShmConnection> {
    let path = pipe_path(ep);
    let mut pipe = loop {
        match ClientOptions::new().pipe_mode(PipeMode::Byte).open(&path) {
            Ok(p) => break p,
            // Every instance busy: retry (the caller's connect_timeout bounds this).
            Err(e) if os_error(&e) == Some(ERROR_PIPE_BUSY) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                return Err(if is_not_found(&e) {
                    Error::new(ErrorKind::NotFound, ep, "no listener has this shm name")
                        .with_source(e)
                } else {
                    Error::io(ep, "open the listener's pipe", e)
                })
            }
        }
    };
    let mut pid = 0u32;
    // SAFETY: the pipe handle is valid while `pipe` lives; `pid` is valid for a write.
    if unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(Error::io(ep, "identify the listener process", last_error()));
    }
    let server = open_process(pid, PROCESS_SYNCHRONIZE)
        .map_err(|e| Error::io(ep, "open the listener process", e))?;
    pipe.write_all(&hello(cfg.max_frame))
        .await
        .map_err(|e| Error::io(ep, "send hello", e))?;
    let mut reply = [0u8; REPLY_LEN];
    pipe.read_exact(&mut reply).await.map_err(|e| {
        Error::new(
            ErrorKind::ConnectionLost,
            ep,
            "the listener closed the connection during set-up without saying why (a \
             listener of an older ductwork version that does not know this hello does that)",
        )
        .with_source(e)
    })?;
    let bad = |why: String| Error::new(ErrorKind::Protocol, ep, why);
    let parsed = parse_reply(ep, &reply, REPLY_LEN)?;
    // The handles were duplicated into this process by the listener: we own them now.
    let mut handles = Vec::with_capacity(5);
    for i in 0..5 {
        let v = word(&reply, REPLY_HEAD + 8 * i);
        if v == 0 || v > u32::MAX as u64 {
            return Err(bad(format!(
                "the listener passed an invalid handle value {v}"
            )));
        }
        // SAFETY: the listener duplicated this handle into our process for us alone; a
        // lying listener can at worst make us close a handle of ours (never memory unsafety
        // in Rust terms, the handle table is the kernel's).
        handles.push(unsafe { OwnedHandle::from_raw_handle(v as usize as RawHandle) });
    }
    let [section, c_data, c_space, s_data, s_space]: [OwnedHandle; 5] =
        handles.try_into().map_err(|_| bad("handles".into()))?;
    let len = parsed.seg_len;
    let view = map_view(section, len)
        .map_err(|e| bad(format!("cannot map the announced {len} bytes: {e}")))?;
    let cap = ring::check_segment(&view).map_err(bad)?;
    let link = link(Box::new(pipe), server, c_data, c_space, s_data, s_space)
        .map_err(|e| Error::io(ep, "start the doorbell waiter", e))?;
    let peer = Peer {
        name: Some(format!("pid {pid}")),
        max_frame: parsed.max_frame,
        slot: None,
    };
    Ok(connection(
        ep,
        cfg,
        Arc::new(view),
        cap,
        false,
        Box::new(link),
        peer,
    ))
}
