//! The `buildmesh` command line: parse, set up tracing, dispatch.

use clap::{Parser, Subcommand};

use buildmesh::cli;

/// buildmesh: a peer-to-peer build mesh for Nix and Guix derivations.
#[derive(Debug, Parser)]
#[command(name = "buildmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect derivations (.drv files).
    #[command(subcommand)]
    Drv(cli::drv::Command),
    /// Write, restore and hash Nix archives (NAR).
    #[command(subcommand)]
    Nar(cli::nar::Command),
    /// Generate Nix-compatible signing keys.
    #[command(subcommand)]
    Key(cli::key::Command),
    /// Sign and verify .narinfo files.
    #[command(subcommand)]
    Narinfo(cli::narinfo::Command),
    /// Internal: the sandbox helper the `local` executor starts (runs one builder).
    #[command(hide = true, name = "__sandbox-exec")]
    SandboxExec(buildmesh::executor::SandboxExecArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BUILDMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Drv(c) => cli::drv::run(c),
        Command::Nar(c) => cli::nar::run(c),
        Command::Key(c) => cli::key::run(c),
        Command::Narinfo(c) => cli::narinfo::run(c),
        Command::SandboxExec(a) => return buildmesh::executor::sandbox_exec_main(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("buildmesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
