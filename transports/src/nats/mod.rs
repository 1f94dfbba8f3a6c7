//! `nats://host:port/name`: connections through a NATS server (or cluster), on `async-nats`.
//!
//! A NATS server routes messages by *subject*; ductwork makes point-to-point connections out of
//! that, so that moving a service onto a NATS cluster is one line of configuration:
//!
//! - **`bind`** connects to the server and subscribes to `<prefix>.<name>.connect` in a queue
//!   group: any number of listener processes may bind the same name, and each connecting peer
//!   reaches one of them ([`Accept::Pooled`]; a second bind is *not* `AddrInUse`).
//! - **`connect`** connects to the server, subscribes to a fresh inbox `_INBOX.<id>` and
//!   publishes a hello to `<prefix>.<name>.connect` with that inbox as the reply subject. A
//!   listener subscribes to an inbox of its own and answers from it; from then on each side
//!   publishes frames to the other's inbox. No listener: the server's "no responders" status
//!   makes `connect` fail with [`ErrorKind::NotFound`]. A listener whose backlog of
//!   unaccepted connections is full answers [`ErrorKind::Refused`].
//! - **Frames are NATS messages** (the payload, no header, no copy). Control messages (close)
//!   carry a `Ductwork-Nats` header; heartbeats go to `<inbox>.hb`.
//!
//! # What it promises
//! Core NATS delivers **at most once**: a message for a subscriber that is not keeping up
//! (a slow consumer) or sent while a client reconnects is dropped. So `nats://` is
//! [`Delivery::BestEffort`], **ordered** per connection (NATS keeps the order of one
//! publisher's messages to one subscriber, across reconnects too), never duplicated, never
//! corrupted. Use a reliable transport, or an application-level acknowledgement, for what
//! must arrive.
//!
//! Peer loss has no native signal in NATS: each side publishes a heartbeat every `heartbeat`
//! (default 1 s) and declares the peer lost ([`ErrorKind::ConnectionLost`] on `recv`, and on
//! sends) when none arrived for `peer_timeout` (default 5 s). That is the stated bound: a peer
//! that dies is reported within `peer_timeout`. A connection that is dropped without `close`
//! still tells its peer (a close marker, then a goodbye on the heartbeat subject).
//!
//! The frame limit is the server's `max_payload` (1 MiB unless the server says otherwise), or
//! `max_frame` when that is smaller. [`Transport::capabilities`] cannot ask a server, so it
//! reports `max_frame` or NATS's default 1 MiB; a connection reports the limit in force.
//!
//! # Options
//! | option | meaning |
//! |---|---|
//! | `servers` | more servers to fail over to, `host:port` joined by `,` |
//! | `randomize` | `false`: try the servers in the order given, the address's first (default `true`: a random order, as NATS clients do, to spread the load) |
//! | `prefix` | the subject prefix (default `ductwork`) |
//! | `heartbeat` | heartbeat period (default `1s`) |
//! | `peer_timeout` | silence after which the peer is lost (default `5s`, at least twice `heartbeat`) |
//! | `buffer` | messages held per connection before slow-consumer drops (default 65536, async-nats's own; an application that stops reading while its peer sends may hold `buffer` × the frame limit) |
//! | `backlog` | connections a listener set up that `accept` has not taken yet (default 128) |
//! | `tls` | `true`: TLS to the server, whatever the server advertises (default `false`) |
//! | `ca` | PEM file of the CAs to trust for the server (implies `tls`; default: the system's) |
//! | `cert`, `key` | PEM files of a client certificate and its key (imply `tls`) |
//! | `user` | user name; with `password_file` or `password_env` |
//! | `token_file`, `token_env` | a token, read from a file or an environment variable |
//! | `creds` | a NATS `.creds` file (JWT and nkey seed) |
//! | `nkey` | a file holding an nkey seed |
//!
//! Secrets never go in the endpoint itself: endpoints are printed in errors and logs. So there
//! is no `password=` or `token=` (nor `user:password@` in the address); they are refused with
//! a message naming the `_file`/`_env` options, and the refusal does not print their value.
//! What is read from files and variables is never logged.
//!
//! Reconnects are `async-nats`'s own (every server of the list, and those the cluster
//! advertises, forever, with a backoff up to 4 s); each (re)connect is a `tracing` event at
//! `info`, each disconnect, slow-consumer drop and server or client error one at `warn`, naming
//! the endpoint (which holds no secret).
//!
//! [`Transport::local_endpoint`] uses the server named by the environment variable
//! [`SERVER_VAR`] (`host:port`), else `127.0.0.1:4222`, NATS's default port.

mod config;
mod conn;
mod listener;
#[doc(hidden)]
pub mod native;
#[doc(hidden)]
pub mod server;

use config::Config;
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Delivery, Direction,
    Endpoint, Error, ErrorKind, Reach, Result, Transport,
};

/// The environment variable naming the NATS server (`host:port`) that
/// [`Transport::local_endpoint`] uses (tests and `ductwork bench` set it when they start one).
pub const SERVER_VAR: &str = "DUCTWORK_NATS_SERVER";

/// nats-server's default `max_payload`, assumed where no server can be asked.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The NATS transport (`nats://host:port/name`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Nats;

/// What a `nats://` connection offers when its frame limit is `max_message`.
fn caps(max_message: usize) -> Capabilities {
    Capabilities {
        direction: Direction::Duplex,
        delivery: Delivery::BestEffort,
        ordered: true,
        boundaries: Boundaries::Messages,
        max_message,
        reach: Reach::Network,
        peer_loss: true,
        accept: Accept::Pooled,
    }
}

#[async_trait]
impl Transport for Nats {
    fn scheme(&self) -> &'static str {
        "nats"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        let server = std::env::var(SERVER_VAR).unwrap_or_else(|_| "127.0.0.1:4222".into());
        format!("nats://{server}/{unique}")
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::new(ep)?;
        Ok(caps(cfg.max_frame.unwrap_or(DEFAULT_MAX_PAYLOAD)))
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let cfg = Config::new(ep)?;
        listener::bind(ep, cfg).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let cfg = Config::new(ep)?;
        let deadline = cfg.connect_timeout;
        match tokio::time::timeout(deadline, conn::connect(ep, &cfg)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                &cfg.shown,
                format!("no answer from a listener within the connect_timeout of {deadline:?}"),
            )),
        }
    }
}
