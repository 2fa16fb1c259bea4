//! `http.route` from a concrete path: id-like segments become `{id}`, so
//! `/orders/1234/files/9f8e…` and `/orders/77/files/…` share one route.

/// Templates a path. Segments that are numbers, UUIDs, long hex strings or long mixed
/// alphanumerics with digits become `{id}`.
pub fn template(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|segment| if is_id_like(segment) { "{id}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// Matches `path` against configured templates (`/orders/{order_id}/items`); the first
/// whose literal segments match wins.
pub fn match_template<'a>(path: &str, templates: &'a [String]) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    templates.iter().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(p, s)| (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) || p == s)
    })
}

fn is_id_like(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let all_digits = segment.bytes().all(|b| b.is_ascii_digit());
    let hex = segment.bytes().all(|b| b.is_ascii_hexdigit());
    let has_digit = segment.bytes().any(|b| b.is_ascii_digit());
    let uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    let id_chars = segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let version = segment.len() <= 4
        && segment.starts_with(['v', 'V'])
        && segment[1..].bytes().all(|b| b.is_ascii_digit());
    // Business ids like ORD-0 or A17-3: a digit, some length, and not an API version.
    let mixed = segment.len() >= 4 && has_digit && id_chars && !version;
    all_digits || uuid || (hex && has_digit && segment.len() >= 12) || mixed
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
