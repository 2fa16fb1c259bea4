//! `tracer config check FILE`: validate a configuration file without running.
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and validate FILE; print what is wrong (file, line, field) or "ok".
    Check { file: PathBuf },
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let config = Config::load(&file)?;
            println!(
                "{}: ok ({} service rules, {} extraction rules{})",
                file.display(),
                config.services.len(),
                config.extract.rules.len(),
                if config.extract.defaults {
                    " plus defaults"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}
