//! `buildmesh demo`: a local mesh doing real work, in one command.
//!
//! It starts several real `buildmesh node` processes (each with its own key, data dir, HTTP port
//! and libp2p address; all bootstrapped to the first, no mDNS, every demo key trusted, quorum 2),
//! submits a sample DAG (the Nix vectors) once to the first node with k = 2, and lets the mesh do
//! the rest: the nodes agree by rendezvous hashing who builds what, claim, fetch the closure and
//! inputs from each other, build in their sandboxes and gossip signed attestations. Then it plays
//! the auditor (the first node's signed export, re-verified offline: who built what, what matched,
//! and the deliberate mismatches of the vectors' unreproducible `unrepro-*` derivations) and the
//! user (a real Nix client substitutes an output through the first node's quorum gateway).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StoreDir;
use buildmesh_protocol::verdict::Verdict;

use super::submit_client::{self as client, ClientOptions};
use crate::audit::{self, AuditReport};
use crate::submit::closure::{self, Origin};

/// `buildmesh demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Builders per derivation.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// The vector directory with `drv/` and `nar/` (a sample DAG made by real Nix).
    #[arg(long, default_value = "../shared/vectors/nix")]
    pub vectors: PathBuf,
    /// Keep the nodes' data here (default: a temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Executor of the nodes: `local` (namespace sandbox, needs root) or `nix`.
    #[arg(long, default_value = "local")]
    pub executor: String,
    /// Give up waiting for the builds after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// One running node process.
struct DemoNode {
    name: String,
    child: Child,
    api: String,
    id: NodeId,
    public_key: String,
    dir: PathBuf,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        // SIGTERM first so the node shuts down cleanly, then make sure it is gone.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn http() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().context("creating the HTTP client")
}

/// Timers of the demo's mesh (a `[mesh]` config table): seconds instead of minutes, so a laptop
/// demo finishes quickly, and no limit of connections per IP address (every node is on
/// 127.0.0.1). The multi-node tests use the same settings.
pub const DEMO_MESH: &str = "[mesh]
enabled = true
announce_interval_ms = 1000
member_ttl_ms = 4000
lease_ms = 6000
renew_interval_ms = 1500
claim_timeout_ms = 3000
warmup_ms = 1500
fresh_job_ms = 500
resubmit_interval_ms = 4000
republish_interval_ms = 2000
sync_interval_ms = 2000
redial_interval_ms = 1000
heartbeat_ms = 200
max_connections_per_ip = 0
";

fn make_key(i: usize) -> Result<NodeKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(NodeKey::from_seed(&format!("demo-node-{i}"), seed)?)
}

fn start_node(exe: &Path, work: &Path, key: &NodeKey, mesh_args: &[String], executor: &str) -> Result<DemoNode> {
    let name = key.name().to_string();
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_file = dir.join("node.key");
    std::fs::write(&key_file, key.to_file_string()).with_context(|| format!("writing {}", key_file.display()))?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let child = Command::new(exe)
        .arg("node")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--http")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--key")
        .arg(&key_file)
        .arg("--executor")
        .arg(executor)
        // The demo builds only its own derivations, so the nix executor's weaker isolation is accepted.
        .args((executor == "nix").then_some("--allow-unsafe-nix-executor"))
        .args(mesh_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(DemoNode {
        name,
        child,
        api: format!("http://127.0.0.1:{port}"),
        id: key.node_id(),
        public_key: key.nix_public_key().to_string(),
        dir,
    })
}

fn wait_ready(node: &mut DemoNode) -> Result<()> {
    let client = http()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/api/v1/node", node.api)).send()
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = node.child.try_wait()? {
            bail!("{} exited with {status}; see {}", node.name, node.dir.join("node.log").display());
        }
        if Instant::now() > deadline {
            bail!("{} did not answer within 30 s; see {}", node.name, node.dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's first libp2p address (a full multiaddr with `/p2p/<id>`).
fn p2p_address(node: &DemoNode) -> Result<String> {
    let client = http()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value =
            serde_json::from_slice(&client.get(format!("{}/api/v1/node", node.api)).send()?.bytes()?)?;
        if let Some(a) = v["addresses"].as_array().and_then(|a| a.first()).and_then(|a| a.as_str()) {
            return Ok(a.to_string());
        }
        if Instant::now() > deadline {
            bail!("{} has no libp2p address; see {}", node.name, node.dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node sees `n` members in its mesh view.
fn wait_members(nodes: &[DemoNode], n: usize) -> Result<()> {
    let client = http()?;
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&client.get(format!("{}/api/v1/mesh", node.api)).send()?.bytes()?)?;
            if v["members"].as_u64() == Some(n as u64) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} sees {} of {n} members after 30 s", node.name, v["members"]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Run `buildmesh demo`.
pub fn run(args: DemoArgs) -> Result<()> {
    if args.nodes < 2 || args.nodes > 16 {
        bail!("--nodes must be between 2 and 16");
    }
    if args.executor == "local" && !nix::unistd::Uid::effective().is_root() {
        bail!("the `local` executor's sandbox needs root (namespaces and mounts); run as root or use --executor nix");
    }
    let drv_dir = args.vectors.join("drv");
    if !drv_dir.is_dir() {
        bail!(
            "{} is not a directory: pass --vectors DIR (a directory with drv/ and nar/, e.g. ../shared/vectors/nix)",
            drv_dir.display()
        );
    }
    super::demo_deps::ensure();
    let exe = std::env::current_exe().context("finding the buildmesh binary")?;
    let tmp;
    let work = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("buildmesh-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work)?;
    let t0 = Instant::now();

    println!("== starting a mesh of {} nodes in {}", args.nodes, work.display());
    let config = work.join("mesh.toml");
    std::fs::write(&config, DEMO_MESH).with_context(|| format!("writing {}", config.display()))?;
    let keys: Vec<NodeKey> = (0..args.nodes).map(make_key).collect::<Result<_>>()?;
    let mut mesh_args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--no-mdns".into(),
        "--quorum".into(),
        "2".into(),
        "--slots".into(),
        "2".into(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
    ];
    for k in &keys {
        mesh_args.push("--trusted-key".into());
        mesh_args.push(k.nix_public_key().to_string());
    }
    let mut nodes = Vec::new();
    let mut first = start_node(&exe, &work, &keys[0], &mesh_args, &args.executor)?;
    wait_ready(&mut first)?;
    let bootstrap = p2p_address(&first)?;
    nodes.push(first);
    mesh_args.push("--bootstrap".into());
    mesh_args.push(bootstrap.clone());
    for key in &keys[1..] {
        let mut n = start_node(&exe, &work, key, &mesh_args, &args.executor)?;
        wait_ready(&mut n)?;
        nodes.push(n);
    }
    for n in &nodes {
        println!("  {:<12} {}  peer {}  key {}", n.name, n.api, n.id.to_peer_id(), n.public_key);
    }
    wait_members(&nodes, args.nodes)?;
    println!("  every node sees {} members (bootstrap {bootstrap})", args.nodes);

    // The sample DAG: every .drv of the vectors, by computed store path.
    let sd = StoreDir::nix();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&drv_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "drv"))
        .collect();
    files.sort();
    let all: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let origin = Origin::Directory { dir: drv_dir.clone(), sources: Vec::new() };
    let closure = closure::collect(&all, &origin, &sd).context("reading the sample DAG")?;
    let submitter = &nodes[0];
    let token_file = crate::http::auth::token_path(&submitter.dir.join("data"));
    let token = crate::http::auth::read_token_file(&token_file).context("reading the first node's API token")?;
    let opts = ClientOptions {
        api: submitter.api.clone(),
        priority: 0,
        replicas: args.replicas as u32,
        progress: false,
        token: Some(token),
    };
    let accepted = client::upload(&closure, &opts).context("submitting the sample DAG")?;
    println!(
        "\n== submitted {} derivations (closure of {} .drv files, {} sources) once, to {}, with k = {}",
        closure.requested.len(),
        closure.drvs.len(),
        closure.sources.len(),
        submitter.name,
        args.replicas
    );
    println!("  the nodes place each derivation on k builders by rendezvous hashing, claim, fetch inputs");
    println!("  from each other, build in their sandboxes and gossip signed attestations");

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("building across the mesh");
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = client::wait(
        &closure,
        &accepted,
        &opts,
        Duration::from_millis(250),
        Some(Duration::from_secs(args.timeout_secs)),
    )
    .context("waiting for the mesh")?;
    bar.finish_and_clear();
    println!(
        "  {} of {} derivations complete in the mesh after {:.1} s, {} failed",
        result.done.len(),
        closure.requested.len(),
        t0.elapsed().as_secs_f64(),
        result.failed.len()
    );
    for (drv, why) in &result.failed {
        println!("    failed: {drv}: {why}");
    }

    // The auditor's view: the submitter's signed export (gossip brought it every attestation),
    // re-verified offline.
    println!("\n== auditing: {}'s signed attestations, re-verified offline", submitter.name);
    let client = http()?;
    let export = client
        .get(format!("{}/api/v1/attestations?format=jsonl", submitter.api))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
        .with_context(|| format!("fetching the attestation export of {}", submitter.name))?;
    let report = audit::verify_export(&mut export.as_ref())?;
    if !report.bad.is_empty() {
        bail!("{} attestations did not verify: {:?}", report.bad.len(), report.bad);
    }
    let names: BTreeMap<String, String> = nodes.iter().map(|n| (n.public_key.clone(), n.name.clone())).collect();
    print_summary(&report.audit, &names, report.valid);

    substitute(&report.audit, submitter, &keys, &work)?;
    println!("\n== done in {:.1} s", t0.elapsed().as_secs_f64());
    drop(nodes);
    Ok(())
}

fn print_summary(report: &AuditReport, names: &BTreeMap<String, String>, valid: u64) {
    let name = |k: &str| names.get(k).cloned().unwrap_or_else(|| k.to_string());
    println!("  {valid} signed attestations verified; per builder:");
    println!("    {:<12} {:>7} {:>7} {:>9} {:>7}", "builder", "outputs", "match", "mismatch", "single");
    for b in &report.builders {
        println!(
            "    {:<12} {:>7} {:>7} {:>9} {:>7}",
            name(&b.builder_key),
            b.outputs,
            b.matched,
            b.mismatched,
            b.single
        );
    }
    let t = |k: &str| report.totals.get(k).copied().unwrap_or(0);
    println!(
        "  outputs: {} match, {} mismatch, {} inconclusive (one builder)",
        t("match"),
        t("mismatch"),
        t("inconclusive")
    );
    for o in report.outputs.iter().filter(|o| o.verdict == Verdict::Mismatch) {
        println!("  MISMATCH {}", o.path);
        for a in &o.attestations {
            println!("    {:<12} {}", name(&a.builder_key), a.nar_hash);
        }
    }
}

/// A real Nix client substitutes the matched output with the most references from a node that
/// built it, then its NarHash is compared with the attested one.
fn substitute(report: &AuditReport, node: &DemoNode, keys: &[NodeKey], work: &Path) -> Result<()> {
    let Some(out) = report
        .outputs
        .iter()
        .filter(|o| o.verdict == Verdict::Match)
        .max_by_key(|o| (o.attestations[0].references.len(), o.path.clone()))
    else {
        println!("\n== no matched output to substitute");
        return Ok(());
    };
    let att = &out.attestations[0];
    let trusted: Vec<String> = keys.iter().map(|k| k.nix_public_key().to_string()).collect();
    let trusted = trusted.join(" ");
    println!("\n== a Nix client substitutes {} through {}'s quorum gateway", out.path, node.name);
    if Command::new("nix-store").arg("--version").output().is_err() {
        println!("  nix-store is not installed (apt-get install nix-bin); skipping the client fetch");
        return Ok(());
    }
    let client_store = work.join("client-store");
    let status = Command::new("nix-store")
        .arg("--store")
        .arg(&client_store)
        .arg("--realise")
        .arg(&out.path)
        .args(["--option", "substituters", &node.api])
        .args(["--option", "trusted-public-keys", &trusted])
        .args(["--option", "build-users-group", ""])
        .args(["--option", "sandbox", "false"])
        .args(["--option", "max-jobs", "0"])
        .output()
        .context("running nix-store --realise")?;
    if !status.status.success() {
        bail!(
            "nix-store --realise {} from {} failed: {}: {}",
            out.path,
            node.api,
            status.status,
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let fetched = String::from_utf8_lossy(&status.stderr).lines().filter(|l| l.contains("copying path")).count();
    println!("  nix-store --realise fetched {fetched} paths (the output and its references) from {}", node.api);
    let q = Command::new("nix-store")
        .arg("--store")
        .arg(&client_store)
        .args(["--query", "--hash", &out.path])
        .output()
        .context("running nix-store --query --hash")?;
    let got = String::from_utf8_lossy(&q.stdout).trim().to_string();
    let _ = std::io::stdout().flush();
    if got != att.nar_hash {
        bail!("the client's NarHash {got} differs from the attested {}", att.nar_hash);
    }
    println!("  substituted without building (max-jobs 0), signature checked by Nix; NarHash {got} = attested");
    Ok(())
}
