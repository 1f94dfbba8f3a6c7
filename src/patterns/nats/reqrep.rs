//! Request/reply as NATS requests (see the module docs of `patterns::nats`): the client's task
//! publishes each call's body to the service subject with a reply subject `INBOX.ID` and turns
//! the answers on `INBOX.*` back into replies by id; the server's task takes requests from a
//! queue-group subscription and publishes each answer to its request's reply subject.

use super::bridge::{self, Bridge, Ends, OneShot};
use crate::patterns::reqrep::{Reply, Request};
use crate::{BoxConnection, BoxListener, Endpoint, Error, ErrorKind, Result};
use async_nats::{header::HeaderMap, Message, Subject, Subscriber};
use bytes::Bytes;
use ductwork_transports::nats::native::{self, async_nats, Native};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};

/// The queue group every server of a name joins: NATS gives each request to one member.
const QUEUE: &str = "ductwork";
/// The NATS service API's error headers, which other NATS services and tools understand.
const ERROR_HEADER: &str = "Nats-Service-Error";
const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// Requests a server has taken and not answered yet, at most: past it the oldest is
/// forgotten (its caller times out). Bounds what requests the handler never answers (an
/// undecodable body) can hold.
const MAX_OPEN: usize = 65_536;
/// Local answers (pongs, failed sends) a client's task holds for its caller, at most.
const MAX_LOCAL: usize = 16;

/// A [`Request`] frame's head: the rest of the frame is the caller's body.
#[derive(Deserialize)]
enum RequestHead {
    Call { id: u64 },
    Ping,
}

/// A [`Reply`] frame's head: for `Ok`, the rest of the frame is the answer's body.
#[derive(Deserialize)]
enum ReplyHead {
    Ok { id: u64 },
    Failed { id: u64, reason: String },
    Pong,
}

/// `head`'s encoding followed by `body`: a frame whose last field is the body, as the
/// pattern's types put it.
fn frame<T: serde::Serialize>(head: &T, body: &[u8]) -> Bytes {
    // Small fixed shapes: encoding cannot fail.
    let mut v = postcard::to_allocvec(head).unwrap_or_default();
    v.extend_from_slice(body);
    Bytes::from(v)
}

fn failed(id: u64, reason: String) -> Bytes {
    frame(&Reply::<()>::Failed { id, reason }, &[])
}

fn lost(ep: &Endpoint, kind: ErrorKind, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(kind, ep, format!("{what}: {e}"))
}

/// A client: a NATS connection and a subscription to a fresh inbox's replies.
pub(super) async fn connect(ep: &Endpoint) -> Result<BoxConnection> {
    let n = native::connect(ep, ErrorKind::NotFound).await?;
    let inbox = n.client.new_inbox();
    let sub = n
        .client
        .subscribe(format!("{inbox}.*"))
        .await
        .map_err(|e| lost(ep, ErrorKind::ConnectionLost, "subscribe", e))?;
    let what = format!("NATS requests to `{}`", n.subject);
    let info = bridge::info(ep, what, n.max_payload)?;
    let ep = ep.clone();
    Ok(Box::new(Bridge::spawn(info, move |ends| {
        client_task(n, inbox, sub, ends, ep)
    })))
}

/// Publishes the pattern's calls as requests and hands the answers back as replies, until
/// the pattern closes.
async fn client_task(n: Native, inbox: String, mut sub: Subscriber, mut ends: Ends, ep: Endpoint) {
    let mut local: VecDeque<Bytes> = VecDeque::new();
    let mut answer: Option<Bytes> = None;
    loop {
        tokio::select! {
            permit = ends.to_pattern.reserve(), if answer.is_some() || !local.is_empty() => {
                let Ok(p) = permit else { break };
                if let Some(f) = answer.take().or_else(|| local.pop_front()) {
                    p.send(Ok(f));
                }
            }
            f = ends.from_pattern.recv(), if local.len() < MAX_LOCAL => match f {
                Some(f) => local.extend(request(&n, &inbox, f).await),
                None => break,
            },
            m = sub.next(), if answer.is_none() => match m {
                Some(m) => answer = reply(&n, m),
                None => {
                    let e = Error::new(ErrorKind::ConnectionLost, &ep, "the NATS client has closed");
                    let _ = ends.to_pattern.send(Err(e)).await;
                    break;
                }
            },
        }
    }
    let _ = n.client.flush().await;
}

/// One frame from the pattern: a call is published as a request; a heartbeat is answered
/// here while the client is connected. Returns what to hand back at once, if anything.
async fn request(n: &Native, inbox: &str, f: Bytes) -> Option<Bytes> {
    match postcard::take_from_bytes::<RequestHead>(&f) {
        Ok((RequestHead::Call { id }, body)) => {
            let body = f.slice_ref(body);
            let to = format!("{inbox}.{id}");
            let sent = n
                .client
                .publish_with_reply(n.subject.clone(), to, body)
                .await;
            sent.err()
                .map(|e| failed(id, format!("the request was not sent: {e}")))
        }
        Ok((RequestHead::Ping, _)) => {
            let up = n.client.connection_state() == async_nats::connection::State::Connected;
            up.then(|| frame(&Reply::<()>::Pong, &[]))
        }
        Err(e) => {
            tracing::warn!(endpoint = %n.shown, error = %e, "nats: an unreadable request frame dropped");
            None
        }
    }
}

/// One message on the client's inbox as a reply frame: an answer, the service error
/// headers, or the server's "no responders" status.
fn reply(n: &Native, m: Message) -> Option<Bytes> {
    let Some(id) = m
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .and_then(|t| t.parse().ok())
    else {
        tracing::debug!(endpoint = %n.shown, subject = %m.subject, "nats: a message on the inbox that answers no call");
        return None;
    };
    if let Some(status) = m.status {
        let reason = if status == async_nats::StatusCode::NO_RESPONDERS {
            format!(
                "no server serves `{}` on the NATS server (no responders)",
                n.subject
            )
        } else {
            format!("the NATS server answered the request with status {status}")
        };
        return Some(failed(id, reason));
    }
    if let Some(reason) = m.headers.as_ref().and_then(|h| h.get(ERROR_HEADER)) {
        return Some(failed(id, reason.as_str().to_string()));
    }
    Some(frame(&Reply::<()>::Ok { id, body: () }, &m.payload))
}

/// A server: a queue-group subscription to the service subject, in place at the NATS server
/// when this returns.
pub(super) async fn bind(ep: &Endpoint) -> Result<BoxListener> {
    let n = native::connect(ep, ErrorKind::Bind).await?;
    let sub = n
        .client
        .queue_subscribe(n.subject.clone(), QUEUE.to_string())
        .await
        .map_err(|e| lost(ep, ErrorKind::Bind, "subscribe", e))?;
    native::sync(&n.client, n.connect_timeout)
        .await
        .map_err(|e| lost(ep, ErrorKind::Bind, "subscribe", e))?;
    let what = format!("NATS requests on `{}` (queue group {QUEUE})", n.subject);
    let info = bridge::info(ep, what, n.max_payload)?;
    let ep2 = ep.clone();
    Ok(Box::new(OneShot {
        endpoint: ep.clone(),
        conn: Some(Bridge::spawn(info, move |ends| {
            server_task(n, sub, ends, ep2)
        })),
    }))
}

/// Hands requests to the pattern as calls (each with an id of this task's) and publishes its
/// answers to their reply subjects, until the pattern closes.
async fn server_task(n: Native, mut sub: Subscriber, mut ends: Ends, ep: Endpoint) {
    let mut open: BTreeMap<u64, Subject> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut call: Option<Bytes> = None;
    loop {
        tokio::select! {
            permit = ends.to_pattern.reserve(), if call.is_some() => {
                let Ok(p) = permit else { break };
                if let Some(f) = call.take() {
                    p.send(Ok(f));
                }
            }
            f = ends.from_pattern.recv() => match f {
                Some(f) => answer(&n, &mut open, f).await,
                None => break,
            },
            m = sub.next(), if call.is_none() => match m {
                Some(m) => call = take(&n, &mut open, &mut next_id, m),
                None => {
                    let e = Error::new(ErrorKind::ConnectionLost, &ep, "the NATS client has closed");
                    let _ = ends.to_pattern.send(Err(e)).await;
                    break;
                }
            },
        }
    }
    // The server stops taking requests: NATS gives later ones to the rest of the pool.
    let _ = sub.unsubscribe().await;
    let _ = n.client.flush().await;
}

/// A request as a call frame, its reply subject kept under a fresh id.
fn take(
    n: &Native,
    open: &mut BTreeMap<u64, Subject>,
    next_id: &mut u64,
    m: Message,
) -> Option<Bytes> {
    if m.status.is_some() {
        return None;
    }
    let Some(to) = m.reply else {
        tracing::debug!(endpoint = %n.shown, "nats: a message without a reply subject is no request; ignored");
        return None;
    };
    if open.len() >= MAX_OPEN {
        if let Some((id, _)) = open.pop_first() {
            tracing::warn!(endpoint = %n.shown, id, "nats: {MAX_OPEN} requests unanswered; the oldest is forgotten");
        }
    }
    *next_id += 1;
    open.insert(*next_id, to);
    Some(frame(
        &Request::<()>::Call {
            id: *next_id,
            body: (),
        },
        &m.payload,
    ))
}

/// Publishes one of the pattern's answers to its request's reply subject.
async fn answer(n: &Native, open: &mut BTreeMap<u64, Subject>, f: Bytes) {
    let (id, sent) = match postcard::take_from_bytes::<ReplyHead>(&f) {
        Ok((ReplyHead::Ok { id }, body)) => {
            let Some(to) = open.remove(&id) else { return };
            (id, n.client.publish(to, f.slice_ref(body)).await)
        }
        Ok((ReplyHead::Failed { id, reason }, _)) => {
            let Some(to) = open.remove(&id) else { return };
            let mut h = HeaderMap::new();
            // A header value is one line.
            let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
            h.insert(ERROR_HEADER, reason.as_str());
            h.insert(ERROR_CODE_HEADER, "500");
            (id, n.client.publish_with_headers(to, h, Bytes::new()).await)
        }
        Ok((ReplyHead::Pong, _)) => return,
        Err(e) => {
            tracing::warn!(endpoint = %n.shown, error = %e, "nats: an unreadable reply frame dropped");
            return;
        }
    };
    if let Err(e) = sent {
        tracing::warn!(endpoint = %n.shown, id, error = %e, "nats: a reply was not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heads read the pattern's own frames: a change to `Request` or `Reply` fails here.
    #[test]
    fn heads_match_the_pattern_frames() {
        let f = postcard::to_allocvec(&Request::Call {
            id: 300,
            body: 7u32,
        })
        .unwrap();
        let (head, body) = postcard::take_from_bytes::<RequestHead>(&f).unwrap();
        assert!(matches!(head, RequestHead::Call { id: 300 }));
        assert_eq!(postcard::from_bytes::<u32>(body).unwrap(), 7);
        let f = postcard::to_allocvec(&Request::<u32>::Ping).unwrap();
        assert!(matches!(
            postcard::take_from_bytes::<RequestHead>(&f).unwrap().0,
            RequestHead::Ping
        ));
        let f = postcard::to_allocvec(&Reply::Ok { id: 9, body: 5u8 }).unwrap();
        let (head, body) = postcard::take_from_bytes::<ReplyHead>(&f).unwrap();
        assert!(matches!(head, ReplyHead::Ok { id: 9 }));
        assert_eq!(body, [5]);
        let f = postcard::to_allocvec(&Reply::<u8>::Failed {
            id: 2,
            reason: "x".into(),
        })
        .unwrap();
        assert!(matches!(
            postcard::take_from_bytes::<ReplyHead>(&f).unwrap().0,
            ReplyHead::Failed { id: 2, .. }
        ));
        // And the frames built here read as the pattern's.
        let built = frame(&Request::<()>::Call { id: 4, body: () }, &[1]);
        assert_eq!(
            postcard::from_bytes::<Request<u8>>(&built).unwrap(),
            Request::Call { id: 4, body: 1 }
        );
        let built = frame(&Reply::<()>::Ok { id: 4, body: () }, &[2]);
        assert_eq!(
            postcard::from_bytes::<Reply<u8>>(&built).unwrap(),
            Reply::Ok { id: 4, body: 2 }
        );
    }
}
