//! Fuzzes the reading of a stream's first bytes, where a client finds the listener's hello or
//! its refusal, and the writing of a refusal. See `ductwork_codec::__fuzz::stream_start` for
//! the checks (no panic; never both; a short printable reason; more bytes never change a
//! decided answer; a written refusal reads back).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_codec::__fuzz::stream_start(data);
});
