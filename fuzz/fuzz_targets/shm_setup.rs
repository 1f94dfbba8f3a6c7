//! Fuzzes the shared-memory set-up handshake as a hostile peer could speak it: the input is a
//! client's hello (the word and its `max_frame`, read as the listener reads it: 16 bytes after
//! our word, else 8), the listener's reply (as the Linux and the Windows layer read it) and
//! the segment header of the mapping the listener passed. Any outcome but a panic is fine,
//! and a hello that is taken must carry a non-zero limit; see
//! `ductwork_transports::__fuzz::shm_setup`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ductwork_transports::__fuzz::shm_setup(data);
});
