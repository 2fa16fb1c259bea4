use std::collections::BTreeMap;

use super::*;
use crate::{
    config::{Config, ExtractConfig},
    protocols::{AttrValue, Exchange, ExchangeKind, ExchangeStatus},
};

fn http(
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    request: &str,
    response: &str,
) -> Exchange {
    let mut fields = BTreeMap::new();
    fields.insert("request.body".to_owned(), request.to_owned());
    fields.insert("response.body".to_owned(), response.to_owned());
    for (name, value) in headers {
        fields.insert(format!("request.header.{name}"), value.to_string());
    }
    Exchange {
        protocol: "http",
        sequence: 0,
        kind: ExchangeKind::Server,
        name: String::new(),
        start_ktime_ns: 0,
        end_ktime_ns: 0,
        tid: 0,
        attributes: vec![
            ("url.path", AttrValue::Str(path.into())),
            ("url.query", AttrValue::Str(query.into())),
        ],
        status: ExchangeStatus::Ok,
        traceparent: None,
        fields,
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}

fn amqp(routing_key: &str, headers: &[(&str, &str)], body: &str) -> Exchange {
    let mut x = http("", "", &[], "", "");
    x.protocol = "amqp";
    x.fields.clear();
    x.fields.insert("routing_key".into(), routing_key.into());
    x.fields.insert("body".into(), body.into());
    for (name, value) in headers {
        x.fields.insert(format!("header.{name}"), value.to_string());
    }
    x
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
