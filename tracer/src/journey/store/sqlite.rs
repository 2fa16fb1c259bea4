//! The embedded store: one SQLite file (WAL, so `tracer orders` reads while the agent writes).
use std::path::Path;

use anyhow::Context;
use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection, ToSql,
};

use super::{Db, Value};
use crate::privacy::files;

pub struct SqliteDb(Connection);

/// SQLite's page cache, in KiB (as a negative `cache_size`; SQLite's default is 2 MiB).
/// Each step's primary-key entry goes next to its order's, anywhere in the index: with the
/// default, many inserts read their page back from the file.
const CACHE_KIB: i64 = -16 * 1024;

impl SqliteDb {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            files::create_private_dir(dir).with_context(|| {
                format!("creating the journey store's directory {}", dir.display())
            })?;
        }
        // SQLite gives its -wal and -shm files the database file's mode.
        files::make_private(path).with_context(|| {
            format!("creating the journey store {} (mode 0600)", path.display())
        })?;
        let connection = Connection::open(path)
            .with_context(|| format!("opening the journey store {}", path.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .context("setting SQLite's busy timeout")?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| connection.pragma_update(None, "cache_size", CACHE_KIB))
            .with_context(|| format!("configuring the journey store {}", path.display()))?;
        Ok(Self(connection))
    }
}

/// Parameters are bound from the store's values as they are, text without a copy.
struct Param<'a>(&'a Value<'a>);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

fn params<'a>(values: &'a [Value<'a>]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(values.iter().map(Param))
}

impl Db for SqliteDb {
    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn execute(&mut self, sql: &str, values: &[Value<'_>]) -> anyhow::Result<u64> {
        let mut statement = self.0.prepare_cached(sql)?;
        let changed = statement.execute(params(values))?;
        Ok(changed as u64)
    }

    fn query(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
    ) -> anyhow::Result<Vec<Vec<Value<'static>>>> {
        let mut statement = self.0.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(params(values))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Text(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned().into())
                    }
                    _ => Value::Null,
                });
            }
            out.push(values);
        }
        Ok(out)
    }
}
