//! The zero-copy shm example, run as a user would: it binds, starts its own receiver process,
//! sends 1 MiB messages through loans, and the receiver checks every byte in place.

use std::{process::Command, time::Duration};

#[test]
fn shm_zero_copy_example_checks_every_byte_in_another_process() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shm-zero-copy"))
        .arg("20")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    // Bounded: the example waits at most 10 s for its receiver and 5 s for it to exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("poll the example").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("example output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("the receiver checked 20971520 bytes in place"),
        "{stdout}"
    );
}
