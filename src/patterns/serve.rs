//! What the patterns' listening sides share: an accept loop that outlives failed accepts and
//! ends on a signal, and the background task that runs it and shuts down within a grace period.

use crate::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};
use std::{future::Future, time::Duration};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Accepts until `stop`, serving each connection as its own task; then stops accepting and
/// waits for every connection's task to end (they see `stop` too).
///
/// A failed accept (a client that gave up, no file descriptors left) is logged at `warn` and
/// retried after a pause that doubles from 10 ms up to one second: it never ends the loop.
pub(crate) async fn accept_until<F, Fut>(
    mut listener: BoxListener,
    stop: CancellationToken,
    mut serve: F,
) where
    F: FnMut(BoxConnection) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let endpoint = listener.endpoint().to_string();
    let mut conns = JoinSet::new();
    let mut pause = Duration::from_millis(10);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_end(&endpoint, done),
            r = listener.accept() => match r {
                Ok(conn) => {
                    pause = Duration::from_millis(10);
                    conns.spawn(serve(conn));
                }
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, retry_in = ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
    drop(listener);
    while let Some(done) = conns.join_next().await {
        log_end(&endpoint, done);
    }
}

fn log_end(endpoint: &str, done: std::result::Result<Result<()>, JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(endpoint = %endpoint, error = %e, "connection ended"),
        Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "connection task failed"),
    }
}

/// A listening side running in the background; dropping it stops it without a grace period.
#[derive(Debug)]
pub(crate) struct Background {
    endpoint: Endpoint,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Background {
    /// Runs `work(stop)` as a task.
    pub(crate) fn spawn<Fut>(
        endpoint: Endpoint,
        work: impl FnOnce(CancellationToken) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(work(stop.clone()));
        Background {
            endpoint,
            stop,
            task,
        }
    }

    /// The endpoint it serves.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Signals the stop and waits up to `grace` for the work to finish; past it the work is
    /// dropped and this fails with [`ErrorKind::Timeout`], saying that `what` were dropped.
    pub(crate) async fn shutdown(&mut self, grace: Duration, what: &str) -> Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.task.abort();
                Err(Error::new(
                    ErrorKind::Timeout,
                    &self.endpoint,
                    format!("{what} still running after {grace:?} were dropped"),
                ))
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
