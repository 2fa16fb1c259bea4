use std::sync::Arc;

use super::*;
use crate::{
    config::{Config, ExtractConfig},
    protocols::{
        http::record::HttpRecord, AttrValue, Exchange, ExchangeId, ExchangeKind, ExchangeStatus,
        Record,
    },
};

fn http(
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    request: &str,
    response: &str,
) -> Exchange {
    let target = match query {
        "" => path.to_owned(),
        query => format!("{path}?{query}"),
    };
    let mut record = HttpRecord::with_target(target);
    record.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    record.request_body = Some(request.to_owned());
    record.response_body = Some(response.to_owned());
    Exchange {
        protocol: "http",
        id: ExchangeId::Sequence(0),
        kind: ExchangeKind::Server,
        name: String::new(),
        start_ktime_ns: 0,
        end_ktime_ns: 0,
        tid: 0,
        attributes: vec![
            ("url.path", AttrValue::from(path)),
            ("url.query", AttrValue::from(query)),
        ],
        status: ExchangeStatus::Ok,
        traceparent: None,
        record: Arc::new(record),
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}

fn amqp(routing_key: &str, headers: &[(&str, &str)], body: &str) -> Exchange {
    let mut x = http("", "", &[], "", "");
    x.protocol = "amqp";
    x.record = Arc::new(TestAmqp {
        routing_key: routing_key.into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    });
    x
}

/// What the AMQP record answers, for rules tests.
#[derive(Debug)]
struct TestAmqp {
    routing_key: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Record for TestAmqp {
    fn text(&self, source: &str) -> Option<&str> {
        match source {
            "amqp_routing_key" => Some(&self.routing_key),
            "amqp_body" => Some(&self.body),
            _ => None,
        }
    }
    fn named(&self, source: &str, name: &str) -> Option<&str> {
        (source == "amqp_header")
            .then(|| crate::protocols::record::lookup(&self.headers, name, false))
            .flatten()
    }
}

fn get<'a>(found: &'a Extracted, attribute: &str) -> Option<&'a str> {
    found
        .attributes
        .iter()
        .find(|(a, _)| a == attribute)
        .map(|(_, v)| v.as_str())
}

#[test]
fn defaults_find_orders_and_users_everywhere() {
    let x = Extractor::new(&ExtractConfig::default()).unwrap();
    let cases = [
        http("/orders/4711", "", &[], "", ""),
        http("/api/v1/order/4711/files", "", &[], "", ""),
        http("/search", "orderId=4711&x=1", &[], "", ""),
        http("/x", "", &[("x-order-id", "4711")], "", ""),
        http("/x", "", &[], r#"{"order": {"order_id": "4711"}}"#, ""),
        http(
            "/x",
            "",
            &[],
            "",
            r#"{"orderId": 4711, "status": "SUBMITTED"}"#,
        ),
        http("/x", "", &[], "order-id=4711&email=a%40b.c", ""),
        amqp("orders", &[("order_id", "4711")], ""),
        amqp("orders", &[], r#"{"order_id":"4711","status":"SUBMITTED"}"#),
    ];
    for case in &cases {
        let found = x.extract(case);
        assert_eq!(
            found.order_ids.first().map(String::as_str),
            Some("4711"),
            "{case:?}"
        );
        assert_eq!(get(&found, "app.order.id"), Some("4711"));
    }
    let found = x.extract(&http("/users/u-17/orders/5", "", &[], "", ""));
    assert_eq!(get(&found, "app.user.id"), Some("u-17"));
    assert_eq!(get(&found, "app.order.id"), Some("5"));
    let found = x.extract(&cases[5]);
    assert_eq!(get(&found, "app.order.status"), Some("SUBMITTED"));
}

#[test]
fn nothing_id_like_is_not_an_order() {
    let x = Extractor::new(&ExtractConfig::default()).unwrap();
    let found = x.extract(&http("/orders/search", "", &[], r#"{"status":"ok"}"#, ""));
    assert!(
        found.order_ids.is_empty() && found.attributes.is_empty(),
        "{found:?}"
    );
}

#[test]
fn several_order_ids_keep_their_order() {
    let x = Extractor::new(&ExtractConfig::default()).unwrap();
    let found = x.extract(&http(
        "/orders/1",
        "",
        &[],
        r#"{"items":[{"order_id":"2"},{"order_id":"3"}]}"#,
        "",
    ));
    assert_eq!(found.order_ids, ["1", "2", "3"]);
}

#[test]
fn configured_rules_templates_pointers_and_routing_keys() {
    let config = Config::parse(
        r#"
[extract]
defaults = false
[[extract.rule]]
attribute = "app.order.id"
source = "amqp_routing_key"
template = "order.{id}.submitted"
[[extract.rule]]
attribute = "app.customer.tier"
source = "http_request_body"
pointer = "/customer/tier"
[[extract.rule]]
attribute = "app.order.id"
source = "http_path"
template = "/b2b/{order}/calculate"
"#,
        "rules.toml",
    )
    .unwrap();
    let x = Extractor::new(&config.extract).unwrap();
    assert_eq!(
        x.extract(&amqp("order.A17.submitted", &[], "")).order_ids,
        ["A17"]
    );
    let found = x.extract(&http(
        "/b2b/Q-9/calculate",
        "",
        &[],
        r#"{"customer":{"tier":"gold"}}"#,
        "",
    ));
    assert_eq!(found.order_ids, ["Q-9"]);
    assert_eq!(get(&found, "app.customer.tier"), Some("gold"));
    assert!(
        x.extract(&http("/orders/4711", "", &[], "", ""))
            .order_ids
            .is_empty(),
        "defaults are off"
    );
}

#[test]
fn bad_rules_are_rejected_with_their_number() {
    let error = Config::parse(
        "[[extract.rule]]\nattribute = \"app.order.id\"\nsource = \"http_request_body\"\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("rule #1") && error.contains("pointer"),
        "{error}"
    );
    let error = Config::parse(
        "[[extract.rule]]\nattribute = \"app.order.id\"\nsource = \"http_body\"\nkey = \"x\"\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("line 3") && error.contains("http_body"),
        "{error}"
    );
}

#[test]
fn an_error_reported_in_a_message_fails_the_span_of_its_writer_only() {
    let config = Config::parse(
        r#"
[[extract.error]]
source = "amqp_body"
key = "error"
kind = "producer"
"#,
        "errors.toml",
    )
    .unwrap();
    let x = Extractor::new(&config.extract).unwrap();
    let reply = r#"{"order_id": "ORD-7", "error": "wall thickness 0.3 mm below 0.8 mm"}"#;
    let mut published = amqp("crm.prices", &[], reply);
    published.kind = ExchangeKind::Producer;
    let found = x.extract(&published);
    assert_eq!(
        found.error.as_deref(),
        Some("wall thickness 0.3 mm below 0.8 mm")
    );
    assert_eq!(found.order_ids, ["ORD-7"]);
    let mut delivered = published.clone();
    delivered.kind = ExchangeKind::Consumer;
    assert_eq!(x.extract(&delivered).error, None, "the reader did not fail");
    let fine = amqp("crm.prices", &[], r#"{"order_id": "ORD-8", "error": null}"#);
    let fine = Exchange {
        kind: ExchangeKind::Producer,
        ..fine
    };
    assert_eq!(x.extract(&fine).error, None, "a null error is none");

    let error = Config::parse(
        "[[extract.error]]\nsource = \"amqp_body\"\nkey = \"error\"\nkind = \"sender\"\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("line 2") && error.contains("error rule #1") && error.contains("sender"),
        "{error}"
    );
}
