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

mod cases;
mod roles;
mod subjects;
#[path = "../support/mod.rs"]
mod support;

use libtest_mimic::{Arguments, Trial};

fn main() {
    support::child::enter_if_child(roles::run);
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for subject in subjects::all() {
        for case in cases::ALL {
            let name = format!("{}::{}", subject.name, case.name);
            match cases::applies(&subject, case) {
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
    libtest_mimic::run(&args, trials).exit();
}
