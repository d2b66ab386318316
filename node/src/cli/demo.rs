//! `buildmesh demo`: a local mesh doing real work, in one command.
//!
//! It starts several real `buildmesh node` processes (each with its own key, data dir and HTTP
//! port), places every derivation of a sample DAG (the Nix vectors) on k = 2 of them by weighted
//! rendezvous hashing, submits each node its share (with the whole closure), waits while the
//! nodes build in their sandboxes, then plays the auditor: it gathers every node's signed
//! attestation export, re-verifies it offline and prints what matched and what did not (the
//! vectors' `unrepro-*` derivations are deliberately unreproducible). Finally a real Nix client
//! substitutes an output from a node's binary-cache gateway and checks its NarHash.
//!
//! This demo coordinates placement from the outside (the same rendezvous function the mesh uses);
//! gossip-based coordination between the nodes themselves is the mesh layer's job.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::placement::{Member, PlacementKey, Requirements, View};
use buildmesh_protocol::store_path::StoreDir;
use buildmesh_protocol::verdict::Verdict;
use buildmesh_protocol::wire::Announcement;

use crate::audit::{self, AuditReport};
use crate::submit::client::{self, ClientOptions};
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

fn start_node(exe: &Path, work: &Path, i: usize, executor: &str) -> Result<DemoNode> {
    let name = format!("demo-node-{i}");
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let key = NodeKey::from_seed(&name, seed)?;
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

/// Places each derivation on `k` nodes with the mesh's rendezvous function.
fn place(nodes: &[DemoNode], drvs: &[(String, String)], k: usize) -> Result<Vec<Vec<String>>> {
    let members: Vec<Member> = nodes
        .iter()
        .map(|n| {
            Member::from_announcement(&Announcement {
                node: n.id,
                seq: 1,
                timestamp_ms: 0,
                version: "demo".into(),
                owner: n.name.clone(),
                native_systems: BTreeSet::from([crate::systems::detect()
                    .native
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_default()]),
                emulated_systems: BTreeSet::new(),
                features: BTreeSet::new(),
                mandatory_features: BTreeSet::new(),
                slots: 2,
                load: 0,
            })
        })
        .collect();
    let view = View::new(members)?;
    let mut per_node = vec![Vec::new(); nodes.len()];
    for (file, path) in drvs {
        let sp = StoreDir::nix().parse_path(path)?;
        let req = Requirements::new(
            &crate::systems::detect().native.iter().next().cloned().unwrap_or_default(),
            Vec::<String>::new(),
        );
        for id in view.place(&PlacementKey::for_drv(&sp), &req, k) {
            if let Some(i) = nodes.iter().position(|n| n.id == id) {
                per_node[i].push(file.clone());
            }
        }
    }
    Ok(per_node)
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
    let exe = std::env::current_exe().context("finding the buildmesh binary")?;
    let tmp;
    let work = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("buildmesh-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = Instant::now();

    println!("== starting {} nodes in {}", args.nodes, work.display());
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(start_node(&exe, &work, i, &args.executor)?);
    }
    for n in &mut nodes {
        wait_ready(n)?;
        println!("  {:<12} {}  peer {}  key {}", n.name, n.api, n.id.to_peer_id(), n.public_key);
    }

    // The sample DAG: every .drv of the vectors, by computed store path.
    let sd = StoreDir::nix();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&drv_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "drv"))
        .collect();
    files.sort();
    let all: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let origin = Origin::Directory { dir: drv_dir.clone(), sources: Vec::new() };
    let whole = closure::collect(&all, &origin, &sd).context("reading the sample DAG")?;
    let drvs: Vec<(String, String)> =
        files.iter().zip(&whole.requested).map(|(f, p)| (f.display().to_string(), sd.display(p))).collect();
    println!("\n== sample DAG: {} derivations from {}", drvs.len(), drv_dir.display());

    let share = place(&nodes, &drvs, args.replicas.min(nodes.len()))?;
    let mut pending = Vec::new();
    for (node, mine) in nodes.iter().zip(&share) {
        if mine.is_empty() {
            continue;
        }
        let c = closure::collect(mine, &origin, &sd)?;
        let opts =
            ClientOptions { api: node.api.clone(), priority: 0, replicas: args.replicas as u32, progress: false };
        let accepted = client::upload(&c, &opts).with_context(|| format!("submitting to {}", node.name))?;
        println!(
            "  {:<12} placed {:>3} derivations; closure of {} .drv files uploaded, {} builds queued",
            node.name,
            mine.len(),
            c.drvs.len(),
            accepted.queued
        );
        pending.push((node, c, accepted, opts));
    }

    println!("\n== building (each node in its own sandboxes)");
    let bar = indicatif::ProgressBar::new(pending.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("  {bar:40} {pos}/{len} nodes finished  {elapsed}")?);
    let mut results = Vec::new();
    for (node, c, accepted, opts) in &pending {
        let r =
            client::wait(c, accepted, opts, Duration::from_millis(250), Some(Duration::from_secs(args.timeout_secs)))
                .with_context(|| format!("waiting for {}", node.name))?;
        bar.inc(1);
        results.push((node.name.clone(), r));
    }
    bar.finish_and_clear();
    for (name, r) in &results {
        println!("  {:<12} built {:>3} requested derivations, {} failed", name, r.done.len(), r.failed.len());
        for (drv, why) in &r.failed {
            println!("    failed: {drv}: {why}");
        }
    }

    // The auditor's view: every node's signed export, re-verified offline.
    println!("\n== auditing: every node's signed attestations, re-verified offline");
    let client = http()?;
    let mut export = Vec::new();
    for n in &nodes {
        let body = client
            .get(format!("{}/api/v1/attestations?format=jsonl", n.api))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.bytes())
            .with_context(|| format!("fetching the attestation export of {}", n.name))?;
        export.extend_from_slice(&body);
    }
    let report = audit::verify_export(&mut export.as_slice())?;
    if !report.bad.is_empty() {
        bail!("{} attestations did not verify: {:?}", report.bad.len(), report.bad);
    }
    let names: BTreeMap<String, String> = nodes.iter().map(|n| (n.public_key.clone(), n.name.clone())).collect();
    print_summary(&report.audit, &names, report.valid);

    substitute(&report.audit, &nodes, &work)?;
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
fn substitute(report: &AuditReport, nodes: &[DemoNode], work: &Path) -> Result<()> {
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
    let Some(node) = nodes.iter().find(|n| n.public_key == att.builder_key) else {
        bail!("no demo node has key {}", att.builder_key);
    };
    println!("\n== a Nix client substitutes {} from {}'s gateway", out.path, node.name);
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
        .args(["--option", "trusted-public-keys", &node.public_key])
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
