//! The request/reply envelope on the wire, written and read by hand around the caller's body.
//!
//! The bytes are exactly postcard's for [`Request`] and [`Reply`] (`docs/wire-format.md`): the
//! variant's index as a varint, the id as a varint, then the body's own postcard encoding. A
//! typed channel of `Request<T>` produces the same frame, but through serde's struct-variant
//! machinery, twice (once to size the frame, once to write it); a call spent a few hundred
//! instructions on each side there, a sixth of a shared-memory round trip. Here the header is
//! a few bytes computed directly and only the body goes through serde, as it does on a plain
//! channel.
//!
//! Reading by hand also keeps what the envelope says when the body does not decode: the id,
//! so that the error reaches the caller it belongs to rather than nobody.

use super::reqrep::{Reply, Request};
use crate::{codec::CodecError, BoxConnection, Error, ErrorKind, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::{fmt::Display, io::Write};

/// `Request::Call`'s variant index.
pub(crate) const CALL: u64 = 0;
/// `Request::Ping`'s.
pub(crate) const PING: u64 = 1;
/// `Reply::Ok`'s.
pub(crate) const OK: u64 = 0;
/// `Reply::Failed`'s.
pub(crate) const FAILED: u64 = 1;
/// `Reply::Pong`'s.
pub(crate) const PONG: u64 = 2;

/// A frame whose envelope or body does not decode; `id` when the envelope named one.
#[derive(Debug)]
pub(crate) struct Undecodable {
    pub(crate) id: Option<u64>,
    pub(crate) error: Error,
}

/// The header: a variant index (one byte: every index is below 128) and an optional id.
struct Header {
    bytes: [u8; 11],
    len: usize,
}

impl Header {
    fn new(tag: u64, id: Option<u64>) -> Self {
        debug_assert!(tag < 0x80, "a one-byte variant index");
        let mut bytes = [0u8; 11];
        bytes[0] = tag as u8;
        let mut len = 1;
        if let Some(mut v) = id {
            // LEB128, as postcard writes an unsigned varint.
            loop {
                let low = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    bytes[len] = low;
                    len += 1;
                    break;
                }
                bytes[len] = low | 0x80;
                len += 1;
            }
        }
        Header { bytes, len }
    }
}

/// Queues the frame `tag [id] [body]` on `conn` (after its `poll_ready`): sized once (the body
/// by postcard, the header directly), checked against the endpoint's limit, written in place.
pub(crate) fn start_send<B: Serialize + ?Sized>(
    conn: &mut BoxConnection,
    endpoint: &dyn Display,
    tag: u64,
    id: Option<u64>,
    body: Option<&B>,
) -> Result<()> {
    let header = Header::new(tag, id);
    let body_len = match body {
        None => 0,
        Some(b) => postcard::experimental::serialized_size(b)
            .map_err(|e| Error::codec(endpoint, CodecError::Encode(e)))?,
    };
    let len = header.len + body_len;
    crate::codec::check_len(len, conn.info().capabilities.max_message)
        .map_err(|e| Error::codec(endpoint, e))?;
    conn.start_send_sized(len, &mut |w| {
        w.write_all(&header.bytes[..header.len])
            .map_err(|e| Error::new(ErrorKind::Encode, endpoint, e.to_string()))?;
        match body {
            Some(b) => postcard::to_io(b, w)
                .map(drop)
                .map_err(|e| Error::codec(endpoint, CodecError::Encode(e))),
            None => Ok(()),
        }
    })
}

/// Queues `reply` on `conn` (see [`start_send`]).
pub(crate) fn start_send_reply<T: Serialize>(
    conn: &mut BoxConnection,
    endpoint: &dyn Display,
    reply: &Reply<T>,
) -> Result<()> {
    match reply {
        Reply::Ok { id, body } => start_send(conn, endpoint, OK, Some(*id), Some(body)),
        Reply::Failed { id, reason } => {
            start_send(conn, endpoint, FAILED, Some(*id), Some(reason.as_str()))
        }
        Reply::Pong => start_send::<()>(conn, endpoint, PONG, None, None),
    }
}

/// An unsigned varint of at most `MAX` bytes (10 for a u64, 5 for a u32) at the start of
/// `bytes`, as postcard reads one, and the rest; `None` if cut short or too large.
#[inline]
fn take_varint<const MAX: usize>(bytes: &[u8]) -> Option<(u64, &[u8])> {
    // The bits the last of `MAX` bytes may hold: 64 - 63 for a u64, 32 - 28 for a u32.
    let last_bits = if MAX == 10 { 1 } else { 4 };
    let mut v = 0u64;
    let n = bytes.len().min(MAX);
    let mut i = 0;
    while i < n {
        let b = bytes[i];
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == MAX - 1 && b >> last_bits != 0 {
                return None;
            }
            return Some((v, &bytes[i + 1..]));
        }
        i += 1;
    }
    None
}

fn undecodable(endpoint: &dyn Display, id: Option<u64>, why: impl Into<String>) -> Undecodable {
    Undecodable {
        id,
        error: Error::new(ErrorKind::Decode, endpoint, why),
    }
}

/// The id after a variant index that carries one, and the body's bytes.
#[inline]
fn take_id<'a>(
    rest: &'a [u8],
    endpoint: &dyn Display,
) -> std::result::Result<(u64, &'a [u8]), Undecodable> {
    take_varint::<10>(rest).ok_or_else(|| undecodable(endpoint, None, "no envelope (a bad id)"))
}

/// The variant index, and the rest.
#[inline]
fn take_tag<'a>(
    frame: &'a [u8],
    endpoint: &dyn Display,
) -> std::result::Result<(u64, &'a [u8]), Undecodable> {
    take_varint::<5>(frame)
        .ok_or_else(|| undecodable(endpoint, None, "no envelope (a bad variant index)"))
}

/// The body of a frame that carries one: the whole rest, or an error that keeps the id.
fn body<T: DeserializeOwned>(
    bytes: &[u8],
    endpoint: &dyn Display,
    id: u64,
) -> std::result::Result<T, Undecodable> {
    crate::codec::decode(bytes).map_err(|e| Undecodable {
        id: Some(id),
        error: Error::codec(endpoint, e),
    })
}

/// Reads a reply frame.
pub(crate) fn decode_reply<T: DeserializeOwned>(
    frame: &[u8],
    endpoint: &dyn Display,
) -> std::result::Result<Reply<T>, Undecodable> {
    let (tag, rest) = take_tag(frame, endpoint)?;
    match tag {
        OK => {
            let (id, rest) = take_id(rest, endpoint)?;
            let body = body(rest, endpoint, id)?;
            Ok(Reply::Ok { id, body })
        }
        FAILED => {
            let (id, rest) = take_id(rest, endpoint)?;
            let reason = body(rest, endpoint, id)?;
            Ok(Reply::Failed { id, reason })
        }
        PONG if rest.is_empty() => Ok(Reply::Pong),
        PONG => Err(undecodable(endpoint, None, "bytes after a pong")),
        t => Err(undecodable(endpoint, None, format!("no reply variant {t}"))),
    }
}

/// Reads a request frame.
pub(crate) fn decode_request<T: DeserializeOwned>(
    frame: &[u8],
    endpoint: &dyn Display,
) -> std::result::Result<Request<T>, Undecodable> {
    let (tag, rest) = take_tag(frame, endpoint)?;
    match tag {
        CALL => {
            let (id, rest) = take_id(rest, endpoint)?;
            let body = body(rest, endpoint, id)?;
            Ok(Request::Call { id, body })
        }
        PING if rest.is_empty() => Ok(Request::Ping),
        PING => Err(undecodable(endpoint, None, "bytes after a ping")),
        t => Err(undecodable(
            endpoint,
            None,
            format!("no request variant {t}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Body {
        n: u64,
        s: String,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }

    fn header_then(tag: u64, id: Option<u64>, body: &[u8]) -> Vec<u8> {
        let h = Header::new(tag, id);
        let mut v = h.bytes[..h.len].to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Every envelope, with ids across the varint's lengths, reads back what postcard's own
    /// encoding of `Request`/`Reply` holds, and the hand-written header gives postcard's bytes.
    #[test]
    fn hand_written_envelopes_are_postcards_bytes() {
        let b = Body {
            n: 300,
            s: "x".into(),
            b: vec![1, 2, 3],
        };
        let body = postcard::to_allocvec(&b).unwrap();
        for id in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let call = postcard::to_allocvec(&Request::Call {
                id,
                body: b.clone(),
            })
            .unwrap();
            assert_eq!(header_then(CALL, Some(id), &body), call, "id {id}");
            let back: Request<Body> = decode_request(&call, &"t").unwrap();
            assert_eq!(
                back,
                Request::Call {
                    id,
                    body: b.clone()
                }
            );
            let ok = postcard::to_allocvec(&Reply::Ok {
                id,
                body: b.clone(),
            })
            .unwrap();
            assert_eq!(header_then(OK, Some(id), &body), ok, "id {id}");
            let back: Reply<Body> = decode_reply(&ok, &"t").unwrap();
            assert_eq!(
                back,
                Reply::Ok {
                    id,
                    body: b.clone()
                }
            );
            let failed = Reply::<Body>::Failed {
                id,
                reason: "why".into(),
            };
            let bytes = postcard::to_allocvec(&failed).unwrap();
            let reason = postcard::to_allocvec("why").unwrap();
            assert_eq!(header_then(FAILED, Some(id), &reason), bytes);
            assert_eq!(decode_reply::<Body>(&bytes, &"t").unwrap(), failed);
        }
        let ping = postcard::to_allocvec(&Request::<Body>::Ping).unwrap();
        assert_eq!(header_then(PING, None, &[]), ping);
        assert_eq!(decode_request::<Body>(&ping, &"t").unwrap(), Request::Ping);
        let pong = postcard::to_allocvec(&Reply::<Body>::Pong).unwrap();
        assert_eq!(header_then(PONG, None, &[]), pong);
        assert_eq!(decode_reply::<Body>(&pong, &"t").unwrap(), Reply::Pong);
    }

    /// What postcard refuses is refused here too, as a decode error; a frame whose envelope is
    /// whole but whose body is not keeps its id.
    #[test]
    fn bad_frames_are_decode_errors_that_keep_a_readable_id() {
        let bad: &[&[u8]] = &[
            &[],
            &[0x80],       // a varint cut short
            &[0x00],       // a call without its id
            &[0x00, 0xff], // an id cut short
            &[
                0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ], // id > u64
            &[0x03],       // no such variant
            &[0x01, 0x00], // a ping with bytes after it
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // a variant index of six bytes
        ];
        for frame in bad {
            assert!(
                crate::codec::decode::<Request<u8>>(frame).is_err(),
                "{frame:?}"
            );
            let e = decode_request::<u8>(frame, &"t").unwrap_err();
            assert_eq!(e.error.kind(), ErrorKind::Decode, "{frame:?}");
            assert_eq!(e.id, None, "{frame:?}");
        }
        // Id 5, then a body that is not a u8 (nothing), then one with a byte too many.
        for frame in [&[0x00, 0x05][..], &[0x00, 0x05, 0x01, 0x02]] {
            let e = decode_request::<u8>(frame, &"t").unwrap_err();
            assert_eq!((e.error.kind(), e.id), (ErrorKind::Decode, Some(5)));
            let e = decode_reply::<u8>(frame, &"t").unwrap_err();
            assert_eq!((e.error.kind(), e.id), (ErrorKind::Decode, Some(5)));
        }
        let e = decode_reply::<u8>(&[0x02, 0x00], &"t").unwrap_err();
        assert_eq!((e.error.kind(), e.id), (ErrorKind::Decode, None));
    }

    #[test]
    fn varints_read_as_postcard_reads_them() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let bytes = postcard::to_allocvec(&v).unwrap();
            assert_eq!(take_varint::<10>(&bytes), Some((v, &[][..])), "{v}");
        }
        let max32 = postcard::to_allocvec(&u32::MAX).unwrap();
        assert_eq!(
            take_varint::<5>(&max32),
            Some((u64::from(u32::MAX), &[][..]))
        );
        // One past u32::MAX in five bytes: postcard refuses it as a u32, and so does this.
        assert_eq!(take_varint::<5>(&[0xff, 0xff, 0xff, 0xff, 0x1f]), None);
        assert!(postcard::from_bytes::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
    }
}
