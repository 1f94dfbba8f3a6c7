//! Windows security for the named transports: an owner-only security descriptor.
//!
//! Named pipes created without a security descriptor get a default that lets *everyone* read
//! (and the anonymous account too, on older systems). ductwork's pipes and mailslots instead
//! grant full access to the creating user and to SYSTEM only, written as the SDDL string
//! `D:P(A;;GA;;;<user SID>)(A;;GA;;;SY)` (a protected DACL with two allow entries).

use std::{ffi::c_void, io, ptr};
use windows_sys::Win32::{
    Foundation::{CloseHandle, LocalFree, HANDLE},
    Security::{
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
            SDDL_REVISION_1,
        },
        GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
        TOKEN_USER,
    },
    System::Threading::{GetCurrentProcess, OpenProcessToken},
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
        let sid = current_user_sid()?;
        let sddl = format!("D:P(A;;GA;;;{sid})(A;;GA;;;SY)");
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

/// The current process user's SID as a string (`S-1-5-21-...`).
fn current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `token` is
    // valid for a write.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(super::last_error());
    }
    let result = token_user_sid(token);
    // SAFETY: `token` was opened above, is closed once and not used afterwards.
    unsafe { CloseHandle(token) };
    result
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
    let mut s: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (see above); `s` is valid for a write.
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
