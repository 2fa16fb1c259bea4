//! The shared store behind `tracer journey`: PostgreSQL, same tables and SQL as SQLite
//! (`?1` parameters become `$1`).
use std::collections::HashMap;

use anyhow::Context;
use bytes::BytesMut;
use postgres::{
    types::{to_sql_checked, IsNull, ToSql, Type},
    Client, NoTls,
};

use super::{Db, Value};

pub struct PgDb {
    client: Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgDb {
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let mut client = Client::connect(url, NoTls)
            .with_context(|| format!("connecting to the journey store {}", redact_password(url)))?;
        // "relation already exists, skipping" and friends are not worth a log line.
        client.batch_execute("SET client_min_messages TO WARNING")?;
        Ok(Self {
            client,
            statements: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> anyhow::Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&sql.replace('?', "$"))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(s) => s.as_ref().to_sql(ty, out),
            Value::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::TEXT | Type::VARCHAR)
    }

    to_sql_checked!();
}

fn refs<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Db for PgDb {
    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn execute(&mut self, sql: &str, values: &[Value<'_>]) -> anyhow::Result<u64> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, &refs(values))?)
    }

    fn query(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
    ) -> anyhow::Result<Vec<Vec<Value<'static>>>> {
        let statement = self.statement(sql)?;
        let rows = self.client.query(&statement, &refs(values))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        Ok(match *row.columns()[i].type_() {
                            Type::INT8 => row
                                .try_get::<_, Option<i64>>(i)?
                                .map_or(Value::Null, Value::Int),
                            _ => row
                                .try_get::<_, Option<String>>(i)?
                                .map_or(Value::Null, |s| Value::Text(s.into())),
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact_password("postgres://journey:s3cret@db:5432/tracer"),
            "postgres://journey:***@db:5432/tracer"
        );
        assert_eq!(
            super::redact_password("postgres://db/tracer"),
            "postgres://db/tracer"
        );
    }
}
