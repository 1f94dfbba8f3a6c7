//! `pipe://name`: a duplex, reliable byte stream between processes on one host, carrying
//! length-prefixed frames; `pipe://server/name` reaches a named pipe on another Windows host.
//!
//! | | Windows | Unix |
//! |---|---|---|
//! | mechanism | named pipe `\\.\pipe\ductwork-<name>`, byte mode | Unix domain stream socket `pipe-<name>.sock` in a private directory |
//! | direction, delivery | duplex, reliable, ordered | duplex, reliable, ordered |
//! | boundaries | framed bytes (`docs/wire-format.md`) | framed bytes |
//! | max message | `max_frame` (default 16 MiB) | `max_frame` (default 16 MiB) |
//! | reach | host; network with `pipe://server/name` or `remote=true` | host |
//! | peer loss | reported as `ConnectionLost` | reported as `ConnectionLost` |
//! | access | owner and SYSTEM only; remote clients rejected unless `remote=true` | owner only (`0700` directory, `0600` socket) |
//!
//! Behaviour users must know, as the conformance suite (`pipe::*`, Linux and Wine),
//! `tests/pipe_mailslot.rs` and `tests/native_clients.rs` check it:
//!
//! - **Names** are 1 to 64 bytes without `/`, `\`, NUL or control characters. Binding a name
//!   another live listener holds is `AddrInUse`; connecting where nothing listens is
//!   `NotFound`; a listener that was killed leaves nothing that stops the next bind.
//! - **Squatting**: on Windows the first pipe instance is created with
//!   `FILE_FLAG_FIRST_PIPE_INSTANCE` and every instance carries a protected DACL granting only
//!   the creating user and SYSTEM (`D:P(A;;GA;;;<user SID>)(A;;GA;;;SY)`, read back in a
//!   test), so another user cannot add instances to a live name. Wine ignores the first-instance
//!   flag, so `bind` also probes the name with `WaitNamedPipeW` first (that probe alone leaves
//!   a race between two binds at the same instant; on Windows the flag closes it).
//! - **Many clients**: each `accept` returns one connection per client. On Windows the listener
//!   keeps one spare pipe instance waiting and creates the next before handing one out; a
//!   client that finds every instance busy (`ERROR_PIPE_BUSY`) retries until
//!   `connect_timeout` (default 10 s) has passed, then fails with `Timeout`.
//! - **Faults**: every `connect` fails with `Timeout` after `connect_timeout` (a stopped
//!   listener whose backlog is full on Unix, busy instances on Windows). The listener keeps
//!   accepting through transient errors (out of descriptors or handles, a failed instance),
//!   logging them at `warn`; `accept` fails only when the listener cannot accept any more.
//! - **Foreign clients** speak the stream framing of `docs/wire-format.md` (u32 BE length +
//!   postcard payload, `0xFFFF_FFFF` to close): on Windows `CreateFileW` on
//!   `\\.\pipe\ductwork-<name>` and `WriteFile`; on Unix a stream socket to the path below.
//! - **Unix stand-in**: the socket lives in the private per-user directory
//!   (`$DUCTWORK_RUNTIME_DIR`, `$XDG_RUNTIME_DIR/ductwork`, or `/tmp/ductwork-<uid>`, falling
//!   back to `~/.cache/ductwork/run-<host>` when another user took that; mode `0700`, the rule
//!   in `crate::common::unix`), as `pipe-<name>.sock` (mode `0600` from the moment it appears). Socket
//!   paths are limited to 107 bytes (`InvalidEndpoint` beyond). A socket left by a crashed
//!   listener is replaced on the next bind. `pipe://server/name` and `remote=true` are
//!   `Unsupported` on Unix ("remote pipes need Windows").
//! - **Remote pipes** (`pipe://server/name`, `remote=true`) use the same code with a server
//!   name; they are not exercised by the tests (no second host).
//!
//! Peer checks (the same shape on both systems, in each one's own terms):
//!
//! | | Unix | Windows |
//! |---|---|---|
//! | who a peer is | uid, gid, pid (`SO_PEERCRED`) | pid (`GetNamedPipeServerProcessId`, `GetNamedPipeClientProcessId`) and the user SID of that process's token |
//! | client requires the listener's user | `peer_uid=<uid>`, default: our own | `peer_sid=<SID>`, default: our own |
//! | listener admits clients of | `allow_uids=<uid>,...`, default: our own | `allow_sids=<SID>,...` (also added to the DACL), default: whom the DACL admits (us and SYSTEM) |
//!
//! A listener of another user (one squatting the name) fails `connect` with
//! `PermissionDenied` naming the uid or SID it runs as. A client the listener does not admit
//! is logged, sent a refusal without waiting for it to read, and disconnected; its first
//! receive or send fails with `PermissionDenied`: "the listener refused this connection:
//! your uid 1001 is not in its allow_uids" (Windows: "your user S-1-5-... is not in its
//! allow_sids"). The other system's options are `Unsupported`. On Windows a pipe on another
//! host (`pipe://server/name`) skips the default check (`peer_sid` is `Unsupported`: its pid
//! is not one of ours), `allow_sids` is `Unsupported` with `remote=true`, and reading the
//! token of another user's process needs the right to query it (administrators have it):
//! where it is missing, a `peer_sid` check fails with `PermissionDenied` saying so. The
//! peer's credentials are on `ConnectionInfo::peer_credentials` (uid, gid and pid on Unix;
//! SID and pid on Windows local pipes).
//!
//! Options: `max_frame`, `remote` (`true`/`false`, Windows: accept clients from other hosts;
//! default `false`), `connect_timeout` (the deadline of `connect`, e.g. `500ms`, `10s`; default
//! 10 s; the older `connect_timeout_ms` still works).

use crate::common::faults::connect_within;
use crate::common::names::{check_name, split_server};
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Reach,
    Result, Transport, OPT_CONNECT_TIMEOUT_MS,
};
use std::time::Duration;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

const OPTIONS: &[&str] = &[
    "remote",
    OPT_CONNECT_TIMEOUT_MS,
    "peer_uid",
    "allow_uids",
    "peer_sid",
    "allow_sids",
];

/// The named pipe transport (`pipe://name`, `pipe://server/name`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pipe;

/// Settings read from a `pipe://` endpoint.
pub(crate) struct Config {
    /// What the endpoint offers.
    pub(crate) caps: Capabilities,
    /// The remote server, `None` for this machine.
    pub(crate) server: Option<String>,
    /// The pipe name, checked.
    pub(crate) name: String,
    /// Whether the listener accepts remote clients.
    pub(crate) remote: bool,
    /// How long a client waits for a free pipe instance (only Windows has instances); the
    /// whole connect has this deadline too.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) connect_timeout: Duration,
}

impl Config {
    fn new(ep: &Endpoint) -> Result<Config> {
        ep.check_options(OPTIONS)?;
        let (server, name) = split_server(ep.address());
        if let Some(s) = server {
            if s.is_empty() || s.contains(['\\', '/']) {
                return Err(Error::new(
                    ErrorKind::InvalidEndpoint,
                    ep,
                    "expected pipe://name or pipe://server/name",
                ));
            }
        }
        check_name(ep, name)?;
        // Silently ignoring a security option would be worse than refusing it.
        let has = |a: &str, b: &str| ep.option(a).is_some() || ep.option(b).is_some();
        if cfg!(windows) && has("peer_uid", "allow_uids") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                ep,
                "peer_uid and allow_uids are Unix uids; on Windows use peer_sid and allow_sids",
            ));
        }
        if !cfg!(windows) && has("peer_sid", "allow_sids") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                ep,
                "peer_sid and allow_sids are Windows SIDs; on Unix use peer_uid and allow_uids",
            ));
        }
        let remote = ep.parse_option::<bool>("remote")?.unwrap_or(false);
        let connect_timeout = ep.connect_timeout()?;
        let reach = if server.is_some() || remote {
            Reach::Network
        } else {
            Reach::Host
        };
        let caps = crate::socket::stream_caps(ep, reach)?;
        Ok(Config {
            caps,
            server: server.map(str::to_string),
            name: name.to_string(),
            remote,
            connect_timeout,
        })
    }
}

#[async_trait]
impl Transport for Pipe {
    fn scheme(&self) -> &'static str {
        "pipe"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("pipe://{unique}")
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        Ok(Config::new(ep)?.caps)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let cfg = Config::new(ep)?;
        if cfg.server.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                "a pipe can only be created on this machine: bind pipe://name (with remote=true \
                 to let other hosts connect)",
            ));
        }
        imp::bind(ep, cfg).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let cfg = Config::new(ep)?;
        connect_within(
            ep,
            "the listener accepted no connection",
            imp::connect(ep, cfg),
        )
        .await
    }
}
