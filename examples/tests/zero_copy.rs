//! The zero-copy shm example, run as a user would: it binds, starts its own receiver process,
//! sends 1 MiB messages through loans, and the receiver checks every byte in place.

mod support;

use std::time::Duration;

#[test]
fn shm_zero_copy_example_checks_every_byte_in_another_process() {
    // Bounded: the example waits at most 10 s for its receiver and 5 s for it to exit.
    let stdout = support::run_example(
        env!("CARGO_BIN_EXE_shm-zero-copy"),
        &["20"],
        Duration::from_secs(60),
    );
    assert!(
        stdout.contains("the receiver checked 20971520 bytes in place"),
        "{stdout}"
    );
}
