//! One received frame as one bounded line of text, for `ductwork listen`.
//!
//! A frame may hold up to `max_frame` bytes (16 MiB by default), and the JSON it stands for
//! can be much larger than the frame: a 16 MiB array of nulls is 80 MB of text, and decoding
//! it into [`Json`](crate::json::Json) and then a `serde_json::Value` took a listener from
//! 21 MiB to 1.1 GiB. So the JSON envelope is not decoded into values here: [`json_line`]
//! walks the postcard bytes once and writes JSON text straight into a [`Bounded`] line that
//! keeps its first `max` bytes and only counts the rest. Work is linear in the frame's size,
//! memory is bounded by `max`, and a long line ends with a marker saying how many bytes were
//! elided. The walk validates exactly what decoding the envelope does (known variants, UTF-8
//! strings, nesting at most [`MAX_DEPTH`], no trailing bytes), so a frame that would not
//! decode is still reported as one that does not.

use crate::{encoding::Encoding, json::MAX_DEPTH};
use std::io::{self, Write};

/// A line under construction: its first `max` bytes, and how many bytes it has in all.
pub struct Bounded {
    buf: Vec<u8>,
    max: usize,
    total: u64,
}

impl Bounded {
    /// An empty line that keeps at most `max` bytes.
    pub fn new(max: usize) -> Bounded {
        Bounded {
            buf: Vec::with_capacity(max.min(4096)),
            max,
            total: 0,
        }
    }

    /// The line: whole, or cut to at most `max` bytes (at a character boundary) followed by
    /// ` ... [N bytes elided]`.
    pub fn finish(self) -> String {
        let kept = match std::str::from_utf8(&self.buf) {
            Ok(_) => self.buf.len(),
            // Cut inside a character: drop its first bytes too.
            Err(e) => e.valid_up_to(),
        };
        let elided = self.total - kept as u64;
        let mut buf = self.buf;
        buf.truncate(kept);
        let mut line = String::from_utf8(buf).unwrap_or_default();
        if elided > 0 {
            line.push_str(&format!(" ... [{elided} bytes elided]"));
        }
        line
    }
}

impl Write for Bounded {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = self.max.saturating_sub(self.buf.len()).min(b.len());
        self.buf.extend_from_slice(&b[..room]);
        self.total += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A raw frame as one line of `encoding`, at most about `max` bytes long: only the prefix
/// that is printed is encoded.
pub fn raw_line(frame: &[u8], encoding: Encoding, max: usize) -> String {
    let (keep, total) = match encoding {
        Encoding::Hex => ((max / 2).min(frame.len()), frame.len() as u64 * 2),
        Encoding::Base64 => (
            (max / 4 * 3).min(frame.len()),
            (frame.len() as u64).div_ceil(3) * 4,
        ),
    };
    let mut line = encoding.encode(&frame[..keep]);
    let elided = total - line.len() as u64;
    if elided > 0 {
        line.push_str(&format!(" ... [{elided} bytes elided]"));
    }
    line
}

/// The JSON envelope in `frame` as one compact JSON line of at most about `max` bytes (see
/// the module docs); `Err` says why the frame is not a valid envelope.
pub fn json_line(frame: &[u8], max: usize) -> Result<String, String> {
    let mut out = Bounded::new(max);
    let mut r = Reader { b: frame, pos: 0 };
    r.value(&mut out, 0)?;
    if r.pos != frame.len() {
        return Err(format!(
            "{} unexpected trailing bytes after the value",
            frame.len() - r.pos
        ));
    }
    Ok(out.finish())
}

/// A cursor over a frame's postcard bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

/// Writing into a [`Bounded`] line never fails.
fn put(out: &mut Bounded, s: &[u8]) {
    let _ = out.write_all(s);
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.b.len() - self.pos;
        if n > left as u64 {
            return Err(format!(
                "the frame ends early: {n} bytes needed at byte {}, {left} left",
                self.pos
            ));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// A postcard varint (LEB128, at most 10 bytes for a u64).
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err("a varint overflows 64 bits".into());
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint overflows 64 bits".into())
    }

    fn string(&mut self) -> Result<&'a str, String> {
        let len = self.varint()?;
        std::str::from_utf8(self.take(len)?).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    /// One `Json` value, `depth` arrays or objects deep, written as JSON text.
    fn value(&mut self, out: &mut Bounded, depth: usize) -> Result<(), String> {
        let variant = self.varint()?;
        if variant >= 6 && depth >= MAX_DEPTH {
            return Err(format!("JSON nested deeper than {MAX_DEPTH} levels"));
        }
        match variant {
            0 => put(out, b"null"),
            1 => match self.take(1)?[0] {
                0 => put(out, b"false"),
                1 => put(out, b"true"),
                b => return Err(format!("a bool of value {b}")),
            },
            2 => {
                let z = self.varint()?;
                let i = (z >> 1) as i64 ^ -((z & 1) as i64);
                let _ = write!(out, "{i}");
            }
            3 => {
                let u = self.varint()?;
                let _ = write!(out, "{u}");
            }
            4 => {
                let b = self.take(8)?;
                let f = f64::from_le_bytes(b.try_into().unwrap_or_default());
                match serde_json::Number::from_f64(f) {
                    Some(n) => put(out, n.to_string().as_bytes()),
                    None => put(out, b"null"),
                }
            }
            5 => {
                let s = self.string()?;
                let _ = serde_json::to_writer(&mut *out, s);
            }
            6 => {
                // Each item takes at least one byte: a count beyond the frame fails there.
                put(out, b"[");
                for i in 0..self.varint()? {
                    if i > 0 {
                        put(out, b",");
                    }
                    self.value(out, depth + 1)?;
                }
                put(out, b"]");
            }
            7 => {
                put(out, b"{");
                for i in 0..self.varint()? {
                    if i > 0 {
                        put(out, b",");
                    }
                    let k = self.string()?;
                    let _ = serde_json::to_writer(&mut *out, k);
                    put(out, b":");
                    self.value(out, depth + 1)?;
                }
                put(out, b"}");
            }
            v => return Err(format!("unknown variant index {v}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use serde_json::Value;

    fn frame_of(text: &str) -> Vec<u8> {
        let v: Value = serde_json::from_str(text).unwrap();
        ductwork::codec::encode(&Json::from(&v), usize::MAX)
            .unwrap()
            .to_vec()
    }

    /// The walk prints what decoding the envelope and printing the `Value` printed.
    #[test]
    fn prints_what_the_decoded_value_printed() {
        for text in [
            r#"{"a":[1,-2,3.5,"x\"\n",null,true,false,{"b":[]}],"big":18446744073709551615}"#,
            r#"[-9223372036854775808,1e300,0.1,"ünï",{}]"#,
            "null",
            r#""""#,
        ] {
            let frame = frame_of(text);
            let old = Value::from(&ductwork::codec::decode::<Json>(&frame).unwrap()).to_string();
            assert_eq!(json_line(&frame, 1 << 20).unwrap(), old, "{text}");
        }
        // Non-finite floats print as null, as before.
        let frame = ductwork::codec::encode(&Json::F64(f64::NAN), 64).unwrap();
        assert_eq!(json_line(&frame, 64).unwrap(), "null");
    }

    /// Frames the envelope's decoder refuses are refused here too.
    #[test]
    fn refuses_what_decoding_refuses() {
        let mut deep = Vec::new();
        for _ in 0..MAX_DEPTH {
            deep.extend_from_slice(&[6, 1]);
        }
        deep.push(0);
        assert!(json_line(&deep, 64).is_ok());
        let deeper = [&[6u8, 1][..], &deep].concat();
        assert!(json_line(&deeper, 64).is_err());
        for bad in [
            &[][..],
            &[8],
            &[1, 2],
            &[5, 2, 0xff, 0xfe],
            &[6, 200, 1, 0],
            &[0, 0],
            &[
                3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
        ] {
            assert!(json_line(bad, 64).is_err(), "{bad:?}");
            assert!(ductwork::codec::decode::<Json>(bad).is_err(), "{bad:?}");
        }
    }

    /// A long line keeps its first `max` bytes (whole characters) and says how many it
    /// elided; the two add up to the whole line.
    #[test]
    fn long_lines_are_cut_with_a_count() {
        let frame = frame_of(r#"["ééééé", "abc"]"#);
        let whole = json_line(&frame, 1 << 10).unwrap();
        let cut = json_line(&frame, 4).unwrap();
        // `["é` is 4 bytes; the cut falls after it.
        assert_eq!(cut, format!("[\"é ... [{} bytes elided]", whole.len() - 4));
        let cut = json_line(&frame, 3).unwrap();
        assert_eq!(cut, format!("[\" ... [{} bytes elided]", whole.len() - 2));
        assert_eq!(
            raw_line(&[1, 2, 3], Encoding::Hex, 4),
            "0102 ... [2 bytes elided]"
        );
        assert_eq!(raw_line(&[1, 2, 3], Encoding::Hex, 6), "010203");
        assert_eq!(
            raw_line(&[0; 7], Encoding::Base64, 5),
            "AAAA ... [8 bytes elided]"
        );
    }
}
