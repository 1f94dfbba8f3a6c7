//! The bench's own `nats-server` for the `nats` rows: a run that measures `nats` (named in
//! `--transports`, or by default) starts one on a loopback port when a `nats-server` binary is
//! on the PATH, points `nats://`'s local endpoints at it (the `DUCTWORK_NATS_SERVER`
//! variable, which the peers inherit) and stops it by its pid when the run ends. A server
//! named in that variable beforehand is used as it is. Without either the `nats` rows are
//! skipped with a note saying how to get them.
//!
//! Started before the run pins itself to a CPU, so the server is not pinned with the parent:
//! it plays the network, between parent and peer.

use super::plan::BenchArgs;
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The variable `nats://`'s `local_endpoint` reads.
const SERVER_VAR: &str = ductwork_transports::nats::SERVER_VAR;

/// A nats-server this run started; killed and reaped when dropped.
pub struct LocalServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the run measures `nats`: named in `--transports`, or by default when built in.
fn wanted(args: &BenchArgs) -> bool {
    let built = ductwork::transports().iter().any(|t| t.scheme() == "nats");
    match &args.transports {
        None => built,
        Some(list) => list.iter().any(|t| {
            let scheme = t.split('?').next().unwrap_or("").trim();
            scheme.eq_ignore_ascii_case("nats")
        }),
    }
}

/// Starts a server when the run needs one: the server (if this run started it) and, when the
/// `nats` rows cannot be measured, the note that says why. Call before anything reads the
/// environment from another thread.
pub fn start(args: &BenchArgs) -> (Option<LocalServer>, Option<String>) {
    if !wanted(args) || std::env::var_os(SERVER_VAR).is_some() {
        return (None, None);
    }
    let skip = |why: String| (None, Some(format!("skipped nats: {why}")));
    let Some(bin) = binary() else {
        return skip(format!(
            "no nats-server on the PATH (install it, e.g. apt-get install nats-server, or name \
             a running one with {SERVER_VAR}=host:port)"
        ));
    };
    match spawn(&bin) {
        Ok((server, port)) => {
            // Single-threaded still: no other thread reads the environment yet.
            std::env::set_var(SERVER_VAR, format!("127.0.0.1:{port}"));
            (Some(server), None)
        }
        Err(why) => skip(format!("the local nats-server did not start: {why}")),
    }
}

/// `nats-server` on the PATH, or where Debian installs it (`/usr/sbin`).
fn binary() -> Option<PathBuf> {
    let name = if cfg!(windows) {
        "nats-server.exe"
    } else {
        "nats-server"
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if cfg!(unix) {
        dirs.push("/usr/sbin".into());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts `bin` on a loopback port it picks itself and reads the port from its ports file.
fn spawn(bin: &PathBuf) -> Result<(LocalServer, u16), String> {
    let dir = std::env::temp_dir().join(format!("ductwork-bench-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&dir)
        .arg("-l")
        .arg(dir.join("log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut server = LocalServer { child, dir };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("it exited ({status}); see its log"));
        }
        if let Some(port) = read_port(&server.dir) {
            return Ok((server, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("no ports file within 10 s".into())
}

/// The client port in the ports file (`{"nats":["nats://127.0.0.1:PORT"],...}`) in `dir`.
fn read_port(dir: &PathBuf) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let url = text.split("\"nats\":[\"").nth(1)?.split('"').next()?;
    url.rsplit(':').next()?.parse().ok().filter(|p| *p != 0)
}
