//! What PostgreSQL extraction rules read: the value given to a column, by column name
//! (bound parameters and literals of INSERT/UPDATE/WHERE).
use crate::protocols::record::{lookup, Record, Source, SourceShape};

pub static SOURCES: &[Source] = &[Source::new(
    "postgres_param",
    SourceShape::Named {
        case_insensitive: false,
    },
)];

#[derive(Debug)]
pub struct PostgresRecord {
    pub columns: Vec<(String, String)>,
}

impl Record for PostgresRecord {
    fn text(&self, _source: &str) -> Option<&str> {
        None
    }

    fn named(&self, source: &str, name: &str) -> Option<&str> {
        (source == "postgres_param")
            .then(|| lookup(&self.columns, name, false))
            .flatten()
    }
}
