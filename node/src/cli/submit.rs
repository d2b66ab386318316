//! `buildmesh submit`: upload derivations with their whole closure to a node, optionally wait for
//! the builds.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use buildmesh_protocol::store_path::StoreDir;

use super::submit_client::{self as client, ClientOptions};
use crate::submit::closure::{self, Origin};

/// `buildmesh submit` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of the node's HTTP API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7800", env = "BUILDMESH_API")]
    pub api: String,
    /// Take derivations from the .drv files of DIR (matched by computed store path, whatever the
    /// file names) instead of the local Nix store.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// With --from: a directory of source NARs (`index.tsv` + `<name>.nar`, or `<hash>-<name>.nar`
    /// files); repeatable. Default: DIR and DIR/../nar.
    #[arg(long = "sources", value_name = "DIR", requires = "from")]
    pub sources: Vec<PathBuf>,
    /// The store directory of the derivations.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_dir: String,
    /// Priority of the builds (higher runs first); input derivations inherit it.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// How many independent builders should build each derivation (default: the node's
    /// configured `replicas` on a mesh node, 1 on a standalone node).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Wait until every requested derivation is built or failed.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON on stdout (with --wait: `{"<drv>": {"<output>": {"path", "nar_hash",
    /// "nar_size"}}}`; otherwise the node's answer). No progress bars.
    #[arg(long)]
    pub json: bool,
    /// With --wait: seconds between polls of the node.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub poll_interval: f64,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Where the node's API token is (default: $BUILDMESH_TOKEN, or the local node's data dir).
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
    /// The derivations: .drv files, or .drv store paths.
    #[arg(required = true, value_name = "DRV")]
    pub drvs: Vec<String>,
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what} must be a non-negative number of seconds"))
}

/// Run `buildmesh submit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let sd = StoreDir::new(&args.store_dir)?;
    let poll = seconds(args.poll_interval, "--poll-interval")?;
    let timeout = args.timeout.map(|t| seconds(t, "--timeout")).transpose()?;
    let origin = match &args.from {
        Some(dir) => Origin::Directory { dir: dir.clone(), sources: args.sources.clone() },
        None => Origin::LocalStore,
    };
    let token = args.token.resolve(&args.api)?;
    let closure = closure::collect(&args.drvs, &origin, &sd)?;
    tracing::info!(summary = %client::describe(&closure), "collected the closure");
    let opts = ClientOptions {
        api: crate::cli::control::control_api(&args.api),
        priority: args.priority,
        replicas: args.replicas.unwrap_or(0),
        progress: !args.json && std::io::stderr().is_terminal(),
        token,
    };
    let accepted = client::upload(&closure, &opts)?;
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string(&accepted)?);
        } else {
            println!(
                "accepted {} derivation(s): {} build(s) queued, {} already built ({})",
                accepted.accepted.len(),
                accepted.queued,
                accepted.already_built.len(),
                client::describe(&closure)
            );
        }
        return Ok(());
    }
    let result = client::wait(&closure, &accepted, &opts, poll, timeout)?;
    if args.json {
        println!("{}", client::outputs_json(&result.done));
    } else {
        for (drv, outs) in &result.done {
            println!("{drv}");
            for (name, o) in outs {
                println!("  {name} {} {} {}", o.path, o.nar_hash, o.nar_size);
            }
        }
    }
    for (drv, why) in &result.failed {
        eprintln!("buildmesh: build of {drv} failed: {why}");
    }
    if !result.failed.is_empty() {
        bail!("{} of {} requested build(s) failed", result.failed.len(), closure.requested.len());
    }
    Ok(())
}
