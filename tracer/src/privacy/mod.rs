//! What may leave the agent: credentials dropped, personal data masked, order and user ids
//! optionally replaced by keyed HMACs — applied to every span before export.
mod key;
mod mask;

use std::collections::{BTreeSet, HashMap};

pub use key::{IdKey, KeyError, KEY_ENV};
pub use mask::mask;
use regex::Regex;

use crate::{correlate::ResolvedSpan, protocols::AttrValue};

/// Attribute names (lower-case substrings) that are never exported.
const CREDENTIALS: [&str; 4] = ["authorization", "cookie", "password", "sasl"];

pub struct Privacy {
    key: IdKey,
    pseudonymise_ids: bool,
    mask_personal_data: bool,
    /// Id → (its word-boundary pattern, its pseudonym): both cost more than the lookup.
    pseudonyms: HashMap<String, (Regex, String)>,
}

/// Ids whose pattern and pseudonym are kept; the cache starts over beyond this.
const MAX_CACHED_IDS: usize = 4096;

/// What `apply` changed, for `--privacy-dry-run`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Redactions {
    pub masked: BTreeSet<String>,
    pub dropped: BTreeSet<String>,
    pub pseudonymised: BTreeSet<String>,
}

impl Privacy {
    pub fn new(key: IdKey, pseudonymise_ids: bool, mask_personal_data: bool) -> Self {
        Self {
            key,
            pseudonymise_ids,
            mask_personal_data,
            pseudonyms: HashMap::new(),
        }
    }

    fn pseudonym_of(&mut self, id: &str) -> Option<(Regex, String)> {
        if let Some(known) = self.pseudonyms.get(id) {
            return Some(known.clone());
        }
        let pattern = Regex::new(&format!(r"\b{}\b", regex::escape(id))).ok()?;
        if self.pseudonyms.len() >= MAX_CACHED_IDS {
            self.pseudonyms.clear();
        }
        let entry = (pattern, self.key.pseudonym(id));
        self.pseudonyms.insert(id.to_owned(), entry.clone());
        Some(entry)
    }

    pub fn key(&self) -> &IdKey {
        &self.key
    }

    pub fn apply(&mut self, span: &mut ResolvedSpan) -> Redactions {
        let mut changes = Redactions::default();
        let exchange = &mut span.exchange;
        exchange.attributes.retain(|(k, _)| keep(k, &mut changes));
        exchange.business.retain(|(k, _)| keep(k, &mut changes));
        let ids: Vec<String> = if self.pseudonymise_ids {
            let mut ids: Vec<String> = exchange.order_ids.clone();
            ids.extend(
                exchange
                    .business
                    .iter()
                    .filter(|(k, _)| k == "app.user.id" || k == "app.order.id")
                    .map(|(_, v)| v.clone()),
            );
            ids.sort();
            ids.dedup();
            ids
        } else {
            Vec::new()
        };
        let patterns: Vec<(Regex, String)> =
            ids.iter().filter_map(|id| self.pseudonym_of(id)).collect();
        let mut clean = |key: &str, value: &mut String| {
            for (pattern, pseudonym) in &patterns {
                if pattern.is_match(value) {
                    *value = pattern.replace_all(value, pseudonym.as_str()).into_owned();
                    changes.pseudonymised.insert(key.to_owned());
                }
            }
            // The ids themselves are identifiers, not personal data to mask.
            if self.mask_personal_data && key != "app.order.id" && key != "app.user.id" {
                if let Some(masked) = mask(value) {
                    *value = masked;
                    changes.masked.insert(key.to_owned());
                }
            }
        };
        clean("name", &mut exchange.name);
        for (key, value) in exchange.attributes.iter_mut() {
            if let AttrValue::Str(s) = value {
                clean(key, s);
            }
        }
        for (key, value) in exchange.business.iter_mut() {
            clean(key, value);
        }
        if let crate::protocols::ExchangeStatus::Error { message, .. } = &mut exchange.status {
            clean("status.message", message);
        }
        // Raw bodies and headers never leave the agent; drop them now so nothing downstream
        // can export them by mistake.
        exchange.fields.clear();
        if self.pseudonymise_ids {
            exchange.order_ids = exchange
                .order_ids
                .iter()
                .map(|id| self.key.pseudonym(id))
                .collect();
        }
        changes
    }
}

fn keep(key: &str, changes: &mut Redactions) -> bool {
    let credential = CREDENTIALS.iter().any(|c| {
        key.as_bytes()
            .windows(c.len())
            .any(|w| w.eq_ignore_ascii_case(c.as_bytes()))
    });
    if credential {
        changes.dropped.insert(key.to_owned());
        return false;
    }
    true
}
