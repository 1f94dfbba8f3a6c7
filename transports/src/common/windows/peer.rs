//! Who is at the other end of a local named pipe, and whom a pipe endpoint accepts there: the
//! Windows counterpart of the Unix `PeerPolicy` (uids through `SO_PEERCRED`).
//!
//! Windows names the peer process of a pipe (`GetNamedPipeServerProcessId`,
//! `GetNamedPipeClientProcessId`); its user is the SID in that process's token
//! (`OpenProcess` + `OpenProcessToken` + `GetTokenInformation(TokenUser)`). The pid is the
//! one recorded when the pipe was created or opened, so a process that hands its pipe handle
//! to another is still the one named, as with `SO_PEERCRED`.

use super::security::{canonical_sid, current_user_sid, process_user_sid};
use ductwork_core::{Endpoint, Error, ErrorKind, PeerCredentials, Result};
use std::io;
use windows_sys::Win32::{
    Foundation::HANDLE,
    System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId},
};

/// Whom a `pipe://` endpoint accepts at the other end, from its options:
///
/// - `peer_sid=<SID>` (client): the listener process must run as this user, else `connect`
///   fails with `PermissionDenied` naming the SID it found. Default: our own user's SID (a
///   squatter of another user is refused). Not possible for a pipe on another host
///   (`pipe://server/name`: its pid is not one of ours), where it is `Unsupported` and the
///   default check is skipped.
/// - `allow_sids=<SID>,<SID>,...` (listener): the pipe's DACL grants these users too, and a
///   client process whose user is not among them is refused (told why, then disconnected).
///   Default: no check beyond the DACL, which admits our own user and SYSTEM only.
///   `Unsupported` with `remote=true` (a remote client's pid is not one of ours).
///
/// SIDs are written `S-1-5-21-...` (or as an SDDL alias such as `SY`) and compared in the
/// canonical form Windows writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct SidPolicy {
    /// The SID the listener must run as (client side).
    pub(crate) listener_sid: Option<String>,
    /// The SIDs a listener admits (`None`: whoever the DACL lets in).
    pub(crate) client_sids: Option<Vec<String>>,
}

impl SidPolicy {
    /// The policy of `ep`'s options; `remote_server`: the pipe is on another host,
    /// `remote_clients`: the listener admits clients from other hosts.
    pub(crate) fn from_endpoint(
        ep: &Endpoint,
        remote_server: bool,
        remote_clients: bool,
    ) -> Result<SidPolicy> {
        let bad = |o: &str, v: &str| {
            Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!("option `{o}={v}` is not a SID (or a comma-separated list of SIDs)"),
            )
        };
        let unsupported = |what: &str| Error::new(ErrorKind::Unsupported, ep, what.to_string());
        let listener_sid = match ep.option("peer_sid") {
            Some(_) if remote_server => {
                return Err(unsupported(
                    "peer_sid cannot be checked for a pipe on another host (its pid is not \
                     one of this host's)",
                ))
            }
            Some(v) => Some(canonical_sid(v.trim()).map_err(|_| bad("peer_sid", v))?),
            None if remote_server => None,
            None => Some(
                current_user_sid().map_err(|e| Error::io(ep, "read this process's user SID", e))?,
            ),
        };
        let client_sids = match ep.option("allow_sids") {
            Some(_) if remote_clients => {
                return Err(unsupported(
                    "allow_sids cannot be checked with remote=true (a remote client's pid is \
                     not one of this host's)",
                ))
            }
            Some(v) => Some(
                v.split(',')
                    .map(|s| canonical_sid(s.trim()))
                    .collect::<io::Result<Vec<String>>>()
                    .map_err(|_| bad("allow_sids", v))?,
            ),
            None => None,
        };
        Ok(SidPolicy {
            listener_sid,
            client_sids,
        })
    }

    /// The SIDs given as `allow_sids`, which the pipe's DACL grants besides our own user and
    /// SYSTEM.
    pub(crate) fn extra_sids(&self) -> &[String] {
        self.client_sids.as_deref().unwrap_or_default()
    }

    /// Client side: checks who the listener is (`creds`, or why it could not be told).
    pub(crate) fn check_listener(
        &self,
        ep: &Endpoint,
        creds: &io::Result<PeerCredentials>,
    ) -> Result<()> {
        let Some(want) = &self.listener_sid else {
            return Ok(());
        };
        match creds {
            Ok(c) if &c.sid == want => Ok(()),
            Ok(c) => Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                format!(
                    "the listener runs as {} (pid {}), not {want} (peer_sid): another user may \
                     hold this pipe name; refusing to talk to it",
                    c.sid,
                    c.pid.map_or("unknown".into(), |p| p.to_string())
                ),
            )),
            Err(e) => Err(Error::new(
                ErrorKind::PermissionDenied,
                ep,
                format!(
                    "cannot tell which user the listener runs as, so {want} (peer_sid) cannot \
                     be checked: {e}"
                ),
            )),
        }
    }

    /// Listener side: `None` if the client may stay, else the reason it is refused (for the
    /// client: it names only the client's own SID).
    pub(crate) fn refusal(&self, creds: &io::Result<PeerCredentials>) -> Option<String> {
        let allowed = self.client_sids.as_ref()?;
        match creds {
            Ok(c) if allowed.contains(&c.sid) => None,
            Ok(c) => Some(format!("your user {} is not in its allow_sids", c.sid)),
            Err(_) => Some("it cannot tell which user you are, and it has allow_sids".to_string()),
        }
    }
}

/// Who holds the other end of the local pipe `handle`: the server (`of_server`, for a
/// client's handle) or the client (for a server's handle). `Err` says why not, with the pid
/// when it is known.
pub(crate) fn pipe_peer(handle: HANDLE, of_server: bool) -> io::Result<PeerCredentials> {
    let mut pid = 0u32;
    // SAFETY: `handle` is a live pipe handle the caller owns for the duration of the call;
    // `pid` is valid for a write.
    let ok = unsafe {
        if of_server {
            GetNamedPipeServerProcessId(handle, &mut pid)
        } else {
            GetNamedPipeClientProcessId(handle, &mut pid)
        }
    };
    if ok == 0 {
        return Err(super::last_error());
    }
    let sid = process_user_sid(pid).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot read the token of pid {pid}: {e}"))
    })?;
    Ok(PeerCredentials {
        sid,
        pid: Some(pid),
    })
}
