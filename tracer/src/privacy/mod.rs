//! What may leave the agent. One stage, applied to every span before export, that knows
//! per attribute what is safe (`policy.rs`, an allow-list): paths and names keep their
//! words only, query values are redacted, free text loses its input values and is masked
//! (`message.rs`, `mask.rs`), and every known order or user id of the span's trace is
//! replaced by its pseudonym wherever it occurs (`ids.rs`). Anything not on the list —
//! headers, bodies, credentials, attributes a protocol adds tomorrow — is dropped.
pub mod files;
mod ids;
mod key;
mod mask;
mod message;
mod policy;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use foldhash::HashMap;

pub use ids::{replace_ids, KnownId};
pub use key::{IdKey, KeyError, KEY_ENV};
pub use mask::mask;
pub use message::sanitize_message;
pub use policy::{policy, redact_query, Policy};

use crate::{
    correlate::ResolvedSpan,
    extract::{ORDER_FROM_TRACE, ORDER_ID, USER_ID},
    protocols::{http::route, AttrValue, ExchangeStatus},
};

/// What the privacy stage is told by the configuration.
#[derive(Clone, Debug, Default)]
pub struct PrivacyOptions {
    pub pseudonymise_ids: bool,
    pub mask_personal_data: bool,
    /// Query keys whose values may be exported (still masked and pseudonymised).
    pub allowed_query_keys: Vec<String>,
}

pub struct Privacy {
    key: IdKey,
    options: PrivacyOptions,
    /// Order ids, and user ids, with their pseudonyms (and URL forms): an HMAC per
    /// occurrence would cost more than the rest of the stage. Looked up by `&str`, shared
    /// by every span naming them.
    pseudonyms: [HashMap<String, Arc<KnownId>>; 2],
    /// Cleaned paths, routing keys, names and hosts, and span names, by value, for values
    /// holding none of their span's known ids (the result then depends on the value
    /// alone): a host's traffic repeats them, and cleaning one costs several times a lookup.
    memo: [HashMap<String, String>; MEMO_SLOTS],
}

const MEMO_SLOTS: usize = 5;
/// The memo slot of a policy whose result depends on the value alone and whose values
/// repeat; free text, queries and ids (often unique) are cleaned every time.
fn memo_slot(policy: Policy) -> Option<usize> {
    match policy {
        Policy::Path => Some(0),
        Policy::RoutingKey => Some(1),
        Policy::Name => Some(2),
        Policy::Host => Some(3),
        Policy::Keep | Policy::Query | Policy::Text | Policy::Id => None,
    }
}
const SPAN_NAMES: usize = 4;
/// Values kept per memo slot; the slot starts over beyond this.
const MAX_MEMO: usize = 4096;

/// Pseudonyms kept; the cache starts over beyond this.
const MAX_CACHED_PSEUDONYMS: usize = 4096;

/// What `apply` did to each attribute, and why, for `--privacy-dry-run`; kept only when
/// asked for (the second field), as the agent's hot path has no use for it.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Redactions(
    pub BTreeMap<String, BTreeSet<&'static str>>,
    #[serde(skip)] bool,
);

impl Redactions {
    fn note(&mut self, key: &str, why: &'static str) {
        if self.1 {
            self.0.entry(key.to_owned()).or_default().insert(why);
        }
    }
}

const DROPPED: &str = "dropped: not on the allow-list";

/// An attribute's policy when it is on the allow-list (else it is noted as dropped).
fn listed(key: &str, why: &mut Redactions) -> Option<Policy> {
    let listed = policy(key);
    if listed.is_none() {
        why.note(key, DROPPED);
    }
    listed
}
const TEMPLATED: &str = "templated: ids and free text replaced";
const REDACTED: &str = "query values redacted";
const SANITISED: &str = "input values removed";
const MASKED: &str = "personal data or secret masked";
const PSEUDONYMISED: &str = "id pseudonymised";

impl Privacy {
    pub fn new(key: IdKey, options: PrivacyOptions) -> Self {
        Self {
            key,
            options,
            pseudonyms: Default::default(),
            memo: Default::default(),
        }
    }

    /// The id with its pseudonym, made once and then shared.
    fn known(&mut self, id: &str, user: bool) -> Arc<KnownId> {
        let cache = &mut self.pseudonyms[usize::from(user)];
        if let Some(known) = cache.get(id) {
            return known.clone();
        }
        let pseudonym = if user {
            self.key.user_pseudonym(id)
        } else {
            self.key.pseudonym(id)
        };
        if cache.len() >= MAX_CACHED_PSEUDONYMS {
            cache.clear();
        }
        let known = Arc::new(KnownId::new(id.to_owned(), pseudonym));
        cache.insert(id.to_owned(), known.clone());
        known
    }

    /// The ids of the span's trace with their pseudonyms (none when pseudonymisation is
    /// off), longest first so an id inside another is not split.
    fn known_ids(&mut self, span: &ResolvedSpan) -> Vec<Arc<KnownId>> {
        if !self.options.pseudonymise_ids {
            return Vec::new();
        }
        let exchange = &span.exchange;
        let own_users = exchange
            .business
            .iter()
            .filter(|(k, _)| k == USER_ID)
            .map(|(_, v)| v);
        let orders = span.known_ids.orders.iter().chain(&exchange.order_ids);
        let users = span.known_ids.users.iter().chain(own_users);
        let mut ids: Vec<Arc<KnownId>> = orders.map(|id| self.known(id, false)).collect();
        for id in users {
            let known = self.known(id, true);
            ids.push(known);
        }
        ids.sort_by(|a, b| b.raw.len().cmp(&a.raw.len()).then(a.raw.cmp(&b.raw)));
        ids.dedup_by(|a, b| a.raw == b.raw);
        ids
    }

    /// Makes `span` safe to export; with `explain`, says what it did to each attribute.
    pub fn apply(&mut self, span: &mut ResolvedSpan, explain: bool) -> Redactions {
        let mut why = Redactions(BTreeMap::new(), explain);
        let ids = self.known_ids(span);
        // Every span of an order's trace names its order (as a pseudonym where on).
        let trace_order = span.known_ids.orders.first().cloned();
        let exchange = &mut span.exchange;
        if let Some(order) = trace_order.filter(|_| span.order_trace) {
            if !exchange.business.iter().any(|(k, _)| k == ORDER_ID) {
                exchange.business.push((ORDER_ID.to_owned(), order));
                // Its trace names the order, the span itself does not (a batch job
                // started while handling it): not a step of the order's journey.
                exchange
                    .attributes
                    .push((ORDER_FROM_TRACE, AttrValue::fixed("true")));
            }
        }
        let mut name = std::mem::take(&mut exchange.name);
        self.memoised(
            SPAN_NAMES,
            &mut name,
            &ids,
            &mut why,
            |privacy, name, why| *name = privacy.span_name(name, &ids, why),
        );
        exchange.name = name;
        // One policy lookup per attribute: unlisted ones dropped, the others cleaned.
        exchange.attributes.retain_mut(|(key, value)| {
            let Some(policy) = listed(key, &mut why) else {
                return false;
            };
            if let AttrValue::Str(text) = value {
                if policy != Policy::Keep {
                    self.clean(policy, key, text.to_mut(), &ids, &mut why);
                }
            }
            true
        });
        exchange.business.retain_mut(|(key, value)| {
            let Some(policy) = listed(key, &mut why) else {
                return false;
            };
            self.clean(policy, key, value, &ids, &mut why);
            true
        });
        if let ExchangeStatus::Error { message, .. } = &mut exchange.status {
            self.free_text("status.message", message, &ids, &mut why);
        }
        // Raw bodies and headers never leave the agent; drop them now so nothing downstream
        // can export them by mistake.
        exchange.record = crate::protocols::Exchange::no_record();
        if self.options.pseudonymise_ids {
            let order_ids = std::mem::take(&mut exchange.order_ids);
            exchange.order_ids = order_ids
                .iter()
                .map(|id| self.known(id, false).pseudonym.clone())
                .collect();
        }
        why
    }

    /// `clean_by` through the memo where its result depends on the value alone: no known id
    /// of the span occurs in it (most attributes of an order's spans name no id), and no
    /// explanation asked for.
    fn memoised(
        &mut self,
        slot: usize,
        value: &mut String,
        ids: &[Arc<KnownId>],
        why: &mut Redactions,
        clean: impl FnOnce(&mut Self, &mut String, &mut Redactions),
    ) {
        if why.1 || ids::any_in(value, ids) {
            return clean(self, value, why);
        }
        if let Some(cleaned) = self.memo[slot].get(value.as_str()) {
            value.clone_from(cleaned);
            return;
        }
        let raw = value.clone();
        clean(self, value, why);
        let memo = &mut self.memo[slot];
        if memo.len() >= MAX_MEMO {
            memo.clear();
        }
        memo.insert(raw, value.clone());
    }

    fn clean(
        &mut self,
        policy: Policy,
        key: &str,
        value: &mut String,
        ids: &[Arc<KnownId>],
        why: &mut Redactions,
    ) {
        match memo_slot(policy) {
            Some(slot) => self.memoised(slot, value, ids, why, |privacy, value, why| {
                privacy.clean_by(policy, key, value, ids, why)
            }),
            None => self.clean_by(policy, key, value, ids, why),
        }
    }

    fn clean_by(
        &self,
        policy: Policy,
        key: &str,
        value: &mut String,
        ids: &[Arc<KnownId>],
        why: &mut Redactions,
    ) {
        match policy {
            Policy::Keep => {}
            Policy::Path => {
                self.template(key, value, ids, why, |v| route::template_segments(v, '/'))
            }
            Policy::RoutingKey => {
                self.template(key, value, ids, why, |v| route::template_segments(v, '.'))
            }
            Policy::Name => self.template(key, value, ids, why, |v| {
                route::template_object_name(v, '.')
            }),
            Policy::Query => {
                let redacted = redact_query(value, &self.options.allowed_query_keys);
                if redacted != *value {
                    *value = redacted;
                    why.note(key, REDACTED);
                }
                self.mask_and_replace(key, value, ids, why);
            }
            Policy::Text => self.free_text(key, value, ids, why),
            Policy::Host if is_ip_address(value) => {}
            Policy::Host => self.free_text(key, value, ids, why),
            Policy::Id => self.id(key, value, ids, why),
        }
    }

    /// An `app.order.id` / `app.user.id`: its pseudonym, or the id with personal data
    /// masked (a user id that is an e-mail address).
    fn id(&self, key: &str, value: &mut String, ids: &[Arc<KnownId>], why: &mut Redactions) {
        if self.options.pseudonymise_ids {
            let known = ids.iter().find(|id| id.raw == *value);
            *value = match known {
                Some(id) => id.pseudonym.clone(),
                None if key == USER_ID => self.key.user_pseudonym(value),
                None => self.key.pseudonym(value),
            };
            why.note(key, PSEUDONYMISED);
        } else if let Some(masked) = mask(value) {
            *value = masked;
            why.note(key, MASKED);
        }
    }

    fn template(
        &self,
        key: &str,
        value: &mut String,
        ids: &[Arc<KnownId>],
        why: &mut Redactions,
        template: impl Fn(&str) -> String,
    ) {
        // Known ids first, so they read as ids (not free text) when templated; then the
        // maskers, so an e-mail split by `.` does not leave its first part as a word.
        self.replace(key, value, ids, why);
        self.mask(key, value, why);
        let templated = template(value);
        if templated != *value {
            *value = templated;
            why.note(key, TEMPLATED);
        }
    }

    fn free_text(&self, key: &str, value: &mut String, ids: &[Arc<KnownId>], why: &mut Redactions) {
        let sanitised = sanitize_message(value);
        if sanitised != *value {
            *value = sanitised;
            why.note(key, SANITISED);
        }
        self.mask_and_replace(key, value, ids, why);
    }

    fn mask_and_replace(
        &self,
        key: &str,
        value: &mut String,
        ids: &[Arc<KnownId>],
        why: &mut Redactions,
    ) {
        self.replace(key, value, ids, why);
        self.mask(key, value, why);
    }

    /// The maskers, where configured: the second line after the allow-list.
    fn mask(&self, key: &str, value: &mut String, why: &mut Redactions) {
        if !self.options.mask_personal_data {
            return;
        }
        if let Some(masked) = mask(value) {
            *value = masked;
            why.note(key, MASKED);
        }
    }

    fn replace(&self, key: &str, value: &mut String, ids: &[Arc<KnownId>], why: &mut Redactions) {
        if replace_ids(value, ids) {
            why.note(key, PSEUDONYMISED);
        }
    }

    /// A span name keeps its words: `GET /orders/{id}`, `publish orders`, `SELECT
    /// orders_2024`; paths are templated like `url.path`, other words like object names.
    fn span_name(&self, name: &str, ids: &[Arc<KnownId>], why: &mut Redactions) -> String {
        let mut out = name.to_owned();
        self.replace("name", &mut out, ids, why);
        let mut templated = String::with_capacity(out.len());
        for (i, word) in out.split(' ').enumerate() {
            if i > 0 {
                templated.push(' ');
            }
            if word.starts_with('/') {
                templated.push_str(&route::template_segments(word, '/'));
                continue;
            }
            // `shop.v1.Orders/GetOrder` (gRPC): each part like an object name.
            for (j, part) in word.split('/').enumerate() {
                if j > 0 {
                    templated.push('/');
                }
                templated.push_str(&route::template_object_name(part, '.'));
            }
        }
        if templated != out {
            why.note("name", TEMPLATED);
            out = templated;
        }
        self.mask("name", &mut out, why);
        out
    }
}

/// `10.0.0.7`, `10.0.0.7:8080`, `[::1]:8080`: an address, not text.
fn is_ip_address(host: &str) -> bool {
    host.parse::<std::net::SocketAddr>().is_ok() || host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests;
