//! Finding values in JSON bodies that may be cut short (we keep only a prefix): parse when
//! possible, else scan the text for `"key": value`.
use serde_json::Value;

/// Bodies of one exchange, each parsed at most once however many rules read it.
#[derive(Default)]
pub struct Bodies {
    parsed: Vec<(&'static str, Option<Value>)>,
}

impl Bodies {
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

/// Values of `key` at any depth, in document order.
pub fn keys_in(value: &Value, keys: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, keys, &mut found);
    found
}

fn walk(value: &Value, keys: &[String], found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if keys.iter().any(|key| key == k) {
                    if let Some(s) = scalar(v) {
                        found.push(s);
                    }
                }
                walk(v, keys, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, keys, found)),
        _ => {}
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
        match serde_json::from_str::<Value>(body) {
            Ok(value) => keys_in(&value, keys),
            Err(_) => scan(body, keys),
        }
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
    fn truncated_bodies_are_scanned() {
        let body = r#"{"order_id": "ORD-9", "model": "aGVsbG8gd29ybGQ="#;
        assert_eq!(by_key(body, &keys(&["order_id"])), vec!["ORD-9"]);
        assert_eq!(
            by_key(r#"{"orderId" : 1234, "x"#, &keys(&["orderId"])),
            vec!["1234"]
        );
    }
}
