//! Descriptor exhaustion with a client already connected: a listener child whose
//! `RLIMIT_NOFILE` is lowered to [`LIMIT`] is flooded with [`FLOOD`] raw connections (past
//! its limit); meanwhile the client it already serves keeps exchanging messages; once the
//! flood stops, a new client connects and is served, and the listener's `accept` never
//! failed (it exits 0 when told to). `faults.rs` checks the recovery alone (and that the
//! limit was hit) for tcp, unix, pipe and shm; this adds tls and the established client.

use crate::hostile::{target, Target};
use crate::roles::good_frame;
use crate::support::{child::announce_ready, child::Child, must, within};
use ductwork_core::{BoxConnection, Endpoint};
use futures::{SinkExt, StreamExt};
use std::time::Duration;

/// The listener's descriptor limit.
const LIMIT: u64 = 64;
/// Raw connections in the flood.
const FLOOD: usize = 150;

/// Role `exhaust-echo EP LIMIT`: binds, lowers its descriptor limit, announces and echoes on
/// every connection; fails the first time `accept` does; ends when stdin closes.
pub async fn listener(ep: &str, limit: u64) -> Result<(), String> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let mut l = ductwork_transports::bind(ep)
        .await
        .map_err(|e| e.to_string())?;
    let lim = Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    setrlimit(Resource::Nofile, lim).map_err(|e| format!("setrlimit: {e}"))?;
    announce_ready(l.endpoint());
    let serve = async {
        loop {
            let mut c = l
                .accept()
                .await
                .map_err(|e| format!("accept failed: {e}"))?;
            tokio::spawn(async move {
                while let Some(Ok(f)) = c.next().await {
                    if c.send(f).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    tokio::select! {
        r = serve => r,
        () = crate::roles::stdin_closed() => Ok(()),
    }
}

/// `n` round trips on `c`, from sequence number `from`.
async fn round_trips(c: &mut BoxConnection, from: u64, n: u64) -> Result<(), String> {
    for seq in from..from + n {
        let f = good_frame(2, seq, 100);
        within("send", Duration::from_secs(20), c.send(f.clone()))
            .await?
            .map_err(|e| format!("send #{seq}: {e}"))?;
        match within("echo", Duration::from_secs(20), c.next()).await? {
            Some(Ok(b)) if b == f => {}
            other => return Err(format!("echo #{seq}: {other:?}")),
        }
    }
    Ok(())
}

/// A raw connection to the listener at `to` (a socket that stays open, saying nothing).
fn raw(to: &Target) -> std::io::Result<Box<dyn std::any::Any>> {
    Ok(match to {
        Target::Inet(a) => Box::new(std::net::TcpStream::connect(a)?),
        Target::Path(p) => Box::new(std::os::unix::net::UnixStream::connect(p)?),
    })
}

/// A new client once the flood is gone. The listener may not have closed the flood's
/// connections yet: a refusal that says "try again later" (shm) is retried, boundedly.
async fn connect_after(ep: &Endpoint) -> ductwork_core::Result<BoxConnection> {
    let late = ep.with_option("connect_timeout", "20s");
    // Bounded: 40 tries, 250 ms apart.
    for _ in 0..40 {
        match must("connect after", ductwork_transports::connect(&late)).await {
            Err(e) if e.kind() == ductwork_core::ErrorKind::Refused => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            other => return other,
        }
    }
    ductwork_transports::connect(&late).await
}

async fn case(scheme: &str) {
    let ep = crate::local_endpoint(scheme, "exhaust");
    let mut child = Child::spawn("exhaust-echo", &[ep, LIMIT.to_string()]).unwrap();
    let ep: Endpoint = crate::parse(&must("listener ready", child.ready()).await.unwrap());
    let mut good = must("connect", ductwork_transports::connect(&ep))
        .await
        .unwrap();
    round_trips(&mut good, 0, 10).await.unwrap();
    let to = target(&ep);
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| raw(&to).unwrap_or_else(|e| panic!("{scheme}: raw connect {i}: {e}")))
        .collect();
    // The listener accepts the flood until it runs out of descriptors; meanwhile, and while
    // it retries, the established client goes on.
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        round_trips(&mut good, 10 + round * 10, 10)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: the established client under exhaustion: {e}"));
    }
    drop(flood);
    round_trips(&mut good, 200, 10).await.unwrap();
    let mut fresh = connect_after(&ep)
        .await
        .unwrap_or_else(|e| panic!("{scheme}: no new client after the flood: {e}"));
    round_trips(&mut fresh, 0, 10)
        .await
        .unwrap_or_else(|e| panic!("{scheme}: the new client after the flood: {e}"));
    println!(
        "exhaust {scheme}: listener limited to {LIMIT} descriptors, {FLOOD} raw connections; \
         the established client did 110 round trips, a new one was served afterwards"
    );
    drop((good, fresh));
    must("listener exit", child.finish()).await.unwrap();
}

macro_rules! exhaust_tests {
    ($($(#[$m:meta])* $name:ident => $scheme:literal,)+) => {$(
        #[test]
        $(#[$m])*
        fn $name() {
            crate::support::runtime().block_on(case($scheme));
        }
    )+};
}

exhaust_tests! {
    exhaust_tcp => "tcp",
    exhaust_unix => "unix",
    exhaust_pipe => "pipe",
    exhaust_shm => "shm",
    exhaust_tls => "tls",
}
