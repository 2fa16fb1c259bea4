//! Identifiers in a request or message: values that can tie an outgoing call to the one
//! incoming request it serves, in services where a thread says nothing about that (event
//! loops, thread pools). Protocols collect them; the correlator compares them. They are
//! kept as 64-bit hashes (never exported, cheap to keep while a request is open).

/// The hash of one identifier.
pub type Identifier = u64;

/// At most this many per exchange: enough for a path, a few headers and a body prefix.
pub const MAX_PER_EXCHANGE: usize = 32;

const MIN_LEN: usize = 4;
const MAX_LEN: usize = 64;
/// Numbers with fewer digits (versions, counts, prices, ports) are too common to say
/// which request is meant.
const MIN_NUMBER_DIGITS: usize = 5;

/// What a byte is to the token scanner: outside tokens, or a letter (or `-`, `_`), a
/// digit or a `.` inside one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Separator,
    Letter,
    Digit,
    Dot,
}

const CLASSES: [Class; 256] = {
    let mut table = [Class::Separator; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = if byte.is_ascii_digit() {
            Class::Digit
        } else if byte.is_ascii_alphabetic() || byte == b'-' || byte == b'_' {
            Class::Letter
        } else if byte == b'.' {
            Class::Dot
        } else {
            Class::Separator
        };
        b += 1;
    }
    table
};

/// Whether a token of `len` bytes, `digits` of them digits and `letters` letters (or `-`,
/// `_`), can identify one request: 4 to 64 bytes with a digit, and not a short number.
/// Words without digits (`orders`, `price`, `application`) never are.
fn identifies(len: usize, digits: usize, letters: usize) -> bool {
    let numeric = letters == 0;
    (MIN_LEN..=MAX_LEN).contains(&len) && digits > 0 && !(numeric && digits < MIN_NUMBER_DIGITS)
}

/// FNV-1a: the same token hashes the same on every connection and every run.
fn hash(token: &[u8]) -> Identifier {
    token.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Adds the identifiers found in `text` to `out` (each once, at most
/// [`MAX_PER_EXCHANGE`] in all). Every identifier holds a digit, so the scan jumps from
/// digit to digit (eight bytes at a time) and looks only at the tokens around them: most
/// bytes of a body (keys, words, punctuation) are passed over, not classified one by one.
pub fn collect(text: &[u8], out: &mut Vec<Identifier>) {
    let is_token = |b: u8| CLASSES[usize::from(b)] != Class::Separator;
    // Everything before `from` is done; `text[from - 1]` is not part of a token.
    let mut from = 0;
    while let Some(digit) = next_digit(text, from) {
        let start = text[from..digit]
            .iter()
            .rposition(|b| !is_token(*b))
            .map_or(from, |separator| from + separator + 1);
        let end = text[digit..]
            .iter()
            .position(|b| !is_token(*b))
            .map_or(text.len(), |separator| digit + separator);
        let token = &text[start..end];
        let (mut digits, mut letters) = (0, 0);
        for b in token {
            match CLASSES[usize::from(*b)] {
                Class::Digit => digits += 1,
                Class::Letter => letters += 1,
                Class::Dot | Class::Separator => {}
            }
        }
        if identifies(token.len(), digits, letters) {
            if out.len() >= MAX_PER_EXCHANGE {
                return;
            }
            let h = hash(token);
            if !out.contains(&h) {
                out.push(h);
            }
        }
        from = end + 1;
    }
}

/// The first ASCII digit in `text` at or after `from`, eight bytes at a time.
fn next_digit(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 128;
    let rest = text.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    for (index, chunk) in chunks.by_ref().enumerate() {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // The high bit of each byte strictly between b'/' and b':' (Bit Twiddling Hacks'
        // `hasbetween`: per byte, no carry between bytes; bytes of 128 and up excluded).
        let low = x & (ONES * 127);
        let found = (ONES * (127 + u64::from(b':')) - low)
            & !x
            & (low + ONES * (127 - u64::from(b'/')))
            & HIGH;
        if found != 0 {
            return Some(from + index * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(u8::is_ascii_digit)
        .map(|at| from + rest.len() - tail.len() + at)
}

/// Headers whose values are evidence. Standard headers say nothing about which request
/// is served (and `Host`, `User-Agent` are the same for every call), credentials are never
/// read, and trace context is evidence of its own.
pub fn header_is_evidence(name: &str) -> bool {
    const NOT_EVIDENCE: &[&str] = &[
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "authorization",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "date",
        "expect",
        "host",
        "if-modified-since",
        "if-none-match",
        "keep-alive",
        "origin",
        "pragma",
        "proxy-authorization",
        "proxy-connection",
        "referer",
        "server",
        "set-cookie",
        "te",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-api-key",
        "x-forwarded-for",
        "x-real-ip",
    ];
    !NOT_EVIDENCE
        .iter()
        .any(|standard| standard.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule on a whole token.
    fn is_identifier(token: &[u8]) -> bool {
        let class = |wanted| {
            token
                .iter()
                .filter(|b| CLASSES[usize::from(**b)] == wanted)
                .count()
        };
        identifies(token.len(), class(Class::Digit), class(Class::Letter))
    }

    fn found(text: &str) -> usize {
        let mut out = Vec::new();
        collect(text.as_bytes(), &mut out);
        out.len()
    }

    #[test]
    fn ids_are_identifiers_words_and_small_numbers_are_not() {
        for id in [
            "ORD-17",
            "REQ-5821-07",
            "123456",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        ] {
            assert!(is_identifier(id.as_bytes()), "{id}");
        }
        for not in [
            "orders",
            "price",
            "1001",
            "3.11",
            "1.2.3",
            "v1",
            "application",
            "HTTP",
        ] {
            assert!(!is_identifier(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn a_path_a_query_and_a_json_body_give_their_ids_once() {
        assert_eq!(found("/orders/ORD-17/items?page=2&ref=AB12C"), 2);
        assert_eq!(
            found(r#"{"item_id": "T-0042", "qty": 3, "again": "T-0042"}"#),
            1
        );
        assert_eq!(found("GET /price HTTP/1.1"), 0);
        let mut a = Vec::new();
        let mut b = Vec::new();
        collect(b"/work/T-0042", &mut a);
        collect(br#"{"item_id":"T-0042"}"#, &mut b);
        assert_eq!(a, b, "the same id hashes the same wherever it is");
    }

    /// The rule written plainly (split into tokens, test each): the digit-to-digit scanner
    /// must find the same identifiers in the same order.
    fn by_tokens(text: &[u8]) -> Vec<Identifier> {
        let mut out = Vec::new();
        let token_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        for token in text.split(|b| !token_byte(b)) {
            if is_identifier(token) && !out.contains(&hash(token)) && out.len() < MAX_PER_EXCHANGE {
                out.push(hash(token));
            }
        }
        out
    }

    #[test]
    fn the_scanner_finds_what_the_token_rule_finds() {
        let long = "A1".repeat(32);
        let many: String = (0..40).map(|n| format!("id-{n:04} ")).collect();
        for text in [
            "",
            "ORD-17",
            "/orders/ORD-17",
            "ORD-17/",
            "..12345..",
            "12345",
            "1234",
            "1.2.3.4.5",
            "3.11",
            "a1b2",
            "a1b",
            long.as_str(),
            &format!("{long}x"),
            &format!("/{long}/{long}x/"),
            r#"{"order":"REQ-5821-07","n":123456,"v":"1.2"}"#,
            r"\u00e9T-0042\u00e9",
            many.as_str(),
            r"ünïcödé-123 ID_9\xff99",
        ] {
            let mut found = Vec::new();
            collect(text.as_bytes(), &mut found);
            assert_eq!(found, by_tokens(text.as_bytes()), "{text:?}");
        }
    }

    /// Random texts of id-like pieces, words, numbers, punctuation and non-ASCII bytes:
    /// the scanner and the plain token rule agree on every one.
    #[test]
    fn the_scanner_agrees_with_the_token_rule_on_random_texts() {
        let pieces: [&[u8]; 12] = [
            b"ORD-",
            b"17",
            b"12345",
            b"a",
            b"x.y",
            b"_",
            b"/",
            b"\"",
            b" ",
            b"\xc3\xa9",
            b"9",
            b"{\"k\":",
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..2_000 {
            let mut text = Vec::new();
            for _ in 0..(seed % 60) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.extend_from_slice(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let mut found = Vec::new();
            collect(&text, &mut found);
            assert_eq!(
                found,
                by_tokens(&text),
                "round {round}: {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn the_digit_finder_finds_each_digit_and_nothing_else() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for from in 0..bytes.len() {
            let expected = bytes[from..]
                .iter()
                .position(u8::is_ascii_digit)
                .map(|at| from + at);
            assert_eq!(next_digit(&bytes, from), expected, "from {from}");
        }
        let text = b"abcdefghijklmnopqrstuvwxyz/:~\x7f\xff 9";
        assert_eq!(next_digit(text, 0), Some(text.len() - 1));
        assert_eq!(next_digit(b"", 0), None);
        assert_eq!(next_digit(b"12", 2), None);
    }

    #[test]
    fn credentials_and_standard_headers_are_never_evidence() {
        for name in [
            "Cookie",
            "authorization",
            "Host",
            "User-Agent",
            "traceparent",
        ] {
            assert!(!header_is_evidence(name), "{name}");
        }
        assert!(header_is_evidence("X-Order-Id"));
    }
}
