//! CBOR (RFC 8949) for the AWS IoT services that accept it (fleet provisioning's `/cbor`
//! topics), on the `ciborium` crate, converted to and from the JSON data model the services
//! use: maps (keys as text), arrays, text, integers, floats, booleans and null. Byte strings
//! decode to text (lossy UTF-8) and tags are skipped, as before.
//!
//! Bounds: `ciborium` never pre-allocates from a declared length (a 9-byte header announcing
//! 2^64 bytes is an error, not an allocation), nesting is limited to [`MAX_DEPTH`], and
//! trailing bytes after the one item are refused.

use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value};

use crate::core::error::{Error, Result};

/// Deepest nesting accepted when decoding.
pub const MAX_DEPTH: usize = 64;

fn bad(what: &str) -> Error {
    Error::Protocol(format!("invalid CBOR payload: {what}"))
}

/// Encodes a JSON value as CBOR (shortest forms: integers and floats take the smallest
/// encoding that keeps their value).
#[must_use]
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a serde_json value into a Vec cannot fail (no I/O, every JSON value is CBOR).
    if let Err(e) = ciborium::ser::into_writer(v, &mut out) {
        log::error!("CBOR encoding failed: {e}");
        out.clear();
    }
    out
}

/// Decodes one CBOR item (the whole input) into a JSON value.
///
/// # Errors
/// [`Error::Protocol`] for malformed, truncated, too deep or trailing input.
pub fn decode(data: &[u8]) -> Result<Value> {
    let mut rest = data;
    let item: Cbor = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH).map_err(
        |e| match e {
            ciborium::de::Error::RecursionLimitExceeded => bad("nested too deeply"),
            ciborium::de::Error::Io(_) => bad("truncated"),
            other => bad(&other.to_string()),
        },
    )?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    to_json(item)
}

fn to_json(v: Cbor) -> Result<Value> {
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            if let Ok(n) = i64::try_from(i) {
                Value::Number(Number::from(n))
            } else if let Ok(n) = u64::try_from(i) {
                Value::Number(Number::from(n))
            } else {
                return Err(bad("integer out of range"));
            }
        }
        Cbor::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Cbor::Tag(_, inner) => to_json(*inner)?,
        Cbor::Array(items) => Value::Array(items.into_iter().map(to_json).collect::<Result<_>>()?),
        Cbor::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match to_json(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(key, to_json(v)?);
            }
            Value::Object(m)
        }
        _ => return Err(bad("unsupported value")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_the_json_model() {
        let v = json!({"certificateOwnershipToken": "tok", "parameters": {"SerialNumber": "42", "n": -7, "big": 70000, "f": 1.5, "ok": true, "none": null}, "list": [1, "two", []]});
        assert_eq!(decode(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn known_encodings() {
        assert_eq!(encode(&json!({"a": 1})), vec![0xa1, 0x61, b'a', 0x01]);
        assert_eq!(encode(&json!(-1)), vec![0x20]);
        assert_eq!(encode(&json!(500)), vec![0x19, 0x01, 0xf4]);
        assert_eq!(decode(&[0xf9, 0x3c, 0x00]).unwrap(), json!(1.0));
        // indefinite map with an indefinite text key
        assert_eq!(
            decode(&[0xbf, 0x7f, 0x61, b'k', 0xff, 0x01, 0xff]).unwrap(),
            json!({"k": 1})
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad_input in [
            &[][..],
            &[0x61],
            &[0xa1, 0x61],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x1c],
            &[0x01, 0x02],
        ] {
            assert!(decode(bad_input).is_err(), "{bad_input:?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 100).chain([0x01]).collect();
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn declared_lengths_never_allocate_ahead_of_the_input() {
        // Headers announcing 2^36 array items, map entries and bytes, with nothing behind.
        for header in [
            &[0x9b, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x01][..],
            &[0xbb, 0, 0, 0, 0x10, 0, 0, 0, 0][..],
            &[0x5b, 0, 0, 0, 0x10, 0, 0, 0, 0][..],
        ] {
            assert!(decode(header).is_err(), "{header:?}");
        }
    }

    #[test]
    fn byte_strings_read_as_text_and_tags_are_skipped() {
        assert_eq!(decode(&[0x42, b'h', b'i']).unwrap(), json!("hi"));
        assert_eq!(decode(&[0xc1, 0x01]).unwrap(), json!(1));
        assert_eq!(decode(&[0xa1, 0x01, 0x02]).unwrap(), json!({"1": 2}));
    }
}
