//! The JSON envelope `ductwork send` and `ductwork listen` put on the wire.
//!
//! postcard is not self-describing, so arbitrary JSON travels as one documented enum, [`Json`],
//! encoded with postcard like every other ductwork message. Another program speaks the same
//! format by defining the same enum (variant order matters: it is the postcard tag):
//!
//! ```text
//! enum Json {                 // postcard: varint tag, then the variant's content
//!     Null,                   // 0
//!     Bool(bool),             // 1: one byte
//!     I64(i64),               // 2: zigzag varint   (negative integers)
//!     U64(u64),               // 3: varint          (non-negative integers)
//!     F64(f64),               // 4: 8 bytes little-endian
//!     String(String),         // 5: varint length + UTF-8
//!     Array(Vec<Json>),       // 6: varint count + items
//!     Object(Vec<(String, Json)>), // 7: varint count + (key, value) pairs, in order
//! }
//! ```
//!
//! Limits: nesting deeper than [`MAX_DEPTH`] levels is refused when decoding (so a hostile
//! frame cannot exhaust the stack); non-finite floats (which JSON cannot write) print as `null`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The deepest nesting of arrays and objects accepted when decoding (serde_json's own limit).
pub const MAX_DEPTH: usize = 128;

/// One JSON value as carried on the wire. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A negative integer (non-negative ones are [`Json::U64`]).
    I64(i64),
    /// A non-negative integer.
    U64(u64),
    /// A number with a fraction or exponent.
    F64(f64),
    /// A string.
    String(String),
    /// An array.
    Array(#[serde(deserialize_with = "nested")] Vec<Json>),
    /// An object, keys in their original order.
    Object(#[serde(deserialize_with = "nested")] Vec<(String, Json)>),
}

// The initializer is const; clippy 1.96 (the Windows cross toolchain) still flags it.
#[allow(clippy::missing_const_for_thread_local)]
mod depth {
    use std::cell::Cell;
    thread_local! {
        /// Nesting depth of the value being decoded on this thread.
        pub(super) static DEPTH: Cell<usize> = const { Cell::new(0) };
    }
}
use depth::DEPTH;

/// Restores the nesting depth when a nested value is done (or failed).
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Deserializes a nested array or object, refusing nesting deeper than [`MAX_DEPTH`].
fn nested<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DEPTH.with(|c| {
        let v = c.get() + 1;
        c.set(v);
        v
    });
    let _guard = DepthGuard;
    if depth > MAX_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    T::deserialize(d)
}

impl From<&Value> for Json {
    fn from(v: &Value) -> Json {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Json::U64(u)
                } else if let Some(i) = n.as_i64() {
                    Json::I64(i)
                } else {
                    Json::F64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Json::String(s.clone()),
            Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            Value::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (k.clone(), Json::from(v))).collect())
            }
        }
    }
}

impl From<&Json> for Value {
    fn from(j: &Json) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::I64(i) => Value::from(*i),
            Json::U64(u) => Value::from(*u),
            Json::F64(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            Json::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_postcard() {
        let v: Value = serde_json::from_str(
            r#"{"a":[1,-2,3.5,"x",null,true,{"b":[]}],"big":18446744073709551615}"#,
        )
        .unwrap();
        let frame = ductwork::codec::encode(&Json::from(&v), usize::MAX).unwrap();
        let back: Json = ductwork::codec::decode(&frame).unwrap();
        assert_eq!(Value::from(&back), v);
    }

    fn nested_frame(depth: usize) -> Vec<u8> {
        // `depth` nested one-element arrays (tag 6, count 1) around a null (tag 0).
        let mut frame = Vec::new();
        for _ in 0..depth {
            frame.extend_from_slice(&[6, 1]);
        }
        frame.push(0);
        frame
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing() {
        // postcard replaces custom messages with a generic one, so the limit is checked by
        // where it bites: MAX_DEPTH decodes, one more does not, and 100,000 levels fail
        // cleanly instead of overflowing the stack.
        assert!(ductwork::codec::decode::<Json>(&nested_frame(MAX_DEPTH)).is_ok());
        assert!(ductwork::codec::decode::<Json>(&nested_frame(MAX_DEPTH + 1)).is_err());
        assert!(ductwork::codec::decode::<Json>(&nested_frame(100_000)).is_err());
        // The depth counter is restored after a failure.
        assert!(ductwork::codec::decode::<Json>(&nested_frame(MAX_DEPTH)).is_ok());
    }
}
