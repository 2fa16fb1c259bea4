//! Every occurrence of a known order or user id inside an exported string, replaced by
//! its pseudonym. Ids may begin or end with punctuation (`+4915112345678`, `#1001`), so
//! a match needs a boundary only where the id itself has a word character at its edge.

use std::sync::Arc;

/// An id and what stands for it in exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownId {
    pub raw: String,
    pub pseudonym: String,
    /// The id as it appears in a URL, where that differs from `raw` (made once per span,
    /// not once per attribute looked at).
    encoded: Option<String>,
}

impl KnownId {
    pub fn new(raw: String, pseudonym: String) -> Self {
        let encoded = Some(percent_encode(&raw)).filter(|e| *e != raw);
        Self {
            raw,
            pseudonym,
            encoded,
        }
    }

    /// The forms the id can take in a string: as is, and percent-encoded.
    fn forms(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.raw.as_str()).chain(self.encoded.as_deref())
    }
}

/// Whether any form of any of `ids` occurs in `value` at all (bounded or not): when none
/// does, `replace_ids` leaves it alone, and cleaning it depends on the value only.
pub fn any_in(value: &str, ids: &[Arc<KnownId>]) -> bool {
    ids.iter()
        .filter(|id| !id.raw.is_empty())
        .any(|id| id.forms().any(|form| value.contains(form)))
}

/// Replaces every bounded occurrence of each id (and of its percent-encoded form) in
/// `value`; longer ids first, so an id inside another is not split. Returns whether
/// anything changed.
pub fn replace_ids(value: &mut String, ids: &[Arc<KnownId>]) -> bool {
    let mut changed = false;
    for id in ids {
        if id.raw.is_empty() {
            continue;
        }
        for form in id.forms() {
            changed |= replace_bounded(value, form, &id.pseudonym);
        }
    }
    changed
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn replace_bounded(value: &mut String, needle: &str, with: &str) -> bool {
    if !value.contains(needle) {
        return false;
    }
    let first_is_word = needle.chars().next().is_some_and(is_word);
    let last_is_word = needle.chars().next_back().is_some_and(is_word);
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    let mut consumed = String::new();
    let mut changed = false;
    while let Some(at) = rest.find(needle) {
        let before = rest[..at]
            .chars()
            .next_back()
            .or_else(|| consumed.chars().next_back());
        let after = rest[at + needle.len()..].chars().next();
        let glued_before = first_is_word && before.is_some_and(is_word);
        let glued_after = last_is_word && after.is_some_and(is_word);
        let bounded = !(glued_before || glued_after);
        let (head, tail) = rest.split_at(at + needle.len());
        if bounded {
            out.push_str(&head[..at]);
            out.push_str(with);
            changed = true;
        } else {
            out.push_str(head);
        }
        consumed.clear();
        consumed.push_str(head);
        rest = tail;
    }
    out.push_str(rest);
    if changed {
        *value = out;
    }
    changed
}

/// The id as it appears in a URL (RFC 3986 unreserved characters kept).
fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str, pseudonym: &str) -> Arc<KnownId> {
        Arc::new(KnownId::new(raw.into(), pseudonym.into()))
    }

    #[test]
    fn ids_are_replaced_with_boundaries_that_suit_their_edges() {
        let ids = [
            id("ORD-17", "P1"),
            id("+4915112345678", "P2"),
            id("#1001", "P3"),
        ];
        let cases = [
            ("/orders/ORD-17/files", "/orders/P1/files"),
            ("ORD-170 and XORD-17", "ORD-170 and XORD-17"),
            ("ORD-17,ORD-17", "P1,P1"),
            ("user +4915112345678 called", "user P2 called"),
            ("u=%2B4915112345678", "u=P2"),
            ("order #1001.", "order P3."),
            ("order#1001x", "order#1001x"),
            ("nothing here", "nothing here"),
        ];
        for (input, expected) in cases {
            let mut value = input.to_owned();
            replace_ids(&mut value, &ids);
            assert_eq!(value, expected, "{input}");
        }
    }
}
