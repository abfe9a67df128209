//! Canonical bytes: the one byte form of a value that gets signed or hashed.
//!
//! Canonical JSON here is: object keys sorted by their UTF-8 bytes, no whitespace, strings
//! escaped as `serde_json` escapes them, integers in decimal, and **no floating-point numbers**
//! (their textual form is where canonical-JSON schemes disagree; nothing we sign needs one).
//! The sort is done here, not left to `serde_json::Map`, so it holds even if some crate in the
//! tree turns on `serde_json`'s `preserve_order` feature.
//!
//! Verify against the JSON value *as received* (`serde_json::Value`), not against a struct it
//! was parsed into: a struct drops unknown fields and fills defaults, so its re-serialisation
//! could differ from what was signed.

use serde::Serialize;
use serde_json::Value;

use super::digest::Digest;

/// A value that has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// A floating-point number, at the given JSON path.
    #[error("{path} is a floating-point number ({number}); signed values hold integers and strings only")]
    Float {
        /// Where the number sits, e.g. `$.stats.rate`.
        path: String,
        /// The number as written.
        number: String,
    },
    /// The value did not serialise to JSON.
    #[error("the value cannot be written as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Canonical JSON bytes of any serialisable value.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    canonical_json_value(&serde_json::to_value(value)?)
}

/// Canonical JSON bytes of a JSON value.
pub fn canonical_json_value(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out, &mut String::from("$"))?;
    Ok(out)
}

/// SHA-256 of the canonical JSON of a value: the digest an approval signs, for example.
pub fn canonical_digest<T: Serialize + ?Sized>(value: &T) -> Result<Digest, CanonicalError> {
    Ok(Digest::of(&to_canonical_json(value)?))
}

fn write_value(value: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            if number.is_f64() {
                return Err(CanonicalError::Float {
                    path: path.clone(),
                    number: number.to_string(),
                });
            }
            out.extend_from_slice(number.to_string().as_bytes());
        }
        Value::String(text) => write_string(text, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out)?;
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(key);
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(text: &str, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    serde_json::to_writer(&mut *out, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_whitespace_dropped() {
        let value = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "d"}});
        assert_eq!(
            canonical_json_value(&value).unwrap(),
            br#"{"a":{"c":"d","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn re_serialising_a_parsed_value_gives_the_same_bytes() {
        let value =
            json!({"user": "bob@contoso.com", "n": -7, "big": u64::MAX, "s": "é\n\"q\"\u{1}"});
        let bytes = canonical_json_value(&value).unwrap();
        let reparsed: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(canonical_json_value(&reparsed).unwrap(), bytes);
        // A pretty-printed copy with the keys in another order is the same value.
        let pretty = "{\n  \"s\": \"é\\n\\\"q\\\"\\u0001\",\n  \"big\": 18446744073709551615,\n  \"n\": -7, \"user\": \"bob@contoso.com\"\n}";
        let other: Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(canonical_json_value(&other).unwrap(), bytes);
    }

    #[test]
    fn a_struct_and_its_json_value_have_one_form() {
        #[derive(Serialize)]
        struct Request {
            user: &'static str,
            index: u64,
        }
        let request = Request {
            user: "bob@contoso.com",
            index: 4,
        };
        assert_eq!(
            to_canonical_json(&request).unwrap(),
            canonical_json_value(&json!({"index": 4, "user": "bob@contoso.com"})).unwrap()
        );
        assert_eq!(
            canonical_digest(&request).unwrap(),
            Digest::of(br#"{"index":4,"user":"bob@contoso.com"}"#)
        );
    }

    #[test]
    fn any_changed_field_changes_the_bytes() {
        let base = json!({"user": "bob@contoso.com", "index": 4, "flags": [true, false]});
        let changed = [
            json!({"user": "bob@contoso.co", "index": 4, "flags": [true, false]}),
            json!({"user": "bob@contoso.com", "index": 5, "flags": [true, false]}),
            json!({"user": "bob@contoso.com", "index": 4, "flags": [false, true]}),
            json!({"user": "bob@contoso.com", "index": 4, "flags": [true, false], "x": null}),
            json!({"user": "bob@contoso.com", "index": "4", "flags": [true, false]}),
        ];
        let base_bytes = canonical_json_value(&base).unwrap();
        for value in changed {
            assert_ne!(canonical_json_value(&value).unwrap(), base_bytes, "{value}");
        }
    }

    #[test]
    fn floats_are_refused_with_their_path() {
        let error = canonical_json_value(&json!({"stats": {"rate": [1, 2.5]}})).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("$.stats.rate[1]"), "{message}");
        assert!(message.contains("2.5"), "{message}");
    }
}
