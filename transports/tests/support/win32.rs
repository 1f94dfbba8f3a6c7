//! Raw Win32 clients, written with `windows-sys` calls only (no ductwork code), as a program
//! in another language would reach a ductwork endpoint: opening and writing pipes and
//! mailslots, and sending `WM_COPYDATA` to a `copydata://` receiver's window.

use std::io;
use windows_sys::Win32::{
    Foundation::{CloseHandle, GENERIC_WRITE, HANDLE, HWND, INVALID_HANDLE_VALUE},
    Storage::FileSystem::{
        CreateFileW, WriteFile, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE,
        OPEN_EXISTING,
    },
    System::DataExchange::COPYDATASTRUCT,
    UI::WindowsAndMessaging::{
        FindWindowExW, SendMessageTimeoutW, HWND_MESSAGE, SMTO_ABORTIFHUNG, WM_COPYDATA,
    },
};

/// `s` as a NUL-terminated UTF-16 string.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

/// An open handle, closed on drop.
pub struct Handle(pub HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle is open, owned here and not used after this.
        unsafe { CloseHandle(self.0) };
    }
}

/// Opens an existing pipe, mailslot or file with `CreateFileW` and the given access.
pub fn open(path: &str, access: u32) -> io::Result<Handle> {
    let wide = wide(path);
    // SAFETY: `wide` is a NUL-terminated UTF-16 string that outlives the call; the other
    // arguments are plain flags and null pointers the API accepts.
    let h = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    Ok(Handle(h))
}

/// Opens `path` for writing and writes each buffer with one `WriteFile` (one message each on
/// a mailslot), failing on a short write.
pub fn write_all(path: &str, bufs: &[&[u8]]) -> io::Result<()> {
    let h = open(path, GENERIC_WRITE)?;
    for b in bufs {
        let mut written = 0u32;
        // SAFETY: `h` is open; `b` is valid for `b.len()` bytes and `written` for a write; the
        // handle is synchronous (no OVERLAPPED).
        let ok = unsafe {
            WriteFile(
                h.0,
                b.as_ptr(),
                b.len() as u32,
                &mut written,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        if written as usize != b.len() {
            return Err(io::Error::other(format!(
                "short write: {written} of {} bytes",
                b.len()
            )));
        }
    }
    Ok(())
}

/// The window of the `copydata://` receiver named `name` (as `copydata/mod.rs` documents
/// it: message-only, class `ductwork.copydata.<name>`, title `<name>`), if there is one.
pub fn copydata_window(name: &str) -> Option<HWND> {
    let class = wide(&format!("ductwork.copydata.{name}"));
    let title = wide(name);
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let hwnd = unsafe {
        FindWindowExW(
            HWND_MESSAGE,
            std::ptr::null_mut(),
            class.as_ptr(),
            title.as_ptr(),
        )
    };
    (!hwnd.is_null()).then_some(hwnd)
}

/// Sends one `WM_COPYDATA` with tag `tag` and `data` (None: a null data pointer and length 0)
/// and returns the receiver's result; an error if the message could not be delivered within
/// 10 s.
pub fn send_copydata(hwnd: HWND, tag: usize, data: Option<&[u8]>) -> io::Result<usize> {
    let cds = COPYDATASTRUCT {
        dwData: tag,
        cbData: data.map_or(0, |d| d.len() as u32),
        lpData: data.map_or(std::ptr::null_mut(), |d| d.as_ptr() as *mut _),
    };
    let mut result = usize::MAX;
    // SAFETY: `cds` and `data` outlive the call and the receiver only reads them; `result`
    // is valid for a write.
    let ok = unsafe {
        SendMessageTimeoutW(
            hwnd,
            WM_COPYDATA,
            0,
            &cds as *const _ as isize,
            SMTO_ABORTIFHUNG,
            10_000,
            &mut result,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// The DACL a Windows object carries, as SDDL, read through a handle opened with `path`.
pub fn dacl_sddl(path: &str) -> std::io::Result<String> {
    use windows_sys::Win32::{
        Foundation::{LocalFree, GENERIC_READ},
        Security::{
            Authorization::{
                ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo,
                SDDL_REVISION_1, SE_KERNEL_OBJECT,
            },
            DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
        },
        Storage::FileSystem::READ_CONTROL,
    };
    let h = open(path, GENERIC_READ | READ_CONTROL)?;
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `h` is open with READ_CONTROL; the out-pointers we do not want may be null and
    // `sd` is valid for a write.
    let rc = unsafe {
        GetSecurityInfo(
            h.0,
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    drop(h);
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc as i32));
    }
    let mut s: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sd` is the descriptor GetSecurityInfo allocated; `s` is valid for a write and
    // the length out-parameter may be null.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut s,
            std::ptr::null_mut(),
        )
    };
    let result = if ok == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: on success `s` is a NUL-terminated UTF-16 string; we read up to the NUL.
        let text = unsafe {
            let mut n = 0;
            while *s.add(n) != 0 {
                n += 1;
            }
            String::from_utf16_lossy(std::slice::from_raw_parts(s, n))
        };
        // SAFETY: `s` was allocated with LocalAlloc by the conversion; freed once.
        unsafe { LocalFree(s.cast()) };
        Ok(text)
    };
    // SAFETY: `sd` was allocated with LocalAlloc by GetSecurityInfo; freed once.
    unsafe { LocalFree(sd) };
    result
}
