//! The same service and client binaries, run over tcp and then over unix sockets, with only the
//! endpoint changed: the application code does not know which transport carries it.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn run_pair(endpoint: &str) {
    let mut service = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args([
            "--endpoint",
            &format!("orders={endpoint}"),
            "--clients",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start service");
    let mut line = String::new();
    BufReader::new(service.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let bound = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("service said {line:?}"))
        .to_string();
    let client = |item: &str, qty: &str| {
        Command::new(env!("CARGO_BIN_EXE_order-client"))
            .args(["--endpoint", &format!("orders={bound}"), item, qty])
            .output()
            .expect("run client")
    };
    let out = client("bolt", "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Quote { cents: 100 }"), "{text}");
    assert!(text.contains("Placed { id: 1 }"), "{text}");
    let out = client("anvil", "1");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("we do not sell anvil"), "{text}");
    assert!(service.wait().unwrap().success());
}

#[test]
fn same_binaries_over_tcp() {
    run_pair("tcp://127.0.0.1:0");
}

#[cfg(unix)]
#[test]
fn same_binaries_over_unix() {
    let path = std::env::temp_dir().join(format!("dw-demo-{}.sock", std::process::id()));
    run_pair(&format!("unix://{}", path.display()));
}

#[test]
fn config_file_is_read() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-client"))
        .args(["--config", "config/does-not-exist.toml", "bolt", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config/does-not-exist.toml: cannot read"),
        "{err}"
    );
}
