//! A message assembled from a method frame (publish, deliver, get-ok, return), its content
//! header and body frames, and the fingerprint that finds it again on the other side of
//! the broker.
use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hash, Hasher},
};

use amq_protocol::{
    frame::AMQPContentHeader,
    types::{AMQPValue, FieldTable},
};

/// The method that carried the content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carrier {
    Publish {
        /// The broker returns it (Basic.Return) when no queue takes it.
        mandatory: bool,
    },
    Deliver {
        consumer_tag: String,
        delivery_tag: u64,
    },
    GetOk {
        delivery_tag: u64,
    },
    Return {
        reply_code: u16,
        reply_text: String,
    },
}

/// The seed of message fingerprints (any fixed value: they are compared only inside one
/// agent, never stored or exported).
const FINGERPRINT_SEED: u64 = 0x7472_6163_6572;

#[derive(Clone, Debug)]
pub struct Message {
    pub carrier: Carrier,
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// String-valued headers (the rest are not useful for tracing).
    pub headers: BTreeMap<String, String>,
    pub body_size: u64,
    pub body_prefix: Vec<u8>,
    pub start_ktime_ns: u64,
    pub tid: u32,
}

/// Bytes of the body that go into the fingerprint.
const FINGERPRINT_PREFIX: usize = 256;

impl Message {
    /// What the broker passes on unchanged from publish to delivery.
    pub fn fingerprint(&self) -> u64 {
        // A fixed seed: the same message hashes the same on every socket it crosses.
        let mut h = foldhash::fast::FixedState::with_seed(FINGERPRINT_SEED).build_hasher();
        self.exchange.hash(&mut h);
        self.routing_key.hash(&mut h);
        self.message_id.hash(&mut h);
        self.correlation_id.hash(&mut h);
        self.body_size.hash(&mut h);
        self.body_prefix[..self.body_prefix.len().min(FINGERPRINT_PREFIX)].hash(&mut h);
        h.finish()
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get("traceparent").map(String::as_str)
    }
}

/// Content being assembled on one channel.
pub struct Pending {
    pub message: Message,
    pub expected_body: Option<u64>,
    pub received_body: u64,
}

pub struct Assembler {
    prefix_limit: usize,
    pending: BTreeMap<u16, Pending>,
}

impl Assembler {
    pub fn new(prefix_limit: usize) -> Self {
        Self {
            prefix_limit,
            pending: BTreeMap::new(),
        }
    }

    pub fn begin(&mut self, channel: u16, message: Message) {
        self.pending.insert(
            channel,
            Pending {
                message,
                expected_body: None,
                received_body: 0,
            },
        );
    }

    /// Content header; returns the message if it has no body.
    pub fn header(&mut self, channel: u16, header: &AMQPContentHeader) -> Option<Message> {
        let pending = self.pending.get_mut(&channel)?;
        let props = &header.properties;
        pending.expected_body = Some(header.body_size);
        pending.message.body_size = header.body_size;
        pending.message.message_id = props.message_id().as_ref().map(|s| s.as_str().to_owned());
        pending.message.correlation_id = props
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_owned());
        if let Some(table) = props.headers() {
            pending.message.headers = string_headers(table);
        }
        if header.body_size == 0 {
            return self.pending.remove(&channel).map(|p| p.message);
        }
        None
    }

    /// A body frame; returns the message once its body is complete.
    pub fn body(&mut self, channel: u16, bytes: &[u8]) -> Option<Message> {
        let pending = self.pending.get_mut(&channel)?;
        let room = self
            .prefix_limit
            .saturating_sub(pending.message.body_prefix.len());
        pending
            .message
            .body_prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        pending.received_body += bytes.len() as u64;
        if pending
            .expected_body
            .is_some_and(|n| pending.received_body >= n)
        {
            return self.pending.remove(&channel).map(|p| p.message);
        }
        None
    }

    /// Body bytes that were not captured still count towards the body size.
    pub fn skip(&mut self, channel: u16, bytes: u64) -> Option<Message> {
        let pending = self.pending.get_mut(&channel)?;
        pending.received_body += bytes;
        if pending
            .expected_body
            .is_some_and(|n| pending.received_body >= n)
        {
            return self.pending.remove(&channel).map(|p| p.message);
        }
        None
    }

    /// Bytes are missing: content whose header we saw is taken as complete, with the body
    /// size the header declared (a big body written in one syscall is only partly
    /// captured); content without a header is dropped.
    pub fn gap(&mut self) -> Vec<(u16, Message)> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .filter(|(_, p)| p.expected_body.is_some())
            .map(|(channel, p)| (channel, p.message))
            .collect()
    }

    /// Forgets partial content (after a channel close).
    pub fn reset(&mut self, channel: u16) {
        self.pending.remove(&channel);
    }
}

fn string_headers(table: &FieldTable) -> BTreeMap<String, String> {
    table
        .inner()
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                AMQPValue::LongLongInt(i) => i.to_string(),
                AMQPValue::LongInt(i) => i.to_string(),
                AMQPValue::Boolean(b) => b.to_string(),
                _ => return None,
            };
            Some((key.as_str().to_owned(), text))
        })
        .collect()
}
