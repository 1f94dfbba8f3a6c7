//! An idle, connected shm pair costs (almost) no CPU: the `shm-idle-cpu` example, run as a
//! user would, reads both processes' CPU time from the kernel over an idle window. The bound
//! is on CPU time, not on wall time, so a loaded machine does not make it fail: a waiting side
//! that spins instead of parking would use the whole window.

#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

/// The example's `both` line: the share of one core both processes used, in percent.
fn both_percent(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("both"))?;
    let pct = line.rsplit(": ").next()?.strip_suffix("% of a core")?;
    pct.trim().parse().ok()
}

#[test]
fn an_idle_connected_shm_pair_uses_under_one_percent_of_a_core() {
    // Bounded: the example waits at most 10 s for its peer, then 2 s idle.
    let stdout = support::run_example(
        env!("CARGO_BIN_EXE_shm-idle-cpu"),
        &["2"],
        Duration::from_secs(60),
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
