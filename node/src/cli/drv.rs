//! `buildmesh drv ...` commands.

use clap::Subcommand;

/// `buildmesh drv` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Run a `buildmesh drv` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {}
}
