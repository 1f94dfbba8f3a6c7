//! Fuzzes the stream frame decoder: arbitrary bytes arrive in arbitrary reads, with the close
//! marker, oversized and stalled claims among them. See `ductwork_codec::__fuzz::frame_stream`
//! for the checks (no panic, no frame over the limit, room that follows the bytes that
//! arrived, the same outcome however the bytes are split, the close marker's rules).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_codec::__fuzz::frame_stream(data);
});
