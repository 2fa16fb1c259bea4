//! Compiled extraction rules and the built-in defaults.
use thiserror::Error;

use super::json;
use crate::{
    config::{ExtractConfig, ExtractRule},
    protocols::{self, http::route::segments, Exchange, ExchangeKind, Record, Source, SourceShape},
};

pub const ORDER_ID: &str = "app.order.id";
pub const USER_ID: &str = "app.user.id";
pub const ORDER_STATUS: &str = "app.order.status";
/// On a span whose `app.order.id` comes from its trace only (the span names no order).
pub const ORDER_FROM_TRACE: &str = "tracer.order.from_trace";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExtractorError {
    #[error("extract rule #{index} ({attribute}): {reason}")]
    Rule {
        index: usize,
        attribute: String,
        reason: String,
    },
    #[error("extract error rule #{index}: {reason}")]
    Error { index: usize, reason: String },
}

#[derive(Clone, Debug)]
enum How {
    /// Path or routing-key template; the `{…}` segment is captured.
    Template {
        parts: Vec<String>,
        separator: char,
    },
    /// The segment after one of these path segments, if it has a digit (`/orders/{id}`).
    AfterSegment(Vec<String>),
    /// Header or query parameter names (lower-case for headers).
    Names(Vec<String>),
    Pointer(String),
    /// Keys at any depth in JSON bodies, or in form-encoded bodies.
    Keys(Vec<String>),
    Whole,
}

#[derive(Clone, Debug)]
struct Rule {
    attribute: String,
    source: &'static Source,
    how: How,
}

impl Rule {
    /// Looks values up by name in a Named source (headers), not in one text.
    fn reads_names(&self) -> bool {
        matches!(
            (&self.how, self.source.shape),
            (How::Names(_), SourceShape::Named { .. })
        )
    }
}

/// Sources one protocol offers at most (HTTP offers five).
const MAX_SOURCES: usize = 8;

/// What was found in one exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Every order id found, first-found first; the first decides the trace.
    pub order_ids: Vec<String>,
    /// `app.*` attributes to add to the span (`app.order.id` is the first order id).
    pub attributes: Vec<(String, String)>,
    /// An error the exchange reported in its body (`[[extract.error]]`).
    pub error: Option<String>,
}

pub struct Extractor {
    rules: Vec<Rule>,
    /// `[[extract.error]]`: the lookup, and the span kind it applies to.
    errors: Vec<(Rule, Option<ExchangeKind>)>,
    /// Per protocol (by name): the rules whose source its records offer, in rule order,
    /// each with its source's place among the protocol's sources. An exchange is read only
    /// by those (an HTTP exchange is never asked for a routing key).
    by_protocol: Vec<(&'static str, Vec<(usize, usize)>)>,
    /// Per source: every key the key rules look for in it (a body is read once for all).
    body_keys: Vec<(&'static str, json::KeyFinder)>,
}

impl Extractor {
    pub fn new(config: &ExtractConfig) -> Result<Self, ExtractorError> {
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            rules.push(compile(rule).map_err(|reason| ExtractorError::Rule {
                index: i + 1,
                attribute: rule.attribute.clone(),
                reason,
            })?);
        }
        if config.defaults {
            rules.extend(defaults());
        }
        let mut errors = Vec::new();
        for (i, rule) in config.errors.iter().enumerate() {
            let invalid = |reason: String| ExtractorError::Error {
                index: i + 1,
                reason,
            };
            let kind = match rule.kind.as_deref() {
                None => None,
                Some(kind) => Some(ExchangeKind::parse(kind).ok_or_else(|| {
                    invalid(format!(
                        "kind {kind:?} is not one of server, client, producer, consumer"
                    ))
                })?),
            };
            errors.push((compile(&rule.as_extract_rule()).map_err(invalid)?, kind));
        }
        let by_protocol = protocols::PROTOCOLS
            .iter()
            .map(|protocol| {
                let offered = protocol.sources();
                assert!(
                    offered.len() <= MAX_SOURCES,
                    "a protocol offers at most {MAX_SOURCES} sources"
                );
                let indices = (0..rules.len())
                    .filter_map(|i| {
                        let slot = offered.iter().position(|s| s.name == rules[i].source.name);
                        slot.map(|slot| (i, slot))
                    })
                    .collect();
                (protocol.name(), indices)
            })
            .collect();
        let mut body_keys: Vec<(&'static str, Vec<String>)> = Vec::new();
        for rule in rules.iter().chain(errors.iter().map(|(rule, _)| rule)) {
            if let How::Keys(keys) = &rule.how {
                let all = json::by_source(&mut body_keys, rule.source.name, Vec::new);
                for key in keys {
                    if !all.contains(key) {
                        all.push(key.clone());
                    }
                }
            }
        }
        let body_keys = body_keys
            .into_iter()
            .map(|(source, keys)| (source, json::KeyFinder::new(keys)))
            .collect();
        Ok(Self {
            rules,
            errors,
            by_protocol,
            body_keys,
        })
    }

    pub fn extract(&self, exchange: &Exchange) -> Extracted {
        let record = &*exchange.record;
        let mut found: Vec<(String, String)> = Vec::new();
        let mut bodies = json::Bodies::default();
        let mut values = Vec::new();
        let mut apply = |rule: &Rule, text: Option<&str>, bodies: &mut json::Bodies| {
            find(rule, record, text, &self.body_keys, bodies, &mut values);
            for value in values.drain(..) {
                if !found
                    .iter()
                    .any(|(a, v)| *a == rule.attribute && *v == value)
                {
                    found.push((rule.attribute.clone(), value));
                }
            }
        };
        match self
            .by_protocol
            .iter()
            .find(|(name, _)| *name == exchange.protocol)
        {
            Some((_, rules)) => {
                // Each source's text is read once for all the rules that read it (twelve
                // built-in rules read five HTTP sources); a rule whose source has nothing
                // in it is passed over.
                let mut texts: [Option<Option<&str>>; MAX_SOURCES] = [None; MAX_SOURCES];
                for &(i, slot) in rules {
                    let rule = &self.rules[i];
                    if rule.reads_names() {
                        apply(rule, None, &mut bodies);
                        continue;
                    }
                    let text = *texts[slot].get_or_insert_with(|| record.text(rule.source.name));
                    if text.is_some_and(|text| !text.is_empty()) {
                        apply(rule, text, &mut bodies);
                    }
                }
            }
            // A protocol that registers no sources: every rule asks its record.
            None => {
                for rule in &self.rules {
                    apply(rule, record.text(rule.source.name), &mut bodies);
                }
            }
        }
        if found.is_empty() && self.errors.is_empty() {
            return Extracted::default();
        }
        let order_ids: Vec<String> = found
            .iter()
            .filter(|(a, _)| a == ORDER_ID)
            .map(|(_, v)| v.clone())
            .collect();
        let mut attributes = Vec::new();
        for (attribute, value) in found {
            // One value per attribute on the span; further order ids become links.
            if attributes
                .iter()
                .any(|(a, _): &(String, String)| *a == attribute)
            {
                continue;
            }
            // A status alone (no order in sight) is not about an order.
            if attribute == ORDER_STATUS && order_ids.is_empty() {
                continue;
            }
            attributes.push((attribute, value));
        }
        let error = self
            .errors
            .iter()
            .filter(|(_, kind)| kind.is_none_or(|k| k == exchange.kind))
            .find_map(|(rule, _)| {
                let text = record.text(rule.source.name);
                find(
                    rule,
                    record,
                    text,
                    &self.body_keys,
                    &mut bodies,
                    &mut values,
                );
                let first = (!values.is_empty()).then(|| values.swap_remove(0));
                values.clear();
                first
            });
        Extracted {
            order_ids,
            attributes,
            error,
        }
    }
}

fn compile(rule: &ExtractRule) -> Result<Rule, String> {
    if !rule.attribute.starts_with("app.") {
        return Err("attribute must be in the app.* namespace".into());
    }
    let source = protocols::source(rule.source.get_ref()).ok_or_else(|| {
        let known: Vec<&str> = protocols::sources().iter().map(|s| s.name).collect();
        format!(
            "unknown source {:?}; the protocols offer {}",
            rule.source.get_ref(),
            known.join(", ")
        )
    })?;
    let how = match source.shape {
        SourceShape::Template { separator, .. } => {
            let template = rule
                .template
                .as_deref()
                .ok_or("this source needs `template`")?;
            let parts: Vec<String> = template.split(separator).map(str::to_owned).collect();
            if parts
                .iter()
                .filter(|p| p.starts_with('{') && p.ends_with('}'))
                .count()
                != 1
            {
                return Err(format!(
                    "template {template:?} needs exactly one {{placeholder}}"
                ));
            }
            How::Template { parts, separator }
        }
        SourceShape::Named { case_insensitive } => {
            let name = rule.name.as_deref().ok_or("this source needs `name`")?;
            How::Names(vec![if case_insensitive {
                name.to_ascii_lowercase()
            } else {
                name.to_owned()
            }])
        }
        SourceShape::Form => {
            How::Names(vec![rule.name.clone().ok_or("this source needs `name`")?])
        }
        SourceShape::Body => match (&rule.pointer, &rule.key) {
            (Some(pointer), None) if pointer.starts_with('/') => How::Pointer(pointer.clone()),
            (Some(_), None) => return Err("`pointer` must start with '/'".into()),
            (None, Some(key)) => How::Keys(vec![key.clone()]),
            _ => return Err("body sources need exactly one of `pointer` or `key`".into()),
        },
        SourceShape::Whole => How::Whole,
    };
    Ok(Rule {
        attribute: rule.attribute.clone(),
        source,
        how,
    })
}

/// `order_id`, `orderId`, `order-id`, `/orders/{id}`, and the same for users, in every
/// source a protocol offers (by its shape); `status` in bodies.
fn defaults() -> Vec<Rule> {
    let mut rules = Vec::new();
    let sources = protocols::sources();
    for (attribute, word) in [(ORDER_ID, "order"), (USER_ID, "user")] {
        let keys = vec![
            format!("{word}_id"),
            format!("{word}Id"),
            format!("{word}-id"),
        ];
        let mut names = keys.clone();
        names.push(format!("x-{word}-id"));
        for source in &sources {
            let how = match source.shape {
                SourceShape::Template {
                    id_after_word: true,
                    ..
                } => How::AfterSegment(vec![format!("{word}s"), word.to_owned()]),
                SourceShape::Template { .. } | SourceShape::Whole => continue,
                SourceShape::Named {
                    case_insensitive: true,
                } => How::Names(names.iter().map(|n| n.to_ascii_lowercase()).collect()),
                SourceShape::Named { .. } => How::Names(names.clone()),
                SourceShape::Form => How::Names(keys.clone()),
                SourceShape::Body => How::Keys(keys.clone()),
            };
            rules.push(Rule {
                attribute: attribute.to_owned(),
                source,
                how,
            });
        }
    }
    let status_keys = How::Keys(vec![
        "order_status".into(),
        "orderStatus".into(),
        "status".into(),
    ]);
    for source in sources {
        if source.shape == SourceShape::Body {
            rules.push(Rule {
                attribute: ORDER_STATUS.into(),
                source,
                how: status_keys.clone(),
            });
        }
    }
    rules
}

/// Adds the values `rule` finds in `record` to `out`; `text` is the record's text of the
/// rule's source (unused by rules that read names).
fn find(
    rule: &Rule,
    record: &dyn Record,
    text: Option<&str>,
    body_keys: &[(&'static str, json::KeyFinder)],
    bodies: &mut json::Bodies,
    out: &mut Vec<String>,
) {
    let name = rule.source.name;
    if let (How::Names(names), SourceShape::Named { .. }) = (&rule.how, rule.source.shape) {
        record.named_values(name, names, out);
        return;
    }
    let Some(text) = text else {
        return;
    };
    if text.is_empty() {
        return;
    }
    match &rule.how {
        How::Names(names) if text.contains('=') => form_values(text, names, out),
        How::Names(_) => {}
        How::Template { parts, separator } => {
            out.extend(template_value(text, parts, *separator));
        }
        How::AfterSegment(words) => out.extend(after_segment(text, words)),
        How::Pointer(pointer) if json::may_hold(text, json::last_segment(pointer)) => out.extend(
            bodies
                .parsed(name, text)
                .and_then(|v| json::pointer_in(v, pointer)),
        ),
        How::Pointer(_) => {}
        How::Keys(keys) => {
            let trimmed = text.trim_start();
            if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
                if text.contains('=') {
                    form_values(text, keys, out)
                }
                return;
            }
            let (_, finder) = body_keys
                .iter()
                .find(|(s, _)| *s == name)
                .expect("every key rule's source has its finder (Extractor::new)");
            if !bodies.may_hold_any(name, text, finder, keys) {
                return; // none of the keys is in the text: no parse (most bodies name no id)
            }
            match bodies.values_of(name, text, finder, keys) {
                Some(values) => out.extend(values),
                None => out.extend(json::scan(text, keys)),
            }
        }
        How::Whole => out.push(text.to_owned()),
    }
}

fn template_value(text: &str, parts: &[String], separator: char) -> Option<String> {
    if segments(text, separator).count() != parts.len() {
        return None;
    }
    let mut value = None;
    for (part, segment) in parts.iter().zip(segments(text, separator)) {
        if part.starts_with('{') && part.ends_with('}') {
            value = Some(segment.to_string()).filter(|s| !s.is_empty());
        } else if part != segment {
            return None;
        }
    }
    value
}

fn after_segment(path: &str, words: &[String]) -> Option<String> {
    if !path.bytes().any(|b| b.is_ascii_digit()) {
        return None; // the id segment needs a digit: most paths are settled by this scan
    }
    let mut segments = segments(path, '/').peekable();
    while let Some(segment) = segments.next() {
        let next = *segments.peek()?;
        if words.iter().any(|word| word == segment) && next.bytes().any(|b| b.is_ascii_digit()) {
            return Some(next.to_owned());
        }
    }
    None
}

/// Values of `names` in a form-encoded (or query) string.
/// Pairs are decoded without copying; only wanted values are owned.
fn form_values(text: &str, names: &[String], out: &mut Vec<String>) {
    out.extend(
        form_urlencoded::parse(text.as_bytes())
            .filter(|(k, v)| !v.is_empty() && names.iter().any(|n| n == k))
            .map(|(_, v)| v.into_owned()),
    )
}
