//! The bench's own `nats-server` for the `nats` rows: a run that measures `nats` (named in
//! `--transports`, or by default) starts one on a loopback port when a `nats-server` binary is
//! on the PATH, points `nats://`'s local endpoints at it (the `DUCTWORK_NATS_SERVER`
//! variable, which the peers inherit) and stops it by its pid when the run ends. A server
//! named in that variable beforehand is used as it is. Without either the `nats` rows are
//! skipped with a note saying how to get them.
//!
//! The launcher is the transports crate's (`ductwork_transports::nats::server`), the one the
//! tests use. Started before the run pins itself to a CPU, so the server is not pinned with
//! the parent: it plays the network, between parent and peer.

use super::plan::BenchArgs;
use ductwork_transports::nats::server::{binary, NatsServer};

/// The variable `nats://`'s `local_endpoint` reads.
const SERVER_VAR: &str = ductwork_transports::nats::SERVER_VAR;

/// A nats-server this run started; killed by its pid and reaped when dropped.
pub type LocalServer = NatsServer;

/// Whether the run measures `nats`: named in `--transports`, or by default when built in.
fn wanted(args: &BenchArgs) -> bool {
    let built = ductwork::transports().iter().any(|t| t.scheme() == "nats");
    match &args.transports {
        None => built,
        Some(list) => list.iter().any(|t| {
            let scheme = t.split('?').next().unwrap_or("").trim();
            scheme.eq_ignore_ascii_case("nats")
        }),
    }
}

/// Starts a server when the run needs one: the server (if this run started it) and, when the
/// `nats` rows cannot be measured, the note that says why. Call before anything reads the
/// environment from another thread.
pub fn start(args: &BenchArgs) -> (Option<LocalServer>, Option<String>) {
    if !wanted(args) || std::env::var_os(SERVER_VAR).is_some() {
        return (None, None);
    }
    let skip = |why: String| (None, Some(format!("skipped nats: {why}")));
    if binary().is_err() {
        return skip(format!(
            "no nats-server on the PATH (install it, e.g. apt-get install nats-server, or name \
             a running one with {SERVER_VAR}=host:port)"
        ));
    }
    match NatsServer::start(&[]) {
        Ok(server) => {
            // Single-threaded still: no other thread reads the environment yet.
            std::env::set_var(SERVER_VAR, server.addr());
            (Some(server), None)
        }
        Err(why) => skip(format!("the local nats-server did not start: {why}")),
    }
}
