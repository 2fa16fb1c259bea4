//! What AMQP extraction rules read: a message's routing key, ids, string headers and body.
use std::collections::BTreeMap;

use super::message::Message;
use crate::protocols::record::{Record, Source, SourceShape};

pub static SOURCES: &[Source] = &[
    Source::new(
        "amqp_routing_key",
        SourceShape::Template {
            separator: '.',
            id_after_word: false,
        },
    ),
    Source::new(
        "amqp_header",
        SourceShape::Named {
            case_insensitive: false,
        },
    ),
    Source::new("amqp_message_id", SourceShape::Whole),
    Source::new("amqp_correlation_id", SourceShape::Whole),
    Source::new("amqp_body", SourceShape::Body),
];

#[derive(Debug, Default)]
pub struct AmqpRecord {
    routing_key: String,
    message_id: Option<String>,
    correlation_id: Option<String>,
    headers: BTreeMap<String, String>,
    body: String,
}

impl From<Message> for AmqpRecord {
    fn from(message: Message) -> Self {
        Self {
            body: String::from_utf8_lossy(&message.body_prefix).into_owned(),
            routing_key: message.routing_key,
            message_id: message.message_id,
            correlation_id: message.correlation_id,
            headers: message.headers,
        }
    }
}

impl Record for AmqpRecord {
    fn text(&self, source: &str) -> Option<&str> {
        match source {
            "amqp_routing_key" => Some(&self.routing_key),
            "amqp_message_id" => self.message_id.as_deref(),
            "amqp_correlation_id" => self.correlation_id.as_deref(),
            "amqp_body" => Some(&self.body),
            _ => None,
        }
    }

    fn named(&self, source: &str, name: &str) -> Option<&str> {
        (source == "amqp_header")
            .then(|| self.headers.get(name).map(String::as_str))
            .flatten()
    }
}
