//! Fuzzes typed decoding (`ductwork_codec::decode`) into a message type with every common
//! serde shape. See `ductwork_codec::__fuzz::typed_decode` for the checks (no panic; a value
//! that decodes re-encodes stably).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_codec::__fuzz::typed_decode(data);
});
