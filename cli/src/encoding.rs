//! Text encodings of raw frames for `ductwork send --raw` and `ductwork listen --raw`: one
//! frame per line, as hex or base64.
//!
//! Hand-written (a few lines each) rather than another dependency. Decoding ignores ASCII
//! whitespace anywhere in a line (so `07 04 62 6f` and a trailing `\r` are fine) and reports
//! the first bad character by its column; it never panics.

use clap::ValueEnum;

/// How a raw frame is written as one line of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// Two lowercase hex digits per byte (either case is read), e.g. `07046f6b`.
    Hex,
    /// Standard base64 (RFC 4648 alphabet `A-Z a-z 0-9 + /`), padded with `=` when written;
    /// padding is optional when read.
    Base64,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Encoding {
    /// `bytes` as one line (without the newline).
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Encoding::Base64 => base64(bytes),
        }
    }

    /// The bytes one line stands for; the error names the problem and its column (1-based).
    pub fn decode(self, line: &str) -> Result<Vec<u8>, String> {
        // Columns count characters of the original line, whitespace included.
        let chars: Vec<(usize, char)> = line
            .chars()
            .enumerate()
            .filter(|(_, c)| !c.is_ascii_whitespace())
            .map(|(i, c)| (i + 1, c))
            .collect();
        match self {
            Encoding::Hex => unhex(&chars),
            Encoding::Base64 => unbase64(&chars),
        }
    }

    /// `hex` or `base64`, as the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unhex(chars: &[(usize, char)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(chars.len() / 2);
    for pair in chars.chunks(2) {
        let digit = |(col, c): (usize, char)| {
            c.to_digit(16)
                .ok_or_else(|| format!("`{c}` at column {col} is not a hex digit"))
        };
        let hi = digit(pair[0])?;
        let Some(&lo) = pair.get(1) else {
            return Err(format!(
                "odd number of hex digits (the last, at column {}, has no partner)",
                pair[0].0
            ));
        };
        out.push((hi * 16 + digit(lo)?) as u8);
    }
    Ok(out)
}

fn unbase64(chars: &[(usize, char)]) -> Result<Vec<u8>, String> {
    // Padding only at the end: strip it, then check what is left.
    let data = chars
        .iter()
        .rposition(|&(_, c)| c != '=')
        .map_or(&chars[..0], |last| &chars[..=last]);
    let pad = chars.len() - data.len();
    if pad > 2 || (pad > 0 && (data.len() + pad) % 4 != 0) {
        return Err("bad base64 padding (`=` only at the end, to a multiple of 4)".into());
    }
    if data.len() % 4 == 1 {
        return Err("truncated base64 (the last group has a single character)".into());
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for group in data.chunks(4) {
        let mut n = 0u32;
        for &(col, c) in group {
            let v = B64
                .iter()
                .position(|&b| b as char == c)
                .ok_or_else(|| format!("`{c}` at column {col} is not a base64 character"))?;
            n = (n << 6) | v as u32;
        }
        n <<= 6 * (4 - group.len()) as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Encoding::{self, Base64, Hex};

    fn round_trip(e: Encoding, bytes: &[u8]) {
        let line = e.encode(bytes);
        assert_eq!(e.decode(&line).unwrap(), bytes, "{} {line}", e.name());
    }

    #[test]
    fn encodings_round_trip() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            round_trip(Hex, &bytes);
            round_trip(Base64, &bytes);
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(Hex.encode(&[0x07, 0x04, 0xab]), "0704ab");
        assert_eq!(Hex.decode(" 07 04 AB\r").unwrap(), [7, 4, 0xab]);
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            assert_eq!(Base64.encode(bytes), text);
            assert_eq!(Base64.decode(text).unwrap(), bytes);
        }
        assert_eq!(
            Base64.decode("Zm9vYg").unwrap(),
            b"foob",
            "padding optional"
        );
    }

    #[test]
    fn bad_lines_name_the_problem() {
        let e = Hex.decode("07zz").unwrap_err();
        assert!(e.contains("`z` at column 3"), "{e}");
        let e = Hex.decode("070").unwrap_err();
        assert!(e.contains("odd number"), "{e}");
        let e = Base64.decode("Zm9v!A==").unwrap_err();
        assert!(e.contains("`!` at column 5"), "{e}");
        assert!(Base64.decode("Z").unwrap_err().contains("truncated"));
        assert!(Base64.decode("Zg=x").unwrap_err().contains("not a base64"));
        assert!(Base64.decode("Zg===").unwrap_err().contains("padding"));
        assert!(Base64.decode("Zm9vY===").unwrap_err().contains("padding"));
        assert!(Hex.decode("é").unwrap_err().contains("column 1"));
    }
}
