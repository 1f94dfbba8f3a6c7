//! A `nats-server` of the caller's own, for tests and `ductwork bench`: started on a loopback
//! port the server picks itself (`-p -1`, read back from its ports file, so no other process
//! can take it in between), stopped by its pid when dropped (and, on Linux, killed by the
//! kernel if the thread that started it ends first).
//!
//! Not part of the API (hidden from the docs): one launcher shared by the transports' tests
//! (`tests/support/nats.rs` includes this file), the root patterns suite (which includes that
//! one) and the bench (`cli/src/bench/nats.rs`, through this module). Only std and, on Linux,
//! `prctl`: it compiles in a test crate that lacks the `nats` feature too.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// How long a server may take to write its ports file.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// Whether a missing nats-server is a failure here: CI on a Unix leg (the Windows leg runs
/// under `CI=true` too, and has no nats-server).
pub fn required() -> bool {
    cfg!(unix) && std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The nats-server binary: on `PATH`, or where Debian installs it (`/usr/sbin`, which a
/// non-root `PATH` may lack). The error says how to get it.
pub fn binary() -> Result<PathBuf, String> {
    let name = if cfg!(windows) {
        "nats-server.exe"
    } else {
        "nats-server"
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if cfg!(unix) {
        dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server is not installed (Debian: apt-get install nats-server); the nats:// \
             tests need one"
                .to_string()
        })
}

/// A running nats-server.
pub struct NatsServer {
    child: Child,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its route port, when started with `--cluster`.
    pub cluster_port: Option<u16>,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free loopback port, with `extra` arguments (routes, auth, TLS).
    /// An error says why there is none: a missing binary (and how to get it), or a server
    /// that did not come up (its log's end included). Tests skip on it, or fail in CI.
    pub fn start(extra: &[String]) -> Result<NatsServer, String> {
        let bin = binary()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dw-nats-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(&dir)
            .arg("-l")
            .arg(dir.join("log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = NatsServer {
            child,
            port: 0,
            cluster_port: None,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Waits for the ports file the server writes once it listens; reads its ports.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < START_DEADLINE {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "nats-server exited ({status}): {}",
                    self.log_tail()
                ));
            }
            let ports = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
                .and_then(|e| std::fs::read_to_string(e.path()).ok());
            if let Some(port) = ports.as_deref().and_then(|p| port_of(p, "nats")) {
                self.port = port;
                self.cluster_port = ports.as_deref().and_then(|p| port_of(p, "cluster"));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "nats-server wrote no ports file within {START_DEADLINE:?}: {}",
            self.log_tail()
        ))
    }

    /// `127.0.0.1:PORT`, the server's client address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The route URL other cluster nodes solicit.
    pub fn route(&self) -> Option<String> {
        self.cluster_port.map(|p| format!("nats://127.0.0.1:{p}"))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL on Unix: no goodbye to clients or routes) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// A file in the server's scratch directory (removed with it).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port of the first URL under `key` in a ports file
/// (`{"nats":["nats://127.0.0.1:4222"],"cluster":[...]}`).
pub fn port_of(ports: &str, key: &str) -> Option<u16> {
    let after = ports.split(&format!("\"{key}\":[\"")).nth(1)?;
    let url = after.split('"').next()?;
    url.rsplit(':').next()?.parse().ok().filter(|p| *p != 0)
}

/// On Linux the kernel kills the server when the thread that started it ends, so a test
/// process that dies (killed, panicked past its drops) leaves no server behind.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe, touching no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}
