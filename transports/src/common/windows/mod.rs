//! Win32 plumbing every Windows backend uses, written once: NUL-terminated wide strings,
//! taking ownership of a returned handle, last-error codes, the owner-only security
//! descriptor ([`Security`]), who is at the other end of a pipe and whom a pipe endpoint
//! accepts (`SidPolicy`), probing a named pipe's name, and running a blocking open off the
//! tokio workers.

#[cfg(feature = "pipe")]
mod peer;
mod security;

#[cfg(feature = "pipe")]
pub(crate) use peer::{pipe_peer, SidPolicy};
pub(crate) use security::Security;

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{
    io,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
};
use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_SEM_TIMEOUT, HANDLE,
    INVALID_HANDLE_VALUE,
};

/// `s` as a NUL-terminated UTF-16 string, for the `W` functions.
pub(crate) fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

/// The calling thread's last Win32 error as an `io::Error`.
pub(crate) fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// The Win32 error code inside `e`, if it carries one.
pub(crate) fn os_error(e: &io::Error) -> Option<u32> {
    e.raw_os_error().map(|c| c as u32)
}

/// Whether `e` says the named object does not exist (no pipe or mailslot of that name).
#[cfg_attr(
    not(any(feature = "pipe", feature = "mailslot", feature = "shm")),
    allow(dead_code)
)]
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    matches!(
        os_error(e),
        Some(ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND)
    )
}

/// Takes ownership of a handle a Win32 call returned, or the last error if it failed (null or
/// `INVALID_HANDLE_VALUE`: the APIs disagree on which one means failure).
#[cfg_attr(not(any(feature = "mailslot", feature = "shm")), allow(dead_code))]
pub(crate) fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        Err(last_error())
    } else {
        // SAFETY: `h` is a fresh, valid handle the caller just received and nothing else owns.
        Ok(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
    }
}

/// The raw handle of `h`, for Win32 calls; valid while `h` is borrowed.
#[cfg_attr(not(any(feature = "mailslot", feature = "shm")), allow(dead_code))]
pub(crate) fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

/// Whether a named pipe of this name exists, without connecting to it: `WaitNamedPipeW`
/// succeeds when an instance is free and times out when all are busy; a missing name fails with
/// `ERROR_FILE_NOT_FOUND`. Windows itself refuses a second first instance
/// (`FILE_FLAG_FIRST_PIPE_INSTANCE`), but Wine ignores that flag, so this check is what makes
/// `AddrInUse` work there (racy between two binds at the same moment, unlike the flag).
#[cfg_attr(not(any(feature = "pipe", feature = "shm")), allow(dead_code))]
pub(crate) fn pipe_exists(path: &str) -> bool {
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated and outlives the call. The wait is 1 ms at most.
    if unsafe { windows_sys::Win32::System::Pipes::WaitNamedPipeW(name.as_ptr(), 1) } != 0 {
        return true;
    }
    // SAFETY: reads this thread's last-error value; no preconditions.
    let code = unsafe { GetLastError() };
    code == ERROR_SEM_TIMEOUT
}

/// Runs `open` on tokio's blocking pool: opening a remote pipe or mailslot goes over the
/// network and may block for a while.
#[cfg_attr(not(any(feature = "pipe", feature = "mailslot")), allow(dead_code))]
pub(crate) async fn open_blocking<T: Send + 'static>(
    ep: &Endpoint,
    open: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>> {
    tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, ep, format!("open task failed: {e}")))
}
