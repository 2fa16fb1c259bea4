//! `[journey]`: where order journeys are kept, which spans move an order to which status,
//! how long an order may stay in a status, and which operations have an SLA.
use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyConfig {
    /// `sqlite:PATH` (or a bare path), `postgres://…`, or `none` to keep no journeys.
    #[serde(default = "default_store")]
    pub store: String,
    /// Orders not seen for this long are forgotten, and steps older than this are
    /// deleted even from orders still active (their latest status change is kept).
    #[serde(default = "default_retention", deserialize_with = "duration")]
    pub retention: Duration,
    /// Orders with errors, and error steps, are kept this long.
    #[serde(default = "default_error_retention", deserialize_with = "duration")]
    pub error_retention: Duration,
    /// Timeline steps kept per order; later steps still update the order's state.
    #[serde(default = "default_max_steps")]
    pub max_steps_per_order: usize,
    /// How often orders are checked against `max_dwell`.
    #[serde(default = "default_check_every", deserialize_with = "duration")]
    pub check_every: Duration,
    /// Order statuses that may appear as metric labels (besides those with a limit or a
    /// rule); any other status value reads `other` in metrics.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<String>,
    /// The status that ends a journey (order lead time is measured up to it).
    #[serde(default = "default_final_status")]
    pub final_status: String,
    /// Jaeger UI base URL for the links `tracer orders` prints.
    #[serde(default = "default_jaeger_url")]
    pub jaeger_url: String,
    /// Longest time an order may stay in a status before it is reported stuck.
    #[serde(
        default = "default_max_dwell",
        deserialize_with = "durations",
        rename = "max_dwell"
    )]
    pub max_dwell: BTreeMap<String, Duration>,
    /// Spans that move an order to a status (besides an `app.order.status` attribute).
    #[serde(default, rename = "status")]
    pub status_rules: Vec<StatusRule>,
    /// Operations whose duration has a service-level agreement.
    #[serde(default = "default_sla", rename = "sla")]
    pub slas: Vec<SlaRule>,
    /// Statuses that one system may only record after another system did something: an
    /// order whose status lacks it is reported out of sync.
    #[serde(default, rename = "consistency")]
    pub consistency: Vec<ConsistencyRule>,
}

impl JourneyConfig {
    /// At `now_ns`: the times before which orders and steps, and those with errors, go.
    pub fn retention_window(&self, now_ns: i64) -> (i64, i64) {
        let before = now_ns - self.retention.as_nanos() as i64;
        let errors_before = now_ns - self.error_retention.max(self.retention).as_nanos() as i64;
        (before, errors_before)
    }
}

impl Default for JourneyConfig {
    fn default() -> Self {
        toml::from_str("").expect("journey defaults")
    }
}

/// A span (by name, optionally by service and kind) that puts its order in `status`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    pub status: String,
    /// Span name, `*` matching any run of characters: `POST /orders/*/submit`.
    pub span: String,
    pub service: Option<String>,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: Option<String>,
    /// Also when the span failed (default: only successful spans move the order).
    #[serde(default)]
    pub on_error: bool,
    /// When the order enters the status: at the span's `end` (default: the request was
    /// answered) or its `start` (work began, e.g. a consumer took the message).
    #[serde(default)]
    pub at: StatusAt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusAt {
    Start,
    #[default]
    End,
}

/// Spans named like `span` should finish within `within`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaRule {
    pub name: String,
    pub span: String,
    /// Only spans of this kind (`server`: the service that owes the SLA; `client`: a
    /// partner's API as its callers see it). Default: every kind.
    pub kind: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
}

/// `status` follows from a step named like `after` (optionally by service and kind); where
/// an order reached `status` and no such step started before it, the systems disagree.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyRule {
    pub status: String,
    pub after: String,
    pub service: Option<String>,
    pub kind: Option<String>,
    /// How long the evidence may lag behind the status (spans of other hosts arrive
    /// later); only then is the order reported.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_store() -> String {
    "sqlite:/var/lib/tracer/journeys.sqlite".into()
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_error_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_max_steps() -> usize {
    500
}

fn default_check_every() -> Duration {
    Duration::from_secs(10)
}

/// The company's order flow.
fn default_statuses() -> Vec<String> {
    [
        "INITIATED",
        "FILE_UPLOADED",
        "SUBMITTED",
        "PRICE_CALCULATION",
        "PRICE_CALCULATED",
        "B2B_CALCULATION",
        "MANUFACTURING_APPROVED",
        "MANUFACTURING",
        "SHIPPED",
        "CANCELLED",
    ]
    .map(String::from)
    .to_vec()
}

fn default_final_status() -> String {
    "SHIPPED".into()
}

fn default_jaeger_url() -> String {
    "http://localhost:16686".into()
}

/// SUBMITTED 24 h, price calculation 10 min, the B2B `/calculate` 5 min.
fn default_max_dwell() -> BTreeMap<String, Duration> {
    BTreeMap::from([
        ("SUBMITTED".into(), Duration::from_secs(24 * 3600)),
        ("PRICE_CALCULATION".into(), Duration::from_secs(600)),
        ("B2B_CALCULATION".into(), Duration::from_secs(300)),
    ])
}

/// The B2B promise: a price within 5 minutes.
fn default_sla() -> Vec<SlaRule> {
    vec![SlaRule {
        name: "b2b_calculate".into(),
        span: "* */calculate".into(),
        kind: Some("server".into()),
        within: Duration::from_secs(300),
    }]
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(status, text)| Ok((status, parse_duration(&text)?)))
        .collect::<Result<_, String>>()
        .map_err(serde::de::Error::custom)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"90s\", \"10m\" or \"24h\": {e}"))
}

/// Does `name` match `pattern`, where `*` stands for any run of characters?
pub fn glob_match(pattern: &str, name: &str) -> bool {
    GlobParts::of(pattern).matches(name)
}

/// A pattern of `glob_match` split at its stars once (at config load), for a check that
/// runs per span and per rule.
#[derive(Clone, Debug)]
pub struct Glob {
    /// No star: `first` is the whole pattern.
    exact: bool,
    first: String,
    middle: String,
    last: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let (exact, [first, middle, last]) = match GlobParts::of(pattern) {
            GlobParts::Exact(pattern) => (true, [pattern, "", ""]),
            GlobParts::Stars {
                first,
                middle,
                last,
            } => (false, [first, middle, last]),
        };
        Self {
            exact,
            first: first.to_owned(),
            middle: middle.to_owned(),
            last: last.to_owned(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let parts = if self.exact {
            GlobParts::Exact(&self.first)
        } else {
            GlobParts::Stars {
                first: &self.first,
                middle: &self.middle,
                last: &self.last,
            }
        };
        parts.matches(name)
    }
}

enum GlobParts<'a> {
    Exact(&'a str),
    Stars {
        first: &'a str,
        middle: &'a str,
        last: &'a str,
    },
}

impl<'a> GlobParts<'a> {
    fn of(pattern: &'a str) -> Self {
        let Some((first, rest)) = pattern.split_once('*') else {
            return Self::Exact(pattern);
        };
        let (middle, last) = rest.rsplit_once('*').unwrap_or(("", rest));
        Self::Stars {
            first,
            middle,
            last,
        }
    }

    fn matches(&self, name: &str) -> bool {
        let (first, middle, last) = match *self {
            Self::Exact(pattern) => return pattern == name,
            Self::Stars {
                first,
                middle,
                last,
            } => (first, middle, last),
        };
        // The fixed ends first: nearly every span name fails there (it runs per span, for
        // every SLA rule), before any part between two stars is searched for.
        if name.len() < first.len() + last.len()
            || !name.starts_with(first)
            || !name.ends_with(last)
        {
            return false;
        }
        // Every part between two stars, in order, in what the ends leave; nothing collected.
        let mut inner = &name[first.len()..name.len() - last.len()];
        for part in middle.split('*') {
            match inner.find(part) {
                Some(at) => inner = &inner[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        // The pattern split once at load (`Glob`) answers as the one split per call.
        let glob_match = |pattern: &str, name: &str| {
            let matched = super::glob_match(pattern, name);
            assert_eq!(
                Glob::new(pattern).matches(name),
                matched,
                "{pattern:?} {name:?}"
            );
            matched
        };
        assert!(glob_match(
            "POST /orders/*/submit",
            "POST /orders/{order_id}/submit"
        ));
        assert!(glob_match("* */calculate", "POST /b2b/calculate"));
        assert!(!glob_match("* */calculate", "POST /b2b/calculate/x"));
        assert!(glob_match("publish", "publish"));
        assert!(!glob_match("publish", "publish orders"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("a*b*c", "a-c-b"));
        assert!(glob_match("*x*x", "xx"));
        assert!(!glob_match("*x*x", "x"));
        assert!(glob_match("**", "anything"));
        // The fixed ends may not overlap, and parts are found between them only.
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("ab*ba", "abba"));
        assert!(!glob_match("a*b*a", "aba*"));
        assert!(!glob_match("x*b*y", "xy"));
        assert!(glob_match("é*ü", "éü"));
    }

    #[test]
    fn defaults_name_the_company_thresholds() {
        let config = JourneyConfig::default();
        assert_eq!(config.max_dwell["SUBMITTED"], Duration::from_secs(86_400));
        assert_eq!(config.slas[0].within, Duration::from_secs(300));
        assert!(config.store.starts_with("sqlite:"));
    }
}
