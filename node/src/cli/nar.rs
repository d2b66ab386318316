//! `buildmesh nar ...` commands.

use clap::Subcommand;

/// `buildmesh nar` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Run a `buildmesh nar` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {}
}
