//! What an idle, connected shared-memory pair costs in CPU (issue #15: under 1% of a core).
//!
//! `cargo run --release -p ductwork-examples --bin shm-idle-cpu [SECONDS]` (default 5): binds
//! `shm://`, starts itself as the peer process, which connects; one message each way proves
//! the pair connected, then both sides wait in `recv` (as an idle service and client do) for
//! SECONDS. The CPU time each process used in that window is read from the kernel's per-thread
//! scheduler statistics (`/proc/PID/task/*/schedstat`, nanoseconds, every thread counted), and
//! printed with its share of one core. Linux only.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shm-idle-cpu: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match args.as_slice() {
        [flag, ep] if flag == "--peer" => rt.block_on(linux::peer(ep)),
        [] => rt.block_on(linux::measure(5.0)),
        [secs] => match secs.parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 60.0 => rt.block_on(linux::measure(s)),
            _ => Err(format!("SECONDS must be a number in (0, 60], not {secs:?}")),
        },
        _ => Err("usage: shm-idle-cpu [SECONDS]".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-idle-cpu: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("shm-idle-cpu reads /proc: Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use ductwork::Channel;
    use std::{
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    /// The peer: echo one message, then wait until told to stop (or the parent is gone).
    pub async fn peer(ep: &str) -> Result<(), String> {
        let mut ch: Channel<u8> = ductwork::connect_channel(ep)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(m) = ch.recv().await.map_err(|e| e.to_string())? {
            if m == 0 {
                break;
            }
            ch.send(&m).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// CPU time of every thread of process `pid`, in nanoseconds.
    fn cpu_ns(pid: u32) -> Result<u64, String> {
        let dir = format!("/proc/{pid}/task");
        let tasks = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
        let mut total = 0u64;
        for t in tasks.flatten() {
            // A thread that ended meanwhile has no file any more: it counts no longer.
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Stops the peer by its pid when dropped, whatever happened.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The parent: bind, start the peer, prove the link, then measure `secs` of idleness.
    pub async fn measure(secs: f64) -> Result<(), String> {
        let err = |e: ductwork::Error| e.to_string();
        let mut listener = ductwork::bind(format!("shm://idle-cpu-{}", std::process::id()))
            .await
            .map_err(err)?;
        let ep = listener.endpoint().to_string();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let peer = Reap(
            Command::new(exe)
                .args(["--peer", &ep])
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("start the peer: {e}"))?,
        );
        let limit = Duration::from_secs(10);
        let conn = tokio::time::timeout(limit, listener.accept())
            .await
            .map_err(|_| "the peer did not connect within 10 s".to_string())?
            .map_err(err)?;
        let mut ch: Channel<u8> = Channel::new(conn);
        ch.send(&1).await.map_err(err)?;
        match tokio::time::timeout(limit, ch.recv()).await {
            Ok(Ok(Some(1))) => {}
            other => return Err(format!("no echo from the peer: {other:?}")),
        }
        // Idle from here: both sides wait in `recv` for the whole window.
        let pids = [std::process::id(), peer.0.id()];
        let before = [cpu_ns(pids[0])?, cpu_ns(pids[1])?];
        if before.contains(&0) {
            // Both have run (bind, connect, echo): zero means the kernel keeps no statistics.
            return Err("/proc/PID/task/*/schedstat reads 0: no scheduler statistics".into());
        }
        let window = Duration::from_secs_f64(secs);
        let t0 = Instant::now();
        if let Ok(r) = tokio::time::timeout(window, ch.recv()).await {
            return Err(format!("the peer sent something while idle: {r:?}"));
        }
        let wall = t0.elapsed().as_secs_f64();
        let after = [cpu_ns(pids[0])?, cpu_ns(pids[1])?];
        ch.send(&0).await.map_err(err)?;
        let mut total = 0.0;
        for (i, who) in ["parent", "peer"].iter().enumerate() {
            let used = after[i].saturating_sub(before[i]) as f64 / 1e9;
            total += used;
            println!(
                "{who:6} {:8.3} ms CPU in {wall:.2} s idle: {:.3}% of a core",
                used * 1e3,
                100.0 * used / wall
            );
        }
        println!(
            "both   {:8.3} ms CPU in {wall:.2} s idle: {:.3}% of a core",
            total * 1e3,
            100.0 * total / wall
        );
        Ok(())
    }
}
