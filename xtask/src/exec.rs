//! Running commands: print what runs, fail with its context.
use std::process::{Command, Output};

use anyhow::{bail, Context as _};

/// Runs `cmd`, inheriting stdio; fails if it does not exit successfully.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its output, or None if it could not start.
pub fn probe(cmd: &mut Command) -> Option<Output> {
    cmd.output().ok()
}

/// Trimmed stdout of a successful command.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    probe(cmd)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn is_root() -> bool {
    stdout_of(Command::new("id").arg("-u")).as_deref() == Some("0")
}
