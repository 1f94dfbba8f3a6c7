//! An idle, connected shm pair costs (almost) no CPU: the `shm-idle-cpu` example, run as a
//! user would, reads both processes' CPU time from the kernel over an idle window. The bound
//! is on CPU time, not on wall time, so a loaded machine does not make it fail: a waiting side
//! that spins instead of parking would use the whole window.

#![cfg(target_os = "linux")]

use std::{process::Command, time::Duration};

/// The example's `both` line: the share of one core both processes used, in percent.
fn both_percent(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("both"))?;
    let pct = line.rsplit(": ").next()?.strip_suffix("% of a core")?;
    pct.trim().parse().ok()
}

#[test]
fn an_idle_connected_shm_pair_uses_under_one_percent_of_a_core() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shm-idle-cpu"))
        .arg("2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    // Bounded: the example waits at most 10 s for its peer, then 2 s idle.
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
    let pct = both_percent(&stdout).unwrap_or_else(|| panic!("no `both` line in: {stdout}"));
    assert!(pct < 1.0, "an idle pair used {pct}% of a core:\n{stdout}");
}

#[test]
fn the_percentage_is_read_from_the_both_line() {
    let out = "parent    0.173 ms CPU in 5.00 s idle: 0.003% of a core\n\
               both     12.500 ms CPU in 2.00 s idle: 0.625% of a core\n";
    assert_eq!(both_percent(out), Some(0.625));
    assert_eq!(both_percent("parent 1 ms: 0.1% of a core"), None);
}
