//! Security of the local transports on Linux, tested from outside with real processes and,
//! when the tests run as root (CI does), a real second user:
//!
//! - a racing attacker who swaps the socket path for a symlink the moment it appears never
//!   changes the file it points to (`unix://...?mode=0666`, thousands of binds);
//! - with umask `000` a socket file is never visible with any mode but its final one;
//! - another user who pre-creates `/tmp/ductwork-<uid>` does not stop pipe, mailslot and shm;
//! - another user cannot open default-mode unix, pipe, mailslot or shm endpoints; `?mode=`
//!   widens `unix://` explicitly; `allow_uids` refuses a client of another uid; a squatting
//!   user's listener is caught by `?peer_uid=`.
//!
//! Root-only tests say why they skip otherwise. Second users are created with `useradd` and
//! removed (with their files) when the test ends, also when it fails.
#![cfg(target_os = "linux")]

mod support;

use bytes::Bytes;
use ductwork_core::{BoxConnection, ErrorKind};
use futures::{SinkExt, StreamExt};
use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use support::child::{announce_ready, ARGS_VAR, ENTRY, LIFETIME_VAR, ROLE_VAR};
use tokio::io::{AsyncBufReadExt, BufReader};

child_entry!(roles);

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A fresh scratch directory with `mode`, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str, mode: u32) -> Scratch {
        let d = std::env::temp_dir().join(support::unique(&format!("dw-sec-{tag}")));
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dirs_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ductwork-bind-"))
        .collect()
}

// ----------------------------------------------------------------------------------------
// (a) The symlink race.

/// Swaps `sock` for a symlink to `victim` whenever a socket is there, until `stop`.
fn attacker(dir: PathBuf, victim: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let sock = dir.join("s.sock");
    let link = dir.join("lnk");
    let started = Instant::now();
    // Bounded by the flag and by time, whichever comes first.
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
        if !link.exists() {
            let _ = std::os::unix::fs::symlink(&victim, &link);
        }
        let is_socket = std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
        if is_socket && std::fs::rename(&link, &sock).is_ok() {
            swaps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Item (a): a listener binding `?mode=0666` thousands of times while another thread swaps
/// each new socket for a symlink to a victim file never changes the victim's mode or owner
/// (before the fix it did: bind, then `chmod` by name, followed the symlink).
#[test]
fn a_racing_symlink_never_redirects_the_mode() {
    const BINDS: u32 = 2000;
    let scratch = Scratch::new("race", 0o777);
    let dir = scratch.0.clone();
    let victim = dir.join("victim");
    std::fs::write(&victim, b"not yours").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    let sock = dir.join("s.sock");
    let ep = format!("unix://{}?mode=0666", sock.display());
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let t = {
        let (d, v, s, w) = (dir.clone(), victim.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || attacker(d, v, s, w))
    };
    let rt = support::runtime();
    let started = Instant::now();
    let (mut tries, mut bound, mut changed_at) = (0, 0, None);
    while tries < BINDS && started.elapsed() < Duration::from_secs(240) {
        tries += 1;
        // The attacker's symlink from the last round would make this bind AddrInUse.
        let _ = std::fs::remove_file(&sock);
        if let Ok(l) = rt.block_on(ductwork_transports::bind(ep.as_str())) {
            bound += 1;
            drop(l);
        }
        let now = std::fs::metadata(&victim).unwrap();
        if now.mode() != before.mode() || now.uid() != before.uid() {
            changed_at = Some((tries, now.mode() & 0o7777));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    println!("race: {tries} binds tried, {bound} bound, {swaps} sockets swapped for a symlink");
    if let Some((at, mode)) = changed_at {
        panic!("bind {at} of {tries} changed the victim to mode {mode:o} ({swaps} swaps)");
    }
    assert!(
        bound > BINDS / 2,
        "too few binds succeeded: {bound} of {tries}"
    );
    assert!(
        swaps > 0,
        "the attacker never swapped a socket: the test proves nothing"
    );
    assert_eq!(temp_dirs_left(&dir), Vec::<String>::new());
}

// ----------------------------------------------------------------------------------------
// (b) The umask window.

/// Item (b): with umask `000`, a socket file is never seen at its path with a mode other than
/// its final one (`0600`, or `0640` given): it appears complete. Runs in a child process,
/// since the umask is process-wide. Before the fix an observer saw `0777` sockets.
#[test]
fn with_umask_000_a_socket_never_appears_with_another_mode() {
    let scratch = Scratch::new("umask", 0o755);
    let rt = support::runtime();
    // 277 takes even the owner's bits: binding must still work and give the final mode.
    for (umask, mode) in [("0", ""), ("0", "?mode=0640"), ("277", "")] {
        let args = [scratch.0.display().to_string(), mode.into(), umask.into()];
        let out = rt.block_on(run_role(None, "umask_window", &args)).unwrap();
        println!("umask {umask}, mode option {mode:?}: {out}");
        assert!(out.starts_with("ok"), "{out}");
        assert!(out.contains(" wrong=0 "), "{out}");
    }
    assert_eq!(temp_dirs_left(&scratch.0), Vec::<String>::new());
}

/// The child side of item (b): sets `umask`, then binds many times while a thread watches the
/// path.
fn umask_window(dir: &str, option: &str, umask: &str) -> Result<String, String> {
    const BINDS: u32 = 1000;
    let umask = u32::from_str_radix(umask, 8).map_err(|e| e.to_string())?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let want = if option.is_empty() { 0o600 } else { 0o640 };
    let sock = Path::new(dir).join("u.sock");
    let ep = format!("unix://{}{option}", sock.display());
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_wrong = Arc::new(Mutex::new(None));
    let watcher = {
        let (stop, seen, wrong, first) = (
            stop.clone(),
            seen.clone(),
            wrong.clone(),
            first_wrong.clone(),
        );
        let sock = sock.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(200) {
                let Ok(m) = std::fs::symlink_metadata(&sock) else {
                    continue;
                };
                if m.file_type().is_socket() {
                    seen.fetch_add(1, Ordering::Relaxed);
                    if m.mode() & 0o7777 != want {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        first.lock().unwrap().get_or_insert(m.mode() & 0o7777);
                    }
                }
            }
        })
    };
    let rt = support::runtime();
    let mut bound = 0;
    for _ in 0..BINDS {
        let l = rt
            .block_on(ductwork_transports::bind(ep.as_str()))
            .map_err(|e| e.to_string())?;
        bound += 1;
        drop(l);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().map_err(|_| "watcher panicked")?;
    Ok(format!(
        "ok binds={bound} seen={} wrong={} first_wrong={:?}",
        seen.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        first_wrong.lock().unwrap().map(|m| format!("{m:o}"))
    ))
}

// ----------------------------------------------------------------------------------------
// A second user, and this test binary run as it.

/// A user created for one test with `useradd`, removed with its files when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// `useradd` and `userdel` lock /etc/passwd: one at a time within this process.
static ACCOUNTS: Mutex<()> = Mutex::new(());

impl User {
    /// A new user, or `None` (with the reason printed) when not root or without `useradd`.
    fn create(tag: &str) -> Option<User> {
        if euid() != 0 {
            println!("SKIPPED: creating a second user needs root (CI runs as root)");
            return None;
        }
        let name = format!("dwsec{}{tag}", std::process::id() % 100_000);
        let home = std::env::temp_dir().join(format!("{name}-home"));
        let _lock = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let out = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", "--home-dir"])
            .arg(&home)
            .arg(&name)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("useradd {name}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                println!("SKIPPED: cannot run useradd: {e}");
                return None;
            }
        }
        let id = |flag: &str| -> u32 {
            let o = std::process::Command::new("id")
                .args([flag, &name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(User {
            name,
            uid,
            gid,
            home,
        })
    }

    /// The user's fallback private directory in /tmp (the one others can pre-empt).
    fn tmp_private_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("ductwork-{}", self.uid))
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
        let tmp = self.tmp_private_dir();
        if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        let _lock = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .output();
    }
}

/// A child process of this test binary playing `role`, as `user` (or as we are); killed by
/// its pid when dropped.
struct Child {
    inner: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    fn spawn(user: Option<&User>, role: &str, args: &[String]) -> Child {
        let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([ENTRY, "--exact", "--ignored", "--nocapture", "--quiet"])
            .args(["--test-threads", "1"])
            .env(ROLE_VAR, role)
            .env(ARGS_VAR, args.join("\u{1f}"))
            .env(LIFETIME_VAR, "300")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(u) = user {
            // The user's own environment: no runtime directory of ours, its own home.
            cmd.uid(u.uid)
                .gid(u.gid)
                .env_remove("XDG_RUNTIME_DIR")
                .env_remove("DUCTWORK_RUNTIME_DIR")
                .env("HOME", &u.home)
                .current_dir("/");
        }
        let mut inner = cmd.spawn().expect("spawn child");
        let lines = BufReader::new(inner.stdout.take().unwrap()).lines();
        Child { inner, lines }
    }

    /// The next line the role printed with `prefix`, without it.
    async fn line(&mut self, prefix: &str) -> Result<String, String> {
        support::within("child output", support::DEADLINE, async {
            // Bounded: the harness prints a few lines at most besides the role's.
            for _ in 0..100 {
                match self.lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(rest) = l.strip_prefix(prefix) {
                            return Ok(rest.to_string());
                        }
                    }
                    Ok(None) => return Err(format!("child exited without a {prefix:?} line")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err(format!("no {prefix:?} line in 100"))
        })
        .await?
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.inner.start_kill();
    }
}

/// Runs `role` to its end in a child (as `user`) and returns its `RESULT` line.
async fn run_role(user: Option<&User>, role: &str, args: &[String]) -> Result<String, String> {
    let mut c = Child::spawn(user, role, args);
    let out = c.line("RESULT ").await;
    let _ = support::within("child exit", support::DEADLINE, c.inner.wait()).await;
    out
}

fn roles(role: &str, args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match role {
        "umask_window" => umask_window(arg(0), arg(1), arg(2))?,
        "connect" => support::runtime().block_on(connect_role(arg(0))),
        "raw_connect" => raw_connect(arg(0), arg(1)),
        "listen" => return support::runtime().block_on(listen_role(arg(0))),
        "own_endpoints" => support::runtime().block_on(own_endpoints(arg(0)))?,
        other => return Err(format!("unknown role {other}")),
    };
    println!("RESULT {result}");
    Ok(())
}

fn kind_of(e: &ductwork_core::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

/// Connects to `ep`, sends `ping` and waits for `pong`: `ok`, or what failed.
async fn connect_role(ep: &str) -> String {
    let mut c = match ductwork_transports::connect(ep).await {
        Ok(c) => c,
        Err(e) => return format!("connect {}", kind_of(&e)),
    };
    if let Err(e) = c.send(Bytes::from_static(b"ping")).await {
        return format!("send {}", kind_of(&e));
    }
    match support::within("reply", Duration::from_secs(30), c.next()).await {
        Ok(Some(Ok(b))) if &b[..] == b"pong" => "ok".into(),
        Ok(Some(Ok(b))) => format!("odd reply {b:?}"),
        Ok(Some(Err(e))) => format!("recv {}", kind_of(&e)),
        Ok(None) => "recv closed".into(),
        Err(e) => format!("recv {e}"),
    }
}

/// Connects a plain stream (`stream`) or datagram (`dgram`) socket to `path`.
fn raw_connect(kind: &str, path: &str) -> String {
    let r = match kind {
        "stream" => std::os::unix::net::UnixStream::connect(path).map(drop),
        _ => std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path)),
    };
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{:?}: {e}", e.kind()),
    }
}

/// Binds `ep`, says READY, answers `pong` to every `ping` until killed.
async fn listen_role(ep: &str) -> Result<(), String> {
    let mut l = ductwork_transports::bind(ep)
        .await
        .map_err(|e| e.to_string())?;
    announce_ready(ep);
    loop {
        let c = l.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(pong(c));
    }
}

async fn pong(mut c: BoxConnection) {
    while let Some(Ok(m)) = c.next().await {
        if &m[..] == b"ping" && c.send(Bytes::from_static(b"pong")).await.is_err() {
            return;
        }
    }
}

/// Binds and reaches `pipe://`, `mailslot://` and `shm://` endpoints named `tag`: `ok` and
/// the private directory used, or the first failure.
async fn own_endpoints(tag: &str) -> Result<String, String> {
    for scheme in ["pipe", "shm"] {
        let ep = format!("{scheme}://{tag}");
        let mut l = ductwork_transports::bind(ep.as_str())
            .await
            .map_err(|e| format!("bind {ep}: {e}"))?;
        let served = tokio::spawn(async move { pong(l.accept().await.unwrap()).await });
        let got = connect_role(&ep).await;
        if got != "ok" {
            return Err(format!("{ep}: {got}"));
        }
        served.abort();
    }
    let ep = format!("mailslot://{tag}");
    let mut rx = ductwork_transports::bind(ep.as_str())
        .await
        .map_err(|e| format!("bind {ep}: {e}"))?
        .accept()
        .await
        .map_err(|e| e.to_string())?;
    let mut tx = ductwork_transports::connect(ep.as_str())
        .await
        .map_err(|e| format!("connect {ep}: {e}"))?;
    tx.send(Bytes::from_static(b"hello"))
        .await
        .map_err(|e| e.to_string())?;
    match rx.next().await {
        Some(Ok(m)) if &m[..] == b"hello" => {}
        other => return Err(format!("{ep}: received {other:?}")),
    }
    Ok(format!("ok dir={}", support::unix::private_dir().display()))
}

// ----------------------------------------------------------------------------------------
// (c) A pre-empted /tmp/ductwork-<uid>.

/// Item (c): another user (here root, for a second user `u`) pre-creates `u`'s
/// `/tmp/ductwork-<uid>` as a directory of its own, as a 0777 directory and as a symlink;
/// `u` still binds and reaches pipe, mailslot and shm endpoints (in its home). Before the fix
/// every one failed with `PermissionDenied`.
#[test]
fn a_pre_empted_private_directory_does_not_stop_the_user() {
    let Some(u) = User::create("c") else { return };
    let rt = support::runtime();
    let squat = u.tmp_private_dir();
    let elsewhere = Scratch::new("elsewhere", 0o777);
    for (how, make) in [
        ("a directory of root's", 0o700),
        ("a 0777 directory of root's", 0o777),
        ("a symlink", 0),
    ] {
        let _ = std::fs::remove_dir_all(&squat);
        let _ = std::fs::remove_file(&squat);
        let _ = std::fs::remove_dir_all(u.home.join(".cache"));
        if make == 0 {
            std::os::unix::fs::symlink(&elsewhere.0, &squat).unwrap();
        } else {
            std::fs::create_dir(&squat).unwrap();
            std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(make)).unwrap();
        }
        let tag = support::unique("pre");
        let out = rt
            .block_on(run_role(Some(&u), "own_endpoints", &[tag]))
            .unwrap();
        println!("/tmp/ductwork-{} is {how}: {out}", u.uid);
        assert!(out.starts_with("ok dir="), "{how}: {out}");
        assert!(out.contains(&u.home.display().to_string()), "{how}: {out}");
    }
    assert_eq!(
        std::fs::read_dir(&elsewhere.0).unwrap().count(),
        0,
        "nothing was created through the symlink"
    );
}

// ----------------------------------------------------------------------------------------
// (d) A second user against the first.

/// Serves `ping` → `pong` on every connection of `l`, and records each client's uid.
fn serve(
    rt: &tokio::runtime::Runtime,
    mut l: ductwork_core::BoxListener,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<u32>>>) {
    let uids = Arc::new(Mutex::new(Vec::new()));
    let seen = uids.clone();
    let task = rt.spawn(async move {
        while let Ok(c) = l.accept().await {
            let uid = c.info().peer_credentials().map(|p| p.uid);
            seen.lock().unwrap().extend(uid);
            tokio::spawn(pong(c));
        }
    });
    (task, uids)
}

/// Item (d), part 1: a second user cannot open our default-mode unix, pipe, mailslot or shm
/// endpoints (nor find them under their names: its names are its own); `?mode=0666` widens
/// `unix://` explicitly and then works, with the client's uid on the listener's connection;
/// `allow_uids` still refuses that user, and the listener keeps serving us.
#[test]
fn a_second_user_cannot_open_our_endpoints() {
    let Some(u) = User::create("d") else { return };
    let rt = support::runtime();
    let dir = Scratch::new("second", 0o755);
    let name = support::unique("sec");
    let sock = dir.0.join("owner.sock");
    let mut keep = Vec::new();
    for ep in [
        format!("unix://{}", sock.display()),
        format!("pipe://{name}"),
        format!("shm://{name}"),
    ] {
        let l = rt.block_on(ductwork_transports::bind(ep.as_str())).unwrap();
        keep.push(serve(&rt, l).0);
    }
    let _rx = rt.block_on(async {
        let mut l = ductwork_transports::bind(format!("mailslot://{name}").as_str()).await;
        l.as_mut().unwrap().accept().await.unwrap()
    });
    let denied = [
        ("stream", sock.clone()),
        ("stream", support::unix::private_socket("pipe", &name)),
        ("stream", support::unix::private_socket("shm", &name)),
        ("dgram", support::unix::private_socket("mailslot", &name)),
    ];
    for (kind, path) in denied {
        let args = [kind.to_string(), path.display().to_string()];
        let out = rt
            .block_on(run_role(Some(&u), "raw_connect", &args))
            .unwrap();
        println!("uid {} -> {}: {out}", u.uid, path.display());
        assert!(
            out.starts_with("PermissionDenied"),
            "{}: {out}",
            path.display()
        );
    }
    let out = rt
        .block_on(run_role(
            Some(&u),
            "connect",
            &[format!("unix://{}", sock.display())],
        ))
        .unwrap();
    assert!(out.starts_with("connect PermissionDenied"), "{out}");
    for scheme in ["pipe", "shm", "mailslot"] {
        let out = rt
            .block_on(run_role(
                Some(&u),
                "connect",
                &[format!("{scheme}://{name}")],
            ))
            .unwrap();
        println!("uid {} -> {scheme}://{name}: {out}", u.uid);
        assert!(out.starts_with("connect NotFound"), "{scheme}: {out}");
    }
    // Widening is explicit, and then works.
    let wide = dir.0.join("wide.sock");
    let l = rt
        .block_on(ductwork_transports::bind(
            format!("unix://{}?mode=0666", wide.display()).as_str(),
        ))
        .unwrap();
    let (_t, uids) = serve(&rt, l);
    let out = rt
        .block_on(run_role(
            Some(&u),
            "connect",
            &[format!("unix://{}", wide.display())],
        ))
        .unwrap();
    assert_eq!(out, "ok");
    assert_eq!(*uids.lock().unwrap(), vec![u.uid]);
    // allow_uids refuses the second user and keeps serving us.
    let only = dir.0.join("only.sock");
    let ep = format!("unix://{}?mode=0666&allow_uids=0", only.display());
    let (_t, uids) = serve(
        &rt,
        rt.block_on(ductwork_transports::bind(ep.as_str())).unwrap(),
    );
    let out = rt
        .block_on(run_role(
            Some(&u),
            "connect",
            &[format!("unix://{}", only.display())],
        ))
        .unwrap();
    println!("uid {} -> {ep}: {out}", u.uid);
    // Refused at once, and told why by the first send or receive.
    let why = format!("your uid {} is not in its allow_uids", u.uid);
    assert!(
        (out.starts_with("recv PermissionDenied") || out.starts_with("send PermissionDenied"))
            && out.contains(&why),
        "{out}"
    );
    assert_eq!(
        rt.block_on(connect_role(&format!("unix://{}", only.display()))),
        "ok"
    );
    assert_eq!(*uids.lock().unwrap(), vec![0]);
    for t in keep {
        t.abort();
    }
}

/// Item (d), part 2: a user who squats a public socket path before the real service is caught
/// by `?peer_uid=0` (`PermissionDenied` naming the squatter's uid); without it the client
/// reaches the squatter, and its `peer_credentials` say so.
#[test]
fn a_squatting_user_is_caught_by_peer_uid() {
    let Some(u) = User::create("s") else { return };
    let rt = support::runtime();
    // A shared directory like /tmp: anyone may create, only owners remove.
    let public = Scratch::new("public", 0o1777);
    let path = public.0.join("svc.sock");
    let ep = format!("unix://{}?mode=0666", path.display());
    let mut squatter = {
        let _in_runtime = rt.enter();
        Child::spawn(Some(&u), "listen", std::slice::from_ref(&ep))
    };
    let ready = rt.block_on(squatter.line("READY ")).unwrap();
    assert_eq!(ready, ep);
    let strict = format!("unix://{}?peer_uid=0", path.display());
    let e = rt
        .block_on(ductwork_transports::connect(strict.as_str()))
        .err()
        .expect("connected to a squatter despite peer_uid=0");
    println!("{e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains(&format!("runs as uid {}", u.uid)),
        "{e}"
    );
    assert!(e.to_string().contains(&strict), "{e}");
    let c = rt
        .block_on(ductwork_transports::connect(
            format!("unix://{}", path.display()).as_str(),
        ))
        .unwrap();
    let creds = c
        .info()
        .peer_credentials()
        .expect("unix:// has peer credentials");
    assert_eq!(creds.uid, u.uid);
    assert_eq!(creds.pid, squatter.inner.id());
    drop(c);
    // The same check passes for the right uid: the squatter's.
    let right = format!("unix://{}?peer_uid={}", path.display(), u.uid);
    assert_eq!(rt.block_on(connect_role(&right)), "ok");
    rt.block_on(async {
        let _ = squatter.inner.start_kill();
        let _ = support::within("squatter exit", support::DEADLINE, squatter.inner.wait()).await;
    });
}

/// Item (d), part 3 (any uid): the option values are checked, and the pipe's default is our
/// own uid on both sides, with the peer's credentials on each connection.
#[test]
fn peer_options_are_checked_and_reported() {
    let rt = support::runtime();
    for bad in [
        "unix:///tmp/x.sock?peer_uid=root",
        "pipe://x?allow_uids=1,two",
    ] {
        let e = rt
            .block_on(ductwork_transports::connect(bad))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{e}");
        assert!(e.to_string().contains("is not a uid"), "{e}");
    }
    // The Windows options are refused, not ignored.
    for windows_only in ["pipe://x?peer_sid=S-1-5-18", "pipe://x?allow_sids=S-1-5-18"] {
        let e = rt
            .block_on(ductwork_transports::connect(windows_only))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("peer_uid"), "{e}");
    }
    for scheme in ["pipe", "shm"] {
        let name = support::unique("creds");
        let ep = format!("{scheme}://{name}");
        let mut l = rt.block_on(ductwork_transports::bind(ep.as_str())).unwrap();
        let c = rt
            .block_on(ductwork_transports::connect(ep.as_str()))
            .unwrap();
        let s = rt.block_on(l.accept()).unwrap();
        for conn in [&c, &s] {
            let p = conn.info().peer_credentials().unwrap();
            assert_eq!(p.uid, euid(), "{ep}");
            assert_eq!(p.pid, Some(std::process::id()), "{ep}");
        }
        // A client that requires another uid refuses our own listener.
        let other = format!("{scheme}://{name}?peer_uid={}", euid() + 1);
        let e = rt
            .block_on(ductwork_transports::connect(other.as_str()))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{ep}: {e}");
        assert!(e.to_string().contains("not uid"), "{ep}: {e}");
        // A listener that admits only another uid refuses us, and says so to the client.
        let only = format!("{scheme}://{name}-only?allow_uids={}", euid() + 1);
        let _l2 = rt
            .block_on(ductwork_transports::bind(only.as_str()))
            .unwrap();
        let plain = format!("{scheme}://{name}-only");
        if scheme == "shm" {
            let e = rt
                .block_on(ductwork_transports::connect(plain.as_str()))
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{plain}: {e}");
        }
    }
}

/// A listener whose `allow_uids` leaves a client out tells it why (`PermissionDenied`
/// naming the endpoint and the client's uid) on its first receive and on its first send,
/// instead of a bare `ConnectionLost`; and clients that never read do not hold the listener
/// up (the refusal is written without waiting): after 200 of them, the next is refused too.
#[test]
fn a_refused_client_is_told_why() {
    let rt = support::runtime();
    let scratch = Scratch::new("refused", 0o700);
    let other = euid() + 1;
    let why = format!("your uid {} is not in its allow_uids", euid());
    for ep in [
        format!("pipe://{}?allow_uids={other}", support::unique("refuse")),
        format!(
            "unix://{}?allow_uids={other}",
            scratch.0.join("r.sock").display()
        ),
    ] {
        let mut l = rt.block_on(ductwork_transports::bind(ep.as_str())).unwrap();
        let accepting = rt.spawn(async move {
            let c = l.accept().await;
            panic!(
                "accepted a client it should refuse: {:?}",
                c.map(|c| c.info().clone())
            );
        });
        let plain = ep.split('?').next().unwrap().to_string();
        let path = match plain.strip_prefix("unix://") {
            Some(p) => PathBuf::from(p),
            None => support::unix::private_socket("pipe", plain.strip_prefix("pipe://").unwrap()),
        };
        // Clients that never read: each one's refusal sits unread in its socket.
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(std::os::unix::net::UnixStream::connect(&path).unwrap());
        }
        rt.block_on(async {
            let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
            let e = support::must("refusal on recv", c.next())
                .await
                .unwrap()
                .unwrap_err();
            println!("recv: {e}");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains(&why), "{e}");
            assert!(e.to_string().contains(&plain), "{e}");
            let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
            let e = support::must("refusal on send", c.send(Bytes::from_static(b"x")))
                .await
                .unwrap_err();
            println!("send: {e}");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains(&why), "{e}");
        });
        assert!(!accepting.is_finished(), "{ep}: the listener stopped");
        accepting.abort();
        drop(silent);
    }
}
