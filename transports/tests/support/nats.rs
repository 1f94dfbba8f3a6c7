//! A `nats-server` of the test's own: the launcher is the transports crate's own
//! (`src/nats/server.rs`, which the bench uses too), included here by path so that a suite built
//! without the `nats` feature still compiles; this file adds the tests' policy for a missing
//! server.
//!
//! Where the binary is missing: with `CI=true` on a Unix leg the tests fail loudly (`.ci/run`
//! installs the Debian package `nats-server`); elsewhere (a developer's machine, the Windows
//! leg under Wine, which has no nats-server) they are skipped with the reason printed.
//!
//! Declared by each suite that needs it with `#[path = ".../support/nats.rs"] mod nats_server;`
//! (the transports' suites and the root patterns suite).
#![allow(dead_code)] // each suite uses only some of the helpers

#[path = "../../src/nats/server.rs"]
mod launcher;

#[allow(unused_imports)] // each suite uses only some
pub use launcher::{binary, port_of, required, NatsServer};

/// `why` as a skip reason, printed; or, where the server is [`required`], a panic with it.
pub fn skip(why: &str) -> String {
    if required() {
        panic!("CI=true and the nats:// tests cannot run: {why}");
    }
    eprintln!("skipping the nats:// tests: {why}");
    why.to_string()
}
