//! The one way a test runs its own binary again as a child process playing a role.
//!
//! The parent starts the current test executable with the role and its arguments in the
//! environment ([`ROLE_VAR`], [`ARGS_VAR`]) and the libtest arguments that select the suite's
//! entry test ([`ENTRY`], which [`child_entry!`] defines; a `harness = false` suite calls
//! [`enter_if_child`] first thing in `main` and the arguments are ignored). The child runs the
//! role and exits: 0 on success, 1 with the error on stderr.
//!
//! Against hangs and strays: the parent waits for a child only up to [`super::DEADLINE`],
//! kills it by its pid when the [`Child`] is dropped, and the child exits on its own once its
//! lifetime ([`LIFETIME_VAR`]) is over, even if the parent died without killing it.
//!
//! Listener roles say they are ready with [`announce_ready`]; the parent reads that with
//! [`Child::ready`]. Roles that wait for the parent read their stdin: [`Child::say`] writes a
//! line, and [`Child::finish`] closes it.

use super::{within, DEADLINE};
use std::{process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{ChildStdin, ChildStdout, Command},
};

/// The role a child plays; set only in children.
pub const ROLE_VAR: &str = "DW_TEST_ROLE";
/// The role's arguments, separated by [`ARG_SEP`].
pub const ARGS_VAR: &str = "DW_TEST_ARGS";
/// Seconds after which a child exits on its own.
pub const LIFETIME_VAR: &str = "DW_TEST_LIFETIME_S";
const ARG_SEP: char = '\u{1f}';
/// A child's lifetime: longer than any case runs (the longest allows 300 s).
const LIFETIME: Duration = Duration::from_secs(600);
/// The name of the libtest entry test that [`child_entry!`] defines.
pub const ENTRY: &str = "dw_child";
/// The line prefix of [`announce_ready`].
const READY: &str = "READY ";

/// What a role is: its name and arguments in, success or a message out.
pub type Roles = fn(role: &str, args: &[String]) -> Result<(), String>;

/// Defines the ignored libtest test [`ENTRY`] through which a child runs `roles`.
#[macro_export]
macro_rules! child_entry {
    ($roles:expr) => {
        #[test]
        #[ignore = "a child-process role, run by this suite's tests (see support/child.rs)"]
        fn dw_child() {
            $crate::support::child::enter_if_child($roles);
        }
    };
}

/// If this process is a child ([`ROLE_VAR`] set), runs the role and exits; else returns.
pub fn enter_if_child(roles: Roles) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let args: Vec<String> = match std::env::var(ARGS_VAR) {
        Ok(a) if !a.is_empty() => a.split(ARG_SEP).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let lifetime = std::env::var(LIFETIME_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(LIFETIME);
    // The watchdog: a child whose parent died without killing it does not linger.
    let name = role.clone();
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        eprintln!("child role {name:?}: lifetime of {lifetime:?} over, exiting");
        std::process::exit(124);
    });
    let code = match roles(&role, &args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child role {role} failed: {e}");
            1
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// In a listener role: tells the parent that `what` (the bound endpoint) is ready.
pub fn announce_ready(what: impl std::fmt::Display) {
    use std::io::Write;
    println!("{READY}{what}");
    let _ = std::io::stdout().flush();
}

/// A child process playing a role; killed (by its pid) when dropped.
pub struct Child {
    inner: tokio::process::Child,
    role: String,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Child {
    /// Starts this test binary again playing `role` with `args` (call within a tokio runtime).
    pub fn spawn(role: &str, args: &[impl AsRef<str>]) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let joined = args
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(&ARG_SEP.to_string());
        let mut inner = Command::new(exe)
            .args([ENTRY, "--exact", "--ignored", "--nocapture", "--quiet"])
            .args(["--test-threads", "1"])
            .env(ROLE_VAR, role)
            .env(ARGS_VAR, joined)
            .env(LIFETIME_VAR, LIFETIME.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Also tokio's own guard, should this wrapper ever be leaked.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn child {role}: {e}"))?;
        let stdin = inner.stdin.take();
        let stdout = BufReader::new(inner.stdout.take().expect("piped stdout")).lines();
        Ok(Child {
            inner,
            role: role.into(),
            stdin,
            stdout,
        })
    }

    /// As [`Child::spawn`], but started through `wrapper` (a command and its arguments that
    /// end by exec'ing the rest, such as `ip netns exec NS`), so that the role runs where the
    /// wrapper puts it; its pid is the role's once the wrapper exec'd.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        role: &str,
        args: &[impl AsRef<str>],
    ) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let (cmd, pre) = wrapper.split_first().ok_or("an empty wrapper")?;
        let joined = args
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(&ARG_SEP.to_string());
        let mut inner = Command::new(cmd)
            .args(pre)
            .arg(exe)
            .args([ENTRY, "--exact", "--ignored", "--nocapture", "--quiet"])
            .args(["--test-threads", "1"])
            .env(ROLE_VAR, role)
            .env(ARGS_VAR, joined)
            .env(LIFETIME_VAR, LIFETIME.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn child {role} through {cmd}: {e}"))?;
        let stdin = inner.stdin.take();
        let stdout = BufReader::new(inner.stdout.take().expect("piped stdout")).lines();
        Ok(Child {
            inner,
            role: role.into(),
            stdin,
            stdout,
        })
    }

    /// The child's process id (None once it was reaped).
    pub fn id(&self) -> Option<u32> {
        self.inner.id()
    }

    /// Waits for the child's [`announce_ready`] line and returns what it announced. Other
    /// lines (the test harness's) are skipped.
    pub async fn ready(&mut self) -> Result<String, String> {
        let role = self.role.clone();
        within(&format!("child {role} ready"), DEADLINE, async {
            // Bounded: the harness prints a few lines at most before the role runs.
            for _ in 0..100 {
                match self.stdout.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(what) = line.strip_prefix(READY) {
                            return Ok(what.to_string());
                        }
                    }
                    Ok(None) => return Err(format!("child {role} exited before it was ready")),
                    Err(e) => return Err(format!("child {role} stdout: {e}")),
                }
            }
            Err(format!("child {role} printed 100 lines but no {READY:?}"))
        })
        .await?
    }

    /// Writes `line` and a newline to the child's stdin.
    pub async fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin already closed")?;
        let text = format!("{line}\n");
        within("write to child", DEADLINE, stdin.write_all(text.as_bytes()))
            .await?
            .map_err(|e| format!("write to child {}: {e}", self.role))?;
        within("flush to child", DEADLINE, stdin.flush())
            .await?
            .map_err(|e| format!("write to child {}: {e}", self.role))
    }

    /// Closes the child's stdin (roles that wait on it end then) and waits for it to exit
    /// successfully.
    pub async fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = within(
            &format!("child {} exit", self.role),
            DEADLINE,
            self.inner.wait(),
        )
        .await?
        .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("child {} failed: {status}", self.role))
        }
    }

    /// Kills the child by its pid and reaps it.
    pub async fn kill(&mut self) -> Result<(), String> {
        self.inner
            .start_kill()
            .map_err(|e| format!("kill child {}: {e}", self.role))?;
        within("killed child exit", DEADLINE, self.inner.wait())
            .await?
            .map(drop)
            .map_err(|e| format!("reap child {}: {e}", self.role))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Still running (not reaped): kill it by its pid; tokio reaps it in the background.
        if self.inner.id().is_some() {
            let _ = self.inner.start_kill();
        }
    }
}
