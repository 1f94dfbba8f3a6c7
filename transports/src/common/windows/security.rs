//! Windows security for the named transports: an owner-only security descriptor, and who a
//! process is (the user SID of its token).
//!
//! Named pipes created without a security descriptor get a default that lets *everyone* read
//! (and the anonymous account too, on older systems). ductwork's pipes and mailslots instead
//! grant full access to the creating user and to SYSTEM only, written as the SDDL string
//! `D:P(A;;GA;;;<user SID>)(A;;GA;;;SY)` (a protected DACL with two allow entries); a pipe
//! listener's `allow_sids` adds one entry per SID it admits.

use std::{ffi::c_void, io, ptr};
use windows_sys::Win32::{
    Foundation::{CloseHandle, LocalFree, HANDLE},
    Security::{
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
            ConvertStringSidToSidW, SDDL_REVISION_1,
        },
        GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
        TOKEN_QUERY, TOKEN_USER,
    },
    System::Threading::{
        GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    },
};

/// A `SECURITY_ATTRIBUTES` with an owner-only descriptor, freed on drop.
pub(crate) struct Security {
    sd: PSECURITY_DESCRIPTOR,
    attrs: SECURITY_ATTRIBUTES,
}

// SAFETY: the descriptor is allocated once, never mutated and only read by the OS while a
// `&Security` is alive; freeing happens in `drop`, which needs exclusive ownership.
unsafe impl Send for Security {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for Security {}

impl Security {
    /// Builds the owner-only descriptor for the current process's user.
    pub(crate) fn owner_only() -> io::Result<Security> {
        Security::owner_only_and(&[])
    }

    /// The owner-only descriptor with one more allow entry (full access) for each SID in
    /// `also`, which must be canonical SID strings ([`canonical_sid`]): nothing else reaches
    /// the SDDL text.
    pub(crate) fn owner_only_and(also: &[String]) -> io::Result<Security> {
        let sid = current_user_sid()?;
        let mut sddl = format!("D:P(A;;GA;;;{sid})(A;;GA;;;SY)");
        for other in also {
            if !is_sid_text(other) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a SID"));
            }
            sddl.push_str(&format!("(A;;GA;;;{other})"));
        }
        let wide = super::wide(&sddl);
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated and outlives the call; `sd` is valid for a write;
        // the size out-parameter may be null.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(super::last_error());
        }
        Ok(Security {
            sd,
            attrs: SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: sd,
                bInheritHandle: 0,
            },
        })
    }

    /// [`owner_only`](Security::owner_only), failing as `ep`'s error.
    #[cfg_attr(not(any(feature = "pipe", feature = "mailslot")), allow(dead_code))]
    pub(crate) fn owner_only_for(ep: &ductwork_core::Endpoint) -> ductwork_core::Result<Security> {
        Security::owner_only().map_err(|e| {
            ductwork_core::Error::io(ep, "build the owner-only security descriptor", e)
        })
    }

    /// A pointer to the `SECURITY_ATTRIBUTES`, valid while `self` is borrowed.
    pub(crate) fn as_ptr(&self) -> *mut c_void {
        &self.attrs as *const SECURITY_ATTRIBUTES as *mut c_void
    }
}

impl Drop for Security {
    fn drop(&mut self) {
        // SAFETY: `sd` was allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW
        // with LocalAlloc and is freed exactly once, here.
        unsafe { LocalFree(self.sd) };
    }
}

/// Whether `s` is a SID in the `S-1-<n>-<n>...` form and nothing else (no SDDL can hide in
/// it).
fn is_sid_text(s: &str) -> bool {
    s.strip_prefix("S-1-").is_some_and(|r| {
        r.split('-')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The current process user's SID as a string (`S-1-5-21-...`).
pub(crate) fn current_user_sid() -> io::Result<String> {
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    user_sid_of(unsafe { GetCurrentProcess() })
}

/// The user SID of process `pid`'s token (`S-1-5-21-...`). Needs the right to query that
/// process and read its token: a process of the same user, or any as an administrator.
#[cfg_attr(not(feature = "pipe"), allow(dead_code))]
pub(crate) fn process_user_sid(pid: u32) -> io::Result<String> {
    // SAFETY: plain call; a null result is checked below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(super::last_error());
    }
    let result = user_sid_of(process);
    // SAFETY: `process` was opened above, is closed once and not used afterwards.
    unsafe { CloseHandle(process) };
    result
}

/// The user SID of `process`'s token.
fn user_sid_of(process: HANDLE) -> io::Result<String> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a valid process handle (or the current-process pseudo-handle) for
    // the duration of the call; `token` is valid for a write.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(super::last_error());
    }
    let result = token_user_sid(token);
    // SAFETY: `token` was opened above, is closed once and not used afterwards.
    unsafe { CloseHandle(token) };
    result
}

/// `s` (`S-1-5-32-544`, or an SDDL alias such as `SY`) in the canonical form Windows writes
/// (`S-1-5-18`), or `InvalidInput` if Windows does not read it as a SID.
#[cfg_attr(not(feature = "pipe"), allow(dead_code))]
pub(crate) fn canonical_sid(s: &str) -> io::Result<String> {
    let not_a_sid = || io::Error::new(io::ErrorKind::InvalidInput, format!("`{s}` is not a SID"));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(not_a_sid());
    }
    let wide = super::wide(s);
    let mut sid: PSID = ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated and outlives the call; `sid` is valid for a write.
    if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut sid) } == 0 {
        return Err(not_a_sid());
    }
    // SAFETY: ConvertStringSidToSidW succeeded, so `sid` is a valid SID until freed below.
    let text = unsafe { sid_string(sid) };
    // SAFETY: on success ConvertStringSidToSidW allocated `sid` with LocalAlloc; it is freed
    // once, here, after its last use above.
    unsafe { LocalFree(sid) };
    text
}

fn token_user_sid(token: HANDLE) -> io::Result<String> {
    let mut len = 0u32;
    // SAFETY: a size query: null buffer with length 0; `len` is valid for a write.
    unsafe { GetTokenInformation(token, TokenUser, ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(super::last_error());
    }
    // u64 elements keep the buffer aligned for TOKEN_USER.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` is valid for `len` bytes (rounded up) and suitably aligned.
    if unsafe { GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len) } == 0
    {
        return Err(super::last_error());
    }
    // SAFETY: GetTokenInformation(TokenUser) filled `buf` with a TOKEN_USER, whose SID pointer
    // points into `buf`, which lives until the end of this function.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    // SAFETY: `sid` points into `buf` (see above), alive for this call.
    unsafe { sid_string(sid) }
}

/// `sid` as a string (`S-1-5-...`).
///
/// # Safety
/// `sid` points at a valid SID for the duration of the call.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut s: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (this function's precondition); `s` is valid for a write.
    if unsafe { ConvertSidToStringSidW(sid, &mut s) } == 0 {
        return Err(super::last_error());
    }
    // SAFETY: on success `s` is a NUL-terminated UTF-16 string allocated with LocalAlloc; we
    // read up to the NUL, copy it, and free it once.
    let out = unsafe {
        let mut n = 0;
        while *s.add(n) != 0 {
            n += 1;
        }
        let text = String::from_utf16_lossy(std::slice::from_raw_parts(s, n));
        LocalFree(s.cast());
        text
    };
    Ok(out)
}
