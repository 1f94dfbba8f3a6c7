//! For the `ductwork` crate's patterns over `nats://` (hidden from the docs: no API of this
//! crate's own): an `async-nats` client connected as a `nats://` endpoint says (servers,
//! randomize, TLS, credentials, buffers, reconnect events as `tracing`), and the subject the
//! endpoint names. The patterns put request/reply onto NATS requests and publish/subscribe
//! onto subjects with it (`src/patterns/nats/` in the `ductwork` crate).

use super::config::Config;
pub use async_nats;
use bytes::Bytes;
use ductwork_core::{Endpoint, ErrorKind, Result};
use futures::StreamExt;
use std::time::Duration;

/// A client connected for one `nats://` endpoint.
#[derive(Debug)]
pub struct Native {
    /// The connected client; it reconnects by itself (every server of the list, forever).
    pub client: async_nats::Client,
    /// The endpoint's subject: its name, under `prefix` when that option is given
    /// (`nats://h:4222/orders` is `orders`, `...?prefix=eu` is `eu.orders`).
    pub subject: String,
    /// The largest payload: the server's `max_payload`, or `max_frame` when that is smaller.
    pub max_payload: usize,
    /// The endpoint as errors and logs show it (it holds no secret).
    pub shown: String,
    /// The endpoint's `connect_timeout`: the bound on [`sync`].
    pub connect_timeout: Duration,
}

/// Connects a client for `ep`; `no_server` is the error kind when no server is reachable
/// (`NotFound` for a connecting side, `Bind` for a serving one). Errors name the endpoint
/// and never a secret.
pub async fn connect(ep: &Endpoint, no_server: ErrorKind) -> Result<Native> {
    let cfg = Config::new(ep)?;
    let client = cfg.client(no_server).await?;
    let subject = match ep.option("prefix") {
        Some(prefix) => format!("{prefix}.{}", cfg.name),
        None => cfg.name.clone(),
    };
    let server_max = client.server_info().max_payload;
    Ok(Native {
        client,
        subject,
        max_payload: cfg.max_frame.map_or(server_max, |m| m.min(server_max)),
        shown: cfg.shown,
        connect_timeout: cfg.connect_timeout,
    })
}

/// Waits until the NATS server has processed everything `client` sent before (its
/// subscriptions are in place there), for at most `within`. async-nats's `flush` only writes
/// to the socket; a message to a fresh inbox of the client's own comes back only after the
/// server has read what preceded it, as it reads a client's commands in order.
pub async fn sync(
    client: &async_nats::Client,
    within: Duration,
) -> std::result::Result<(), String> {
    let trip = async {
        let inbox = client.new_inbox();
        let mut echo = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        client
            .publish(inbox, Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        match echo.next().await {
            Some(_) => Ok(()),
            None => Err("the NATS client closed".to_string()),
        }
    };
    tokio::time::timeout(within, trip)
        .await
        .map_err(|_| format!("the NATS server did not answer within {within:?}"))?
}
