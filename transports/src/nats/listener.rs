//! The `nats://` listener: a queue subscription to `<prefix>.<name>.connect` whose task
//! answers each connect request with a fresh inbox and queues the connection for `accept`.

use super::{
    config::Config,
    conn::{
        control, control_of, hb_subject, publishable, Link, NatsConnection, ACCEPT, HELLO, REFUSED,
    },
};
use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use ductwork_core::{
    async_trait, BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Listener, Result,
};
use futures::StreamExt;
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinHandle,
};

/// The queue group every listener of a name joins: each connect request goes to one of them.
const QUEUE: &str = "ductwork";

/// Binds: connects to the server and subscribes to the name's connect subject. When this
/// returns the server has the subscription (a round trip went through, see
/// [`native::sync`](super::native::sync)), so a client may connect.
pub(crate) async fn bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener> {
    let client = cfg.client(ErrorKind::Bind).await?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Bind, &cfg.shown, format!("{what}: {e}"))
    };
    let sub = client
        .queue_subscribe(cfg.connect_subject(), QUEUE.to_string())
        .await
        .map_err(|e| fail("subscribe", &e))?;
    super::native::sync(&client, cfg.connect_timeout)
        .await
        .map_err(|e| fail("subscribe", &e))?;
    let (tx, rx) = mpsc::channel(cfg.backlog);
    let task = tokio::spawn(serve(client, sub, tx, cfg, ep.clone()));
    Ok(Box::new(NatsListener {
        endpoint: ep.clone(),
        rx,
        task,
    }))
}

/// A bound `nats://` name.
struct NatsListener {
    endpoint: Endpoint,
    /// Connections set up by the task, in the order their requests came.
    rx: mpsc::Receiver<BoxConnection>,
    task: JoinHandle<()>,
}

#[async_trait]
impl Listener for NatsListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        // Cancel-safe: a connection stays in the channel until a receive takes it.
        self.rx.recv().await.ok_or_else(|| {
            Error::new(
                ErrorKind::ConnectionLost,
                &self.endpoint,
                "the listener's subscription ended (its NATS client closed)",
            )
        })
    }
}

impl Drop for NatsListener {
    fn drop(&mut self) {
        // Ends the subscription (the server stops routing requests here) and drops the
        // connections nobody accepted, which tells their clients.
        self.task.abort();
    }
}

/// Why answering one request did not give a connection.
enum Skip {
    /// That request only: logged, and the listener goes on.
    One(String),
    /// The listener is gone.
    Stop,
}

/// Answers connect requests until the subscription or the listener ends.
async fn serve(
    client: Client,
    mut sub: Subscriber,
    tx: mpsc::Sender<BoxConnection>,
    cfg: Config,
    ep: Endpoint,
) {
    while let Some(m) = sub.next().await {
        match answer(&client, &tx, &cfg, &ep, m).await {
            Ok(()) => {}
            Err(Skip::One(why)) => {
                tracing::warn!(endpoint = %cfg.shown, "nats: connect request not served: {why}")
            }
            Err(Skip::Stop) => return,
        }
    }
}

/// One connect request: checked, then a fresh inbox subscribed, the answer sent from it, and
/// the connection queued; or a refusal the client can read.
async fn answer(
    client: &Client,
    tx: &mpsc::Sender<BoxConnection>,
    cfg: &Config,
    ep: &Endpoint,
    m: Message,
) -> std::result::Result<(), Skip> {
    let Some(reply) = m.reply.clone().filter(|r| publishable(r.as_str())) else {
        return Err(Skip::One("no valid reply subject".into()));
    };
    if control_of(&m) != Some(HELLO) {
        return Err(refuse(client, &reply, format!("not a ductwork {HELLO} request")).await);
    }
    let permit = match tx.try_reserve() {
        Ok(p) => p,
        Err(TrySendError::Full(())) => {
            let why = format!(
                "the listener's backlog of {} unaccepted connections is full",
                cfg.backlog
            );
            return Err(refuse(client, &reply, why).await);
        }
        Err(TrySendError::Closed(())) => return Err(Skip::Stop),
    };
    let lost = |what: &str, e: &dyn std::fmt::Display| Skip::One(format!("{what}: {e}"));
    let inbox = client.new_inbox();
    let data = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| lost("subscribe", &e))?;
    let hb = client
        .subscribe(hb_subject(&inbox))
        .await
        .map_err(|e| lost("subscribe", &e))?;
    client
        .publish_with_reply_and_headers(reply.clone(), inbox, control(ACCEPT), Bytes::new())
        .await
        .map_err(|e| lost("answer", &e))?;
    let server_max = client.server_info().max_payload;
    let max = cfg.max_frame.map_or(server_max, |m| m.min(server_max));
    let link = Link {
        client: client.clone(),
        data,
        hb,
        peer: reply,
    };
    permit.send(Box::new(NatsConnection::new(ep, cfg, link, max)));
    Ok(())
}

/// Tells a client why its request was refused (best-effort: it may be gone).
async fn refuse(client: &Client, reply: &async_nats::Subject, why: String) -> Skip {
    let _ = client
        .publish_with_headers(reply.clone(), control(REFUSED), Bytes::from(why.clone()))
        .await;
    Skip::One(why)
}
