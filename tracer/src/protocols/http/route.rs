//! Templating concrete paths and names so only their structure leaves the agent:
//! `/orders/1234/files/9f8e…` and `/orders/77/files/…` share `/orders/{id}/files/{id}`,
//! and free text (`/customers/Jane%20Doe`) becomes `{value}`. An allow-list: a segment
//! is kept only when it reads as a fixed word of the API.

/// Templates a path. Segments that are numbers, UUIDs, hex strings or mixed alphanumerics
/// with digits become `{id}`; anything else that is not a plain word becomes `{value}`.
pub fn template(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    template_segments(path, '/')
}

/// Templates a name made of `separator`-joined segments (a routing key, a queue name).
pub fn template_segments(text: &str, separator: char) -> String {
    map_segments(text, separator, |segment| match classify(segment) {
        Segment::Word => segment,
        Segment::Id => "{id}",
        Segment::Value => "{value}",
    })
}

/// The `separator`-delimited segments of `text`, as `str::split` gives them, for an ASCII
/// separator: a byte scan per segment rather than a searcher's (paths and names have short
/// segments, and a span's path is split three or four times). A byte below 0x80 is never
/// inside a multi-byte character, so every cut is at a character boundary.
pub fn segments(text: &str, separator: char) -> impl Iterator<Item = &str> + Clone {
    assert!(separator.is_ascii(), "separators are ASCII: {separator:?}");
    let separator = separator as u8;
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == separator) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `text` with each `separator`-delimited segment replaced by what `f` makes of it.
fn map_segments<'a>(text: &'a str, separator: char, f: impl Fn(&'a str) -> &'a str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, segment) in segments(text, separator).enumerate() {
        if i > 0 {
            out.push(separator);
        }
        out.push_str(f(segment));
    }
    out
}

/// Templates the name of a declared object (a table, database, queue, exchange): names
/// like `orders_2024` or `queue1` stay, while free text becomes `{value}` and what can only
/// be an id (a number, a UUID, a long hex string, a long generated token such as
/// `amq.gen-JzTY20BRgKO-HjmUJj0wLg`) `{id}`.
pub fn template_object_name(text: &str, separator: char) -> String {
    map_segments(text, separator, |segment| match classify(segment) {
        Segment::Value => "{value}",
        Segment::Id if is_plain_id(segment) || segment.len() >= GENERATED => "{id}",
        _ => segment,
    })
}

/// What a path or name segment is, as far as export is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A fixed word of the API (`orders`, `v2`, `ring.stl`, `{id}`): kept.
    Word,
    /// Looks like an identifier (digits, UUID, hex, `ORD-17`): `{id}`.
    Id,
    /// Anything else (spaces, `%`, `@`, non-ASCII, long tokens): `{value}`.
    Value,
}

/// Longest segment kept as a word: longer runs of letters are tokens, not API words.
const MAX_WORD: usize = 32;

pub fn classify(segment: &str) -> Segment {
    let bytes = segment.as_bytes();
    if segment.is_empty() || is_placeholder(segment) {
        return Segment::Word;
    }
    let version = bytes.len() <= 4
        && bytes[0].eq_ignore_ascii_case(&b'v')
        && bytes.len() > 1
        && bytes[1..].iter().all(u8::is_ascii_digit);
    if version {
        return Segment::Word;
    }
    let shape = Shape::of(bytes);
    if bytes.len() <= MAX_WORD && shape.all(WORD) {
        return Segment::Word;
    }
    if shape.is_id_like(segment) {
        return Segment::Id;
    }
    // Short names with a digit that are no id (`b2b`, `p1`, `h2c`).
    if bytes.len() <= MAX_WORD && shape.all(NAME) {
        Segment::Word
    } else {
        Segment::Value
    }
}

/// Byte classes a segment is judged by, as bits of [`CLASSES`].
const WORD: u8 = 1; // letters and `-_.*`: a word of an API
const NAME: u8 = 2; // letters, digits and `-_.`: a name
const ID: u8 = 4; // letters, digits and `-_.#+~`: a business id's characters
const DIGIT: u8 = 8;
const HEX: u8 = 16;

/// Each byte's classes, so a segment is classified in one pass over its bytes.
static CLASSES: [u8; 256] = {
    let mut classes = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut bits = 0;
        if c.is_ascii_alphabetic() || matches!(c, b'-' | b'_' | b'.' | b'*') {
            bits |= WORD;
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.') {
            bits |= NAME;
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'#' | b'+' | b'~') {
            bits |= ID;
        }
        if c.is_ascii_digit() {
            bits |= DIGIT;
        }
        if c.is_ascii_hexdigit() {
            bits |= HEX;
        }
        classes[b] = bits;
        b += 1;
    }
    classes
};

/// The classes every byte of a segment has, and whether any byte is a digit.
#[derive(Clone, Copy)]
struct Shape {
    every: u8,
    has_digit: bool,
}

impl Shape {
    fn of(bytes: &[u8]) -> Self {
        let (mut every, mut any) = (u8::MAX, 0);
        for &b in bytes {
            let class = CLASSES[usize::from(b)];
            every &= class;
            any |= class;
        }
        Self {
            every,
            has_digit: any & DIGIT != 0,
        }
    }

    fn all(self, class: u8) -> bool {
        self.every & class != 0
    }

    /// A number, a UUID, a long hex string with a digit, or a business id (`ORD-0`,
    /// `A17-3`, `#1001`: a digit and some length, or an id marker in front).
    fn is_id_like(self, segment: &str) -> bool {
        let marked = segment.starts_with(['#', '+']);
        let mixed = self.has_digit && self.all(ID) && (segment.len() >= 4 || marked);
        self.all(DIGIT)
            || is_uuid(segment)
            || (self.all(HEX) && self.has_digit && segment.len() >= 12)
            || mixed
    }
}

/// `{id}`, `{order_id}`: a template's own placeholders.
fn is_placeholder(segment: &str) -> bool {
    segment.len() > 2
        && segment.starts_with('{')
        && segment.ends_with('}')
        && segment[1..segment.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Matches `path` against configured templates (`/orders/{order_id}/items`); the first
/// whose literal segments match wins.
pub fn match_template<'a>(path: &str, templates: &'a [String]) -> Option<&'a str> {
    templates.iter().map(String::as_str).find(|template| {
        // Segment by segment, as many on both sides; nothing collected.
        let (mut parts, mut segments) = (segments(template, '/'), segments(path, '/'));
        loop {
            match (parts.next(), segments.next()) {
                (None, None) => return true,
                (Some(p), Some(s))
                    if (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) || p == s => {}
                _ => return false,
            }
        }
    })
}

/// Mixed letters and digits this long in an object's name are generated, not chosen.
const GENERATED: usize = 16;

/// A number, a UUID or a long hex string: an id whatever it names.
fn is_plain_id(segment: &str) -> bool {
    let shape = Shape::of(segment.as_bytes());
    shape.all(DIGIT) || (shape.all(HEX) && segment.len() >= 12) || is_uuid(segment)
}

fn is_uuid(segment: &str) -> bool {
    segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_what_str_split_gives() {
        for text in [
            "",
            "/",
            "//",
            "/orders/17/items",
            "orders",
            "/a//b/",
            "ü/é/ß",
            "/€uro/x",
            "a.b..c.",
        ] {
            for separator in ['/', '.'] {
                let ours: Vec<&str> = segments(text, separator).collect();
                let theirs: Vec<&str> = text.split(separator).collect();
                assert_eq!(ours, theirs, "{text:?} split at {separator:?}");
            }
        }
    }

    /// The classification rules spelled out one test per pass, as they read before
    /// `Shape` folded them into one pass over the bytes.
    fn classify_spelled_out(segment: &str) -> Segment {
        let bytes = segment.as_bytes();
        if segment.is_empty() || is_placeholder(segment) {
            return Segment::Word;
        }
        if bytes.len() <= 4
            && bytes[0].eq_ignore_ascii_case(&b'v')
            && bytes.len() > 1
            && bytes[1..].iter().all(u8::is_ascii_digit)
        {
            return Segment::Word;
        }
        let word_char = |b: &u8| b.is_ascii_alphabetic() || matches!(b, b'-' | b'_' | b'.' | b'*');
        if bytes.len() <= MAX_WORD && bytes.iter().all(word_char) {
            return Segment::Word;
        }
        let all_digits = bytes.iter().all(u8::is_ascii_digit);
        let hex = bytes.iter().all(u8::is_ascii_hexdigit);
        let has_digit = bytes.iter().any(u8::is_ascii_digit);
        let id_chars = bytes.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'#' | b'+' | b'~')
        });
        let marked = segment.starts_with(['#', '+']);
        let mixed = has_digit && id_chars && (segment.len() >= 4 || marked);
        if all_digits || is_uuid(segment) || (hex && has_digit && segment.len() >= 12) || mixed {
            return Segment::Id;
        }
        let name_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if bytes.len() <= MAX_WORD && bytes.iter().all(name_char) {
            Segment::Word
        } else {
            Segment::Value
        }
    }

    #[test]
    fn one_pass_classification_agrees_with_the_rules_spelled_out() {
        // Every segment of up to four characters from an alphabet with one byte of each
        // class boundary, then longer ones around the length limits.
        let alphabet = [
            "a", "F", "g", "Z", "0", "9", "-", "_", ".", "*", "#", "+", "~", "{", "}", "%", " ",
            "@", "é", "/",
        ];
        let mut segments = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
            segments.extend(last.iter().cloned());
        }
        for length in [11, 12, 13, 31, 32, 33, 36, 40] {
            for fill in ["a", "A", "7", "f", "a7", "x-", "#1", "g1"] {
                segments.push(fill.repeat(length).chars().take(length).collect());
            }
        }
        segments.push("123e4567-e89b-12d3-a456-426614174000".into());
        segments.push("123e4567-e89b-12d3-a456-42661417400g".into());
        segments.push("{order_id}".into());
        for segment in &segments {
            assert_eq!(
                classify(segment),
                classify_spelled_out(segment),
                "{segment:?}"
            );
        }
        assert!(segments.len() > 150_000, "{}", segments.len());
    }

    #[test]
    fn id_like_segments_are_templated() {
        let cases = [
            ("/orders/1234", "/orders/{id}"),
            (
                "/orders/123e4567-e89b-12d3-a456-426614174000/files",
                "/orders/{id}/files",
            ),
            ("/blobs/9f8e7d6c5b4a39281706", "/blobs/{id}"),
            ("/health", "/health"),
            ("/users/alice/orders", "/users/alice/orders"),
            ("/", "/"),
            ("", "/"),
            ("/v2/calculate", "/v2/calculate"),
            ("/orders/ORD-0", "/orders/{id}"),
            ("/files/ring.stl", "/files/ring.stl"),
            ("/api/v10/orders", "/api/v10/orders"),
            ("/customers/Jane%20Doe", "/customers/{value}"),
            ("/users/anna@example.com/cart", "/users/{value}/cart"),
            (
                "/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
                "/reset/{id}",
            ),
            ("/keys/abcdefghijklmnopqrstuvwxyzabcdefgh", "/keys/{value}"),
            ("/orders/{id}", "/orders/{id}"),
            ("/p1", "/p1"),
            ("/b2b/ORD-7/calculate", "/b2b/{id}/calculate"),
        ];
        for (path, route) in cases {
            assert_eq!(template(path), route, "{path}");
        }
    }

    #[test]
    fn configured_templates_win_when_literals_match() {
        let templates = vec![
            "/orders/{order_id}/files/{file}".to_owned(),
            "/orders/{order_id}".to_owned(),
        ];
        assert_eq!(
            match_template("/orders/A-17/files/model.stl", &templates),
            Some("/orders/{order_id}/files/{file}")
        );
        assert_eq!(
            match_template("/orders/A-17", &templates),
            Some("/orders/{order_id}")
        );
        assert_eq!(match_template("/customers/1", &templates), None);
        // Segment counts must agree; a placeholder takes no empty segment.
        assert_eq!(match_template("/orders/A-17/files", &templates), None);
        assert_eq!(match_template("/orders/A-17/", &templates), None);
        assert_eq!(match_template("/orders/", &templates), None);
        assert_eq!(match_template("/orders/A-17/files/x/y", &templates), None);
        assert_eq!(match_template("/orders/A-17", &[]), None);
    }

    #[test]
    fn routing_keys_keep_words_only() {
        assert_eq!(
            template_segments("orders.ORD-17.submitted", '.'),
            "orders.{id}.submitted"
        );
        assert_eq!(template_segments("mail.Jane Doe", '.'), "mail.{value}");
        assert_eq!(template_segments("amq.default", '.'), "amq.default");
        assert_eq!(
            template_object_name("shop.orders_2024", '.'),
            "shop.orders_2024"
        );
        assert_eq!(template_object_name("mes.queue1", '.'), "mes.queue1");
        assert_eq!(
            template_object_name("amq.gen-JzTY20BRgKO-HjmUJj0wLg", '.'),
            "amq.{id}"
        );
        assert_eq!(template_object_name("Jane Doe", '.'), "{value}");
        assert_eq!(
            template_object_name("replies.123e4567-e89b-12d3-a456-426614174000", '.'),
            "replies.{id}"
        );
    }
}
