//! Fuzzes the shared-memory ring reader and writer: the input becomes a ring's header words
//! (read index, close flag) and data area (record headers and payload), as a hostile peer
//! could leave them. Any
//! outcome but a panic, an out-of-bounds access or an allocation beyond the ring is fine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_transports::__fuzz::shm_ring(data);
});
