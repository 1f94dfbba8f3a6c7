//! The Win32 side of `copydata://`: the receiver's message-only window pumped on its own
//! thread, and the sender's `SendMessageTimeoutW` calls on tokio's blocking pool.
//!
//! Receiver: a dedicated thread takes the name mutex, registers the window class, creates the
//! window and runs a `GetMessageW` loop. Its window procedure validates each `WM_COPYDATA`,
//! copies the block (valid only during the message) and hands it to the async side through an
//! unbounded channel whose bytes are bounded by a semaphore budget: when the budget is spent
//! the pump thread waits, which makes the sender's `SendMessageTimeoutW` wait (backpressure).
//! Dropping the listener and its connection stops the thread, which destroys the window,
//! unregisters the class and releases the mutex, in that order.

use super::{Config, ACCEPTED, CLASS_PREFIX, MAGIC, RECEIVER_CLOSED, REFUSED_TOO_LARGE};
use crate::common::oneway::{receive_only, SharedReceiver};
use crate::common::windows::{last_error, wide};
use bytes::Bytes;
use ductwork_core::{
    BoxConnection, BoxListener, Connection, ConnectionInfo, Endpoint, Error, ErrorKind, Result,
};
use futures::{ready, Sink, Stream};
use std::{
    cell::RefCell,
    ffi::c_void,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};
use tokio::{
    sync::{mpsc, oneshot, Semaphore},
    task::JoinHandle,
};
use windows_sys::Win32::{
    Foundation::{
        CloseHandle, GetLastError, ERROR_INVALID_WINDOW_HANDLE, ERROR_TIMEOUT, HANDLE, HWND,
        LPARAM, LRESULT, WAIT_ABANDONED, WAIT_OBJECT_0, WPARAM,
    },
    System::{
        DataExchange::COPYDATASTRUCT,
        LibraryLoader::GetModuleHandleW,
        Threading::{
            CreateMutexW, GetCurrentProcessId, GetCurrentThreadId, ReleaseMutex,
            WaitForSingleObject,
        },
    },
    UI::WindowsAndMessaging::{
        CreateWindowExW, DefWindowProcW, DestroyWindow, DispatchMessageW, FindWindowExW,
        GetMessageW, GetWindowThreadProcessId, IsWindow, PostThreadMessageW, RegisterClassExW,
        SendMessageTimeoutW, UnregisterClassW, HWND_MESSAGE, MSG, SMTO_ABORTIFHUNG, SMTO_BLOCK,
        WM_CLOSE, WM_COPYDATA, WM_NULL, WNDCLASSEXW,
    },
};

/// Bytes charged per queued frame on top of its length, so empty frames are bounded too.
const FRAME_OVERHEAD: usize = 64;
/// The receiver's queue holds at least this many unread bytes (and always one largest frame).
const MIN_BUDGET: usize = 4 << 20;
/// Stack for the pump thread beyond the largest frame (see `bind`).
const PUMP_STACK_SPARE: usize = 4 << 20;
/// How long `connect` looks for the receiver's window before it reports `NotFound`.
const FIND_DEADLINE: Duration = Duration::from_secs(1);

fn class_name(name: &str) -> Vec<u16> {
    wide(&format!("{CLASS_PREFIX}{name}"))
}

fn cost(len: usize) -> u32 {
    u32::try_from(len.saturating_add(FRAME_OVERHEAD)).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Receiver

/// What the window procedure of this pump thread delivers to.
struct PumpState {
    max: usize,
    tx: mpsc::UnboundedSender<Bytes>,
    budget: Arc<Semaphore>,
}

thread_local! {
    /// Set on a pump thread before its window exists; the window procedure runs on that thread.
    // Clippy 1.96 reports this already-const initializer as "can be made const" (false positive).
    #[allow(clippy::missing_const_for_thread_local)]
    static PUMP: RefCell<Option<PumpState>> = const { RefCell::new(None) };
}

/// The window procedure of every receiver window.
unsafe extern "system" fn wndproc(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    match msg {
        WM_COPYDATA => on_copydata(lparam),
        // Anyone in the session may post WM_CLOSE; only the pump thread itself ends the window.
        WM_CLOSE => 0,
        // SAFETY: the arguments are the ones the system passed to this window procedure.
        _ => unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) },
    }
}

/// Validates, copies and queues one `WM_COPYDATA`; returns the acknowledgement.
fn on_copydata(lparam: LPARAM) -> LRESULT {
    let p = lparam as *const COPYDATASTRUCT;
    if p.is_null() {
        return 0;
    }
    // SAFETY: for WM_COPYDATA, lParam points to a COPYDATASTRUCT that stays valid until the
    // window procedure returns: the system marshals it (and the data) into this process for a
    // sender in another process, and a sender in this process blocks in SendMessage until we
    // return. We checked it is not null and read it without assuming alignment.
    let cds = unsafe { p.read_unaligned() };
    if cds.dwData != MAGIC {
        return 0;
    }
    let len = cds.cbData as usize;
    PUMP.with(|state| {
        let Ok(state) = state.try_borrow() else {
            return 0;
        };
        let Some(state) = state.as_ref() else {
            return 0;
        };
        if len > state.max {
            return REFUSED_TOO_LARGE;
        }
        let frame = if len == 0 {
            Bytes::new()
        } else if cds.lpData.is_null() {
            return 0;
        } else {
            // SAFETY: lpData is not null and points to cbData readable bytes for the duration of
            // the message (see above); we copy them out before returning.
            Bytes::copy_from_slice(unsafe {
                std::slice::from_raw_parts(cds.lpData as *const u8, len)
            })
        };
        let n = cost(len);
        let permit = match state.budget.try_acquire_many(n) {
            Ok(p) => p,
            // Full: wait for the application to read (the sender's SendMessageTimeoutW waits).
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match futures::executor::block_on(state.budget.acquire_many(n)) {
                    Ok(p) => p,
                    Err(_) => return RECEIVER_CLOSED,
                }
            }
            Err(tokio::sync::TryAcquireError::Closed) => return RECEIVER_CLOSED,
        };
        if state.tx.send(frame).is_err() {
            return RECEIVER_CLOSED;
        }
        // The receiving connection gives the bytes back when the application read the frame.
        permit.forget();
        ACCEPTED
    })
}

/// Owns the pump thread: dropping it stops the thread and waits for it.
struct Pump {
    tid: u32,
    stop: Arc<AtomicBool>,
    budget: Arc<Semaphore>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.budget.close();
        // SAFETY: posting a message to a thread id has no memory-safety preconditions; WM_NULL
        // only wakes the thread's GetMessageW, which then sees `stop`.
        unsafe { PostThreadMessageW(self.tid, WM_NULL, 0, 0) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The name mutex, held by the pump thread (a mutex belongs to the thread that acquired it).
struct NameMutex(HANDLE);

impl Drop for NameMutex {
    fn drop(&mut self) {
        // SAFETY: the handle is a mutex this thread created and acquired; it is released and
        // closed exactly once, on the same thread.
        unsafe {
            ReleaseMutex(self.0);
            CloseHandle(self.0);
        }
    }
}

/// The registered window class, unregistered on drop.
struct WindowClass {
    name: Vec<u16>,
    hinst: *mut c_void,
}

impl Drop for WindowClass {
    fn drop(&mut self) {
        // SAFETY: `name` is a NUL-terminated class name this thread registered with `hinst`.
        unsafe { UnregisterClassW(self.name.as_ptr(), self.hinst) };
    }
}

fn take_name(cfg: &Config) -> Result<NameMutex> {
    let name = wide(&format!("Local\\{CLASS_PREFIX}{}", cfg.name));
    // SAFETY: `name` is NUL-terminated and outlives the call; null security attributes are
    // allowed (default security).
    let h = unsafe { CreateMutexW(std::ptr::null(), 0, name.as_ptr()) };
    if h.is_null() {
        return Err(Error::bind(
            &cfg.endpoint,
            "create the name mutex",
            last_error(),
        ));
    }
    // SAFETY: `h` is the valid mutex handle just created.
    let w = unsafe { WaitForSingleObject(h, 0) };
    if w == WAIT_OBJECT_0 || w == WAIT_ABANDONED {
        // WAIT_ABANDONED: a previous receiver of this name died without releasing it.
        Ok(NameMutex(h))
    } else {
        // SAFETY: `h` is valid and not used after this.
        unsafe { CloseHandle(h) };
        Err(Error::new(
            ErrorKind::AddrInUse,
            &cfg.endpoint,
            "another receiver holds this name",
        ))
    }
}

fn find_window(name: &str) -> HWND {
    let class = class_name(name);
    let title = wide(name);
    // SAFETY: both strings are NUL-terminated and outlive the call; HWND_MESSAGE searches
    // message-only windows.
    unsafe {
        FindWindowExW(
            HWND_MESSAGE,
            std::ptr::null_mut(),
            class.as_ptr(),
            title.as_ptr(),
        )
    }
}

/// Sets up the window; on success returns it and keeps the guards alive in the caller.
fn create_window(cfg: &Config) -> Result<(NameMutex, WindowClass, HWND)> {
    let mutex = take_name(cfg)?;
    if !find_window(&cfg.name).is_null() {
        return Err(Error::new(
            ErrorKind::AddrInUse,
            &cfg.endpoint,
            "a window of this name exists (a receiver that does not hold the name mutex)",
        ));
    }
    // SAFETY: a null module name asks for this executable's module handle.
    let hinst = unsafe { GetModuleHandleW(std::ptr::null()) };
    let class = class_name(&cfg.name);
    // SAFETY: WNDCLASSEXW is a plain C struct for which all-zero is a valid value.
    let mut wc: WNDCLASSEXW = unsafe { std::mem::zeroed() };
    wc.cbSize = std::mem::size_of::<WNDCLASSEXW>() as u32;
    wc.lpfnWndProc = Some(wndproc);
    wc.hInstance = hinst;
    wc.lpszClassName = class.as_ptr();
    // SAFETY: `wc` is fully initialised and its class name outlives the call.
    if unsafe { RegisterClassExW(&wc) } == 0 {
        let e = last_error();
        return Err(Error::bind(&cfg.endpoint, "register the window class", e));
    }
    let class = WindowClass { name: class, hinst };
    let title = wide(&cfg.name);
    // SAFETY: the class is registered, the strings are NUL-terminated and outlive the call;
    // HWND_MESSAGE makes a message-only window (no desktop needed).
    let hwnd = unsafe {
        CreateWindowExW(
            0,
            class.name.as_ptr(),
            title.as_ptr(),
            0,
            0,
            0,
            0,
            0,
            HWND_MESSAGE,
            std::ptr::null_mut(),
            hinst,
            std::ptr::null(),
        )
    };
    if hwnd.is_null() {
        return Err(Error::bind(
            &cfg.endpoint,
            "create the window",
            last_error(),
        ));
    }
    Ok((mutex, class, hwnd))
}

/// The pump thread's body.
fn pump(cfg: Config, state: PumpState, stop: Arc<AtomicBool>, ready: oneshot::Sender<Result<u32>>) {
    PUMP.with(|p| *p.borrow_mut() = Some(state));
    let (_mutex, _class, hwnd) = match create_window(&cfg) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // SAFETY: no preconditions.
    let tid = unsafe { GetCurrentThreadId() };
    if ready.send(Ok(tid)).is_err() {
        // The bind was cancelled.
        stop.store(true, Ordering::SeqCst);
    }
    // SAFETY: MSG is a plain C struct for which all-zero is a valid value.
    let mut msg: MSG = unsafe { std::mem::zeroed() };
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: `msg` is a valid out-pointer; a null window takes every message of this thread.
        let r = unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) };
        if r == -1 {
            tracing::warn!(endpoint = %cfg.endpoint, error = %last_error(), "copydata message loop failed");
            break;
        }
        // r == 0 is WM_QUIT, which anyone may post to this thread: ignored, only `stop` ends us.
        if r > 0 {
            // SAFETY: `msg` was filled by GetMessageW.
            unsafe { DispatchMessageW(&msg) };
        }
    }
    // SAFETY: `hwnd` was created by this thread and is destroyed once, here.
    unsafe { DestroyWindow(hwnd) };
    PUMP.with(|p| p.borrow_mut().take());
    // Then `_class` is unregistered and `_mutex` released (reverse declaration order).
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let endpoint = ep.clone();
    let caps = cfg.caps.clone();
    let budget = Arc::new(Semaphore::new(cfg.max.max(MIN_BUDGET) + FRAME_OVERHEAD));
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let state = PumpState {
        max: cfg.max,
        tx,
        budget: budget.clone(),
    };
    let thread = {
        let stop = stop.clone();
        thread::Builder::new()
            .name(format!("copydata {}", cfg.name))
            // Wine copies a received WM_COPYDATA block onto the receiving thread's stack: a
            // frame larger than the stack kills the thread (or the process). This is only a
            // reservation; pages are committed as used.
            .stack_size(cfg.max.saturating_add(PUMP_STACK_SPARE))
            .spawn(move || pump(cfg, state, stop, ready_tx))
            .map_err(|e| Error::io(&endpoint, "start the window thread", e))?
    };
    let tid = match ready_rx.await {
        Ok(Ok(tid)) => tid,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(Error::new(
                ErrorKind::Io,
                &endpoint,
                "the window thread stopped before the window existed",
            ));
        }
    };
    let pump = Arc::new(Pump {
        tid,
        stop,
        budget: budget.clone(),
        thread: Some(thread),
    });
    let receiver = CdReceiver {
        rx,
        budget,
        done: false,
        info: ConnectionInfo {
            endpoint: endpoint.clone(),
            peer: None,
            capabilities: caps,
        },
        _pump: pump.clone(),
    };
    Ok(Box::new(SharedReceiver::new(
        endpoint,
        Box::new(receiver),
        second_accept,
        Box::new(pump),
    )))
}

/// The error for a second `accept`.
fn second_accept(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "copydata:// has one shared receiving connection and it was already accepted",
    )
}

/// The receiving connection: every sender's frames, merged.
struct CdReceiver {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
    done: bool,
    info: ConnectionInfo,
    _pump: Arc<Pump>,
}

impl Drop for CdReceiver {
    fn drop(&mut self) {
        // Senders get RECEIVER_CLOSED from now on, and a pump thread waiting for room wakes up.
        self.budget.close();
    }
}

impl Stream for CdReceiver {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(frame) => {
                self.budget.add_permits(cost(frame.len()) as usize);
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Err(Error::new(
                    ErrorKind::ConnectionLost,
                    &self.info.endpoint,
                    "the receiving window's thread stopped",
                ))))
            }
        }
    }
}

fn send_on_receiver(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ep,
        "copydata:// is one-way: the receiving side cannot send (its only reply is the acknowledgement)",
    )
}

receive_only!(CdReceiver, send_on_receiver);

// ---------------------------------------------------------------------------------------------
// Sender

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    let deadline = Instant::now() + FIND_DEADLINE;
    let hwnd = loop {
        let h = find_window(&cfg.name);
        if !h.is_null() {
            break h as usize;
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::NotFound,
                &cfg.endpoint,
                format!(
                    "no receiver window (class `{CLASS_PREFIX}{}`) in this session",
                    cfg.name
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut pid = 0u32;
    // SAFETY: `pid` is a valid out-pointer; a stale window handle only makes the call fail.
    unsafe { GetWindowThreadProcessId(hwnd as HWND, &mut pid) };
    // SAFETY: no preconditions.
    let same_process = pid == unsafe { GetCurrentProcessId() };
    Ok(Box::new(CdSender {
        hwnd,
        timeout_ms: cfg.timeout_ms,
        same_process,
        inflight: None,
        broken: None,
        closed: false,
        info: ConnectionInfo {
            endpoint: ep.clone(),
            peer: Some(format!("pid {pid}, window {hwnd:#x}")),
            capabilities: cfg.caps,
        },
    }))
}

/// How one `SendMessageTimeoutW` ended.
enum Outcome {
    Accepted,
    TooLarge,
    ReceiverClosed,
    NotDuctwork(usize),
    Timeout,
    Gone,
    Failed(io::Error),
}

/// Sends one frame and waits for the acknowledgement (on a blocking thread).
fn send_blocking(hwnd: usize, frame: Bytes, timeout_ms: u32, same_process: bool) -> Outcome {
    let hwnd = hwnd as HWND;
    let Ok(len) = u32::try_from(frame.len()) else {
        return Outcome::TooLarge;
    };
    let cds = Box::new(COPYDATASTRUCT {
        dwData: MAGIC,
        cbData: len,
        lpData: if len == 0 {
            std::ptr::null_mut()
        } else {
            frame.as_ptr() as *mut c_void
        },
    });
    let mut result: usize = 0;
    // SAFETY: `cds` and the frame it points to stay alive until the call returns (and, for a
    // receiver in this process after a timeout, forever: see below). The receiver only reads.
    let r = unsafe {
        SendMessageTimeoutW(
            hwnd,
            WM_COPYDATA,
            0,
            &*cds as *const COPYDATASTRUCT as LPARAM,
            SMTO_ABORTIFHUNG | SMTO_BLOCK,
            timeout_ms,
            &mut result,
        )
    };
    if r != 0 {
        return match result as isize {
            ACCEPTED => Outcome::Accepted,
            REFUSED_TOO_LARGE => Outcome::TooLarge,
            RECEIVER_CLOSED => Outcome::ReceiverClosed,
            other => Outcome::NotDuctwork(other as usize),
        };
    }
    // SAFETY: no preconditions.
    let err = unsafe { GetLastError() };
    // SAFETY: IsWindow accepts any value.
    let alive = unsafe { IsWindow(hwnd) } != 0;
    if !alive || err == ERROR_INVALID_WINDOW_HANDLE {
        return Outcome::Gone;
    }
    if err == ERROR_TIMEOUT || err == 0 {
        if same_process {
            // Within one process the system passes our pointers as they are, and the receiver
            // may still read them after we gave up: they must never be freed.
            std::mem::forget(cds);
            std::mem::forget(frame);
        }
        return Outcome::Timeout;
    }
    Outcome::Failed(io::Error::from_raw_os_error(err as i32))
}

/// A sending connection to one receiver window.
struct CdSender {
    hwnd: usize,
    timeout_ms: u32,
    same_process: bool,
    inflight: Option<JoinHandle<Outcome>>,
    broken: Option<(ErrorKind, String)>,
    closed: bool,
    info: ConnectionInfo,
}

impl CdSender {
    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(kind, &self.info.endpoint, detail)
    }

    fn usable(&self) -> Result<()> {
        if self.closed {
            return Err(self.err(ErrorKind::Closed, "send after close"));
        }
        if let Some((kind, why)) = &self.broken {
            return Err(self.err(*kind, format!("an earlier send failed: {why}")));
        }
        Ok(())
    }

    /// Maps an outcome; errors other than FrameTooLarge break the connection.
    fn settle(&mut self, outcome: Outcome) -> Result<()> {
        let (kind, why) = match outcome {
            Outcome::Accepted => return Ok(()),
            Outcome::TooLarge => {
                return Err(self.err(
                    ErrorKind::FrameTooLarge,
                    "the receiver refused the frame: larger than its max_frame",
                ))
            }
            Outcome::ReceiverClosed => (
                ErrorKind::Closed,
                "the receiver closed its receiving connection".to_string(),
            ),
            Outcome::NotDuctwork(v) => (
                ErrorKind::Protocol,
                format!("the window did not accept the frame (result {v}): not a ductwork receiver"),
            ),
            Outcome::Timeout => (
                ErrorKind::Timeout,
                format!(
                    "the receiver did not take the frame within {} ms (hung or too slow); it may still arrive",
                    self.timeout_ms
                ),
            ),
            Outcome::Gone => (
                ErrorKind::ConnectionLost,
                "the receiver's window is gone".to_string(),
            ),
            Outcome::Failed(e) => {
                self.broken = Some((ErrorKind::ConnectionLost, e.to_string()));
                return Err(self
                    .err(ErrorKind::ConnectionLost, "SendMessageTimeoutW failed")
                    .with_source(e));
            }
        };
        self.broken = Some((kind, why.clone()));
        Err(self.err(kind, why))
    }
}

impl Connection for CdSender {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Stream for CdSender {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        Poll::Ready(Some(Err(self.err(
            ErrorKind::Unsupported,
            "copydata:// is one-way: the connecting side only sends",
        ))))
    }
}

impl Sink<Bytes> for CdSender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.usable()?;
        self.poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<()> {
        self.usable()?;
        ductwork_codec::check_len(frame.len(), self.info.capabilities.max_message)
            .map_err(|e| Error::codec(&self.info.endpoint, e))?;
        if self.inflight.is_some() {
            return Err(self.err(ErrorKind::Io, "start_send without poll_ready"));
        }
        let (hwnd, timeout, same) = (self.hwnd, self.timeout_ms, self.same_process);
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            send_blocking(hwnd, frame, timeout, same)
        }));
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(h) = self.inflight.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let joined = ready!(Pin::new(h).poll(cx));
        self.inflight = None;
        match joined {
            Ok(outcome) => Poll::Ready(self.settle(outcome)),
            Err(e) => {
                self.broken = Some((ErrorKind::Io, e.to_string()));
                Poll::Ready(Err(self.err(ErrorKind::Io, "the sending thread failed")))
            }
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let r = ready!(self.as_mut().poll_flush(cx));
        self.closed = true;
        Poll::Ready(r)
    }
}
