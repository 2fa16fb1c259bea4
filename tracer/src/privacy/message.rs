//! Free-text messages (database errors, broker reply texts) echo input values: `invalid
//! input syntax for type integer: "Jane"`, `Key (email)=(anna@example.com) already exists`,
//! `syntax error at or near "Doe"`. Quoted and bracketed values are replaced by `?` unless
//! they name a schema object (`relation "orders"`, `constraint "orders_quantity_positive"`,
//! `queue 'mes.orders'`), which is what makes such a message useful.

/// Words after which a quoted name is a schema or broker object, not input.
const OBJECT_WORDS: [&str; 24] = [
    "relation",
    "table",
    "column",
    "constraint",
    "index",
    "type",
    "schema",
    "function",
    "database",
    "role",
    "sequence",
    "view",
    "trigger",
    "extension",
    "operator",
    "cursor",
    "statement",
    "savepoint",
    "queue",
    "exchange",
    "vhost",
    "channel",
    "consumer",
    "tag",
];

/// The message with input values replaced by `?`.
pub fn sanitize_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' | '\'' => {
                let close = message[at + 1..].find(c).map(|p| at + 1 + p);
                let Some(close) = close else {
                    out.push('?');
                    break; // an unterminated quote: nothing after it is trusted
                };
                let inner = &message[at + 1..close];
                if names_an_object(&message[..at], inner) {
                    out.push_str(&message[at..=close]);
                } else {
                    out.push(c);
                    out.push('?');
                    out.push(c);
                }
                while chars.peek().is_some_and(|&(i, _)| i <= close) {
                    chars.next();
                }
            }
            '(' if message[..at].ends_with('=') || message[..at].ends_with("contains ") => {
                let close = message[at..].find(')').map_or(message.len(), |p| at + p);
                out.push_str("(?)");
                while chars.peek().is_some_and(|&(i, _)| i <= close) {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn names_an_object(before: &str, inner: &str) -> bool {
    let word = before
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let identifier = !inner.is_empty()
        && inner.len() <= 63
        && inner
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$' | b'-' | b'/'));
    identifier && OBJECT_WORDS.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_values_go_object_names_stay() {
        let cases = [
            (
                r#"new row for relation "orders" violates check constraint "orders_quantity_positive""#,
                r#"new row for relation "orders" violates check constraint "orders_quantity_positive""#,
            ),
            (
                r#"invalid input syntax for type integer: "Jane Doe""#,
                r#"invalid input syntax for type integer: "?""#,
            ),
            (
                r#"syntax error at or near "anna@example.com""#,
                r#"syntax error at or near "?""#,
            ),
            (
                "Key (email)=(anna@example.com) already exists.",
                "Key (email)=(?) already exists.",
            ),
            (
                r#"column "anna@example.com" does not exist"#,
                r#"column "?" does not exist"#,
            ),
            (
                "NOT_FOUND - no queue 'mes.orders' in vhost '/'",
                "NOT_FOUND - no queue 'mes.orders' in vhost '/'",
            ),
            ("value 'Jane Doe", "value ?"),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_message(input), expected, "{input}");
        }
    }
}
