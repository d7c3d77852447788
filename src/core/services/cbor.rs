//! A small CBOR (RFC 8949) codec for the JSON data model, for the AWS IoT services that accept
//! CBOR payloads (fleet provisioning's `/cbor` topics). Maps with text keys, arrays, text,
//! integers, floats, booleans and null; byte strings decode to text (lossy UTF-8) and tags are
//! skipped. Decoding is bounded: nesting depth and lengths are checked against the input.

use serde_json::{Map, Number, Value};

use crate::core::error::{Error, Result};

const MAX_DEPTH: usize = 64;

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | u8::try_from(n).unwrap_or(0)),
        24..=0xff => {
            out.push(m | 24);
            out.push(u8::try_from(n).unwrap_or(0));
        }
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&u32::try_from(n).unwrap_or(0).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                head(out, 0, u);
            } else if let Some(i) = n.as_i64() {
                // i < 0 here: CBOR stores -1 - i.
                head(out, 1, u64::try_from(-(i + 1)).unwrap_or(0));
            } else {
                out.push(0xfb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
            }
        }
        Value::String(s) => {
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(a) => {
            head(out, 4, a.len() as u64);
            for x in a {
                encode_into(x, out);
            }
        }
        Value::Object(m) => {
            head(out, 5, m.len() as u64);
            for (k, x) in m {
                head(out, 3, k.len() as u64);
                out.extend_from_slice(k.as_bytes());
                encode_into(x, out);
            }
        }
    }
}

/// Encodes a JSON value as CBOR.
#[must_use]
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

fn bad(what: &str) -> Error {
    Error::Protocol(format!("invalid CBOR payload: {what}"))
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(|| bad("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, info: u8) -> Result<u64> {
        Ok(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().map_err(|_| bad("int"))?,
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().map_err(|_| bad("int"))?,
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| bad("int"))?),
            _ => return Err(bad("reserved additional information")),
        })
    }

    /// A length that must fit in what is left of the input (each item takes ≥ 1 byte).
    fn len(&mut self, info: u8) -> Result<usize> {
        let n = usize::try_from(self.uint(info)?).map_err(|_| bad("length"))?;
        if n > self.data.len().saturating_sub(self.pos) {
            return Err(bad("length beyond the end of the payload"));
        }
        Ok(n)
    }

    fn string(&mut self, major: u8, info: u8) -> Result<String> {
        let mut buf = Vec::new();
        if info == 31 {
            loop {
                let b = self.byte()?;
                if b == 0xff {
                    break;
                }
                if b >> 5 != major || b & 0x1f == 31 {
                    return Err(bad("mixed indefinite string chunks"));
                }
                let n = self.len(b & 0x1f)?;
                buf.extend_from_slice(self.take(n)?);
            }
        } else {
            let n = self.len(info)?;
            buf.extend_from_slice(self.take(n)?);
        }
        Ok(if major == 3 {
            String::from_utf8(buf).map_err(|_| bad("text is not UTF-8"))?
        } else {
            String::from_utf8_lossy(&buf).into_owned()
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(bad("nested too deeply"));
        }
        let b = self.byte()?;
        let (major, info) = (b >> 5, b & 0x1f);
        match major {
            0 => Ok(Value::from(self.uint(info)?)),
            1 => {
                let n = self.uint(info)?;
                let i = i64::try_from(n).map_err(|_| bad("negative integer out of range"))?;
                Ok(Value::from(-1 - i))
            }
            2 | 3 => Ok(Value::String(self.string(major, info)?)),
            4 => {
                let mut a = Vec::new();
                if info == 31 {
                    while self.data.get(self.pos) != Some(&0xff) {
                        a.push(self.value(depth + 1)?);
                    }
                    self.pos += 1;
                } else {
                    for _ in 0..self.len(info)? {
                        a.push(self.value(depth + 1)?);
                    }
                }
                Ok(Value::Array(a))
            }
            5 => {
                let mut m = Map::new();
                let indefinite = info == 31;
                let count = if indefinite {
                    usize::MAX
                } else {
                    self.len(info)?
                };
                let mut i = 0;
                while i < count {
                    if indefinite && self.data.get(self.pos) == Some(&0xff) {
                        self.pos += 1;
                        break;
                    }
                    let key = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    let v = self.value(depth + 1)?;
                    m.insert(key, v);
                    i += 1;
                }
                Ok(Value::Object(m))
            }
            6 => {
                self.uint(info)?; // the tag: ignored
                self.value(depth + 1)
            }
            _ => match info {
                20 => Ok(Value::Bool(false)),
                21 => Ok(Value::Bool(true)),
                22 | 23 => Ok(Value::Null),
                25 => {
                    let h = u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| bad("f16"))?);
                    Ok(float(half(h)))
                }
                26 => {
                    let f = f32::from_be_bytes(self.take(4)?.try_into().map_err(|_| bad("f32"))?);
                    Ok(float(f64::from(f)))
                }
                27 => {
                    let f = f64::from_be_bytes(self.take(8)?.try_into().map_err(|_| bad("f64"))?);
                    Ok(float(f))
                }
                _ => Err(bad("unsupported simple value")),
            },
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn half(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f64::from(h & 0x3ff);
    sign * match exp {
        0 => mant * 2f64.powi(-24),
        31 => f64::INFINITY,
        e => (1.0 + mant / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Decodes one CBOR data item (the whole input must be that item).
///
/// # Errors
/// [`Error::Protocol`] for malformed or truncated input.
pub fn decode(data: &[u8]) -> Result<Value> {
    let mut r = Reader { data, pos: 0 };
    let v = r.value(0)?;
    if r.pos != data.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(v)
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
}
