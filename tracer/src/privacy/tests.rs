//! The privacy stage on a hand-made span: what each attribute becomes, and why.
use std::sync::Arc;

use opentelemetry::trace::{SpanId, TraceId};
use tracer_common::ConnId;

use super::*;
use crate::{
    capture::{procfs::ProcessInfo, Connection, Role},
    correlate::KnownIds,
    protocols::{Exchange, ExchangeKind},
};

fn key() -> IdKey {
    IdKey::from_bytes(b"privacy unit tests")
}

/// A CLIENT call of a child hop: its own exchange names no order, its trace's does.
fn child_span() -> ResolvedSpan {
    let exchange = Exchange {
        protocol: "http",
        id: crate::protocols::ExchangeId::Sequence(0),
        kind: ExchangeKind::Client,
        name: "GET /orders/{id}/price".into(),
        start_ktime_ns: 1,
        end_ktime_ns: 2,
        tid: 1,
        attributes: vec![
            ("url.path", "/orders/ORD-7/price".into()),
            (
                "url.query",
                "order_id=ORD-7&page=2&token=eyJhbGciOi.eyJzdWIi.c2ln".into(),
            ),
            ("user_agent.original", "curl/8.5.0 (Jane Doe)".into()),
            ("messaging.message.id", "ORD-7-msg-0".into()),
            ("http.request.method", "GET".into()),
        ],
        status: ExchangeStatus::Error {
            error_type: "23505".into(),
            message: "Key (email)=(anna@example.com) already exists for user +4915112345678".into(),
        },
        traceparent: None,
        record: std::sync::Arc::new({
            let mut record = crate::protocols::http::record::HttpRecord::default();
            record.headers = [("cookie", "s=1")].into_iter().collect();
            record
        }),
        order_ids: Vec::new(),
        business: Vec::new(),
    };
    ResolvedSpan {
        trace_id: TraceId::from_bytes([1; 16]),
        span_id: SpanId::from_bytes([2; 8]),
        parent_span_id: None,
        parent_is_remote: false,
        links: Vec::new(),
        order_trace: true,
        known_ids: KnownIds {
            orders: vec!["ORD-7".into()],
            users: vec!["+4915112345678".into()],
        },
        exchange,
        connection: Connection::for_tests(
            ConnId {
                tgid: 1,
                fd: 3,
                generation: 1,
            },
            Role::Client,
            None,
            None,
            Arc::new(ProcessInfo::default()),
        ),
        parent_source: None,
        parent_ambiguous: false,
    }
}

fn privacy(pseudonymise_ids: bool) -> Privacy {
    Privacy::new(
        key(),
        PrivacyOptions {
            pseudonymise_ids,
            mask_personal_data: true,
            allowed_query_keys: vec!["page".into()],
        },
    )
}

fn attr<'a>(span: &'a ResolvedSpan, key: &str) -> &'a str {
    match span.exchange.attributes.iter().find(|(k, _)| *k == key) {
        Some((_, AttrValue::Str(s))) => s,
        _ => "",
    }
}

#[test]
fn every_attribute_leaves_in_its_safe_form_and_the_dry_run_says_why() {
    let mut span = child_span();
    let why = privacy(true).apply(&mut span, true);
    let order = key().pseudonym("ORD-7");
    let user = key().user_pseudonym("+4915112345678");
    assert_eq!(attr(&span, "url.path"), "/orders/{id}/price");
    assert_eq!(
        attr(&span, "url.query"),
        "order_id=REDACTED&page=2&token=REDACTED"
    );
    assert_eq!(
        attr(&span, "user_agent.original"),
        "",
        "not on the allow-list"
    );
    assert_eq!(
        attr(&span, "messaging.message.id"),
        format!("{order}-msg-0")
    );
    assert_eq!(attr(&span, "http.request.method"), "GET");
    let ExchangeStatus::Error { message, .. } = &span.exchange.status else {
        panic!("status kept")
    };
    assert_eq!(
        message,
        &format!("Key (email)=(?) already exists for user {user}")
    );
    // The child names its trace's order, as a pseudonym.
    assert_eq!(
        span.exchange.business,
        vec![(ORDER_ID.to_owned(), order.clone())]
    );
    assert!(
        span.exchange
            .record
            .named("http_header", "cookie")
            .is_none(),
        "headers and bodies never leave"
    );
    let reasons = |key: &str| why.0.get(key).cloned().unwrap_or_default();
    assert!(reasons("user_agent.original").contains(DROPPED));
    assert!(reasons("url.query").contains(REDACTED));
    assert!(reasons("url.path").contains(TEMPLATED));
    assert!(reasons("messaging.message.id").contains(PSEUDONYMISED));
    assert!(reasons("status.message").contains(SANITISED));
    assert!(reasons(ORDER_ID).contains(PSEUDONYMISED));
    assert!(!why.0.contains_key("http.request.method"), "kept as it is");
}

#[test]
fn without_pseudonymisation_ids_stay_but_personal_data_in_them_is_masked() {
    let mut span = child_span();
    span.exchange
        .business
        .push((USER_ID.to_owned(), "anna@example.com".into()));
    privacy(false).apply(&mut span, false);
    assert_eq!(attr(&span, "messaging.message.id"), "ORD-7-msg-0");
    let business: Vec<&str> = span
        .exchange
        .business
        .iter()
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(business, ["[email]", "ORD-7"]);
}

#[test]
fn a_host_header_that_is_an_address_stays_and_any_other_is_free_text() {
    for (host, expected) in [
        ("10.0.0.7:8080", "10.0.0.7:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("10.0.0.7", "10.0.0.7"),
        ("anna@example.com:8080", "[email]:8080"),
        ("shop.example.com", "shop.example.com"),
    ] {
        let mut span = child_span();
        span.exchange
            .attributes
            .push(("http.request.header.host", host.into()));
        let why = privacy(false).apply(&mut span, true);
        assert_eq!(attr(&span, "http.request.header.host"), expected, "{host}");
        assert_eq!(
            why.0.contains_key("http.request.header.host"),
            host != expected,
            "{host}: {why:?}"
        );
    }
}

/// The memo of cleaned values serves spans that name no known id only: a span naming the
/// same value with a known id still gets the id's pseudonym, before and after.
#[test]
fn remembered_values_never_stand_in_for_a_known_id() {
    let mut p = privacy(true);
    let host = |mut span: ResolvedSpan| {
        let value = "ORD-7.shop.example".into();
        span.exchange
            .attributes
            .push(("http.request.header.host", value));
        span
    };
    let without_ids = || {
        let mut span = host(child_span());
        span.order_trace = false;
        span.known_ids = KnownIds::default();
        span
    };
    let mut plain = without_ids();
    p.apply(&mut plain, false);
    assert_eq!(
        attr(&plain, "http.request.header.host"),
        "ORD-7.shop.example"
    );
    assert_eq!(attr(&plain, "url.path"), "/orders/{id}/price");
    let mut named = host(child_span());
    p.apply(&mut named, false);
    let pseudonym = key().pseudonym("ORD-7");
    assert_eq!(
        attr(&named, "http.request.header.host"),
        format!("{pseudonym}.shop.example"),
        "the known id's pseudonym, not the remembered value"
    );
    let mut again = without_ids();
    p.apply(&mut again, false);
    assert_eq!(
        attr(&again, "http.request.header.host"),
        "ORD-7.shop.example"
    );
    assert_eq!(attr(&again, "url.path"), "/orders/{id}/price");
    assert_eq!(again.exchange.name, plain.exchange.name);
    assert_eq!(
        p.memo[3].get("ORD-7.shop.example").map(String::as_str),
        Some("ORD-7.shop.example")
    );
    assert!(p
        .memo
        .iter()
        .flat_map(|m| m.values())
        .all(|v| !v.contains(&pseudonym)));
}

/// Spans of an order's trace use the memo too, for values that hold none of the trace's
/// ids in any form; a value holding one, as is or percent-encoded, is cleaned afresh and
/// never remembered.
#[test]
fn values_naming_no_known_id_are_remembered_on_spans_of_an_order_too() {
    let mut p = privacy(true);
    let with_host = |host: &str| {
        let mut span = child_span();
        span.exchange
            .attributes
            .push(("http.request.header.host", host.into()));
        span
    };
    let mut span = with_host("api.shop.example");
    p.apply(&mut span, false);
    assert_eq!(attr(&span, "http.request.header.host"), "api.shop.example");
    assert_eq!(
        p.memo[3].get("api.shop.example").map(String::as_str),
        Some("api.shop.example"),
        "a value naming no id is remembered although the span names ORD-7"
    );
    // The user id percent-encoded (`+` → `%2B`): replaced by its pseudonym, not
    // remembered; nor is a path naming the order.
    let encoded = "u-%2B4915112345678.shop.example";
    let mut span = with_host(encoded);
    p.apply(&mut span, false);
    let pseudonym = key().user_pseudonym("+4915112345678");
    assert_eq!(
        attr(&span, "http.request.header.host"),
        format!("u-{pseudonym}.shop.example")
    );
    assert!(!p.memo[3].contains_key(encoded));
    assert!(!p.memo[0].contains_key("/orders/ORD-7/price"));
}
