//! Masking personal data in attribute values: e-mail addresses, phone numbers and card
//! numbers (Luhn-checked, so order numbers are left alone).
use std::sync::LazyLock;

use regex::Regex;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .unwrap()
});
/// International (+49 …) or North American ((555) 123-4567) phone numbers.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+|%2B)\d{1,3}(?:[\s.-]|%20)?(?:\(?\d{1,4}\)?(?:[\s.-]|%20)?){2,5}\d{2,4}|\(\d{3}\)\s?\d{3}-\d{4}").unwrap()
});
/// Contiguous 13–19 digits, or the printed groupings 4-4-4-4(-3) and Amex 4-6-5, with one
/// kind of separator; only Luhn-valid numbers are masked.
static CARD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:\d{13,19}|\d{4}([ -])\d{4}[ -]\d{4}[ -]\d{4}(?:[ -]\d{3})?|\d{4}[ -]\d{6}[ -]\d{5})\b").unwrap()
});

pub const EMAIL_MASK: &str = "[email]";
pub const PHONE_MASK: &str = "[phone]";
pub const CARD_MASK: &str = "[card]";

/// The value with personal data replaced, or None if there was none. Each pattern runs
/// only where it could match (an `@`, 13 digits, a `+` or `(`): most values have none.
pub fn mask(value: &str) -> Option<String> {
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let may_email = value.contains('@') || value.contains("%40");
    let may_card = digits >= 13;
    let may_phone =
        digits >= 7 && (value.contains('+') || value.contains("%2B") || value.contains('('));
    if !(may_email || may_card || may_phone) {
        return None;
    }
    let mut out = if may_email {
        EMAIL.replace_all(value, EMAIL_MASK).into_owned()
    } else {
        value.to_owned()
    };
    if !may_card && !may_phone {
        return (out != value).then_some(out);
    }
    out = CARD
        .replace_all(&out, |caps: &regex::Captures<'_>| {
            let digits: String = caps[0].chars().filter(char::is_ascii_digit).collect();
            if luhn(&digits) {
                CARD_MASK.to_owned()
            } else {
                caps[0].to_owned()
            }
        })
        .into_owned();
    out = PHONE.replace_all(&out, PHONE_MASK).into_owned();
    (out != value).then_some(out)
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
    fn masks_personal_data_and_leaves_ids_alone() {
        let cases = [
            (
                "mail anna.schmidt@example.com now",
                Some("mail [email] now"),
            ),
            ("email=anna%40example.com&x=1", Some("email=[email]&x=1")),
            ("call +49 30 1234567 please", Some("call [phone] please")),
            ("call (555) 123-4567", Some("call [phone]")),
            ("card 4111 1111 1111 1111 ok", Some("card [card] ok")),
            ("pan=4111111111111111", Some("pan=[card]")),
            ("order 4111111111111112 is not a card", None),
            ("/orders/20261121-000123", None),
            ("ORD-2026-11-000123", None),
            ("GET /orders/{id}", None),
        ];
        for (input, expected) in cases {
            assert_eq!(mask(input).as_deref(), expected, "{input}");
        }
    }
}
