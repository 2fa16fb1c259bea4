//! The allow-list: what each exported attribute may carry. An attribute not named here
//! does not leave the agent.

/// How an attribute's value is made safe to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Made by tracer from a closed set or a number (methods, codes, flags, sizes).
    Keep,
    /// A path: only its words survive; ids and free text become `{id}`, `{value}`.
    Path,
    /// A routing key: data, templated like a path, on `.`.
    RoutingKey,
    /// A declared object's name (queue, exchange, table, database): free text and plain
    /// ids templated, names with digits (`orders_2024`) kept.
    Name,
    /// A query string: keys kept, values `REDACTED` unless the key is allowed.
    Query,
    /// Free text: input values removed, then masked, then known ids replaced.
    Text,
    /// A Host header: an IP address (with a port or not) is kept, as `server.address` is;
    /// anything else is free text.
    Host,
    /// An order or user id: its pseudonym, or (pseudonymisation off) the id, masked.
    Id,
}

/// Attributes tracer itself derives (`tracer.*`) are kept: flags, numbers and sources.
const TRACER_PREFIX: &str = "tracer.";

pub fn policy(key: &str) -> Option<Policy> {
    use Policy::*;
    let policy = match key {
        "http.request.method"
        | "http.response.status_code"
        | "http.request.body.size"
        | "http.response.body.size"
        | "network.protocol.name"
        | "network.protocol.version"
        | "network.transport"
        | "network.peer.address"
        | "network.peer.port"
        | "network.local.address"
        | "network.local.port"
        | "server.address"
        | "server.port"
        | "client.address"
        | "client.port"
        | "url.scheme"
        | "tls.established"
        | "error.type"
        | "messaging.system"
        | "messaging.operation.type"
        | "messaging.operation.name"
        | "messaging.message.body.size"
        | "messaging.rabbitmq.message.delivery_tag"
        | "db.system.name"
        | "db.response.status_code"
        | "db.response.command_tag"
        | "db.operation.name" => Keep,
        "url.path" | "http.route" => Path,
        "messaging.rabbitmq.destination.routing_key" => RoutingKey,
        "messaging.destination.name"
        | "messaging.destination.subscription.name"
        | "db.collection.name"
        | "db.namespace" => Name,
        "url.query" => Query,
        "app.order.id" | "app.user.id" => Id,
        "messaging.message.id" | "messaging.message.conversation_id" | "db.query.text" => Text,
        "http.request.header.host" => Host,
        _ if key.starts_with(TRACER_PREFIX) => Keep,
        // Business attributes from the operator's own extraction rules.
        _ if key.starts_with("app.") => Text,
        // Attributes a protocol brings, with what each may carry (its folder says).
        _ => return crate::protocols::attribute_policy(key),
    };
    Some(policy)
}

/// The query string with every value replaced by `REDACTED` unless its key is allowed.
pub fn redact_query(query: &str, allowed: &[String]) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if allowed.iter().any(|a| a == key) => pair.to_owned(),
            Some((key, _)) => format!("{}=REDACTED", safe_key(key)),
            None => safe_key(pair).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A query key is a word of the API, or it is itself a value (`?anna@example.com`).
fn safe_key(key: &str) -> &str {
    let word = !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'));
    if word {
        key
    } else {
        "REDACTED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted_unless_allowed() {
        let allowed = vec!["page".to_owned()];
        assert_eq!(
            redact_query("token=eyJabc.def.ghi&page=2&code=x&flag", &allowed),
            "token=REDACTED&page=2&code=REDACTED&flag"
        );
        assert_eq!(redact_query("anna%40example.com", &allowed), "REDACTED");
    }

    #[test]
    fn unknown_attributes_have_no_policy() {
        assert_eq!(policy("user_agent.original"), None);
        assert_eq!(policy("http.request.header.authorization"), None);
        assert_eq!(policy("url.query"), Some(Policy::Query));
        assert_eq!(policy("tracer.parent.source"), Some(Policy::Keep));
        assert_eq!(
            policy("rpc.grpc.status_code"),
            Some(Policy::Keep),
            "from http2/"
        );
    }
}
