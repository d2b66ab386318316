//! `buildmesh narinfo ...` commands.

use clap::Subcommand;

/// `buildmesh narinfo` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Run a `buildmesh narinfo` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {}
}
