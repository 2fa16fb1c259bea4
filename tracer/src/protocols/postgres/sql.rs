//! Just enough SQL to name a span: the operation, the table, the text without literals,
//! and which bound parameter fills which column (for order ids).
use std::collections::BTreeMap;

/// Statement keywords that may name a span or a metric label; anything else (a typo,
/// garbage, a value sent as a statement) names nothing.
const OPERATIONS: [&str; 40] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "WITH",
    "VALUES",
    "TABLE",
    "COPY",
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "SET",
    "SHOW",
    "RESET",
    "LOCK",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DECLARE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "DISCARD",
    "ANALYZE",
    "VACUUM",
    "CALL",
];

/// `INSERT`, `SELECT`, `BEGIN`, … (the first keyword), when it is a known statement.
pub fn operation(query: &str) -> Option<&'static str> {
    let first = query
        .split_whitespace()
        .next()?
        .trim_end_matches(';')
        .to_ascii_uppercase();
    OPERATIONS.iter().copied().find(|k| *k == first)
}

/// The table a statement is about, where it can be read off the text.
pub fn collection(query: &str) -> Option<String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let after = |keyword: &str| {
        upper
            .iter()
            .position(|w| w == keyword)
            .and_then(|i| words.get(i + 1))
    };
    let table = match upper.first().map(String::as_str)? {
        "INSERT" => after("INTO"),
        "UPDATE" => words.get(1),
        "DELETE" | "SELECT" => after("FROM"),
        "COPY" => words.get(1),
        _ => None,
    }?;
    let table = table.split(['(', ',', ';']).next().unwrap_or("");
    // Only a plain (or plainly quoted) name: `"Jane Doe"` or `"anna@x"` is a value sent
    // as an identifier, not a table worth naming.
    let quoted = table.starts_with('"');
    if quoted && !(table.len() > 1 && table.ends_with('"')) {
        return None;
    }
    let table = table.trim_matches('"');
    let plain = table
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'));
    plain.then(|| table.to_owned())
}

/// The statement with literals replaced by `?` and comments removed, so no value leaves
/// the agent: `'…'` (also `E'…'` with backslash escapes), dollar-quoted `$$…$$` and
/// `$tag$…$tag$`, and numbers.
pub fn sanitize(query: &str) -> String {
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    let mut kept = 0; // start of the text not yet copied to `out`
    let skip = |out: &mut String, from: usize, to: usize, kept: &mut usize, with: &str| {
        out.push_str(&query[*kept..from]);
        out.push_str(with);
        *kept = to;
    };
    while i < bytes.len() {
        let c = bytes[i];
        let prev = if i > 0 { bytes[i - 1] } else { b' ' };
        let word_before = prev.is_ascii_alphanumeric() || prev == b'_';
        if c == b'\'' {
            let escapes = i > 0 && matches!(prev, b'E' | b'e') && {
                let before = if i > 1 { bytes[i - 2] } else { b' ' };
                !(before.is_ascii_alphanumeric() || before == b'_')
            };
            let from = if escapes { i - 1 } else { i };
            let end = string_end(bytes, i + 1, escapes);
            skip(&mut out, from, end, &mut kept, "?");
            i = end;
        } else if c == b'$' && !word_before {
            match dollar_tag(bytes, i) {
                Some(tag_len) => {
                    let tag = &query[i..i + tag_len];
                    let body = i + tag_len;
                    let end = query[body..]
                        .find(tag)
                        .map_or(bytes.len(), |p| body + p + tag_len);
                    skip(&mut out, i, end, &mut kept, "?");
                    i = end;
                }
                None => i += 1, // a parameter like $1
            }
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            let end = query[i..].find('\n').map_or(bytes.len(), |p| i + p);
            skip(&mut out, i, end, &mut kept, "");
            i = end;
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let end = query[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |p| i + 2 + p + 2);
            skip(&mut out, i, end, &mut kept, "");
            i = end;
        } else if c.is_ascii_digit() && !(word_before || prev == b'$' || prev == b'.') {
            let mut end = i;
            while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
                end += 1;
            }
            skip(&mut out, i, end, &mut kept, "?");
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&query[kept.min(query.len())..]);
    out
}

/// Where a quoted string that starts at `from` ends (after its closing quote).
fn string_end(bytes: &[u8], mut i: usize, escapes: bool) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The length of a dollar-quote tag (`$$`, `$body$`) starting at `at`, if there is one.
fn dollar_tag(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
        i += 1;
    }
    (bytes.get(i) == Some(&b'$')).then_some(i + 1 - at)
}

/// Column → value for what the statement binds or compares: `INSERT INTO t (a, b) VALUES
/// ($1, $2)`, `WHERE a = $1`, `WHERE a = 'x'`. Used for correlation, never exported.
pub fn column_values(query: &str, params: &[Option<String>]) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let param = |token: &str| -> Option<String> {
        let token = token.trim().trim_end_matches(')');
        if let Some(n) = token.strip_prefix('$') {
            return params
                .get(n.parse::<usize>().ok()?.checked_sub(1)?)?
                .clone();
        }
        let literal = token.strip_prefix('\'')?.strip_suffix('\'')?;
        Some(literal.to_owned())
    };
    let lower = query.to_ascii_lowercase();
    if let (Some(cols_at), Some(values_at)) = (lower.find('('), lower.find("values")) {
        if cols_at < values_at && lower.starts_with("insert") {
            // Between the parentheses, when both are there (text from the wire: never trusted).
            let inside = |from: usize| -> Option<&str> {
                let rest = query.get(from..)?;
                Some(&rest[..rest.find(')').unwrap_or(rest.len())])
            };
            let columns = inside(cols_at + 1).filter(|_| query[cols_at..].contains(')'));
            let values_start = query[values_at..].find('(').map(|p| values_at + p + 1);
            if let (Some(columns), Some(values)) = (columns, values_start.and_then(inside)) {
                for (column, value) in columns.split(',').zip(values.split(',')) {
                    if let Some(v) = param(value) {
                        found.insert(column.trim().trim_matches('"').to_owned(), v);
                    }
                }
            }
        }
    }
    // `column = $n` or `column = 'literal'` anywhere (SET and WHERE alike).
    let spaced = query.replace('=', " = ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    for i in 1..tokens.len().saturating_sub(1) {
        if tokens[i] != "=" || matches!(tokens[i - 1], "<" | ">" | "!") {
            continue;
        }
        let column = tokens[i - 1]
            .trim_matches(|c| c == '"' || c == '(')
            .rsplit('.')
            .next()
            .unwrap_or("");
        if let (false, Some(value)) = (
            column.is_empty(),
            param(tokens[i + 1].trim_end_matches([',', ';'])),
        ) {
            found.insert(column.to_owned(), value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations_and_tables() {
        assert_eq!(
            operation("insert into orders (a) values ($1)"),
            Some("INSERT")
        );
        assert_eq!(operation("asdsdfdsf;"), None);
        assert_eq!(operation("Jane Doe"), None);
        assert_eq!(
            collection("INSERT INTO orders(order_id) VALUES ($1)").as_deref(),
            Some("orders")
        );
        assert_eq!(
            collection("SELECT * FROM \"orders\" WHERE x = 1").as_deref(),
            Some("orders")
        );
        assert_eq!(
            collection("UPDATE orders SET status = $1").as_deref(),
            Some("orders")
        );
        assert_eq!(collection("BEGIN"), None);
        assert_eq!(collection("SELECT * FROM \"Jane Doe\""), None);
        assert_eq!(collection("SELECT * FROM \"anna@example.com\""), None);
        assert_eq!(
            collection("SELECT * FROM shop.orders_2024 WHERE a = 1").as_deref(),
            Some("shop.orders_2024")
        );
    }

    #[test]
    fn literals_are_replaced() {
        assert_eq!(
            sanitize(
                "SELECT * FROM orders WHERE id = 'O''Brien' AND n > 42 AND col2 = $1 AND t = 1.5"
            ),
            "SELECT * FROM orders WHERE id = ? AND n > ? AND col2 = $1 AND t = ?"
        );
        assert_eq!(
            sanitize(r"SELECT E'it\'s anna@example.com', e'x' FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(
            sanitize("SELECT $$Jane Doe$$, $tag$a $$ b$tag$, $1 FROM t"),
            "SELECT ?, ?, $1 FROM t"
        );
        assert_eq!(
            sanitize("SELECT 1 -- customer Jane Doe\nFROM t /* 4111 */ WHERE t1.a = 2"),
            "SELECT ? \nFROM t  WHERE t1.a = ?"
        );
        assert_eq!(sanitize("SELECT 'unterminated anna@x.com"), "SELECT ?");
        assert_eq!(sanitize("naïve 'é' ok"), "naïve ? ok");
    }

    #[test]
    fn bound_parameters_are_mapped_to_columns() {
        let params = vec![Some("ORD-1".to_owned()), Some("NEW".to_owned())];
        let found = column_values(
            "INSERT INTO orders (order_id, status) VALUES ($1, $2)",
            &params,
        );
        assert_eq!(found.get("order_id").map(String::as_str), Some("ORD-1"));
        let found = column_values("UPDATE orders SET status = $2 WHERE order_id = $1", &params);
        assert_eq!(found.get("order_id").map(String::as_str), Some("ORD-1"));
        let found = column_values("SELECT * FROM orders WHERE order_id = 'ORD-7'", &[]);
        assert_eq!(found.get("order_id").map(String::as_str), Some("ORD-7"));
    }
}

#[cfg(test)]
mod fuzzed {
    /// Found by `cargo xtask fuzz`: an INSERT with a '(' and VALUES but no ')'.
    #[test]
    fn unbalanced_parentheses_do_not_panic() {
        for query in [
            "insert into t (a values",
            "INSERT x(values",
            "insert (",
            "insert into t (a) values (",
        ] {
            let _ = super::column_values(query, &[]);
        }
        let found = super::column_values("insert into t (a) values ($1", &[Some("7".into())]);
        assert_eq!(found.get("a").map(String::as_str), Some("7"));
    }
}
