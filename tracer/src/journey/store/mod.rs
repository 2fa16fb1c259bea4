//! Where journeys live: SQLite on the agent's host, or PostgreSQL behind `tracer journey`.
//! Both speak the same SQL through [`Db`], so both keep the same tables the same way.
mod postgres;
mod sqlite;

use std::{borrow::Cow, collections::HashMap, path::PathBuf};

use anyhow::Context;

use super::{Order, StatusChange};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
    /// Journeys are not kept.
    None,
}

impl StoreLocation {
    /// `sqlite:PATH` or a bare path, `postgres://…` / `postgresql://…`, or `none`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "none" {
            Ok(Self::None)
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Self::Postgres(text.to_owned()))
        } else {
            let path = text.strip_prefix("sqlite:").unwrap_or(text);
            if path.is_empty() || path.contains("://") {
                Err(format!(
                    "{text:?} is not sqlite:PATH, a path, postgres://… or none"
                ))
            } else {
                Ok(Self::Sqlite(PathBuf::from(path)))
            }
        }
    }
}

/// One span in an order's timeline.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub order_id: String,
    pub span_id: String,
    pub trace_id: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub service: String,
    pub operation: String,
    pub kind: String,
    /// The status this step moved the order to, and when (Unix ns; 0 without a status).
    pub status: Option<String>,
    pub status_at_ns: i64,
    pub error: Option<String>,
    /// Made up by tracer ("stuck in SUBMITTED"), not observed.
    pub synthesized: bool,
}

/// A SQL value: the tables use only BIGINT and TEXT. Text to write is borrowed from the
/// step or order, not copied per column and row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Text(Cow<'a, str>),
    Null,
}

impl Value<'_> {
    fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            _ => 0,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.to_string()),
            _ => None,
        }
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Text(Cow::Borrowed(s))
    }
}

impl From<i64> for Value<'_> {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl<'a> From<Option<&'a String>> for Value<'a> {
    fn from(s: Option<&'a String>) -> Self {
        s.map_or(Value::Null, |s| Value::Text(Cow::Borrowed(s)))
    }
}

/// The few things the store asks of a database. SQL uses `?1`-style parameters.
pub trait Db: Send {
    fn batch(&mut self, sql: &str) -> anyhow::Result<()>;
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> anyhow::Result<u64>;
    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
    ) -> anyhow::Result<Vec<Vec<Value<'static>>>>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journey_orders (
    order_id TEXT PRIMARY KEY,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL,
    last_service TEXT NOT NULL,
    last_trace_id TEXT NOT NULL,
    last_span_id TEXT NOT NULL,
    errors BIGINT NOT NULL,
    user_id TEXT,
    stuck_status TEXT
);
CREATE INDEX IF NOT EXISTS journey_orders_last_seen ON journey_orders (last_seen_ns);
CREATE TABLE IF NOT EXISTS journey_steps (
    order_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    start_ns BIGINT NOT NULL,
    end_ns BIGINT NOT NULL,
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT,
    status_at_ns BIGINT NOT NULL,
    error TEXT,
    synthesized BIGINT NOT NULL,
    PRIMARY KEY (order_id, span_id)
);
-- An order's steps are found by the primary key's prefix and sorted in memory; a second
-- index cost every step insert more than it saved. (Rows are appended in arrival order: a
-- table clustered by order id dirtied a page per insert, and each commit wrote them all.)
DROP INDEX IF EXISTS journey_steps_time;
";

const ORDER_COLUMNS: &str = "order_id, first_seen_ns, last_seen_ns, last_service, last_trace_id, last_span_id, errors, user_id, stuck_status";

const STEP_COLUMNS: &str =
    "order_id, span_id, trace_id, start_ns, end_ns, service, operation, kind, status, status_at_ns, error, synthesized";

/// Rows written by one statement where a save has that many: one statement run (cache
/// lookup, reset, start) per 32 rows instead of one per row.
const ROWS_PER_STATEMENT: usize = 32;
/// Columns of an order and of a step: the parameters of one row.
const ORDER_PARAMS: usize = 9;
const STEP_PARAMS: usize = 12;

/// `(?1, …, ?n), (?n+1, …)`: the values of `rows` rows of `columns` parameters each.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let numbers: Vec<String> = (1..=columns)
            .map(|c| format!("?{}", r * columns + c))
            .collect();
        format!("({})", numbers.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// `INSERT` of `rows` orders, each replacing what was stored of it.
fn upsert_orders(rows: usize) -> String {
    format!(
        "INSERT INTO journey_orders ({ORDER_COLUMNS}) VALUES {}
ON CONFLICT (order_id) DO UPDATE SET first_seen_ns = excluded.first_seen_ns, last_seen_ns = excluded.last_seen_ns,
    last_service = excluded.last_service, last_trace_id = excluded.last_trace_id, last_span_id = excluded.last_span_id,
    errors = excluded.errors, user_id = excluded.user_id, stuck_status = excluded.stuck_status",
        placeholders(rows, ORDER_PARAMS)
    )
}

/// `INSERT` of `rows` steps, a step already stored (same order and span) left as it is.
fn insert_steps(rows: usize) -> String {
    format!(
        "INSERT INTO journey_steps ({STEP_COLUMNS}) VALUES {} ON CONFLICT (order_id, span_id) DO NOTHING",
        placeholders(rows, STEP_PARAMS)
    )
}

fn order_params<'a>(order: &&'a Order, out: &mut Vec<Value<'a>>) {
    out.extend([
        order.id.as_str().into(),
        order.first_seen_ns.into(),
        order.last_seen_ns.into(),
        order.last_service.as_str().into(),
        order.last_trace_id.as_str().into(),
        order.last_span_id.as_str().into(),
        order.errors.into(),
        order.user_id.as_ref().into(),
        order.stuck_status.as_ref().into(),
    ]);
}

fn step_params<'a>(step: &'a Step, out: &mut Vec<Value<'a>>) {
    out.extend([
        step.order_id.as_str().into(),
        step.span_id.as_str().into(),
        step.trace_id.as_str().into(),
        step.start_ns.into(),
        step.end_ns.into(),
        step.service.as_str().into(),
        step.operation.as_str().into(),
        step.kind.as_str().into(),
        step.status.as_ref().into(),
        step.status_at_ns.into(),
        step.error.as_ref().into(),
        i64::from(step.synthesized).into(),
    ]);
}

pub struct Store {
    db: Box<dyn Db>,
    /// The SQL of one row, and of `ROWS_PER_STATEMENT` rows, of orders and of steps.
    upsert_order: String,
    upsert_orders: String,
    insert_step: String,
    insert_steps: String,
}

impl Store {
    /// Opens (and for SQLite creates) the store and its tables. `None` for `none`.
    pub fn open(location: &StoreLocation) -> anyhow::Result<Option<Self>> {
        let db: Box<dyn Db> = match location {
            StoreLocation::None => return Ok(None),
            StoreLocation::Sqlite(path) => Box::new(sqlite::SqliteDb::open(path)?),
            StoreLocation::Postgres(url) => Box::new(postgres::PgDb::connect(url)?),
        };
        let mut store = Self {
            db,
            upsert_order: upsert_orders(1),
            upsert_orders: upsert_orders(ROWS_PER_STATEMENT),
            insert_step: insert_steps(1),
            insert_steps: insert_steps(ROWS_PER_STATEMENT),
        };
        store
            .db
            .batch(SCHEMA)
            .context("creating the journey tables")?;
        Ok(Some(store))
    }

    /// Orders last seen at or after `since_ns`, with their status history and services.
    pub fn load(&mut self, since_ns: i64) -> anyhow::Result<Vec<Order>> {
        let rows = self.db.query(
            &format!("SELECT {ORDER_COLUMNS} FROM journey_orders WHERE last_seen_ns >= ?1 ORDER BY last_seen_ns DESC"),
            &[since_ns.into()],
        )?;
        let mut orders: Vec<Order> = rows.iter().map(|row| order_from_row(row)).collect();
        let index: HashMap<String, usize> = orders
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.clone(), i))
            .collect();
        let services = self.db.query(
            "SELECT DISTINCT s.order_id, s.service FROM journey_steps s JOIN journey_orders o ON o.order_id = s.order_id WHERE o.last_seen_ns >= ?1 AND s.synthesized = 0",
            &[since_ns.into()],
        )?;
        for row in services {
            if let (Some(id), Some(service)) = (row[0].text(), row[1].text()) {
                if let Some(&i) = index.get(&id) {
                    orders[i].services.insert(service);
                }
            }
        }
        let counts = self.db.query(
            "SELECT s.order_id, COUNT(*) FROM journey_steps s JOIN journey_orders o ON o.order_id = s.order_id WHERE o.last_seen_ns >= ?1 GROUP BY s.order_id",
            &[since_ns.into()],
        )?;
        for row in counts {
            if let Some(&i) = row[0].text().and_then(|id| index.get(&id)) {
                orders[i].steps = row[1].int();
            }
        }
        let statuses = self.db.query(
            "SELECT s.order_id, s.status, s.status_at_ns, s.service, s.kind FROM journey_steps s JOIN journey_orders o ON o.order_id = s.order_id WHERE o.last_seen_ns >= ?1 AND s.status IS NOT NULL ORDER BY s.order_id, s.status_at_ns",
            &[since_ns.into()],
        )?;
        for row in statuses {
            let (Some(id), Some(status)) = (row[0].text(), row[1].text()) else {
                continue;
            };
            let Some(&i) = index.get(&id) else { continue };
            let service = row[3].text().unwrap_or_default();
            let kind = row[4].text().unwrap_or_default();
            push_status(&mut orders[i].history, status, row[2].int(), service, &kind);
        }
        Ok(orders)
    }

    /// One order and its timeline (steps in time order); its history and services come
    /// from those steps.
    pub fn order(&mut self, id: &str) -> anyhow::Result<Option<(Order, Vec<Step>)>> {
        let rows = self.db.query(
            &format!("SELECT {ORDER_COLUMNS} FROM journey_orders WHERE order_id = ?1"),
            &[id.into()],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let mut order = order_from_row(row);
        let steps = self.steps(id)?;
        let mut changes: Vec<&Step> = steps.iter().filter(|s| s.status.is_some()).collect();
        changes.sort_by_key(|s| s.status_at_ns);
        for step in changes {
            let status = step.status.clone().unwrap_or_default();
            push_status(
                &mut order.history,
                status,
                step.status_at_ns,
                step.service.clone(),
                &step.kind,
            );
        }
        order.services = steps
            .iter()
            .filter(|s| !s.synthesized)
            .map(|s| s.service.clone())
            .collect();
        order.steps = steps.len() as i64;
        Ok(Some((order, steps)))
    }

    /// An order's timeline, in time order.
    pub fn steps(&mut self, id: &str) -> anyhow::Result<Vec<Step>> {
        let rows = self.db.query(
            &format!("SELECT {STEP_COLUMNS} FROM journey_steps WHERE order_id = ?1 ORDER BY start_ns, end_ns"),
            &[id.into()],
        )?;
        Ok(rows.iter().map(|row| step_from_row(row)).collect())
    }

    /// Writes orders and new steps in one transaction (steps already stored are kept).
    /// `orders` names each order once: one statement writes many, and PostgreSQL refuses
    /// an upsert that touches a row twice.
    pub fn save(&mut self, orders: &[&Order], steps: &[Step]) -> anyhow::Result<()> {
        self.db.batch("BEGIN")?;
        let result = self.write(orders, steps);
        match result {
            Ok(()) => self.db.batch("COMMIT"),
            Err(error) => {
                let _ = self.db.batch("ROLLBACK");
                Err(error)
            }
        }
    }

    fn write(&mut self, orders: &[&Order], steps: &[Step]) -> anyhow::Result<()> {
        let db = self.db.as_mut();
        let orders_sql = (self.upsert_order.as_str(), self.upsert_orders.as_str());
        write_rows(db, orders, orders_sql, order_params)?;
        let steps_sql = (self.insert_step.as_str(), self.insert_steps.as_str());
        write_rows(db, steps, steps_sql, step_params)
    }

    /// Applies retention: orders last seen before `before_ns` are forgotten, except those
    /// with errors, kept until `errors_before_ns`; steps older than `before_ns` are deleted
    /// from every order, active ones too (error steps until `errors_before_ns`), except
    /// each order's latest status change, which says where the order is. Returns the
    /// numbers of orders and steps removed.
    pub fn prune(&mut self, before_ns: i64, errors_before_ns: i64) -> anyhow::Result<(u64, u64)> {
        self.db.batch("BEGIN")?;
        let result = self.delete_expired(before_ns, errors_before_ns);
        match result {
            Ok(removed) => {
                self.db.batch("COMMIT")?;
                Ok(removed)
            }
            Err(error) => {
                let _ = self.db.batch("ROLLBACK");
                Err(error)
            }
        }
    }

    fn delete_expired(
        &mut self,
        before_ns: i64,
        errors_before_ns: i64,
    ) -> anyhow::Result<(u64, u64)> {
        let window = [before_ns.into(), errors_before_ns.into()];
        let expired_orders = "last_seen_ns < ?1 AND NOT (errors > 0 AND last_seen_ns >= ?2)";
        let mut steps = self.db.execute(
            &format!("DELETE FROM journey_steps WHERE order_id IN (SELECT order_id FROM journey_orders WHERE {expired_orders})"),
            &window,
        )?;
        let orders = self.db.execute(
            &format!("DELETE FROM journey_orders WHERE {expired_orders}"),
            &window,
        )?;
        steps += self.db.execute(
            "DELETE FROM journey_steps WHERE end_ns < ?1
                AND NOT (error IS NOT NULL AND end_ns >= ?2)
                AND NOT (status IS NOT NULL AND status_at_ns = (
                    SELECT MAX(latest.status_at_ns) FROM journey_steps latest
                    WHERE latest.order_id = journey_steps.order_id AND latest.status IS NOT NULL))",
            &window,
        )?;
        Ok((orders, steps))
    }
}

/// Appends a status change (steps come in time order) unless the order is already in
/// that status; then this step may name who set it (see [`StatusChange::seen`]).
fn push_status(
    history: &mut Vec<StatusChange>,
    status: String,
    at_ns: i64,
    service: String,
    kind: &str,
) {
    match history.last_mut() {
        Some(last) if last.status == status => last.seen(at_ns, &service, kind),
        _ => history.push(StatusChange {
            status,
            at_ns,
            service,
            weight: StatusChange::setter_weight(kind),
        }),
    }
}

fn order_from_row(row: &[Value<'_>]) -> Order {
    Order {
        id: row[0].text().unwrap_or_default(),
        first_seen_ns: row[1].int(),
        last_seen_ns: row[2].int(),
        last_service: row[3].text().unwrap_or_default(),
        last_trace_id: row[4].text().unwrap_or_default(),
        last_span_id: row[5].text().unwrap_or_default(),
        errors: row[6].int(),
        user_id: row[7].text(),
        stuck_status: row[8].text(),
        history: Vec::new(),
        services: Default::default(),
        steps: 0,
    }
}

fn step_from_row(row: &[Value<'_>]) -> Step {
    Step {
        order_id: row[0].text().unwrap_or_default(),
        span_id: row[1].text().unwrap_or_default(),
        trace_id: row[2].text().unwrap_or_default(),
        start_ns: row[3].int(),
        end_ns: row[4].int(),
        service: row[5].text().unwrap_or_default(),
        operation: row[6].text().unwrap_or_default(),
        kind: row[7].text().unwrap_or_default(),
        status: row[8].text(),
        status_at_ns: row[9].int(),
        error: row[10].text(),
        synthesized: row[11].int() != 0,
    }
}

/// Writes `rows` with `sql` = (one row, `ROWS_PER_STATEMENT` rows): full statements of
/// many rows, the rest one by one.
fn write_rows<'a, T>(
    db: &mut dyn Db,
    rows: &'a [T],
    (one, many): (&str, &str),
    params: fn(&'a T, &mut Vec<Value<'a>>),
) -> anyhow::Result<()> {
    let mut values = Vec::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        if chunk.len() == ROWS_PER_STATEMENT {
            values.clear();
            chunk.iter().for_each(|row| params(row, &mut values));
            db.execute(many, &values)?;
            continue;
        }
        for row in chunk {
            values.clear();
            params(row, &mut values);
            db.execute(one, &values)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new SQLite store in the temporary directory, and its path.
    fn fresh_store(name: &str) -> (Store, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("tracer-store-{name}-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&StoreLocation::Sqlite(path.clone()))
            .unwrap()
            .unwrap();
        (store, path)
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            StoreLocation::parse("sqlite:/var/x.db"),
            Ok(StoreLocation::Sqlite("/var/x.db".into()))
        );
        assert_eq!(
            StoreLocation::parse("/tmp/j.sqlite"),
            Ok(StoreLocation::Sqlite("/tmp/j.sqlite".into()))
        );
        assert!(matches!(
            StoreLocation::parse("postgres://u@h/db"),
            Ok(StoreLocation::Postgres(_))
        ));
        assert_eq!(StoreLocation::parse("none"), Ok(StoreLocation::None));
        assert!(StoreLocation::parse("mysql://x").is_err());
        assert!(StoreLocation::parse("sqlite:").is_err());
    }

    #[test]
    fn sqlite_store_round_trips_an_order_and_its_timeline() {
        let (mut store, path) = fresh_store("test");
        let mut order = Order {
            id: "A-1".into(),
            first_seen_ns: 1,
            last_seen_ns: 30,
            last_service: "crm".into(),
            last_trace_id: "t".into(),
            last_span_id: "s2".into(),
            errors: 1,
            user_id: Some("u-1".into()),
            stuck_status: None,
            history: Vec::new(),
            services: ["crm".to_string(), "shop".to_string()].into(),
            steps: 0,
        };
        let step = |span: &str, end: i64, service: &str, status: Option<&str>| Step {
            order_id: "A-1".into(),
            span_id: span.into(),
            trace_id: "t".into(),
            start_ns: end - 1,
            end_ns: end,
            service: service.into(),
            operation: "POST /orders".into(),
            kind: "server".into(),
            status: status.map(str::to_owned),
            status_at_ns: if status.is_some() { end } else { 0 },
            error: None,
            synthesized: false,
        };
        let steps = [
            step("s1", 10, "shop", Some("INITIATED")),
            step("s2", 30, "crm", Some("SUBMITTED")),
        ];
        store.save(&[&order], &steps).unwrap();
        // A retried delivery changes nothing.
        store.save(&[&order], &steps[..1]).unwrap();
        drop(store);
        let mut store = Store::open(&StoreLocation::Sqlite(path.clone()))
            .unwrap()
            .unwrap();
        let loaded = store.load(0).unwrap();
        order.steps = 2;
        order.history = vec![
            StatusChange {
                status: "INITIATED".into(),
                at_ns: 10,
                service: "shop".into(),
                weight: 2,
            },
            StatusChange {
                status: "SUBMITTED".into(),
                at_ns: 30,
                service: "crm".into(),
                weight: 2,
            },
        ];
        assert_eq!(loaded, vec![order.clone()]);
        let (shown, timeline) = store.order("A-1").unwrap().unwrap();
        assert_eq!(shown.history, order.history);
        assert_eq!(timeline, steps.to_vec());
        assert_eq!(store.prune(31, 31).unwrap().0, 1);
        assert!(store.load(0).unwrap().is_empty());
        let _ = std::fs::remove_file(&path);
    }

    /// A save of more orders and steps than one statement writes: full statements of
    /// `ROWS_PER_STATEMENT` rows, the rest one by one; a step saved twice (in one statement,
    /// or again later) is stored once, an order saved again is updated.
    #[test]
    fn many_orders_and_steps_are_saved_in_statements_of_many_rows_each_once() {
        let (mut store, path) = fresh_store("many");
        let step = |n: i64| Step {
            order_id: "B-2".into(),
            span_id: format!("s{n}"),
            trace_id: "t".into(),
            start_ns: n,
            end_ns: n + 1,
            service: "mes".into(),
            operation: format!("op {n}"),
            kind: "client".into(),
            status: (n % 7 == 0).then(|| format!("S{n}")),
            status_at_ns: n,
            error: (n % 5 == 0).then(|| "boom".into()),
            synthesized: n % 2 == 0,
        };
        let mut steps: Vec<Step> = (0..2 * ROWS_PER_STATEMENT as i64 + 5).map(step).collect();
        steps[3] = step(1); // the same step twice inside one statement
        let order = Order {
            id: "B-2".into(),
            first_seen_ns: 0,
            last_seen_ns: 100,
            last_service: "mes".into(),
            last_trace_id: "t".into(),
            last_span_id: "s0".into(),
            errors: 0,
            user_id: None,
            stuck_status: None,
            history: Vec::new(),
            services: Default::default(),
            steps: 0,
        };
        store.save(&[&order], &steps).unwrap();
        store
            .save(&[&order], &steps[..ROWS_PER_STATEMENT + 2])
            .unwrap();
        // Orders: a full statement and a few more; saved again with a later last_seen.
        let others: Vec<Order> = (0..ROWS_PER_STATEMENT as i64 + 3)
            .map(|n| Order {
                id: format!("C-{n}"),
                last_seen_ns: 200 + n,
                user_id: (n % 3 == 0).then(|| format!("u-{n}")),
                ..order.clone()
            })
            .collect();
        let refs: Vec<&Order> = others.iter().collect();
        store.save(&refs, &[]).unwrap();
        let later: Vec<Order> = others
            .iter()
            .map(|o| Order {
                last_seen_ns: o.last_seen_ns + 1_000,
                ..o.clone()
            })
            .collect();
        store.save(&later.iter().collect::<Vec<_>>(), &[]).unwrap();
        let mut loaded = store.load(1_000).unwrap();
        loaded.sort_by_key(|o| o.last_seen_ns);
        let ids: Vec<(&str, i64, Option<&str>)> = loaded
            .iter()
            .map(|o| (o.id.as_str(), o.last_seen_ns, o.user_id.as_deref()))
            .collect();
        let expected_orders: Vec<(&str, i64, Option<&str>)> = later
            .iter()
            .map(|o| (o.id.as_str(), o.last_seen_ns, o.user_id.as_deref()))
            .collect();
        assert_eq!(ids, expected_orders);
        let mut saved = store.steps("B-2").unwrap();
        saved.sort_by_key(|s| s.start_ns);
        let mut expected = steps.clone();
        expected.remove(3);
        expected.sort_by_key(|s| s.start_ns);
        assert_eq!(saved, expected);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn retention_prunes_old_steps_of_active_orders_and_keeps_errors_longer() {
        let (mut store, path) = fresh_store("retention");
        let order = |id: &str, last_seen_ns: i64, errors: i64| Order {
            id: id.into(),
            first_seen_ns: 1,
            last_seen_ns,
            last_service: "shop".into(),
            last_trace_id: "t".into(),
            last_span_id: "s".into(),
            errors,
            user_id: None,
            stuck_status: None,
            history: Vec::new(),
            services: Default::default(),
            steps: 0,
        };
        let step = |order: &str, span: &str, end: i64, status: Option<&str>, error: bool| Step {
            order_id: order.into(),
            span_id: span.into(),
            trace_id: "t".into(),
            start_ns: end - 1,
            end_ns: end,
            service: "shop".into(),
            operation: "POST /orders".into(),
            kind: "server".into(),
            status: status.map(str::to_owned),
            status_at_ns: if status.is_some() { end } else { 0 },
            error: error.then(|| "HTTP 500".to_owned()),
            synthesized: false,
        };
        // Retention: steps before 100 go, error steps and erroneous orders before 50.
        let active = order("ACTIVE", 150, 0);
        let failed = order("FAILED", 60, 1);
        let old = order("OLD", 40, 1);
        let steps = [
            step("ACTIVE", "a1", 10, Some("INITIATED"), false),
            step("ACTIVE", "a2", 20, None, false),
            step("ACTIVE", "a3", 30, Some("SUBMITTED"), false),
            step("ACTIVE", "a4", 70, None, true),
            step("ACTIVE", "a5", 150, None, false),
            step("FAILED", "f1", 60, None, true),
            step("OLD", "o1", 40, None, true),
        ];
        store.save(&[&active, &failed, &old], &steps).unwrap();
        let (orders, removed_steps) = store.prune(100, 50).unwrap();
        assert_eq!((orders, removed_steps), (1, 3), "OLD, then a1 and a2");
        let kept: Vec<String> = store
            .steps("ACTIVE")
            .unwrap()
            .into_iter()
            .map(|s| s.span_id)
            .collect();
        assert_eq!(
            kept,
            ["a3", "a4", "a5"],
            "latest status, a recent error, recent"
        );
        assert!(store.order("FAILED").unwrap().is_some());
        assert!(store.order("OLD").unwrap().is_none());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o600,
            "the store is readable by its owner only"
        );
        let _ = std::fs::remove_file(&path);
    }
}
