//! The conformance suite: every transport through the same contract, across two OS processes.
//!
//! Each case runs in this test process (the "parent") against a peer that is a *separate
//! process*: this same executable started again playing a role (see `roles.rs`), through
//! `support/child.rs`, which every suite in `transports/tests` shares. The transports to test
//! are listed in `subjects.rs`; each transport's
//! [`Capabilities`](ductwork_core::Capabilities) decide which cases apply (see `cases.rs`).
//!
//! Test names are `SCHEME::CASE`, so `cargo test -p ductwork-transports --test conformance -- tcp::`
//! runs one transport. Cases that do not apply are listed as ignored with the reason.
//!
//! `nats://` needs a server: the suite starts its own `nats-server` for the whole run (see
//! `support/nats.rs`) and points [`Transport::local_endpoint`](ductwork_core::Transport) at
//! it. Without the binary its cases are ignored with that reason, except in CI on Linux,
//! where that fails the run.

mod cases;
#[path = "../support/nats.rs"]
mod nats_server;
mod roles;
mod subjects;
#[path = "../support/mod.rs"]
mod support;

use libtest_mimic::{Arguments, Trial};

fn main() {
    support::child::enter_if_child(roles::run);
    let args = Arguments::from_args();
    let nats = start_nats();
    let mut trials = Vec::new();
    for subject in subjects::all() {
        for case in cases::ALL {
            let name = format!("{}::{}", subject.name, case.name);
            let applies = match (subject.name, &nats) {
                ("nats", Some(Err(why))) => Err(why.clone()),
                _ => cases::applies(&subject, case),
            };
            match applies {
                Ok(()) => {
                    let s = subject.clone();
                    let run = case.run;
                    trials.push(Trial::test(name, move || run(&s).map_err(|e| e.into())));
                }
                Err(why) => trials.push(
                    Trial::test(format!("{name} ({why})"), || Ok(())).with_ignored_flag(true),
                ),
            }
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(nats); // stops the server: `exit` would skip the drop
    conclusion.exit();
}

/// The suite's own nats-server when this build has `nats://` (its address in the variable
/// that `local_endpoint` reads, which the peer processes inherit), or why there is none.
fn start_nats() -> Option<Result<nats_server::NatsServer, String>> {
    #[cfg(not(feature = "nats"))]
    return None;
    #[cfg(feature = "nats")]
    start_nats_server()
}

#[cfg(feature = "nats")]
fn start_nats_server() -> Option<Result<nats_server::NatsServer, String>> {
    let server = nats_server::NatsServer::start(&[]).map_err(|why| nats_server::skip(&why));
    if let Ok(s) = &server {
        // Single-threaded still: no other thread reads the environment yet.
        std::env::set_var(ductwork_transports::nats::SERVER_VAR, s.addr());
    }
    Some(server)
}
