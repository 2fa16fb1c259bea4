//! Just enough SQL to name a span: the operation, the table, the text without literals,
//! and which bound parameter fills which column (for order ids).
use std::collections::BTreeMap;

/// `INSERT`, `SELECT`, `BEGIN`, … (the first keyword), upper-cased.
pub fn operation(query: &str) -> String {
    query
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(';')
        .to_ascii_uppercase()
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
    let table = table
        .split(['(', ',', ';'])
        .next()
        .unwrap_or("")
        .trim_matches('"');
    (!table.is_empty()).then(|| table.to_owned())
}

/// The statement with string and number literals replaced by `?` (no values leave the agent).
pub fn sanitize(query: &str) -> String {
    let chars: Vec<char> = query.chars().collect();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = if i > 0 { chars[i - 1] } else { ' ' };
        if c == '\'' {
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if chars[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            out.push('?');
            i += 1;
        } else if c.is_ascii_digit()
            && !(prev.is_alphanumeric() || prev == '_' || prev == '$' || prev == '.')
        {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push('?');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
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
        assert_eq!(operation("insert into orders (a) values ($1)"), "INSERT");
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
    }

    #[test]
    fn literals_are_replaced() {
        assert_eq!(
            sanitize(
                "SELECT * FROM orders WHERE id = 'O''Brien' AND n > 42 AND col2 = $1 AND t = 1.5"
            ),
            "SELECT * FROM orders WHERE id = ? AND n > ? AND col2 = $1 AND t = ?"
        );
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
