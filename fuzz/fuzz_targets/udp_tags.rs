//! Fuzzes everything a peer's udp datagram reaches: the tags (`docs/wire-format.md`), the
//! listener's peer table (hello, data, bye, refusals, idle expiry, the byte bounds on the
//! queues) and a client's reading of a listener's answer, refusal reasons included. See
//! `ductwork_transports::socket::Udp::__fuzz_tags` for the input's layout and the checks (no
//! panic; never more peers than `max_peers`, nor more bytes queued than `max_peer_queue` for
//! one peer or `max_queue` in all; a refusal reason shown short and printable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_transports::socket::Udp::__fuzz_tags(data);
});
