//! Finding values in JSON bodies that may be cut short (we keep only a prefix): parse when
//! possible, else scan the text for `"key": value`.
use std::borrow::Cow;

use memchr::memmem;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Every key the key rules look for in one source, each with a searcher made once (SIMD
/// `memmem`), to tell which of them (or a `\u` escape, which could spell any) a body
/// contains.
pub struct KeyFinder {
    keys: Vec<String>,
    finders: Vec<memmem::Finder<'static>>,
}

/// The bit of "a `\u` escape is in the text" in `KeyFinder::present`.
const ESCAPE: u64 = 1 << 63;

impl KeyFinder {
    pub fn new(keys: Vec<String>) -> Self {
        let finders = keys
            .iter()
            .map(String::as_str)
            .chain(["\\u"])
            .map(|key| memmem::Finder::new(key).into_owned())
            .collect();
        Self { keys, finders }
    }

    /// Bit `i` for `keys[i]` found in `text` (every bit beyond 63 keys), `ESCAPE` for `\u`.
    fn present(&self, text: &str) -> u64 {
        if self.keys.len() >= 63 {
            return u64::MAX;
        }
        let escape = self.keys.len();
        let mut bits = 0;
        for (index, finder) in self.finders.iter().enumerate() {
            if finder.find(text.as_bytes()).is_some() {
                bits |= if index == escape { ESCAPE } else { 1 << index };
            }
        }
        bits
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }
}

/// What one read of a body found: the keys it contains, and (key, value) of every key
/// wanted by any rule in document order (`None` when it is not one complete JSON value;
/// read only once a rule's key is present).
struct Keyed {
    present: u64,
    values: Option<Option<Vec<(usize, String)>>>,
}

/// Bodies of one exchange, each parsed at most once however many rules read it: as a
/// document for pointers, and in one streaming pass for the keys of every key rule.
#[derive(Default)]
pub struct Bodies {
    parsed: Vec<(&'static str, Option<Value>)>,
    keyed: Vec<(&'static str, Keyed)>,
}

/// The entry of `source` in a short list kept by source, made by `make` if it has none.
pub fn by_source<'a, T>(
    list: &'a mut Vec<(&'static str, T)>,
    source: &'static str,
    make: impl FnOnce() -> T,
) -> &'a mut T {
    let index = match list.iter().position(|(s, _)| *s == source) {
        Some(index) => index,
        None => {
            list.push((source, make()));
            list.len() - 1
        }
    };
    &mut list[index].1
}

impl Bodies {
    fn keyed(&mut self, source: &'static str, text: &str, finder: &KeyFinder) -> &mut Keyed {
        by_source(&mut self.keyed, source, || Keyed {
            present: finder.present(text),
            values: None,
        })
    }

    /// Whether `text` may hold one of `keys` (see `may_hold`); the body is searched once
    /// for every key of its source.
    pub fn may_hold_any(
        &mut self,
        source: &'static str,
        text: &str,
        finder: &KeyFinder,
        keys: &[String],
    ) -> bool {
        let present = self.keyed(source, text, finder).present;
        present & ESCAPE != 0
            || keys.iter().any(|key| {
                finder
                    .index(key)
                    .is_none_or(|i| present & (1 << i.min(62)) != 0)
            })
    }

    /// Values of `keys` (among `finder`'s) in `text`, in document order; the body is read
    /// once for all of its source's keys. `None` when `text` is not one complete JSON value.
    pub fn values_of(
        &mut self,
        source: &'static str,
        text: &str,
        finder: &KeyFinder,
        keys: &[String],
    ) -> Option<Vec<String>> {
        let keyed = self.keyed(source, text, finder);
        let pairs = keyed
            .values
            .get_or_insert_with(|| keyed_values(text, &finder.keys))
            .as_ref()?;
        Some(
            pairs
                .iter()
                .filter(|(key, _)| keys.contains(&finder.keys[*key]))
                .map(|(_, value)| value.clone())
                .collect(),
        )
    }

    /// The parsed body of `source`, or None if it is not (complete) JSON.
    pub fn parsed(&mut self, source: &'static str, text: &str) -> Option<&Value> {
        by_source(&mut self.parsed, source, || serde_json::from_str(text).ok()).as_ref()
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

/// (index in `keys`, value) of every string or number under one of `keys`, at any depth,
/// in document order: read in one pass over the text without building the document (no
/// map, no string but the values found).
fn keyed_values(text: &str, keys: &[String]) -> Option<Vec<(usize, String)>> {
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

    /// Values of `keys` at any depth, in document order; `None` when `text` is not one
    /// complete JSON value (a cut prefix: see `scan`).
    fn keys_in(text: &str, keys: &[String]) -> Option<Vec<String>> {
        let pairs = keyed_values(text, keys)?;
        Some(pairs.into_iter().map(|(_, value)| value).collect())
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
    fn one_search_tells_which_keys_a_body_may_hold() {
        let finder = KeyFinder::new(keys(&["order_id", "status", "order_status"]));
        let mut bodies = Bodies::default();
        // "order_status" holds "status" too: both are found (overlapping matches).
        let body = r#"{"order_status":"PAID"}"#;
        assert!(bodies.may_hold_any("b", body, &finder, &keys(&["status"])));
        assert!(!bodies.may_hold_any("b", body, &finder, &keys(&["order_id"])));
        assert_eq!(
            bodies.values_of("b", body, &finder, &keys(&["order_status"])),
            Some(vec!["PAID".to_owned()])
        );
        assert_eq!(
            bodies.values_of("b", body, &finder, &keys(&["status"])),
            Some(vec![])
        );
        // An escape could spell any key: the body stays in.
        let escaped = r#"{"order\u005fid":"A-1"}"#;
        assert!(bodies.may_hold_any("e", escaped, &finder, &keys(&["order_id"])));
        assert_eq!(
            bodies.values_of("e", escaped, &finder, &keys(&["order_id"])),
            Some(vec!["A-1".to_owned()])
        );
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
