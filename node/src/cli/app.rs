//! The `buildmesh` command line: parse, set up tracing, dispatch. It lives in the library so that
//! two binaries run the same program: `buildmesh` (node/src/main.rs) and the integration tests'
//! `buildmesh-under-test` (tests/src/bin/), which cargo builds fresh for the tests of that package
//! (`CARGO_BIN_EXE_buildmesh-under-test`).

use clap::{Parser, Subcommand};

use crate::cli;

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
    /// Run a node: binary cache, JSON API and build scheduler (until SIGINT/SIGTERM).
    Node(cli::node::NodeArgs),
    /// Validate the configuration (file plus flags) and print the effective one.
    CheckConfig(cli::node::CheckConfigArgs),
    /// Queue a failed or cancelled build again (and its failed inputs), through a node's API; on a
    /// mesh node, a mesh job is claimed and built again by that node (`--on PEER`: by another).
    Retry(cli::node::BuildRefArgs),
    /// Cancel a queued or running build, through a node's API.
    Cancel(cli::node::BuildRefArgs),
    /// Collect the node's store: everything not pinned, least recently used first (`--dry-run`:
    /// only say what).
    Gc(cli::gc::GcArgs),
    /// Keep a store path (and everything it references) whatever the disk limits.
    Pin(cli::gc::PinArgs),
    /// Remove a pin made with `buildmesh pin`.
    Unpin(cli::gc::PinArgs),
    /// A node's state in the mesh: addresses, members, peers, gossip and sync counters.
    Status(crate::cli::mesh::StatusArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(cli::node::BenchCommand),
    /// Submit derivations with their whole closure to a node for building.
    Submit(cli::submit::Args),
    /// Start a local mesh of several nodes, build a sample DAG on two builders each, audit and substitute.
    Demo(cli::demo::DemoArgs),
    /// Every attestation of an output or derivation, with the verdict (match, mismatch, single, none).
    Query(cli::audit::QueryArgs),
    /// Classify every output the node knows (match, mismatch, inconclusive) with per-builder statistics.
    Audit(cli::audit::AuditArgs),
    /// Compare classic substitute servers (Nix caches, `guix publish`, nar-herder) with the mesh's
    /// attestations, as `guix challenge` does (exit 0 all match, 2 a mismatch, 1 otherwise).
    Challenge(cli::challenge::ChallengeArgs),
    /// Re-check an attestation export (`/api/v1/attestations?format=jsonl`) offline.
    Verify(cli::audit::VerifyArgs),
    /// A derivation's build log, from this node or fetched from a builder (checked against its signature).
    Log(cli::auditx::LogArgs),
    /// The NAR diff of an output two builders disagree on: entries added, removed, changed.
    Diff(cli::auditx::DiffArgs),
    /// Every attestation as an in-toto Statement (SLSA provenance) in a DSSE envelope.
    Export(cli::auditx::ExportArgs),
    /// Revisions (evaluations of a channel at a commit): submit, list, show.
    #[command(subcommand)]
    Revision(cli::qa::RevisionCommand),
    /// Compare two revisions: new, removed and changed packages, build and reproducibility changes.
    Compare(cli::qa::CompareArgs),
    /// Substitute availability of a revision or a manifest per system, with root causes (exit 1
    /// below 100 %).
    Weather(cli::qa::WeatherArgs),
    /// A package's derivations across a branch's revisions, or every revision of a derivation.
    History(cli::qa::HistoryArgs),
    /// Why a derivation is or is not building now.
    Explain(cli::qa::ExplainArgs),
    /// Whether a target revision is ready against a base, with every reason (exit 1 when not).
    Ready(cli::qa::ReadyArgs),
    /// Internal: the sandbox helper the `local` executor starts (runs one builder).
    #[command(hide = true, name = "__sandbox-exec")]
    SandboxExec(crate::sandbox::SandboxExecArgs),
}

/// Run the command line of this process's arguments and return its exit code (what `main` of
/// both binaries returns).
pub fn main() -> std::process::ExitCode {
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
        Command::Submit(a) => cli::submit::run(a),
        Command::Node(a) => cli::node::run_node(a),
        Command::CheckConfig(a) => cli::node::run_check_config(a),
        Command::Retry(a) => cli::node::run_build_action(a, false),
        Command::Cancel(a) => cli::node::run_build_action(a, true),
        Command::Status(a) => crate::cli::mesh::run_status(a),
        Command::Gc(a) => cli::gc::run_gc(a),
        Command::Pin(a) => cli::gc::run_pin(a, true),
        Command::Unpin(a) => cli::gc::run_pin(a, false),
        Command::Bench(c) => cli::node::run_bench(c),
        Command::Demo(a) => cli::demo::run(a),
        Command::Query(a) => cli::audit::run_query(a),
        Command::Audit(a) => cli::audit::run_audit(a),
        Command::Verify(a) => cli::audit::run_verify(a),
        Command::Log(a) => cli::auditx::run_log(a),
        Command::Diff(a) => cli::auditx::run_diff(a),
        Command::Export(a) => cli::auditx::run_export(a),
        Command::Challenge(a) => {
            return match cli::challenge::run(a) {
                Ok(code) => std::process::ExitCode::from(code),
                Err(e) => {
                    eprintln!("buildmesh: error: {e:#}");
                    std::process::ExitCode::from(1)
                }
            };
        }
        Command::SandboxExec(a) => return crate::sandbox::sandbox_exec_main(a),
        Command::Revision(c) => return qa_exit(cli::qa::run_revision(c)),
        Command::Compare(a) => return qa_exit(cli::qa::run_compare(a)),
        Command::Weather(a) => return qa_exit(cli::qa::run_weather(a)),
        Command::History(a) => return qa_exit(cli::qa::run_history(a)),
        Command::Explain(a) => return qa_exit(cli::qa::run_explain(a)),
        Command::Ready(a) => return qa_exit(cli::qa::run_ready(a)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("buildmesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit status of a QA command: 0 yes, 1 no (coverage below 100 %, not ready), 2 error.
fn qa_exit(result: anyhow::Result<cli::qa::Outcome>) -> std::process::ExitCode {
    match result {
        Ok(cli::qa::Outcome::Success) => std::process::ExitCode::SUCCESS,
        Ok(cli::qa::Outcome::No) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("buildmesh: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
