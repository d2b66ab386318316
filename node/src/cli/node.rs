//! `buildmesh node`, `buildmesh check-config`, `buildmesh retry`, `buildmesh cancel` and
//! `buildmesh bench gateway`.
//!
//! `node` and `check-config` read the TOML config (`--config FILE`, or `$BUILDMESH_CONFIG`), then
//! apply the flags on top: a flag given on the command line always wins over the file; a list
//! flag given at least once replaces the whole list of the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::config::{Config, ExecutorKind};
use crate::runtime::Node;

/// Flags that override the configuration file, one per [`Config`] field.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// The TOML configuration file (every field optional; see the README's reference).
    #[arg(long, env = "BUILDMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data dir: redb database, NAR blobs, realised paths, node key.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP address (binary cache + JSON API); port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// Admin listener: the control routes (every non-GET/HEAD request, token-guarded). Default:
    /// the `http` listener when it is loopback, else 127.0.0.1:7802.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_http: Option<SocketAddr>,
    /// The node's secret key file (Nix format); created on first start when missing.
    #[arg(long = "key", value_name = "SECRET-KEY-FILE")]
    pub key_file: Option<PathBuf>,
    /// Key name used when the node creates its key.
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
    /// Logical store directory (`/nix/store`, `/gnu/store`).
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<String>,
    /// Which executor runs builds.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// Builds run at once (0 = number of CPUs).
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// Per-build timeout in seconds.
    #[arg(long, value_name = "SECS")]
    pub build_timeout_secs: Option<u64>,
    /// Cap on the kept log of one build, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_log_bytes: Option<usize>,
    /// Attempts in all for a transiently failing build.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Most bytes the store may take (blobs plus realised paths; 0 = no limit).
    #[arg(long, value_name = "N")]
    pub max_store_bytes: Option<u64>,
    /// Least free bytes to leave on the data directory's filesystem (0 = no limit).
    #[arg(long, value_name = "N")]
    pub min_free_bytes: Option<u64>,
    /// Seconds between two checks of the disk limits.
    #[arg(long, value_name = "SECS")]
    pub gc_interval_secs: Option<u64>,
    /// Most memory one build may use, in bytes (0 = no limit).
    #[arg(long, value_name = "BYTES")]
    pub build_memory_max: Option<u64>,
    /// Most processes one build may have at once (0 = no limit).
    #[arg(long, value_name = "N")]
    pub build_pids_max: Option<u64>,
    /// Most CPU one build may use, in cores (0 = no limit).
    #[arg(long, value_name = "CORES")]
    pub build_cpu_max: Option<f64>,
    /// Most bytes one build's directory and outputs may take on disk (0 = no limit).
    #[arg(long, value_name = "BYTES")]
    pub build_dir_max_bytes: Option<u64>,
    /// Host path visible read-only in the `local` sandbox (repeatable; replaces the list).
    #[arg(long = "sandbox-path", value_name = "PATH")]
    pub sandbox_paths: Vec<PathBuf>,
    /// libp2p listen multiaddr (repeatable; replaces the list).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr ending in /p2p/<peer id> (repeatable; replaces the list).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long, value_name = "BOOL")]
    pub mdns: Option<bool>,
    /// Do not discover peers with mDNS (same as `--mdns false`; wins over `--mdns`).
    #[arg(long)]
    pub no_mdns: bool,
    /// Join the mesh (also on when a bootstrap peer is given): gossip, placement, quorum gateway.
    #[arg(long)]
    pub mesh: bool,
    /// Shards the mesh is split into (the same on every node; more than 1 needs trusted keys).
    #[arg(long, value_name = "N")]
    pub mesh_shards: Option<u32>,
    /// Finished jobs the mesh keeps in memory, the most recent ones (0 = all).
    #[arg(long, value_name = "N")]
    pub mesh_max_finished_drvs: Option<u64>,
    /// Serve as a relay for peers behind NAT (`nat.relay_server = true`; without it, only while
    /// AutoNAT finds this node publicly reachable).
    #[arg(long)]
    pub relay_server: bool,
    /// Relay to reserve a slot on while this node is not publicly reachable, a multiaddr ending
    /// in /p2p/<peer id> (repeatable; replaces `nat.relays`).
    #[arg(long = "relay", value_name = "MULTIADDR")]
    pub relays: Vec<String>,
    /// Treat private address ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) as
    /// publicly reachable, for AutoNAT and relay selection (`nat.private_as_public`).
    #[arg(long)]
    pub private_as_public: bool,
    /// Trusted builder key `name:base64` (repeatable; replaces the list).
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// Key whose mesh jobs this node accepts and builds, `name:base64` (repeatable; replaces the
    /// list; `any` accepts everyone's). Default: the trusted keys and the node's own.
    #[arg(long = "submitter", value_name = "KEY")]
    pub submitters: Vec<String>,
    /// Key that placement may designate to build (repeatable; replaces the list). Default: none,
    /// an open mesh.
    #[arg(long = "builder", value_name = "KEY")]
    pub builders: Vec<String>,
    /// Distinct trusted builders that must agree before the gateway serves an output.
    #[arg(long, value_name = "N")]
    pub quorum: Option<usize>,
    /// Default replication factor.
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// Who operates this machine.
    #[arg(long, value_name = "LABEL")]
    pub owner: Option<String>,
    /// Extra system feature (repeatable; replaces the list).
    #[arg(long = "feature", value_name = "FEATURE")]
    pub features: Vec<String>,
    /// Mandatory system feature (repeatable; replaces the list).
    #[arg(long = "mandatory-feature", value_name = "FEATURE")]
    pub mandatory_features: Vec<String>,
    /// A foreign system to build under QEMU emulation (repeatable; replaces `emulated_systems`;
    /// `none` for none). Default: every system binfmt_misc can run here.
    #[arg(long = "emulated-system", value_name = "SYSTEM")]
    pub emulated_systems: Vec<String>,
    /// Emulated attestations alone never make a quorum: at least one native builder must agree.
    #[arg(long)]
    pub quorum_needs_native: bool,
    /// A system whose emulated builds never count here (repeatable; replaces `no_emulation_for`).
    #[arg(long = "no-emulation-for", value_name = "SYSTEM")]
    pub no_emulation_for: Vec<String>,
    /// First host uid of the build users (`sandbox.build_uid_base`).
    #[arg(long, value_name = "UID")]
    pub build_uid_base: Option<u32>,
    /// How many build users (`sandbox.build_uid_count`).
    #[arg(long, value_name = "N")]
    pub build_uid_count: Option<u32>,
    /// Network of fixed-output builds (`sandbox.fixed_output_network`).
    #[arg(long, value_enum)]
    pub fixed_output_network: Option<crate::sandbox::FixedOutputNetwork>,
    /// A variable fixed-output builds may take from the node's environment through
    /// `impureEnvVars` (repeatable; replaces `sandbox.impure_env_allow`).
    #[arg(long = "impure-env-allow", value_name = "NAME")]
    pub impure_env_allow: Vec<String>,
    /// Let the `nix` executor run despite its weaker isolation (`sandbox.allow_unsafe_nix_executor`).
    #[arg(long)]
    pub allow_unsafe_nix_executor: bool,
}

impl ConfigArgs {
    /// The file (if any), then the flags, then validation. Errors name the file, line and field.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut c);
        c.validate().with_context(|| match &self.config {
            Some(p) => format!("invalid configuration (file {} plus flags)", p.display()),
            None => "invalid configuration (defaults plus flags)".to_string(),
        })?;
        Ok(c)
    }

    /// Apply the flags given to `c`.
    pub fn apply(&self, c: &mut Config) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_list<T: Clone>(dst: &mut Vec<T>, src: &[T]) {
            if !src.is_empty() {
                *dst = src.to_vec();
            }
        }
        set(&mut c.data_dir, &self.data_dir);
        set(&mut c.http, &self.http);
        if self.admin_http.is_some() {
            c.admin_http = self.admin_http;
        }
        if let Some(s) = crate::mesh::policy::Submitters::from_flags(&self.submitters) {
            c.submitters = s;
        }
        set_list(&mut c.builders, &self.builders);
        if self.key_file.is_some() {
            c.key_file = self.key_file.clone();
        }
        if self.key_name.is_some() {
            c.key_name = self.key_name.clone();
        }
        set(&mut c.store_dir, &self.store_dir);
        set(&mut c.executor, &self.executor);
        set(&mut c.slots, &self.slots);
        set(&mut c.build_timeout_secs, &self.build_timeout_secs);
        set(&mut c.max_log_bytes, &self.max_log_bytes);
        set(&mut c.max_attempts, &self.max_attempts);
        set(&mut c.max_store_bytes, &self.max_store_bytes);
        set(&mut c.min_free_bytes, &self.min_free_bytes);
        set(&mut c.gc_interval_secs, &self.gc_interval_secs);
        if self.build_memory_max.is_some() {
            c.build_memory_max = self.build_memory_max;
        }
        if self.build_pids_max.is_some() {
            c.build_pids_max = self.build_pids_max;
        }
        if self.build_cpu_max.is_some() {
            c.build_cpu_max = self.build_cpu_max;
        }
        set(&mut c.build_dir_max_bytes, &self.build_dir_max_bytes);
        set_list(&mut c.sandbox_paths, &self.sandbox_paths);
        set_list(&mut c.listen, &self.listen);
        set_list(&mut c.bootstrap, &self.bootstrap);
        set(&mut c.mdns, &self.mdns);
        if self.no_mdns {
            c.mdns = false;
        }
        if self.mesh {
            c.mesh.enabled = true;
        }
        set(&mut c.mesh_shards, &self.mesh_shards);
        set(&mut c.mesh_max_finished_drvs, &self.mesh_max_finished_drvs);
        if self.relay_server {
            c.nat.relay_server = Some(true);
        }
        set_list(&mut c.nat.relays, &self.relays);
        if self.private_as_public {
            c.nat.private_as_public = true;
        }
        set_list(&mut c.trusted_keys, &self.trusted_keys);
        set(&mut c.quorum, &self.quorum);
        set(&mut c.replicas, &self.replicas);
        if self.owner.is_some() {
            c.owner = self.owner.clone();
        }
        set_list(&mut c.features, &self.features);
        set_list(&mut c.mandatory_features, &self.mandatory_features);
        if !self.emulated_systems.is_empty() {
            c.emulated_systems = Some(self.emulated_systems.iter().filter(|s| *s != "none").cloned().collect());
        }
        if self.quorum_needs_native {
            c.quorum_needs_native = true;
        }
        set_list(&mut c.no_emulation_for, &self.no_emulation_for);
        set(&mut c.sandbox.build_uid_base, &self.build_uid_base);
        set(&mut c.sandbox.build_uid_count, &self.build_uid_count);
        set(&mut c.sandbox.fixed_output_network, &self.fixed_output_network);
        set_list(&mut c.sandbox.impure_env_allow, &self.impure_env_allow);
        if self.allow_unsafe_nix_executor {
            c.sandbox.allow_unsafe_nix_executor = true;
        }
    }
}

/// `buildmesh node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `buildmesh check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `buildmesh retry` / `buildmesh cancel`.
#[derive(Debug, Args)]
pub struct BuildRefArgs {
    /// The derivation: a full `.drv` path or its base name.
    pub drv: String,
    /// The node's HTTP address.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Print the node's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// (retry only) Have this mesh node build it: a peer id (`12D3Koo…`); the node at `--api`
    /// relays the request.
    #[arg(long, value_name = "PEER")]
    pub on: Option<String>,
    /// Where the node's API token is (default: $BUILDMESH_TOKEN, or the local node's data dir).
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
}

/// `buildmesh bench ...`.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum BenchCommand {
    /// Compare the HTTP gateway with nginx (and `--against` caches) on loopback: wrk (narinfo
    /// requests/s, NAR throughput, RSS) and real Nix clients (`nix copy`, `nix-store --realise`).
    Gateway(crate::bench::BenchArgs),
    /// Time the QA answers (revision status, compare, weather with coverage, ready) on revisions
    /// of 100,000 jobs with real signed attestations of three builders, and the memory held.
    Qa(crate::qa::bench::QaBenchArgs),
    /// Time every dashboard page (HTML) on revisions of 100,000 jobs with 50 concurrent clients:
    /// p50, p99 and the page size.
    Pages(crate::http::pages::bench::PagesBenchArgs),
    /// Guix narinfo signatures (ECDSA over edwards25519) signed and verified per second on one
    /// core, beside Nix's (Ed25519); the goal is 10,000 Guix verifications per second.
    Guix(crate::cli::guix_bench::GuixBenchArgs),
    /// Narinfo lookups per second as `guix substitute` makes them (pipelined batches of 1,000 on
    /// a keep-alive connection): the Guix layout of a `/gnu/store` gateway beside the Nix layout,
    /// hits and misses, with p50/p99.
    Narinfo(crate::bench::narinfo::NarinfoBenchArgs),
}

/// A tokio runtime sized for a node: two workers, a bounded blocking pool.
pub fn node_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("buildmesh")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Run `buildmesh node` until SIGINT or SIGTERM.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let rt = node_runtime()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let node = Node::start(config).await?;
        let info = node.info();
        // Machine-readable start lines (tests and scripts read them), on stdout.
        println!("peer-id: {}", info.peer_id);
        println!("public-key: {}", info.public_key);
        println!("http: {}", node.http_url());
        println!("admin-http: {}", node.admin_url());
        println!("data-dir: {}", node.data_dir().display());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = node.stopped() => "a failed task",
        };
        tracing::info!(signal, "stopping");
        eprintln!("buildmesh node: {signal}: shutting down");
        let failure = node.failure();
        node.shutdown().await;
        match failure {
            // Exit non-zero so that a supervisor restarts the node.
            Some(why) => Err(anyhow::anyhow!("the node stopped: {why}")),
            None => anyhow::Ok(()),
        }
    })?;
    // Do not wait for blocking tasks of abandoned streams.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Run `buildmesh check-config`: print the effective configuration as TOML.
pub fn run_check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    print!("{}", config.to_toml());
    eprintln!("configuration is valid");
    Ok(())
}

/// Run `buildmesh retry` (`cancel = false`) or `buildmesh cancel`.
pub fn run_build_action(args: BuildRefArgs, cancel: bool) -> anyhow::Result<()> {
    let action = if cancel { "cancel" } else { "retry" };
    if let Some(on) = &args.on {
        if cancel {
            bail!("--on applies to retry only");
        }
        let token = args.token.resolve(&args.api)?;
        let control = super::control::control_api(&args.api);
        return super::mesh::run_retry_on(&control, &args.drv, on, args.json, token.as_deref());
    }
    let basename = args.drv.trim_end_matches('/').rsplit('/').next().unwrap_or(&args.drv);
    if basename.is_empty() {
        bail!("{:?} is not a derivation path", args.drv);
    }
    let url = format!(
        "{}/api/v1/builds/{}/{action}",
        super::control::control_api(&args.api),
        super::submit_client::encode_segment(basename)
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot create an HTTP client")?;
    let token = args.token.resolve(&args.api)?;
    let mut request = client.post(&url);
    if let Some(t) = &token {
        request = request.bearer_auth(t);
    }
    let resp = request.send().with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp.text().with_context(|| format!("reading the answer of POST {url}"))?;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if !status.is_success() {
        let msg = json.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or(body);
        let hint = crate::cli::token::hint(status.as_u16(), token.is_some());
        bail!("{action} {}: {status}: {msg}{hint}", args.drv);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let state = json.pointer("/build/state").and_then(|s| s.as_str()).unwrap_or("?");
    let drv = json.pointer("/build/drv").and_then(|s| s.as_str()).unwrap_or(&args.drv);
    if cancel {
        let prev = json.get("previous_state").and_then(|s| s.as_str()).unwrap_or("?");
        println!("{drv}: {prev} -> {state}");
    } else if json.get("mesh").and_then(|m| m.as_bool()) == Some(true) {
        println!("{drv}: this node builds it again for the mesh (its attestation is gossiped)");
    } else {
        println!("{drv}: {state}");
        if let Some(list) = json.get("requeued").and_then(|r| r.as_array()) {
            for d in list.iter().skip(1).filter_map(|d| d.as_str()) {
                println!("  also queued again (failed input): {d}");
            }
        }
    }
    Ok(())
}

/// Run `buildmesh bench ...`.
pub fn run_bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Gateway(a) => crate::bench::run(a),
        BenchCommand::Qa(a) => crate::qa::bench::run(a),
        BenchCommand::Pages(a) => crate::http::pages::bench::run(a),
        BenchCommand::Guix(a) => crate::cli::guix_bench::run(a),
        BenchCommand::Narinfo(a) => crate::bench::narinfo::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        c: ConfigArgs,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "slots = 3\nquorum = 3\nfeatures = [\"kvm\"]\nhttp = \"127.0.0.1:9000\"\n").unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--slots",
            "5",
            "--feature",
            "big-parallel",
            "--feature",
            "benchmark",
            "--executor",
            "nix",
        ]);
        let c = t.c.load().unwrap();
        assert_eq!(c.slots, 5);
        assert_eq!(c.quorum, 3);
        assert_eq!(c.features, vec!["big-parallel".to_string(), "benchmark".to_string()]);
        assert_eq!(c.executor, ExecutorKind::Nix);
        assert_eq!(c.http, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.emulated_systems, None, "default: every system binfmt_misc runs");
        let c = T::parse_from(["x", "--emulated-system", "none", "--quorum-needs-native"]).c.load().unwrap();
        assert_eq!(c.emulated_systems, Some(vec![]));
        assert!(c.quorum_needs_native);
        let c =
            T::parse_from(["x", "--emulated-system", "aarch64-linux", "--emulated-system", "armv7l-linux"]).c.load();
        assert_eq!(c.unwrap().emulated_systems, Some(vec!["aarch64-linux".into(), "armv7l-linux".into()]));
    }

    #[test]
    fn errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "slots = 1\nsltos = 2\n").unwrap();
        let e = format!("{:#}", T::parse_from(["x", "--config", file.to_str().unwrap()]).c.load().unwrap_err());
        assert!(e.contains("bad.toml") && e.contains("sltos") && e.contains("line 2"), "{e}");
        let e = format!("{:#}", T::parse_from(["x", "--quorum", "0"]).c.load().unwrap_err());
        assert!(e.contains("quorum"), "{e}");
    }
}
