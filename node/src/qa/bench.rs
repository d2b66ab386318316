//! `buildmesh bench qa`: the QA answers on revisions of 100,000 jobs, timed, with real signed data.
//!
//! Synthetic but real: a temporary store receives revisions whose manifests hold `--jobs` jobs
//! plus a fifth as many inner derivations (each with up to three inputs), signed headers by a
//! submitter key, and for the first two revisions an attestation by each of three builders for
//! every derivation, signed for real (the Nix signature of each output and the envelope), with 1 %
//! of the derivations built differently by one builder (not matching) and 2 % not built at all.
//! Consecutive revisions differ in 5 % of their derivations. Nothing is built.
//!
//! It prints one table: the time of `revision show` (status), `compare`, `weather --coverage`,
//! `ready` and `explain` (of a job whose inputs are all unbuilt)
//! through the same [`QaContext`] the HTTP routes use (no mesh: the facts come from the store),
//! and the process's memory after holding every revision.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use buildmesh_protocol::id::{ArtifactHash, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::{ReadyRule, WeatherOptions};
use buildmesh_protocol::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput, RevisionHeader};
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, OutputAttestation};

use super::{QaContext, QaParams};
use crate::store::{AttestationEntry, Store};

/// `buildmesh bench qa` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct QaBenchArgs {
    /// Jobs per revision.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Revisions held (the first two are attested and timed; all count for memory).
    #[arg(long, default_value_t = 10)]
    pub revisions: usize,
    /// Runs of each timed answer (the best and the worst are printed).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keep the bench store in DIR and, when DIR already holds one made by an earlier run with
    /// the same `--jobs` and `--revisions`, answer from it without setting it up again (so the
    /// memory printed is that of a process that only opened the store, as a restarted node does).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// A synthetic derivation: logical id, generation (bumped in 5 % of revisions).
fn drv_path(i: usize, generation: usize) -> StorePath {
    let h = blake3::hash(format!("bench-drv-{i}-{generation}").as_bytes());
    let mut d = [0u8; 20];
    d.copy_from_slice(&h.as_bytes()[..20]);
    let name = if i % 6 == 5 { format!("inner-{i}.drv") } else { format!("pkg{i}-1.{generation}.drv") };
    StorePath::new(d, &name).expect("valid name")
}

fn out_path(drv: &StorePath, output: &str) -> StorePath {
    let h = blake3::hash(format!("{drv}!{output}").as_bytes());
    let mut d = [0u8; 20];
    d.copy_from_slice(&h.as_bytes()[..20]);
    let base = drv.name().trim_end_matches(".drv");
    let name = if output == "out" { base.to_string() } else { format!("{base}-{output}") };
    StorePath::new(d, &name).expect("valid name")
}

/// The generation of derivation `i` in revision `r`: 5 % of the derivations change per revision.
fn generation(i: usize, r: usize) -> usize {
    (0..=r).filter(|k| *k > 0 && (i + k).is_multiple_of(20)).count()
}

/// The manifest of revision `r` with `jobs` jobs (every sixth derivation is an inner one, not a
/// job; inputs point to lower logical ids, so the graph is acyclic).
fn manifest(jobs: usize, r: usize) -> Manifest {
    let total = jobs + jobs / 5;
    let systems = vec!["aarch64-linux".to_string(), "x86_64-linux".to_string()];
    let paths: Vec<StorePath> = (0..total).map(|i| drv_path(i, generation(i, r))).collect();
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by(|a, b| paths[*a].cmp(&paths[*b]));
    let mut index = vec![0u32; total];
    for (pos, i) in order.iter().enumerate() {
        index[*i] = pos as u32;
    }
    let drvs = order
        .iter()
        .map(|&i| {
            let mut inputs: Vec<u32> =
                [i / 2, i / 3, i.saturating_sub(7)].into_iter().filter(|j| *j < i).map(|j| index[j]).collect();
            inputs.sort_unstable();
            inputs.dedup();
            let mut outputs = vec![ManifestOutput { name: "out".into(), path: out_path(&paths[i], "out") }];
            if i % 10 == 0 {
                outputs.insert(0, ManifestOutput { name: "dev".into(), path: out_path(&paths[i], "dev") });
            }
            ManifestDrv { drv: paths[i].clone(), system: u16::from(i % 4 == 0), inputs, outputs }
        })
        .collect();
    let mut js: Vec<ManifestJob> = (0..total)
        .filter(|i| i % 6 != 5)
        .take(jobs)
        .map(|i| ManifestJob { drv: index[i], package: format!("pkg{i}"), version: format!("1.{}", generation(i, r)) })
        .collect();
    js.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
    Manifest { store_dir: StoreDir::nix(), systems, drvs, jobs: js }
}

/// Sign and store an attestation by `key` of every derivation of `m` not attested yet.
fn attest(store: &Store, m: &Manifest, keys: &[NodeKey], done: &mut HashSet<StorePath>) -> anyhow::Result<usize> {
    let sd = StoreDir::nix();
    let mut batch = Vec::new();
    let mut n = 0;
    for (k, d) in m.drvs.iter().enumerate() {
        if !done.insert(d.drv.clone()) || k % 50 == 7 {
            continue; // 2 % never built
        }
        for (b, key) in keys.iter().enumerate() {
            let mut outputs = BTreeMap::new();
            for o in &d.outputs {
                let differs = b == 2 && k % 100 == 3; // 1 % not matching
                let hash = *blake3::hash(format!("{}{}", o.path, if differs { "x" } else { "" }).as_bytes()).as_bytes();
                let oa = OutputAttestation::new_signed(
                    key,
                    &sd,
                    o.path.clone(),
                    hash,
                    4096 + k as u64,
                    BTreeSet::new(),
                    ArtifactHash::from_bytes([0; 32]),
                    Some(d.drv.clone()),
                )?;
                outputs.insert(o.name.clone(), oa);
            }
            let a = Attestation {
                builder: key.node_id(),
                store_dir: sd.clone(),
                drv: d.drv.clone(),
                mode: BuildMode::Native,
                started_at_ms: 1,
                finished_at_ms: 2,
                outputs,
                log: None,
                provenance: None,
            };
            let signed = Signed::sign(key, &a)?;
            let envelope = buildmesh_protocol::wire::Encode::to_bytes(signed.envelope());
            let entry = AttestationEntry::of(signed.id(), &a, envelope, crate::store::unix_ms());
            batch.push(entry);
            n += 1;
        }
        if batch.len() >= 20_000 {
            store.insert_attestations(&batch)?;
            batch.clear();
        }
    }
    store.insert_attestations(&batch)?;
    Ok(n)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The bench's data: a store with `revisions` revisions of `jobs` jobs (channel `bench`, branch
/// `main`, commits `rev0`, `rev1`, …), the first two attested by three builders.
#[derive(Debug)]
pub struct BenchData {
    /// Holds the store's files when they are temporary (no `--dir`).
    pub temp: Option<tempfile::TempDir>,
    /// The store.
    pub store: Store,
    /// The submitter of the revisions.
    pub submitter: Arc<NodeKey>,
    /// The three builders (trusted).
    pub trusted: BTreeSet<NodeId>,
    /// Attestations stored (0 when an earlier run's store was reused).
    pub attested: usize,
    /// Encoded manifest size (the last revision; 0 when reused).
    pub manifest_bytes: usize,
    /// Milliseconds spent encoding manifests.
    pub encode_ms: f64,
    /// Whether the store of an earlier run in `--dir` was reused as it was.
    pub reused: bool,
}

/// Make the bench's data (see [`BenchData`]) in a temporary directory, or in `keep`, where a store
/// left by an earlier run with the same `jobs` and `revisions` is reused; also used by
/// `buildmesh bench pages`.
pub fn setup(jobs: usize, revisions: usize, keep: Option<&std::path::Path>) -> anyhow::Result<BenchData> {
    let (temp, dir) = match keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (None, d.to_path_buf())
        }
        None => {
            let t = tempfile::tempdir().context("creating a temp dir")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let marker = dir.join("bench-qa.done");
    let shape = format!("{} {}", jobs, revisions.max(2));
    let reused = std::fs::read_to_string(&marker).is_ok_and(|s| s == shape);
    let store = Store::open(&dir).context("opening the bench store")?;
    let submitter = Arc::new(NodeKey::from_seed("bench-submitter", [7; 32])?);
    let keys: Vec<NodeKey> =
        (0..3u8).map(|i| NodeKey::from_seed(&format!("bench-builder-{i}"), [i + 1; 32])).collect::<Result<_, _>>()?;
    let trusted: BTreeSet<NodeId> = keys.iter().map(NodeKey::node_id).collect();
    let mut done = HashSet::new();
    let mut attested = 0;
    let mut encode_ms = 0.0;
    let mut manifest_bytes = 0;
    for r in 0..revisions.max(2) {
        if reused {
            break;
        }
        let m = manifest(jobs, r);
        let t = Instant::now();
        let bytes = m.encode_to_vec();
        encode_ms += t.elapsed().as_secs_f64() * 1000.0;
        manifest_bytes = bytes.len();
        let header = RevisionHeader::for_manifest(
            submitter.node_id(),
            1_000_000 + r as u64,
            "bench",
            "main",
            &format!("rev{r}"),
            2,
            &m,
            &bytes,
        )?;
        super::submit::store_signed(&store, &submitter, &header, &bytes, &m)?;
        if r < 2 {
            attested += attest(&store, &m, &keys, &mut done)?;
        }
    }
    if !reused && keep.is_some() {
        std::fs::write(&marker, &shape).context("writing the bench marker")?;
    }
    Ok(BenchData { temp, store, submitter, trusted, attested, manifest_bytes, encode_ms, reused })
}

/// Run `buildmesh bench qa`.
pub fn run(args: QaBenchArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let BenchData { temp: _temp, store, submitter, trusted, attested, manifest_bytes, encode_ms, reused: reuse } =
        setup(args.jobs, args.revisions, args.dir.as_deref())?;
    let setup = t0.elapsed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let ctx = QaContext::new(QaParams {
        store: store.clone(),
        store_dir: StoreDir::nix(),
        key: submitter.clone(),
        mesh: None,
        trust: TrustConfig {
            trusted: Some(trusted),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        },
        rule: ReadyRule::default(),
        replicas: 2,
        local: super::explain::LocalCapabilities::default(),
    });
    let t = Instant::now();
    ctx.warm_up()?;
    let warm = t.elapsed();
    let rss_before = rss_kib("VmRSS:");
    let mut rows: Vec<(String, Vec<f64>, String, u64)> = Vec::new();
    let mut time = |what: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| -> anyhow::Result<()> {
        let mut ms = Vec::new();
        let mut note = String::new();
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            note = f()?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        rows.push((what.to_string(), ms, note, rss_kib("VmRSS:")));
        Ok(())
    };
    time("manifest decode (revision 1)", &mut || {
        let rev = ctx.resolve("bench@rev1")?;
        let bytes = store.get_manifest(&rev.header.manifest_hash)?.context("manifest missing")?;
        let m = Manifest::decode(&bytes)?;
        Ok(format!("{} drvs, {} jobs, {} bytes", m.drvs.len(), m.jobs.len(), bytes.len()))
    })?;
    time("revision status (show)", &mut || {
        let s = rt.block_on(ctx.show("bench@rev1", None, None))?;
        Ok(format!("{} jobs; {:?}", s.status.jobs.len(), s.status.counts.get("x86_64-linux").map(|c| c.total())))
    })?;
    time("compare rev0 -> rev1", &mut || {
        let c = rt.block_on(ctx.compare("bench@rev0", "bench@rev1", None))?;
        Ok(format!("{} pairs; {:?}", c.derivation_changes.len(), c.summary.build_change))
    })?;
    time("weather --coverage (rev1)", &mut || {
        let w = rt.block_on(ctx.weather("bench@rev1", WeatherOptions { coverage: true, display_missing: false }))?;
        let causes = w.coverage.unwrap_or_default();
        let top = causes.first().map(|c| c.dependents).unwrap_or(0);
        Ok(format!("{} root causes, top has {top} dependents", causes.len()))
    })?;
    time("ready rev1 --base rev0", &mut || {
        let v = rt.block_on(ctx.ready("bench@rev1", "bench@rev0"))?;
        Ok(format!("ready {}, {} reasons", v.ready, v.reasons.len()))
    })?;
    // An unattested revision: every input is unbuilt, so explain walks the whole input closure.
    let unbuilt = format!("bench@rev{}", args.revisions.max(2) - 1);
    // The job with the most unbuilt derivations below it (changed in this revision, so no
    // attestation), found on the manifest's graph.
    let deepest = {
        let m = ctx.manifest(&ctx.resolve(&unbuilt)?)?;
        let unattested = |i: usize| store.attestations_for_drv(&m.drvs[i].drv).map(|a| a.is_empty()).unwrap_or(false);
        let mut best = (0usize, None);
        for (i, d) in m.drvs.iter().enumerate().rev().take(2000) {
            if !unattested(i) {
                continue;
            }
            let mut seen = BTreeSet::new();
            let mut stack = vec![i];
            while let Some(j) = stack.pop() {
                if seen.insert(j) {
                    stack.extend(m.drvs[j].inputs.iter().map(|x| *x as usize).filter(|x| unattested(*x)));
                }
            }
            if seen.len() > best.0 {
                best = (seen.len(), Some(d.drv.clone()));
            }
        }
        best.1.context("no unattested derivation in the last revision")?
    };
    time(&format!("explain (a job of {unbuilt}, nothing built)"), &mut || {
        let e = rt.block_on(super::explain::explain(&ctx, &deepest))?;
        Ok(format!("{}; {} missing inputs, {} failed", e.status, e.missing_inputs.len(), e.failed_inputs.len()))
    })?;
    let mut held = 0;
    for r in 0..args.revisions {
        rt.block_on(ctx.show(&format!("bench@rev{r}"), None, None))?;
        held += 1;
        if std::env::var_os("BUILDMESH_BENCH_TRACE_RSS").is_some() {
            eprintln!("after show rev{r}: RSS {} MiB", rss_kib("VmRSS:") / 1024);
        }
    }
    let rss_after = rss_kib("VmRSS:");
    let hwm = rss_kib("VmHWM:");
    if reuse {
        println!(
            "buildmesh bench qa: {} jobs per revision, {} revisions, answered from the store kept in {} \
             (set up by an earlier run; this process only opened it, as a restarted node does)",
            args.jobs,
            args.revisions.max(2),
            args.dir.as_deref().unwrap_or(std::path::Path::new("?")).display()
        );
    } else {
        println!(
            "buildmesh bench qa: {} jobs per revision ({} derivations), {} revisions, {} attestations by 3 builders \
         (set up in {:.1} s; manifest {:.1} MiB, encoded in {:.0} ms per revision)",
            args.jobs,
            args.jobs + args.jobs / 5,
            args.revisions.max(2),
            attested,
            setup.as_secs_f64(),
            manifest_bytes as f64 / (1 << 20) as f64,
            encode_ms / args.revisions.max(2) as f64,
        );
    }
    println!(
        "attestation index built from the store in {:.1} s (once per node start, in the background)",
        warm.as_secs_f64()
    );
    println!();
    println!("| answer | best ms | worst ms | RSS after, MiB | result |");
    println!("|---|---|---|---|---|");
    for (what, ms, note, rss) in &rows {
        let best = ms.iter().copied().fold(f64::INFINITY, f64::min);
        let worst = ms.iter().copied().fold(0.0, f64::max);
        println!("| {what} | {best:.0} | {worst:.0} | {:.0} | {note} |", *rss as f64 / 1024.0);
    }
    println!();
    println!(
        "memory: RSS {:.0} MiB before the answers, {:.0} MiB after the status of all {held} revisions \
         (peak {:.0} MiB, {})",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        if reuse { "during a compare, which holds two revisions' rows at once" } else { "set-up included" }
    );
    Ok(())
}
