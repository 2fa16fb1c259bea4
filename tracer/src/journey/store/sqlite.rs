//! The embedded store: one SQLite file (WAL, so `tracer orders` reads while the agent writes).
use std::path::Path;

use anyhow::Context;
use rusqlite::{types::ValueRef, Connection};

use super::{Db, Value};
use crate::privacy::files;

pub struct SqliteDb(Connection);

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
            .with_context(|| format!("configuring the journey store {}", path.display()))?;
        Ok(Self(connection))
    }
}

fn params(values: &[Value]) -> Vec<rusqlite::types::Value> {
    values
        .iter()
        .map(|v| match v {
            Value::Int(i) => rusqlite::types::Value::Integer(*i),
            Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Value::Null => rusqlite::types::Value::Null,
        })
        .collect()
}

impl Db for SqliteDb {
    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn execute(&mut self, sql: &str, values: &[Value]) -> anyhow::Result<u64> {
        let mut statement = self.0.prepare_cached(sql)?;
        let changed = statement.execute(rusqlite::params_from_iter(params(values)))?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> anyhow::Result<Vec<Vec<Value>>> {
        let mut statement = self.0.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params(values)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    _ => Value::Null,
                });
            }
            out.push(values);
        }
        Ok(out)
    }
}
