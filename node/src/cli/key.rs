//! `buildmesh key ...` commands.

use clap::Subcommand;

/// `buildmesh key` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Run a `buildmesh key` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {}
}
