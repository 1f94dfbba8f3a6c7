//! Fuzzes the endpoint parser and every transport's option parsing reachable from a string:
//! `Endpoint::parse` on the input as given, and the input's text after `://` (or all of it)
//! under every scheme of the transports table, through `ductwork_transports::capabilities`
//! (each transport's option check, `host_port`, `max_frame`, `connect_timeout`, the size and
//! duration parsers). No I/O: nothing is bound or connected.
//!
//! Checks: no panic; a parsed endpoint prints as a string that parses back to the same
//! endpoint; every error is `InvalidEndpoint` or `Unsupported` and its text starts with the
//! endpoint it concerns; a transport's `max_message` is never over the endpoint's
//! `max_frame`.
#![no_main]

use ductwork_core::{Endpoint, ErrorKind};
use libfuzzer_sys::fuzz_target;

/// Checks the error `e` about the endpoint written `s`.
fn check_error(s: &str, e: &ductwork_core::Error) {
    assert!(
        matches!(e.kind(), ErrorKind::InvalidEndpoint | ErrorKind::Unsupported),
        "{s:?}: unexpected error kind {:?}: {e}",
        e.kind()
    );
    let text = e.to_string();
    assert!(!text.is_empty(), "{s:?}: an empty error");
}

/// Parses `s`; if it parses, checks the round trip and the transport's view of it.
fn one(s: &str) {
    let ep = match Endpoint::parse(s) {
        Ok(ep) => ep,
        Err(e) => {
            check_error(s, &e);
            assert!(
                e.to_string().starts_with(s),
                "{s:?}: the error does not name the endpoint: {e}"
            );
            return;
        }
    };
    let printed = ep.to_string();
    let again = Endpoint::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, ep, "{s:?} -> {printed:?} parsed differently");
    let max_frame = ep.max_frame().expect("parse checked max_frame");
    ep.connect_timeout().expect("parse checked connect_timeout");
    let _ = ep.host_port();
    match ductwork_transports::capabilities(&ep) {
        Ok(caps) => assert!(
            caps.max_message <= max_frame,
            "{printed}: max_message {} over max_frame {max_frame}",
            caps.max_message
        ),
        Err(e) => {
            check_error(&printed, &e);
            assert!(
                e.to_string().starts_with(&printed),
                "{printed}: the error does not name the endpoint: {e}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    one(s);
    // The same address and options under every scheme, so that each transport's option
    // parsing sees every input.
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    for scheme in ductwork_transports::KNOWN_SCHEMES {
        one(&format!("{scheme}://{rest}"));
    }
});
