//! How listeners and connecting sides meet faults, written once for every backend.
//!
//! - **Accept errors are transient unless they say the listener itself is gone.** Running out
//!   of descriptors (`EMFILE`, `ENFILE`) or memory (`ENOMEM`, `ENOBUFS`), a client that gave up
//!   before it was accepted (`ECONNABORTED`), a failed per-connection set-up: the listener
//!   logs it at `warn` with its endpoint, waits ([`Backoff`]: 10 ms, doubling to 1 s, reset by
//!   the next success) and accepts again. Only [`is_fatal_accept`] errors (the listening
//!   socket or pipe is invalid) reach `Listener::accept`'s caller, as the contract in
//!   `ductwork_core::transport` says.
//! - **Every connect has a deadline**: [`connect_within`] bounds a transport's whole connect
//!   (system calls and set-up handshake) by the endpoint's `connect_timeout` and turns the
//!   expiry into [`ErrorKind::Timeout`] naming the endpoint and the deadline.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{fmt, future::Future, io, time::Duration};

/// The first pause after a transient accept error.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The pause between accept attempts after transient errors: [`FIRST_PAUSE`], doubling up
/// to [`MAX_PAUSE`]; a success resets it.
#[derive(Debug)]
pub(crate) struct Backoff {
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { pause: FIRST_PAUSE }
    }
}

impl Backoff {
    /// Accepting worked: the next error pauses [`FIRST_PAUSE`] again.
    pub(crate) fn reset(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// Logs the transient `error` of `what` (e.g. "accept") on `endpoint` at `warn`, then
    /// waits the current pause and doubles it. Cancel-safe: dropping it only skips the wait.
    pub(crate) async fn wait(
        &mut self,
        endpoint: &Endpoint,
        what: &str,
        error: &(dyn fmt::Display + Sync),
    ) {
        let pause = self.pause;
        tracing::warn!(
            endpoint = %endpoint,
            error = %error,
            retry_in = ?pause,
            "{what} failed; the listener keeps accepting"
        );
        self.pause = (pause * 2).min(MAX_PAUSE);
        tokio::time::sleep(pause).await;
    }
}

/// Whether an accept error means the listener itself can no longer accept (its socket or
/// pipe is invalid or not listening), rather than a transient condition of the system or of
/// one client. Unknown errors count as transient: retrying a dead listener costs a warning
/// a second, ending a live one costs the service.
pub(crate) fn is_fatal_accept(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
        )
    }
    #[cfg(windows)]
    {
        // ERROR_INVALID_HANDLE (6), WSAEBADF (10009), WSAENOTSOCK (10038), WSAEINVAL (10022),
        // WSAEOPNOTSUPP (10045).
        matches!(e.raw_os_error(), Some(6 | 10009 | 10022 | 10038 | 10045))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = e;
        false
    }
}

/// Runs `connect` (a transport's whole connect: system calls and set-up) within the
/// endpoint's `connect_timeout`; past it, fails with [`ErrorKind::Timeout`] naming the
/// endpoint and the deadline. `waiting_for` says what the connect was waiting for.
pub(crate) async fn connect_within<T>(
    ep: &Endpoint,
    waiting_for: &str,
    connect: impl Future<Output = Result<T>>,
) -> Result<T> {
    let deadline = ep.connect_timeout()?;
    match tokio::time::timeout(deadline, connect).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            ep,
            format!(
                "no connection within the connect_timeout of {} ({waiting_for})",
                describe(deadline)
            ),
        )),
    }
}

/// A deadline as a user would write it: `500ms`, `10s`.
pub(crate) fn describe(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_a_second_and_resets() {
        let ep = Endpoint::parse("tcp://127.0.0.1:1").unwrap();
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        for _ in 0..9 {
            let t = tokio::time::Instant::now();
            b.wait(&ep, "accept", &"EMFILE").await;
            seen.push(t.elapsed().as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.pause, FIRST_PAUSE);
    }

    #[test]
    fn only_a_dead_listener_is_fatal() {
        #[cfg(unix)]
        {
            for e in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
                assert!(!is_fatal_accept(&io::Error::from_raw_os_error(e)), "{e}");
            }
            assert!(!is_fatal_accept(&io::Error::from_raw_os_error(
                libc::ECONNABORTED
            )));
            assert!(is_fatal_accept(&io::Error::from_raw_os_error(libc::EBADF)));
        }
        assert!(!is_fatal_accept(&io::Error::other("something odd")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_past_its_deadline_is_a_timeout_naming_it() {
        let ep = Endpoint::parse("shm://x?connect_timeout=250ms").unwrap();
        let e = connect_within(&ep, "the listener's set-up reply", async {
            futures::future::pending::<Result<()>>().await
        })
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let text = e.to_string();
        assert!(
            text.starts_with("shm://x?connect_timeout=250ms: "),
            "{text}"
        );
        assert!(text.contains("250ms"), "{text}");
        assert_eq!(describe(Duration::from_secs(10)), "10s");
    }
}
