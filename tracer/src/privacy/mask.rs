//! The second line of defence: personal data and secrets recognised inside values that
//! the allow-list lets out (free text such as status messages). E-mail addresses (also
//! internationalised), phone numbers, card numbers (Luhn-checked, so order numbers are left
//! alone), JWTs, labelled secrets (`api_key=…`, `"token": "…"`) and high-entropy tokens.
use std::sync::LazyLock;

use regex::Regex;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{L}\p{N}._%+-]+(?:@|%40)[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}")
        .unwrap()
});
/// International (`+49 151 …`, `0049…`), national with a trunk zero and a separator
/// (`0151 12345678`, `030/1234567`) and North American (`(555) 123 4567`, `555-123-4567`).
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    let sep = r"(?:[\s./-]|%20)";
    Regex::new(&format!(
        r"(?:(?:\+|%2B)|\b00)\d{{1,3}}{sep}?(?:\(?\d{{1,4}}\)?{sep}?){{2,5}}\d{{2,4}}|\(\d{{3}}\){sep}?\d{{3}}{sep}\d{{4}}|\b\d{{3}}[.-]\d{{3}}[.-]\d{{4}}\b|\b0\d{{2,4}}(?:[ /-]|%20)\d{{5,8}}\b"
    ))
    .unwrap()
});
/// Contiguous 13–19 digits, or the printed groupings 4-4-4-4(-3) and Amex 4-6-5 with
/// spaces, dashes, dots or plus signs; only Luhn-valid numbers are masked.
static CARD: LazyLock<Regex> = LazyLock::new(|| {
    let sep = r"(?:[ .+-]|%20)";
    Regex::new(&format!(
        r"\b(?:\d{{13,19}}|\d{{4}}{sep}\d{{4}}{sep}\d{{4}}{sep}\d{{4}}(?:{sep}\d{{3}})?|\d{{4}}{sep}\d{{6}}{sep}\d{{5}})\b"
    ))
    .unwrap()
});
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").unwrap()
});
/// A value after a key that names a secret: `api_key=…`, `token: …`, `"code":"…"`.
static LABELLED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(\b(?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|token|secret|client[_-]?secret|password|passwd|pwd|code|state|session[_-]?id|sig|signature|auth)(?:"?\s*[:=]\s*"?|%3D))([^\s&"',;]+)"#)
        .unwrap()
});
/// 20+ characters mixing upper case, lower case and digits: API keys, session ids.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[A-Za-z0-9_-]{20,}").unwrap());

pub const EMAIL_MASK: &str = "[email]";
pub const PHONE_MASK: &str = "[phone]";
pub const CARD_MASK: &str = "[card]";
pub const SECRET_MASK: &str = "[secret]";

/// The value with personal data and secrets replaced, or None if there was none. Each
/// pattern runs only where it could match: most values have none.
pub fn mask(value: &str) -> Option<String> {
    let seen = Seen::scan(value);
    let mut out: Option<String> = None;
    let current = |out: &Option<String>| out.clone().unwrap_or_else(|| value.to_owned());
    if seen.at || (seen.percent && value.contains("%40")) {
        replace(&mut out, &EMAIL, EMAIL_MASK, value);
    }
    // The shortest JWT the pattern takes has 13 characters.
    if seen.letters && value.len() >= 13 && value.contains("eyJ") {
        replace(&mut out, &JWT, SECRET_MASK, value);
    }
    if seen.separator && seen.letters && names_a_secret(value) {
        let text = current(&out);
        let masked = LABELLED.replace_all(&text, |caps: &regex::Captures<'_>| {
            // Already redacted (a query value), or masked by an earlier pattern.
            if caps[2] == *"REDACTED" || caps[2].starts_with('[') {
                caps[0].to_owned()
            } else {
                format!("{}{SECRET_MASK}", &caps[1])
            }
        });
        if masked != text {
            out = Some(masked.into_owned());
        }
    }
    let digits = seen.digits;
    if digits >= 13 {
        let text = current(&out);
        let masked = CARD.replace_all(&text, |caps: &regex::Captures<'_>| {
            let digits: String = caps[0].chars().filter(char::is_ascii_digit).collect();
            let before = &text[..caps.get(0).map_or(0, |m| m.start())];
            // No card number starts with 0; +49… and 0049… are phone numbers.
            let international_phone =
                before.ends_with('+') || before.ends_with("%2B") || caps[0].starts_with('0');
            if luhn(&digits) && !international_phone {
                CARD_MASK.to_owned()
            } else {
                caps[0].to_owned()
            }
        });
        if masked != text {
            out = Some(masked.into_owned());
        }
    }
    if digits >= 7 {
        replace(&mut out, &PHONE, PHONE_MASK, value);
    }
    if seen.letters && value.len() >= 20 && has_mixed_token(value) {
        let text = current(&out);
        let masked = TOKEN.replace_all(&text, |caps: &regex::Captures<'_>| {
            let token = &caps[0];
            let has = |f: fn(&u8) -> bool| token.as_bytes().iter().any(f);
            if has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit)
            {
                SECRET_MASK.to_owned()
            } else {
                token.to_owned()
            }
        });
        if masked != text {
            out = Some(masked.into_owned());
        }
    }
    out
}

/// What one pass over a value finds, to run only the patterns that could match.
struct Seen {
    at: bool,
    percent: bool,
    /// `=` or `:`, which every labelled secret has.
    separator: bool,
    letters: bool,
    digits: usize,
}

impl Seen {
    fn scan(value: &str) -> Self {
        let mut seen = Self {
            at: false,
            percent: false,
            separator: false,
            letters: false,
            digits: 0,
        };
        for &b in value.as_bytes() {
            match b {
                b'0'..=b'9' => seen.digits += 1,
                b'@' => seen.at = true,
                b'%' => seen.percent = true,
                b'=' | b':' => seen.separator = true,
                _ => seen.letters |= !b.is_ascii() || b.is_ascii_alphabetic(),
            }
        }
        seen
    }
}

/// Whether `value` has one of the words every `LABELLED` key contains (ASCII case
/// ignored): most values have none, and the regex is then not run.
fn names_a_secret(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.iter().enumerate().any(|(at, b)| {
        // Only the words that start with this byte are compared.
        let words: &[&[u8]] = match b.to_ascii_lowercase() {
            b'k' => &[b"key"],
            b't' => &[b"token"],
            b's' => &[b"secret", b"state", b"session", b"sig"],
            b'p' => &[b"passw", b"pwd"],
            b'c' => &[b"code"],
            b'a' => &[b"auth"],
            _ => return false,
        };
        words.iter().any(|word| {
            bytes[at..]
                .get(..word.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(word))
        })
    })
}

/// Whether `value` has a run of 20+ `[A-Za-z0-9_-]` mixing upper case, lower case and
/// digits, the only runs `TOKEN` masks.
fn has_mixed_token(value: &str) -> bool {
    let token_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
    value
        .as_bytes()
        .split(|b| !token_byte(b))
        .filter(|run| run.len() >= 20)
        .any(|run| {
            let has = |f: fn(&u8) -> bool| run.iter().any(f);
            has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit)
        })
}

fn replace(out: &mut Option<String>, pattern: &Regex, mask: &str, original: &str) {
    let text = out.as_deref().unwrap_or(original);
    if let std::borrow::Cow::Owned(masked) = pattern.replace_all(text, mask) {
        *out = Some(masked);
    }
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    (13..=19).contains(&digits.len()) && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_personal_data_and_secrets_and_leaves_ids_alone() {
        let cases = [
            (
                "mail anna.schmidt@example.com now",
                Some("mail [email] now"),
            ),
            ("email=anna%40example.com&x=1", Some("email=[email]&x=1")),
            ("an jürgen.müller@bäckerei.de", Some("an [email]")),
            ("call +49 30 1234567 please", Some("call [phone] please")),
            ("call (555) 123-4567", Some("call [phone]")),
            ("call (555) 123 4567", Some("call [phone]")),
            ("tel 0151 12345678", Some("tel [phone]")),
            ("tel 030/1234567", Some("tel [phone]")),
            ("tel 555-123-4567", Some("tel [phone]")),
            ("tel 555.123.4567", Some("tel [phone]")),
            ("tel +4915112345678", Some("tel [phone]")),
            ("tel 004915112345678", Some("tel [phone]")),
            ("card 4111 1111 1111 1111 ok", Some("card [card] ok")),
            ("card 4111.1111.1111.1111", Some("card [card]")),
            ("card 4111+1111+1111+1111", Some("card [card]")),
            ("amex 3782 822463 10005", Some("amex [card]")),
            ("pan=4111111111111111", Some("pan=[card]")),
            (
                "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                Some("t [secret]"),
            ),
            ("api_key=abcdef", Some("api_key=[secret]")),
            ("PASSWORD=hunter2", Some("PASSWORD=[secret]")),
            ("host 127.0.0.1:8080", None),
            ("token=REDACTED&page=2", None),
            (r#"{"token": "abc"}"#, Some(r#"{"token": "[secret]"}"#)),
            ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc", Some("key [secret]")),
            ("order 4111111111111112 is not a card", None),
            ("/orders/20261121-000123", None),
            ("ORD-2026-11-000123", None),
            ("GET /orders/{id}", None),
            ("5bdcc146bf60754e6a042426089575c7", None),
            ("2026-12-02T08:56:54Z", None),
        ];
        for (input, expected) in cases {
            assert_eq!(mask(input).as_deref(), expected, "{input}");
        }
    }
}
