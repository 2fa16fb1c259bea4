//! An order id's trace and anchor span, remembered: both are an HMAC of the id, and an
//! order names many spans (each of its requests, calls and messages, at both ends), each
//! asking for them two or three times while it is resolved.
use foldhash::HashMap;
use opentelemetry::trace::{SpanId, TraceId};

use crate::privacy::IdKey;

pub(super) struct OrderTraces {
    key: IdKey,
    known: HashMap<Box<str>, (TraceId, SpanId)>,
}

/// Orders remembered; the cache starts over beyond this.
const MAX_KNOWN: usize = 4096;

impl OrderTraces {
    pub fn new(key: IdKey) -> Self {
        Self {
            key,
            known: HashMap::default(),
        }
    }

    /// The order's trace id, the same on every agent sharing the key.
    pub fn trace(&mut self, order_id: &str) -> TraceId {
        self.of(order_id).0
    }

    /// The order's trace id and the span id standing for the order in it (for links).
    pub fn of(&mut self, order_id: &str) -> (TraceId, SpanId) {
        if let Some(&known) = self.known.get(order_id) {
            return known;
        }
        let computed = self.key.order_trace_and_anchor(order_id);
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(order_id.into(), computed);
        computed
    }
}

#[cfg(test)]
mod tests {
    use super::{OrderTraces, MAX_KNOWN};
    use crate::privacy::IdKey;

    #[test]
    fn a_remembered_order_gives_what_its_hmac_gives_also_after_the_cache_starts_over() {
        let key = IdKey::from_bytes(b"k");
        let mut orders = OrderTraces::new(IdKey::from_bytes(b"k"));
        for round in 0..2 {
            for n in 0..MAX_KNOWN + 10 {
                let id = format!("order-{n}");
                let expected = (key.order_trace(&id), key.order_anchor(&id));
                assert_eq!(orders.of(&id), expected, "{id}, round {round}");
                assert_eq!(orders.trace(&id), expected.0);
            }
        }
        assert!(orders.known.len() <= MAX_KNOWN);
    }
}
