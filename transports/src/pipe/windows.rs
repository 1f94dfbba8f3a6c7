//! `pipe://` on Windows: byte-mode named pipes `\\.\pipe\ductwork-<name>` through tokio.
//!
//! The listener always keeps one unconnected pipe instance waiting. When a client connects to
//! it, the listener first creates the next instance, then hands the connected one out, so a
//! second client never finds the name missing. The first instance is created with
//! `FILE_FLAG_FIRST_PIPE_INSTANCE`: if the name exists, creation fails with access denied,
//! reported as `AddrInUse`. Every instance carries the owner-only security descriptor (plus
//! the users of `allow_sids`) and rejects remote clients unless `remote=true` (tokio sets the
//! pipe mode and the remote flag in one call, so RUSTSEC-2023-0001 does not apply to tokio
//! 1.23.1 and later).
//!
//! Peers are checked through the pipe's process ids and those processes' tokens
//! ([`SidPolicy`]): a client refuses a listener of another user (default: ours; `peer_sid`),
//! a listener with `allow_sids` tells a client of another user why and disconnects it.

use super::Config;
use crate::common::faults::{is_fatal_accept, Backoff};
use crate::common::framed::{byte_stream, framed, refuse};
use crate::common::windows::{
    is_not_found, open_blocking, os_error, pipe_exists, pipe_peer, Security, SidPolicy,
};
use ductwork_codec::REFUSED_IDENTITY;
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Listener,
    PeerCredentials, Result,
};
use std::{
    io,
    os::windows::io::AsRawHandle,
    time::{Duration, Instant},
};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PipeMode, ServerOptions,
};
use windows_sys::Win32::{
    Foundation::{ERROR_ACCESS_DENIED, ERROR_NO_DATA, ERROR_PIPE_BUSY},
    System::Pipes::GetNamedPipeClientProcessId,
};

/// Who the other end of `pipe` is (`of_server`: `pipe` is a client's handle), or why that
/// cannot be told; a remote peer's pid is not one of ours, so it is not looked up.
fn peer_of(pipe: &impl AsRawHandle, of_server: bool, remote: bool) -> io::Result<PeerCredentials> {
    if remote {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the peer may be on another host",
        ));
    }
    pipe_peer(pipe.as_raw_handle(), of_server)
}

byte_stream!(without_half_close: NamedPipeServer, NamedPipeClient);

fn pipe_path(server: Option<&str>, name: &str) -> String {
    format!(r"\\{}\pipe\ductwork-{name}", server.unwrap_or("."))
}

struct Instances {
    path: String,
    security: Security,
    remote: bool,
}

impl Instances {
    fn create(&self, first: bool) -> io::Result<NamedPipeServer> {
        let mut opts = ServerOptions::new();
        opts.pipe_mode(PipeMode::Byte)
            .first_pipe_instance(first)
            .reject_remote_clients(!self.remote);
        // SAFETY: `security.as_ptr()` points at a valid SECURITY_ATTRIBUTES whose descriptor
        // lives as long as `self.security`, which outlives this call.
        unsafe { opts.create_with_security_attributes_raw(&self.path, self.security.as_ptr()) }
    }
}

pub(super) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let policy = SidPolicy::from_endpoint(ep, false, cfg.remote)?;
    let security = Security::owner_only_and(policy.extra_sids())
        .map_err(|e| Error::io(ep, "build the pipe's security descriptor", e))?;
    let instances = Instances {
        path: pipe_path(None, &cfg.name),
        security,
        remote: cfg.remote,
    };
    if pipe_exists(&instances.path) {
        return Err(Error::new(
            ErrorKind::AddrInUse,
            ep,
            format!(
                "the pipe {} already exists (another listener holds this name)",
                instances.path
            ),
        ));
    }
    let first = instances.create(true).map_err(|e| match os_error(&e) {
        Some(ERROR_ACCESS_DENIED) | Some(ERROR_PIPE_BUSY) => Error::new(
            ErrorKind::AddrInUse,
            ep,
            format!(
                "the pipe {} already exists (another listener holds this name)",
                instances.path
            ),
        )
        .with_source(e),
        _ => Error::bind(ep, "create the named pipe", e),
    })?;
    Ok(Box::new(PipeListener {
        endpoint: ep.clone(),
        caps: cfg.caps,
        instances,
        next: Some(first),
        backoff: Backoff::default(),
        policy,
        arrived: None,
    }))
}

/// How long a connected instance may take to become writable (one turn of tokio's event
/// loop, normally) before it is handed out anyway.
const WRITABLE_WAIT: Duration = Duration::from_secs(5);

struct PipeListener {
    endpoint: Endpoint,
    caps: Capabilities,
    instances: Instances,
    /// The instance waiting for the next client.
    next: Option<NamedPipeServer>,
    /// The pause after transient errors (no instance could be made, a failed wait).
    backoff: Backoff,
    /// Which clients may stay (`allow_sids`).
    policy: SidPolicy,
    /// A connected instance waiting for its write readiness (see [`PipeListener::writable`]);
    /// kept here so that a cancelled `accept` loses no client.
    arrived: Option<NamedPipeServer>,
}

impl PipeListener {
    fn fresh(&self) -> io::Result<NamedPipeServer> {
        self.instances.create(false)
    }

    /// Waits for a client on the waiting instance; `Ok(None)` after a transient error
    /// (logged, paused) or a client that came and went.
    async fn connected(&mut self) -> Result<Option<NamedPipeServer>> {
        if self.next.is_none() {
            match self.fresh() {
                Ok(f) => self.next = Some(f),
                Err(e) => {
                    let ep = self.endpoint.clone();
                    self.backoff
                        .wait(&ep, "create the next pipe instance", &e)
                        .await;
                    return Ok(None);
                }
            }
        }
        let waiting = self.next.as_ref().expect("set above");
        // Cancel-safe: a dropped connect() leaves the instance waiting in `next`.
        let e = match waiting.connect().await {
            Ok(()) => return Ok(self.next.take()),
            Err(e) => e,
        };
        // The instance is spent either way: replace it (the next call creates one first,
        // so the name never disappears for long).
        self.next = self.fresh().ok();
        if os_error(&e) == Some(ERROR_NO_DATA) {
            // The client came and went before we saw it.
            return Ok(None);
        }
        if is_fatal_accept(&e) {
            return Err(Error::io(&self.endpoint, "wait for a client", e));
        }
        let ep = self.endpoint.clone();
        self.backoff.wait(&ep, "wait for a client", &e).await;
        Ok(None)
    }

    /// The next connected instance, writable: `Ok(None)` as [`connected`](Self::connected).
    ///
    /// tokio's `connect()` returns at once for an instance whose client connected before the
    /// listener waited on it (the listener was busy), while mio's write-readiness event for it
    /// is still queued on the completion port; a `try_write` before that event is
    /// `WouldBlock` without touching the pipe. So the refusal was lost (the client saw the
    /// pipe close) and the listener's hello waited for its first receive (a client sending
    /// first waited out its hello deadline). This waits, bounded, for that event; it never
    /// waits for the client to read (a fresh instance's buffer takes the hello or refusal).
    async fn writable(&mut self) -> Result<Option<NamedPipeServer>> {
        if self.arrived.is_none() {
            let Some(conn) = self.connected().await? else {
                return Ok(None);
            };
            self.backoff.reset();
            // Create the next instance before handing this one out; if that fails, the
            // connection is still good and the next accept tries again.
            match self.fresh() {
                Ok(f) => self.next = Some(f),
                Err(e) => tracing::warn!(
                    endpoint = %self.endpoint,
                    error = %e,
                    "cannot create the next pipe instance yet"
                ),
            }
            self.arrived = Some(conn);
        }
        let conn = self.arrived.as_ref().expect("set above");
        // Cancel-safe: a dropped wait leaves the instance in `arrived`.
        match tokio::time::timeout(WRITABLE_WAIT, conn.writable()).await {
            Ok(Ok(())) => {}
            // Handed out anyway: the connection may still work; its hello or a refusal may not.
            Ok(Err(e)) => tracing::warn!(
                endpoint = %self.endpoint,
                error = %e,
                "waiting for a connected pipe instance to become writable failed"
            ),
            Err(_) => tracing::warn!(
                endpoint = %self.endpoint,
                "a connected pipe instance did not become writable within {WRITABLE_WAIT:?}; \
                 its client may see a refusal as a closed pipe, or wait for the hello"
            ),
        }
        Ok(self.arrived.take())
    }
}

#[async_trait]
impl Listener for PipeListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        loop {
            let Some(conn) = self.writable().await? else {
                continue;
            };
            let creds = peer_of(&conn, false, self.instances.remote);
            if let Some(reason) = self.policy.refusal(&creds) {
                // One refused client is no reason to stop serving the others; it is told why
                // without waiting for it (it may not read), then disconnected: dropping the
                // instance closes its handle once the write is done (mio does not cancel
                // writes), never with `DisconnectNamedPipe`, which discards unread data. The
                // client reads the refusal, then the end of the pipe.
                tracing::warn!(
                    endpoint = %self.endpoint,
                    "refused a client: {} ({reason})",
                    creds.as_ref().map_or_else(|e| e.to_string(), |c| c.to_string()),
                );
                refuse(&conn, &self.endpoint, REFUSED_IDENTITY, &reason);
                continue;
            }
            let peer = match creds {
                Ok(c) => Some(c.to_string()),
                Err(_) => client_pid(&conn).map(|pid| format!("pid {pid}")),
            };
            return Ok(framed(conn, self.endpoint.clone(), peer, self.caps.clone()));
        }
    }
}

/// The client's pid alone, for a client whose user cannot be told.
fn client_pid(conn: &NamedPipeServer) -> Option<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle belongs to `conn`, which is alive; `pid` is valid for a write.
    let ok = unsafe { GetNamedPipeClientProcessId(conn.as_raw_handle(), &mut pid) };
    (ok != 0).then_some(pid)
}

fn open(path: &str) -> io::Result<NamedPipeClient> {
    ClientOptions::new().pipe_mode(PipeMode::Byte).open(path)
}

pub(super) async fn connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection> {
    let policy = SidPolicy::from_endpoint(ep, cfg.server.is_some(), false)?;
    let path = pipe_path(cfg.server.as_deref(), &cfg.name);
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut wait = Duration::from_millis(5);
    loop {
        let r = if cfg.server.is_some() {
            let p = path.clone();
            open_blocking(ep, move || open(&p)).await?
        } else {
            open(&path)
        };
        match r {
            Ok(client) => {
                let creds = peer_of(&client, true, cfg.server.is_some());
                policy.check_listener(ep, &creds)?;
                let peer = creds.map_or(path, |c| c.to_string());
                return Ok(framed(client, ep.clone(), Some(peer), cfg.caps));
            }
            Err(e) if os_error(&e) == Some(ERROR_PIPE_BUSY) => {
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        ep,
                        format!(
                            "every instance of {path} stayed busy for the connect_timeout of {}",
                            crate::common::faults::describe(cfg.connect_timeout)
                        ),
                    )
                    .with_source(e));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(e) if is_not_found(&e) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    ep,
                    format!("no listener has created {path}"),
                )
                .with_source(e))
            }
            Err(e) => return Err(Error::io(ep, format!("open {path}"), e)),
        }
    }
}
