//! `tracer orders list [--stuck]` and `tracer orders show ORDER`: order journeys from the
//! store the agent (or `tracer journey`) keeps, as support staff read them.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::run::journey_clock;
use crate::{
    config::Config,
    journey::{view, Store, StoreLocation},
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
    /// Test and drill aid: a file holding a duration added to the clock.
    #[arg(long, hide = true, global = true)]
    clock_offset_file: Option<PathBuf>,
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
    },
    /// An order's status history and timeline. Takes the raw id or, with ids
    /// pseudonymised, either the raw id (the HMAC key is needed) or its pseudonym.
    Show {
        order_id: String,
        /// HMAC key file, to find a pseudonymised order by its raw id.
        #[arg(long)]
        hmac_key_file: Option<String>,
    },
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
    let now = journey_clock(&args.clock_offset_file).now_ns();
    match args.command {
        OrdersCommand::List { stuck, limit } => {
            let mut orders = store.load(0)?;
            if stuck {
                orders.retain(|o| view::stuck_limit(o, &config.journey, now).is_some());
            }
            orders.truncate(limit);
            print!("{}", view::list(&orders, &config.journey, now));
        }
        OrdersCommand::Show {
            order_id,
            hmac_key_file,
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
            print!("{}", view::show(&order, &steps, &config.journey, now));
        }
    }
    Ok(())
}
