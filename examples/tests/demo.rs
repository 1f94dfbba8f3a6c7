//! The same service and client binaries, run over tcp, pipes, unix sockets and shared memory,
//! with only the endpoints changed: the application code does not know which transport carries
//! it. The service answers orders (request/reply), feeds prices (publish/subscribe) and shuts
//! down gracefully.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
};

/// Runs the service on `orders`/`prices`, a price watcher and two order clients against it;
/// the service exits by itself after answering the clients' four requests.
fn run_pair(orders: &str, prices: &str) {
    let mut service = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--endpoint", &format!("orders={orders}")])
        .args(["--endpoint", &format!("prices={prices}")])
        .args(["--requests", "4", "--tick", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start service");
    let mut out = BufReader::new(service.stdout.take().unwrap());
    let mut bound = |what: &str| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix(&format!("{what} on "))
            .unwrap_or_else(|| panic!("service said {line:?}"))
            .to_string()
    };
    let (orders, prices) = (bound("orders"), bound("prices"));
    let client = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_order-client"))
            .args(["--endpoint", &format!("orders={orders}")])
            .args(["--endpoint", &format!("prices={prices}")])
            .args(args)
            .output()
            .expect("run client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let watched = client(&["--prices", "3"]);
    assert_eq!(watched.lines().count(), 3, "{watched}");
    assert!(watched.lines().all(|l| l.ends_with(" cents")), "{watched}");
    let text = client(&["bolt", "4"]);
    assert!(text.contains("Quote { cents: 100 }"), "{text}");
    assert!(text.contains("Placed { id: 1 }"), "{text}");
    let text = client(&["anvil", "1"]);
    assert!(text.contains("we do not sell anvil"), "{text}");
    assert!(service.wait().unwrap().success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "shut down");
}

#[test]
fn same_binaries_over_tcp() {
    run_pair("tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
}

#[test]
fn same_binaries_over_pipes() {
    let pid = std::process::id();
    run_pair(
        &format!("pipe://dw-demo-o-{pid}"),
        &format!("pipe://dw-demo-p-{pid}"),
    );
}

#[cfg(unix)]
#[test]
fn same_binaries_over_unix() {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    run_pair(
        &format!("unix://{}/dw-demo-o-{pid}.sock", dir.display()),
        &format!("unix://{}/dw-demo-p-{pid}.sock", dir.display()),
    );
}

#[cfg(unix)]
#[test]
fn same_binaries_over_shared_memory() {
    let pid = std::process::id();
    run_pair(
        &format!("shm://dw-demo-o-{pid}"),
        &format!("shm://dw-demo-p-{pid}"),
    );
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
