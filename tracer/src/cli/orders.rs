//! `tracer orders list [--stuck]` and `tracer orders show ORDER`: order journeys from the
//! store the agent (or `tracer journey`) keeps, as support staff read them.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::run::TestClock;
use crate::{
    config::Config,
    journey::{
        diagnose::{diagnose, Diagnosis},
        view, Order, Store, StoreLocation,
    },
    privacy::IdKey,
};

#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// The agent's configuration file (for the store, dwell limits and Jaeger URL).
    #[arg(long, env = "TRACER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The journey store: sqlite:PATH or postgres://… (default: journey.store).
    #[arg(long, global = true)]
    store: Option<String>,
    #[command(flatten)]
    test_clock: TestClock,
    #[command(subcommand)]
    command: OrdersCommand,
}

#[derive(Debug, Subcommand)]
enum OrdersCommand {
    /// One line per order, most recently seen first.
    List {
        /// Only orders in a status longer than its limit (journey.max_dwell).
        #[arg(long)]
        stuck: bool,
        /// At most this many orders.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An order's status history and timeline. Takes the raw id or, with ids
    /// pseudonymised, either the raw id (the HMAC key is needed) or its pseudonym.
    Show {
        order_id: String,
        /// HMAC key file, to find a pseudonymised order by its raw id.
        #[arg(long)]
        hmac_key_file: Option<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// One order as JSON: where it is, since when, and what went wrong.
fn summary(
    order: &Order,
    diagnosis: Option<&Diagnosis>,
    config: &Config,
    now: i64,
) -> serde_json::Value {
    let status = order.status();
    serde_json::json!({
        "order_id": order.id,
        "status": status.map(|c| c.status.clone()),
        "status_since_ns": status.map(|c| c.at_ns),
        "stuck": view::stuck_limit(order, &config.journey, now).is_some(),
        "first_seen_ns": order.first_seen_ns,
        "last_seen_ns": order.last_seen_ns,
        "last_service": order.last_service,
        "services": order.services,
        "errors": order.errors,
        "user_id": order.user_id,
        "trace_id": order.last_trace_id,
        "jaeger_url": format!("{}/trace/{}", config.journey.jaeger_url.trim_end_matches('/'), order.last_trace_id),
        "problem": diagnosis,
    })
}

pub fn run(args: OrdersArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(store) = &args.store {
        config.journey.store = store.clone();
    }
    let location = StoreLocation::parse(&config.journey.store).map_err(|e| anyhow::anyhow!(e))?;
    if let StoreLocation::Sqlite(path) = &location {
        if !path.exists() {
            bail!(
                "no journey store at {} — is the agent running with this store (journey.store / --journey-store)?",
                path.display()
            );
        }
    }
    let mut store =
        Store::open(&location)?.context("journey.store is none: no journeys are kept")?;
    let now = args.test_clock.clock().now_ns();
    match args.command {
        OrdersCommand::List { stuck, limit, json } => {
            let mut orders = store.load(0)?;
            if stuck {
                orders.retain(|o| view::stuck_limit(o, &config.journey, now).is_some());
            }
            orders.truncate(limit);
            let mut diagnosed = Vec::with_capacity(orders.len());
            for order in orders {
                let steps = store.steps(&order.id)?;
                let diagnosis = diagnose(&order, &steps, &config.journey, now);
                diagnosed.push((order, diagnosis));
            }
            if json {
                let all: Vec<_> = diagnosed
                    .iter()
                    .map(|(order, diagnosis)| summary(order, diagnosis.as_ref(), &config, now))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", view::list(&diagnosed, &config.journey, now));
            }
        }
        OrdersCommand::Show {
            order_id,
            hmac_key_file,
            json,
        } => {
            let mut found = store.order(&order_id)?;
            if found.is_none() {
                if let Some(path) = hmac_key_file {
                    config.privacy.hmac_key_file = Some(path);
                }
                if let Ok(key) = IdKey::load(&config.privacy) {
                    found = store.order(&key.pseudonym(&order_id))?;
                }
            }
            let Some((order, steps)) = found else {
                bail!("no journey for order {order_id:?} in the store");
            };
            let diagnosis = diagnose(&order, &steps, &config.journey, now);
            if json {
                let mut shown = summary(&order, diagnosis.as_ref(), &config, now);
                shown["history"] = serde_json::to_value(&order.history)?;
                shown["steps"] = serde_json::to_value(&steps)?;
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!(
                    "{}",
                    view::show(&order, &steps, diagnosis.as_ref(), &config.journey, now)
                );
            }
        }
    }
    Ok(())
}
