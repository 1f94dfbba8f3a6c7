//! Publish/subscribe as NATS subjects (see the module docs of `patterns::nats`): a publisher's
//! hub sees one subscriber to every topic, whose task publishes each message to
//! `NAME.TOPIC`; a subscriber's task turns its prefixes into NATS subscriptions and the
//! messages on them back into publications.

use super::bridge::{self, Bridge, Ends, OneShot};
use super::topics;
use crate::patterns::pubsub::{Publication, SubscriberMsg};
use crate::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};
use async_nats::{Message, Subscriber};
use bytes::Bytes;
use ductwork_transports::nats::native::{self, async_nats, Native};
use futures::{stream::SelectAll, StreamExt};
use serde::Deserialize;
use std::collections::VecDeque;

/// A [`Publication`] frame's head: for `Message`, the rest of the frame is the body.
#[derive(Deserialize)]
enum PublicationHead {
    Subscribed,
    Message { topic: String },
    Missed { count: u64 },
}

/// Frames a subscriber's task holds for it beyond the one message in hand, at most
/// (acknowledgements, heartbeats).
const MAX_LOCAL: usize = 16;

fn control(p: &Publication<()>) -> Bytes {
    // Small fixed shapes: encoding cannot fail.
    Bytes::from(postcard::to_allocvec(p).unwrap_or_default())
}

/// A publisher's side: one link to the NATS server, handed to the hub as its one subscriber.
pub(super) async fn bind(ep: &Endpoint) -> Result<BoxListener> {
    let n = native::connect(ep, ErrorKind::Bind).await?;
    let what = format!("NATS subjects under `{}`", n.subject);
    let info = bridge::info(ep, what, n.max_payload)?;
    Ok(Box::new(OneShot {
        endpoint: ep.clone(),
        conn: Some(Bridge::spawn(info, move |ends| publisher_task(n, ends))),
    }))
}

/// Subscribes the hub to every topic, then publishes what it sends, until it closes.
async fn publisher_task(n: Native, mut ends: Ends) {
    let all = SubscriberMsg::Subscribe {
        topics: vec![String::new()],
    };
    let all = Bytes::from(postcard::to_allocvec(&all).unwrap_or_default());
    if ends.to_pattern.send(Ok(all)).await.is_err() {
        return;
    }
    while let Some(f) = ends.from_pattern.recv().await {
        publish(&n, &f).await;
    }
    let _ = n.client.flush().await;
}

async fn publish(n: &Native, f: &Bytes) {
    match postcard::take_from_bytes::<PublicationHead>(f) {
        Ok((PublicationHead::Message { topic }, body)) => {
            // `publish` checked the topic; the server's payload limit is checked here.
            let subject = topics::subject(&n.subject, &topic);
            if let Err(e) = n.client.publish(subject, f.slice_ref(body)).await {
                tracing::warn!(endpoint = %n.shown, topic, error = %e, "nats: a message was not published");
            }
        }
        Ok((PublicationHead::Missed { count }, _)) => {
            tracing::warn!(endpoint = %n.shown, count, "nats: the link to the NATS server fell behind; messages dropped by the publisher's slow-subscriber policy");
        }
        // The acknowledgement of the hub's subscription, heartbeats: nothing to publish.
        Ok((PublicationHead::Subscribed, _)) | Err(_) => {}
    }
}

/// A subscriber's side: a NATS connection; the subscriptions come with the pattern's
/// subscribe message.
pub(super) async fn connect(ep: &Endpoint) -> Result<BoxConnection> {
    let n = native::connect(ep, ErrorKind::NotFound).await?;
    let what = format!("NATS subjects under `{}`", n.subject);
    let info = bridge::info(ep, what, n.max_payload)?;
    let ep = ep.clone();
    Ok(Box::new(Bridge::spawn(info, move |ends| {
        subscriber_task(n, ends, ep)
    })))
}

/// What a subscriber's task subscribed to.
struct Subscribed {
    subs: SelectAll<Subscriber>,
    prefixes: Vec<String>,
}

/// Subscribes as the pattern asks and hands it the messages on its topics, until it closes.
async fn subscriber_task(n: Native, mut ends: Ends, ep: Endpoint) {
    let mut current: Option<Subscribed> = None;
    let mut local: VecDeque<Bytes> = VecDeque::new();
    let mut message: Option<Bytes> = None;
    loop {
        tokio::select! {
            permit = ends.to_pattern.reserve(), if message.is_some() || !local.is_empty() => {
                let Ok(p) = permit else { break };
                if let Some(f) = local.pop_front().or_else(|| message.take()) {
                    p.send(Ok(f));
                }
            }
            f = ends.from_pattern.recv(), if local.len() < MAX_LOCAL => {
                let Some(f) = f else { break };
                match ductwork_codec::decode::<SubscriberMsg>(&f) {
                    // A request sent again while unacknowledged: acknowledged again, not
                    // made again (replacing subscriptions could lose or double messages).
                    Ok(SubscriberMsg::Subscribe { topics })
                        if current.as_ref().is_some_and(|c| c.prefixes == topics) =>
                    {
                        local.push_back(control(&Publication::Subscribed));
                    }
                    Ok(SubscriberMsg::Subscribe { topics }) => match subscribe(&n, &ep, topics).await {
                        Ok(s) => {
                            current = Some(s);
                            local.push_back(control(&Publication::Subscribed));
                        }
                        Err(e) => {
                            let _ = ends.to_pattern.send(Err(e)).await;
                            break;
                        }
                    },
                    Ok(SubscriberMsg::Ping) => local.push_back(control(&Publication::Heartbeat)),
                    Err(e) => tracing::warn!(endpoint = %n.shown, error = %e, "nats: an unreadable subscriber message dropped"),
                }
            }
            m = next(&mut current), if message.is_none() && current.is_some() => match m {
                Some(m) => message = current.as_ref().and_then(|c| publication(&n, c, m)),
                None => {
                    let e = Error::new(ErrorKind::ConnectionLost, &ep, "the NATS client has closed");
                    let _ = ends.to_pattern.send(Err(e)).await;
                    break;
                }
            },
        }
    }
}

/// The next message of the current subscriptions (none yet: never).
async fn next(current: &mut Option<Subscribed>) -> Option<Message> {
    match current {
        Some(c) => c.subs.next().await,
        None => std::future::pending().await,
    }
}

/// Subscribes to what covers `prefixes` (replacing any earlier subscriptions when the
/// result is dropped in their place); in place at the NATS server when this returns (a
/// round trip, not only a flush).
async fn subscribe(n: &Native, ep: &Endpoint, prefixes: Vec<String>) -> Result<Subscribed> {
    let fail = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::ConnectionLost, ep, format!("subscribe: {e}"))
    };
    let mut subs = SelectAll::new();
    for subject in topics::subscriptions(&n.subject, &prefixes) {
        subs.push(n.client.subscribe(subject).await.map_err(|e| fail(&e))?);
    }
    native::sync(&n.client, n.connect_timeout)
        .await
        .map_err(|e| fail(&e))?;
    Ok(Subscribed { subs, prefixes })
}

/// A NATS message as a publication frame, if its topic starts with one of the prefixes (a
/// prefix that ends inside a token subscribed to more than it wants).
fn publication(n: &Native, c: &Subscribed, m: Message) -> Option<Bytes> {
    // A request to a server of the same name (on `NAME`, which the empty prefix covers) is
    // no publication: it has a reply subject.
    if m.status.is_some() || m.reply.is_some() {
        return None;
    }
    let topic = topics::topic(&n.subject, m.subject.as_str())?;
    if !c.prefixes.iter().any(|p| topic.starts_with(p.as_str())) {
        return None;
    }
    let head = Publication::<()>::Message {
        topic: topic.to_string(),
        body: (),
    };
    let mut v = postcard::to_allocvec(&head).unwrap_or_default();
    v.extend_from_slice(&m.payload);
    Some(Bytes::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head reads the pattern's own frames: a change to `Publication` fails here.
    #[test]
    fn head_matches_the_pattern_frames() {
        let f = postcard::to_allocvec(&Publication::Message {
            topic: "a.b".into(),
            body: 7u32,
        })
        .unwrap();
        let (head, body) = postcard::take_from_bytes::<PublicationHead>(&f).unwrap();
        assert!(matches!(head, PublicationHead::Message { topic } if topic == "a.b"));
        assert_eq!(postcard::from_bytes::<u32>(body).unwrap(), 7);
        let f = postcard::to_allocvec(&Publication::<u32>::Missed { count: 3 }).unwrap();
        assert!(matches!(
            postcard::take_from_bytes::<PublicationHead>(&f).unwrap().0,
            PublicationHead::Missed { count: 3 }
        ));
        let f = control(&Publication::Subscribed);
        assert!(matches!(
            postcard::take_from_bytes::<PublicationHead>(&f).unwrap().0,
            PublicationHead::Subscribed
        ));
    }
}
