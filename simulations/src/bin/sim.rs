//! `sim`: run the buildmesh simulator and print a table.
//!
//! ```text
//! cargo run -p buildmesh-sim --release --bin sim -- --nodes 200 --drvs 5000 --churn 0.1 --seed 1
//! sim --nodes 300 --drvs 2000 --json          # one JSON object (figures.rs)
//! sim --sweep 100,300,1000 --sweep-churn 0,0.1 --drvs 2000 --out docs/img   # charts.rs
//! ```

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use buildmesh_sim::{Figures, SimConfig, World};
use clap::Parser;

/// Deterministic simulation of a buildmesh mesh (virtual time, virtual network, seeded faults).
#[derive(Debug, Parser)]
#[command(name = "sim")]
struct Args {
    /// RNG seed (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many consecutive seeds starting at --seed, one table row block each.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Number of derivations (a DAG).
    #[arg(long, default_value_t = 200)]
    drvs: usize,
    /// Replication factor k.
    #[arg(long, default_value_t = 2)]
    replicas: u8,
    /// Distinct trusted builders that must agree.
    #[arg(long, default_value_t = 2)]
    quorum: usize,
    /// Submitting clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Crashes per node per virtual hour.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Probability that one delivery is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Partition episodes.
    #[arg(long, default_value_t = 0)]
    partitions: usize,
    /// Minimum and maximum one-way latency, ms.
    #[arg(long, num_args = 2, default_values_t = [10, 150])]
    latency: Vec<u64>,
    /// Fraction of derivations that always fail.
    #[arg(long, default_value_t = 0.01)]
    broken: f64,
    /// Probability of a transient build failure.
    #[arg(long, default_value_t = 0.02)]
    flaky: f64,
    /// Fraction of unreproducible derivations.
    #[arg(long, default_value_t = 0.02)]
    unreproducible: f64,
    /// Fraction of colluding byzantine builders.
    #[arg(long, default_value_t = 0.0)]
    byzantine: f64,
    /// Trust every builder (byzantine ones included), to see the checker catch forged outputs.
    #[arg(long)]
    trust_all: bool,
    /// Sybil attacker: this many throwaway keys fail every job, and a liar member announces the
    /// most slots there are (placement capture). Every sound job must still complete.
    #[arg(long, default_value_t = 0)]
    sybils: usize,
    /// Sybil members: fresh identities that join as members, claim what they are designated for
    /// and never deliver (issue 15 item 3).
    #[arg(long, default_value_t = 0)]
    sybil_members: usize,
    /// Every honest node lists the honest keys as `builders` (Sybil members are never designated).
    #[arg(long)]
    builders_policy: bool,
    /// How long a member that did not deliver is designated last (ms; protocol default 30 min).
    #[arg(long)]
    no_delivery_penalty_ms: Option<u64>,
    /// Print the Sybil table instead of one run: no Sybils, open mesh without and with the
    /// no-delivery penalty, builders policy; `--sybil-members` Sybils (default 100), each seed.
    #[arg(long)]
    sybil_table: bool,
    /// Members per shard (gossip topic) of the mesh: `ceil(nodes / shard-size)` shards; 0 = one
    /// shard. The default splits meshes above 250 nodes (see protocol::mesh::shard).
    #[arg(long, default_value_t = 250)]
    shard_size: usize,
    /// Most finished derivations each node keeps (protocol `max_finished_drvs`; default: all,
    /// up to the table size). A small number bounds each node's memory by its active jobs.
    #[arg(long)]
    max_finished_drvs: Option<usize>,
    /// Virtual time limit, hours.
    #[arg(long, default_value_t = 48)]
    hours: u64,
    /// Print everything that happened to this derivation (index) and what every node knows.
    #[arg(long)]
    watch: Option<u32>,
    /// Print a status line on stderr every 2^22 events (virtual time, events, queue length,
    /// deliveries, unresolved submissions, CPU seconds): to follow a long run.
    #[arg(long)]
    progress: bool,
    /// Print the run's figures as one JSON object per seed (one line) instead of the table.
    #[arg(long)]
    json: bool,
    /// Sweep: run these node counts (comma-separated), each in its own `sim --json` process with
    /// the other flags, and write `sweep.json` and SVG charts into `--out`.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Sweep: the churn rates to run at each size (crashes per node per hour).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0])]
    sweep_churn: Vec<f64>,
    /// Draw the charts from these `sweep.json` files (merged; comma-separated) into `--out`
    /// instead of running anything.
    #[arg(long, value_delimiter = ',')]
    plot: Vec<std::path::PathBuf>,
    /// Sweep: where to write `sweep.json` and the charts.
    #[arg(long, default_value = "sim-sweep")]
    out: std::path::PathBuf,
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_inner() -> Result<bool> {
    let a = Args::parse();
    if !a.plot.is_empty() {
        let mut runs: Vec<Figures> = Vec::new();
        for file in &a.plot {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            runs.extend(
                serde_json::from_str::<Vec<Figures>>(&text).with_context(|| format!("parsing {}", file.display()))?,
            );
        }
        std::fs::create_dir_all(&a.out)?;
        for file in buildmesh_sim::charts::write_all(&runs, &a.out)? {
            println!("wrote {file}");
        }
        return Ok(true);
    }
    if !a.sweep.is_empty() {
        let exe = std::env::current_exe()?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let base = buildmesh_sim::sweep::child_args(&args);
        let runs = buildmesh_sim::sweep::run(&exe, &base, &a.sweep, &a.sweep_churn, &a.out)?;
        for file in buildmesh_sim::charts::write_all(&runs, &a.out)? {
            println!("wrote {file}");
        }
        return Ok(runs.iter().all(|r| r.violations == 0));
    }
    let mut ok = true;
    for seed in a.seed..a.seed + a.seeds.max(1) {
        let mut cfg = SimConfig {
            seed,
            nodes: a.nodes,
            drvs: a.drvs,
            replicas: a.replicas,
            quorum: a.quorum,
            clients: a.clients,
            churn: a.churn,
            loss: a.loss,
            partitions: a.partitions,
            latency_ms: (a.latency[0], a.latency[1]),
            broken: a.broken,
            flaky: a.flaky,
            unreproducible: a.unreproducible,
            byzantine: a.byzantine,
            sybils: a.sybils,
            sybil_members: a.sybil_members,
            builders_policy: a.builders_policy,
            trust_honest_only: !a.trust_all,
            max_virtual_ms: a.hours * 3_600_000,
            shard_size: a.shard_size,
            ..SimConfig::default()
        };
        cfg.mesh.max_drvs = cfg.mesh.max_drvs.max(a.drvs);
        // A client may wait on nearly every derivation (its closure): 100,000 derivations gave
        // ~78,000 pending submissions per client, over the default 65,536.
        cfg.mesh.max_pending_submissions = cfg.mesh.max_pending_submissions.max(a.drvs);
        if let Some(m) = a.max_finished_drvs {
            cfg.mesh.max_finished_drvs = m;
        }
        if let Some(p) = a.no_delivery_penalty_ms {
            cfg.mesh.no_delivery_penalty_ms = p;
        }
        if a.sybil_table {
            let n = if a.sybil_members == 0 { 100 } else { a.sybil_members };
            let started = Instant::now();
            print!("{}", buildmesh_sim::sybil_table::table(&cfg, n, seed..seed + a.seeds.max(1))?);
            println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
            return Ok(true);
        }
        let started = Instant::now();
        let mut world = World::new(cfg)?;
        if let Some(d) = a.watch {
            world.watch(d);
        }
        world.progress(a.progress);
        world.run_until(world.limit());
        if let Some(d) = a.watch {
            for line in world.watch_log() {
                println!("{line}");
            }
            print!("{}", world.describe(d));
        }
        let mut report = world.into_report();
        report.measure(started);
        if a.json {
            let peak = Some(report.peak_rss_bytes).filter(|b| *b > 0);
            println!("{}", Figures::new(&report, a.churn, report.wall_s, peak).to_json());
        } else {
            print!("{report}");
            println!();
        }
        if report.violations > 0 {
            eprintln!("sim: seed {seed} violated invariants (rerun with --seed {seed})");
            ok = false;
        }
    }
    Ok(ok)
}
