//! `tracer hash-id <id>`: the value support staff search for in Jaeger. For an order id it
//! is both its trace id and, with pseudonymisation on, the exported `app.order.id`.
use std::path::PathBuf;

use clap::Args;

use crate::{config::Config, privacy::IdKey};

#[derive(Debug, Args)]
pub struct HashIdArgs {
    /// The order or user id as the business knows it.
    id: String,
    /// The agent's configuration (for privacy.hmac_key_file).
    #[arg(long, env = "TRACER_CONFIG")]
    config: Option<PathBuf>,
    /// File holding the HMAC key (else the config's, else TRACER_HMAC_KEY).
    #[arg(long)]
    hmac_key_file: Option<String>,
    /// The id is a user id (user pseudonyms are keyed apart from order pseudonyms).
    #[arg(long)]
    user: bool,
}

pub fn run(args: HashIdArgs) -> anyhow::Result<()> {
    let mut privacy = match &args.config {
        Some(path) => Config::load(path)?.privacy,
        None => Default::default(),
    };
    if args.hmac_key_file.is_some() {
        privacy.hmac_key_file = args.hmac_key_file;
    }
    let key = IdKey::load(&privacy)?;
    if args.user {
        println!("{}", key.user_pseudonym(&args.id));
    } else {
        println!("{}", key.pseudonym(&args.id));
    }
    Ok(())
}
