//! What a protocol's exchange offers beyond its span attributes: the sources extraction
//! rules read. Each protocol declares its sources (`Protocol::sources`), config names them
//! (`source = "http_path"`), and its record answers for them; the extractor never looks
//! inside a protocol, so a new protocol brings its sources with it.
use std::fmt::Debug;

/// How values are found in a source, and which built-in rules apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceShape {
    /// Text split by `separator`; a rule gives a `template` (`/orders/{order_id}`,
    /// `order.{id}.created`). `id_after_word`: the built-in rules take the segment after
    /// `orders`/`order` (`users`/`user`) when it has a digit.
    Template {
        separator: char,
        id_after_word: bool,
    },
    /// Values by name (headers, bound columns); a rule gives a `name`.
    Named { case_insensitive: bool },
    /// A form-encoded text (a query string); a rule gives a `name`.
    Form,
    /// A message body (JSON or form); a rule gives a `pointer` or a `key`.
    Body,
    /// The whole text is the value (message ids).
    Whole,
}

/// An extraction source a protocol offers.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub name: &'static str,
    pub shape: SourceShape,
}

impl Source {
    pub const fn new(name: &'static str, shape: SourceShape) -> Self {
        Self { name, shape }
    }
}

/// A protocol's record of one exchange, as its extraction sources see it.
pub trait Record: Send + Sync + Debug {
    /// The text of a Template, Form, Body or Whole source; `None` when this record has no
    /// such source (another protocol's) or it was not seen.
    fn text(&self, source: &str) -> Option<&str>;
    /// A value of a Named source.
    fn named(&self, source: &str, name: &str) -> Option<&str>;
    /// The first value of each of `names` in `source` that is not empty, in the order of
    /// `names`, added to `out`. Records whose named values sit in one list override it
    /// with a single pass over the list (a rule asks for four names, every exchange).
    fn named_values(&self, source: &str, names: &[String], out: &mut Vec<String>) {
        out.extend(
            names
                .iter()
                .filter_map(|n| self.named(source, n))
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        );
    }
    /// Telemetry export traffic (OTLP to a collector): never a span. Tracing it would
    /// report the agent's own exports, each export adding a span to the next one.
    fn is_telemetry_export(&self) -> bool {
        false
    }
}

/// Synthesized spans (and tests) have no protocol record.
#[derive(Debug)]
pub struct NoRecord;

impl Record for NoRecord {
    fn text(&self, _source: &str) -> Option<&str> {
        None
    }
    fn named(&self, _source: &str, _name: &str) -> Option<&str> {
        None
    }
}

/// The value of `name` in a list of (name, value) pairs, ASCII case-insensitively when
/// `case_insensitive`.
pub fn lookup<'a>(
    pairs: &'a [(String, String)],
    name: &str,
    case_insensitive: bool,
) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| {
            if case_insensitive {
                n.eq_ignore_ascii_case(name)
            } else {
                n == name
            }
        })
        .map(|(_, v)| v.as_str())
}
