//! Running an example binary as a user would, bounded in time.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `exe` with `args` to its end, killing it (and failing) after `limit`; asserts that it
/// succeeded and returns its stdout.
pub fn run_example(exe: &str, args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll the example").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{exe} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("example output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
