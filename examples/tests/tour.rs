//! The tour example, run as its own process over each local transport: every pattern it shows
//! prints the expected result, and the stale answer of the timed-out call never appears.

use std::process::Command;

fn run(endpoint: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_tour"))
        .arg(endpoint)
        .env("RUST_LOG", "ductwork=debug")
        .output()
        .expect("run the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{endpoint}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        "1 + 2 = 3",
        "slow call: ",
        "2 + 2 = 4",
        "after the restart: 3 + 4 = 7",
        "price.bolt = 0.25",
        "in flight during shutdown: Ok(-1)",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), want.len(), "{endpoint}: {stdout}");
    for (line, want) in lines.iter().zip(want) {
        assert!(
            line.starts_with(want),
            "{endpoint}: {line:?} is not {want:?}"
        );
    }
    assert!(lines[1].contains("timed out"), "{endpoint}: {}", lines[1]);
    // The library's events reach the application's subscriber (RUST_LOG above).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconnected"), "{endpoint}: {stderr}");
}

#[test]
fn the_tour_runs_over_every_local_transport() {
    let pid = std::process::id();
    run("tcp://127.0.0.1:0");
    run(&format!("pipe://dw-tour-{pid}"));
    if cfg!(unix) {
        run(&format!(
            "unix://{}/dw-tour-{pid}.sock",
            std::env::temp_dir().display()
        ));
        run(&format!("shm://dw-tour-{pid}"));
    }
}
