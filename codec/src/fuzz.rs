//! Fuzzing entry points (`fuzz/fuzz_targets/`), here so that the workspace's tests and lints
//! check them too. Not part of the API.
//!
//! - `frame_stream`: arbitrary bytes arrive at a [`FrameCodec`] in arbitrary reads, as on a
//!   socket. Checks that nothing panics, that no frame passes the limit, that the buffer grows
//!   with what arrived and never by a header's claim alone, that the frames and the ending
//!   (clean, error) do not depend on how the bytes were split, and the close marker's rules.
//! - `typed_decode`: arbitrary bytes decoded with [`crate::decode`] into a type with every
//!   common serde shape. Checks that nothing panics, and that a value that decodes encodes
//!   back to bytes that decode to the same encoding.
//! - `stream_start`: arbitrary bytes read as the start of a stream, where a client looks for
//!   the listener's hello or refusal. Checks that nothing panics, that the two readings never
//!   both claim the bytes, that a reason is short printable ASCII, that more bytes never change
//!   a decided answer, and that a written refusal reads back.

use crate::{
    decode, encode, encode_refusal, parse_hello, parse_refusal, CodecError, Frame, FrameCodec,
    Hello, Refusal, GROW_CHUNK, HEADER_LEN, REFUSAL_HEADER_LEN, REFUSAL_MAX_REASON,
};
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_util::codec::Decoder;

/// What a stream decoded to: its data frames and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    /// `Ok(true)`: close marker then end of stream; `Ok(false)`: end of stream without one
    /// (nothing pending); `Err`: the error's kind.
    end: Result<bool, &'static str>,
}

fn kind(e: &CodecError) -> &'static str {
    match e {
        CodecError::FrameTooLarge { .. } => "too large",
        CodecError::Truncated { .. } => "truncated",
        CodecError::Protocol(_) => "protocol",
        _ => "other",
    }
}

/// Decodes `wire` arriving in reads of the sizes `reads` cycles through (0 = everything at
/// once), the way `transports/src/common/framed.rs` reads: frames are split off, then room
/// for one more byte is reserved and the read fills the spare room.
fn run(wire: &[u8], reads: &[u8], max: usize) -> Outcome {
    let mut codec = FrameCodec::new(max);
    let mut src = BytesMut::with_capacity(64);
    let (mut fed, mut frames, mut closed) = (0usize, Vec::new(), false);
    let mut sizes = reads.iter().cycle();
    loop {
        loop {
            match codec.decode(&mut src) {
                Ok(Some(Frame::Data(f))) => {
                    assert!(!closed, "a frame after the close marker");
                    assert!(f.len() <= max, "a frame of {} over {max}", f.len());
                    frames.push(f.to_vec());
                }
                Ok(Some(Frame::Close)) => {
                    assert!(src.is_empty(), "a close marker with bytes after it");
                    closed = true;
                }
                Ok(None) => break,
                Err(e) => {
                    if closed {
                        assert!(matches!(e, CodecError::Protocol(_)), "after close: {e}");
                    }
                    return Outcome {
                        frames,
                        end: Err(kind(&e)),
                    };
                }
            }
        }
        // Room follows the bytes that arrived, not a header's claim.
        let bound = 64 + 2 * (fed + HEADER_LEN) + GROW_CHUNK;
        assert!(
            src.capacity() <= bound,
            "{} reserved after {fed} bytes",
            src.capacity()
        );
        if fed == wire.len() {
            break;
        }
        src.reserve(1);
        let want = match *sizes.next().unwrap_or(&0) {
            0 => wire.len(),
            n => usize::from(n),
        };
        let n = want.min(src.capacity() - src.len()).min(wire.len() - fed);
        src.put_slice(&wire[fed..fed + n]);
        fed += n;
    }
    let end = match codec.decode_eof(&mut src) {
        Ok(Some(f)) => panic!("decode_eof found a frame that decode did not: {f:?}"),
        Ok(None) => Ok(closed),
        Err(e) => Err(kind(&e)),
    };
    Outcome { frames, end }
}

/// Fuzzes the stream decoder with `data`: its first byte picks the limit, the next eight the
/// read sizes, the rest is the byte stream.
pub fn frame_stream(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let (reads, wire) = rest.split_at(rest.len().min(8));
    // Small limits to reach FrameTooLarge, and the default to let headers claim 16 MiB.
    let max = match limit % 4 {
        0 => crate::DEFAULT_MAX_FRAME,
        1 => 0,
        n => usize::from(limit) << (4 * n),
    };
    let whole = run(wire, &[0], max);
    let split = run(wire, reads, max);
    // A marker followed by bytes is one error at once, or the close then the error when the
    // bytes come in a later read: both end in `Protocol`, with the same frames before.
    assert_eq!(whole, split, "the split changed the outcome");
}

/// A type with every common serde shape, as an application's message might be.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// A unit variant.
    Ping,
    /// A struct variant with strings, integers, floats and options.
    Order {
        /// An id.
        id: u64,
        /// A name.
        item: String,
        /// A signed quantity.
        qty: i32,
        /// A price.
        price: f64,
        /// An optional note.
        note: Option<String>,
    },
    /// Nested sequences, maps, tuples and raw bytes.
    Batch(Vec<(u8, bool)>, BTreeMap<String, Vec<u16>>, Vec<u8>),
    /// A boxed variant (no recursion: an application's recursive type must bound its own
    /// depth, or a deep input overflows the decoder's stack).
    Boxed(Box<(u32, String)>),
    /// A char and a fixed array.
    Misc(char, [u8; 4], i128),
}

/// Fuzzes typed decoding with `data`: decode never panics, and a value that decodes
/// re-encodes to bytes that decode and encode to the same bytes again.
pub fn typed_decode(data: &[u8]) {
    let Ok(value) = decode::<Message>(data) else {
        return;
    };
    let once = encode(&value, usize::MAX).expect("a decoded value encodes");
    let again = decode::<Message>(&once).expect("an encoded value decodes");
    let twice = encode(&again, usize::MAX).expect("encodes again");
    assert_eq!(once, twice, "re-encoding is stable");
}

/// Fuzzes the reading of a stream's first bytes (hello or refusal) with `data`, and the
/// writing of a refusal whose code and reason come from `data`.
pub fn stream_start(data: &[u8]) {
    let (hello, refusal) = (parse_hello(data), parse_refusal(data));
    assert!(
        matches!(hello, Hello::Absent | Hello::Incomplete) || matches!(refusal, Refusal::Absent),
        "both a hello and a refusal: {hello:?}, {refusal:?}"
    );
    if let Refusal::Refused { reason, .. } = &refusal {
        assert!(
            reason.len() <= REFUSAL_MAX_REASON,
            "a reason of {}",
            reason.len()
        );
        assert!(
            reason.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{reason:?}"
        );
    }
    // Bytes arrive in pieces: a prefix is undecided or already says what the whole says.
    for cut in 0..data.len().min(REFUSAL_HEADER_LEN + REFUSAL_MAX_REASON + 1) {
        let part = parse_refusal(&data[..cut]);
        assert!(
            part == Refusal::Incomplete || part == refusal,
            "{cut}: {part:?}"
        );
        let part = parse_hello(&data[..cut]);
        assert!(
            part == Hello::Incomplete || part == hello,
            "{cut}: {part:?}"
        );
    }
    // What a listener writes reads back, cleaned and cut, whatever the reason held.
    let code = data.first().map_or(0, |&b| u16::from(b));
    let reason = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
    let mut wire = BytesMut::new();
    encode_refusal(&mut wire, code, &reason);
    assert!(wire.len() <= REFUSAL_HEADER_LEN + REFUSAL_MAX_REASON);
    match parse_refusal(&wire) {
        Refusal::Refused { code: c, reason: r } => {
            assert_eq!(c, code);
            let want: String = reason
                .bytes()
                .take(REFUSAL_MAX_REASON)
                .map(|b| {
                    if (0x20..0x7f).contains(&b) {
                        b as char
                    } else {
                        '?'
                    }
                })
                .collect();
            assert_eq!(r, want);
        }
        other => panic!("a written refusal read as {other:?}"),
    }
    assert_eq!(parse_hello(&wire), Hello::Absent);
}

#[cfg(test)]
mod tests {
    /// `stream_start` on a deterministic sweep: refusals and hellos, cut, dirtied and
    /// followed by other bytes.
    #[test]
    fn stream_start_holds_on_a_sweep() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let starts: [&[u8]; 4] = [
            &[0xff, 0xff, 0xff, 0xfd],
            &[0xff, 0xff, 0xff, 0xfe],
            &[0xff, 0xff, 0xff],
            &[0, 0, 0, 4],
        ];
        for _ in 0..3000 {
            let mut data = starts[(next() % 4) as usize].to_vec();
            let len = (next() % 300) as usize;
            data.extend((0..len).map(|_| next() as u8));
            if next() % 2 == 0 && data.len() > 7 {
                // A claimed length that fits what follows.
                data[6..8].copy_from_slice(&((len as u16) / 2).to_be_bytes());
            }
            super::stream_start(&data);
        }
    }
}
