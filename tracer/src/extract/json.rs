//! Finding values in JSON bodies that may be cut short (we keep only a prefix): parse when
//! possible, else scan the text for `"key": value`.
use std::borrow::Cow;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Bodies of one exchange, each parsed at most once however many rules read it: as a
/// document for pointers, and in one streaming pass for the keys of every key rule.
#[derive(Default)]
pub struct Bodies {
    parsed: Vec<(&'static str, Option<Value>)>,
    /// Per source: (key, value) of every key wanted by any rule, in document order; `None`
    /// when the body is not one complete JSON value.
    keyed: Vec<(&'static str, KeyedValues)>,
}

type KeyedValues = Option<Vec<(usize, String)>>;

impl Bodies {
    /// Values of `keys` (a subset of `all_keys`, every key any rule looks for in
    /// `source`) in `text`, in document order; the body is read once for all of them.
    /// `None` when `text` is not one complete JSON value.
    pub fn values_of(
        &mut self,
        source: &'static str,
        text: &str,
        all_keys: &[String],
        keys: &[String],
    ) -> Option<Vec<String>> {
        let index = match self.keyed.iter().position(|(s, _)| *s == source) {
            Some(index) => index,
            None => {
                self.keyed.push((source, keyed_values(text, all_keys)));
                self.keyed.len() - 1
            }
        };
        let pairs = self.keyed[index].1.as_ref()?;
        Some(
            pairs
                .iter()
                .filter(|(key, _)| keys.contains(&all_keys[*key]))
                .map(|(_, value)| value.clone())
                .collect(),
        )
    }

    /// The parsed body of `source`, or None if it is not (complete) JSON.
    pub fn parsed(&mut self, source: &'static str, text: &str) -> Option<&Value> {
        let index = match self.parsed.iter().position(|(s, _)| *s == source) {
            Some(index) => index,
            None => {
                self.parsed.push((source, serde_json::from_str(text).ok()));
                self.parsed.len() - 1
            }
        };
        self.parsed[index].1.as_ref()
    }
}

/// Whether `text` may hold the object key `key`: it does not when the key's text is absent
/// and no `\u` escape could spell it otherwise. Lets a body that names none of a rule's
/// keys go unparsed.
pub fn may_hold(text: &str, key: &str) -> bool {
    text.contains(key) || text.contains("\\u")
}

/// The key a JSON pointer ends in; empty (ruling nothing out) when it has escapes (`~1`
/// for `/`, `~0` for `~`).
pub fn last_segment(pointer: &str) -> &str {
    let last = pointer.rsplit('/').next().unwrap_or(pointer);
    if last.contains('~') {
        ""
    } else {
        last
    }
}

/// The value at a JSON pointer (`/order/id`).
pub fn pointer_in(value: &Value, pointer: &str) -> Option<String> {
    scalar(value.pointer(pointer)?)
}

/// Values of `keys` at any depth, in document order; `None` when `text` is not one
/// complete JSON value (a cut prefix: see `scan`).
#[cfg(test)]
pub fn keys_in(text: &str, keys: &[String]) -> Option<Vec<String>> {
    let pairs = keyed_values(text, keys)?;
    Some(pairs.into_iter().map(|(_, value)| value).collect())
}

/// (index in `keys`, value) of every string or number under one of `keys`, at any depth,
/// in document order: read in one pass over the text without building the document (no
/// map, no string but the values found).
fn keyed_values(text: &str, keys: &[String]) -> KeyedValues {
    let mut found = Vec::new();
    let mut reader = serde_json::Deserializer::from_str(text);
    Walk {
        keys,
        found: &mut found,
        wanted: None,
    }
    .deserialize(&mut reader)
    .ok()?;
    reader.end().ok()?;
    Some(found)
}

/// A value being read: `wanted` when its key is one of `keys` (a string or number is then
/// a value found under that key); objects and arrays are walked either way.
struct Walk<'a> {
    keys: &'a [String],
    found: &'a mut Vec<(usize, String)>,
    wanted: Option<usize>,
}

impl Walk<'_> {
    fn found(self, value: impl FnOnce() -> Option<String>) {
        if let Some(key) = self.wanted {
            if let Some(value) = value() {
                self.found.push((key, value));
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        self.found(|| Some(value.to_owned()).filter(|v| !v.is_empty()));
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        self.found(|| Some(value.to_string()));
        Ok(())
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        self.found(|| Some(value.to_string()));
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        // Written as serde_json writes a number it read.
        self.found(|| serde_json::Number::from_f64(value).map(|n| n.to_string()));
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            let wanted = self.keys.iter().position(|k| *k == key);
            map.next_value_seed(Walk {
                keys: self.keys,
                found: &mut *self.found,
                wanted,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items
            .next_element_seed(Walk {
                keys: self.keys,
                found: &mut *self.found,
                wanted: None,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// An object key, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(reader: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        reader.deserialize_str(KeyVisitor)
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// For bodies that do not parse (a truncated prefix): `"key"\s*:\s*("string"|number)`
/// for any of `keys`, in text order.
pub fn scan(body: &str, keys: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = body.as_bytes();
    let mut at = 0;
    while let Some(pos) = body[at..].find('"') {
        let start = at + pos + 1;
        let Some(len) = body[start..].find('"') else {
            break;
        };
        let key = &body[start..start + len];
        at = start + len + 1;
        if !keys.iter().any(|k| k == key) {
            continue;
        }
        let mut i = at;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'"') {
            if let Some(end) = body[i + 1..].find('"') {
                let value = &body[i + 1..i + 1 + end];
                if !value.is_empty() {
                    found.push(value.to_owned());
                }
                at = i + 2 + end;
            }
        } else {
            let end = body[i..]
                .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                .map_or(body.len(), |e| i + e);
            if end > i {
                found.push(body[i..end].to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_pointer(body: &str, pointer: &str) -> Option<String> {
        pointer_in(&serde_json::from_str(body).ok()?, pointer)
    }

    fn by_key(body: &str, keys: &[String]) -> Vec<String> {
        keys_in(body, keys).unwrap_or_else(|| scan(body, keys))
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_keys_at_any_depth_and_numbers() {
        let body = r#"{"customer":{"userId":77},"items":[{"order_id":"A-1"}],"order_id":"A-2"}"#;
        assert_eq!(by_key(body, &keys(&["order_id"])), vec!["A-1", "A-2"]);
        assert_eq!(by_key(body, &keys(&["userId"])), vec!["77"]);
        assert_eq!(by_pointer(body, "/customer/userId").as_deref(), Some("77"));
    }

    #[test]
    fn a_body_is_ruled_out_only_when_no_spelling_of_the_key_is_in_it() {
        let body = r#"{"customer":{"userId":77}}"#;
        assert!(may_hold(body, "userId"));
        assert!(!may_hold(body, "order_id"));
        // serde_json reads "order\u005fid" as order_id: an escape keeps the body in.
        let escaped = r#"{"order\u005fid":"A-1"}"#;
        assert!(may_hold(escaped, "order_id"));
        assert_eq!(by_key(escaped, &keys(&["order_id"])), vec!["A-1"]);
        assert_eq!(last_segment("/order/id"), "id");
        assert_eq!(last_segment("/a~1b"), "");
        assert!(may_hold(body, last_segment("/a~1b")));
    }

    #[test]
    fn keys_are_found_in_document_order_with_every_duplicate_and_numbers_as_read() {
        let body = r#"{"status":"PAID","order":{"status":"NEW","id":[1,{"status":2.5}]},
            "status":"" ,"x":{"status":{"status":-3}},"status":true,"status":1e3}"#;
        assert_eq!(
            keys_in(body, &keys(&["status"])).unwrap(),
            vec!["PAID", "NEW", "2.5", "-3", "1000.0"]
        );
        // Not one complete value: left to `scan`.
        assert_eq!(keys_in(r#"{"status":"PAID""#, &keys(&["status"])), None);
        assert_eq!(keys_in(r#"{"a":1} {"b":2}"#, &keys(&["a"])), None);
        assert_eq!(keys_in("[]", &keys(&["a"])), Some(vec![]));
    }

    #[test]
    fn truncated_bodies_are_scanned() {
        let body = r#"{"order_id": "ORD-9", "model": "aGVsbG8gd29ybGQ="#;
        assert_eq!(by_key(body, &keys(&["order_id"])), vec!["ORD-9"]);
        assert_eq!(
            by_key(r#"{"orderId" : 1234, "x"#, &keys(&["orderId"])),
            vec!["1234"]
        );
    }
}
