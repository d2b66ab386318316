//! Speed at the scale of issue 13 item 10 (ignored; run in release):
//! `cargo test -p buildmesh-protocol --release --lib qa::tests::bench -- --ignored --nocapture`

use std::collections::HashMap;
use std::time::Instant;

use crate::qa::{
    CompareOptions, DrvFacts, FactState, OutputFacts, OutputVerdict, RevisionFacts, WeatherOptions, compare,
    revision_status, weather,
};
use crate::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput};
use crate::store_path::{StoreDir, StorePath};

const SYSTEMS: [&str; 3] = ["aarch64-darwin", "aarch64-linux", "x86_64-linux"];

/// A deterministic pseudo-random sequence (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn path(seed: u64, name: &str) -> StorePath {
    let h = blake3::hash(&seed.to_le_bytes());
    let mut d = [0u8; 20];
    d.copy_from_slice(&h.as_bytes()[..20]);
    StorePath::new(d, name).expect("name")
}

/// `drvs` derivations (each with up to 4 inputs among those generated before it, and 1 or 2
/// outputs) and `jobs` jobs; `changed` of every 1000 derivations get a new path (a new
/// revision where some packages changed).
fn synthetic(drvs: usize, jobs: usize, changed: u64) -> Manifest {
    let mut rng = Rng(42);
    let mut raw: Vec<(StorePath, u16, Vec<usize>, Vec<ManifestOutput>)> = Vec::with_capacity(drvs);
    for i in 0..drvs {
        let version = if rng.below(1000) < changed { 2 } else { 1 };
        let name = format!("pkg{i}-{version}");
        let seed = (i as u64) << 8 | version;
        let ninputs = if i == 0 { 0 } else { rng.below(5) as usize };
        let inputs = (0..ninputs).map(|_| rng.below(i as u64) as usize).collect();
        let mut outputs = vec![ManifestOutput { name: "out".into(), path: path(seed | 1 << 60, &name) }];
        if i % 4 == 0 {
            outputs.push(ManifestOutput { name: "dev".into(), path: path(seed | 2 << 60, &format!("{name}-dev")) });
            outputs.sort_by(|a, b| a.name.cmp(&b.name));
        }
        raw.push((path(seed, &format!("{name}.drv")), (i % 3) as u16, inputs, outputs));
    }
    let mut order: Vec<usize> = (0..drvs).collect();
    order.sort_by(|&a, &b| raw[a].0.cmp(&raw[b].0));
    let mut new_index = vec![0u32; drvs];
    for (k, &i) in order.iter().enumerate() {
        new_index[i] = k as u32;
    }
    let mdrvs: Vec<ManifestDrv> = order
        .iter()
        .map(|&i| {
            let (p, s, ins, outs) = &raw[i];
            let mut inputs: Vec<u32> = ins.iter().map(|&x| new_index[x]).collect();
            inputs.sort();
            inputs.dedup();
            ManifestDrv { drv: p.clone(), system: *s, inputs, outputs: outs.clone() }
        })
        .collect();
    // Jobs: the last `jobs` derivations generated (the top of the graph).
    let mut mjobs: Vec<ManifestJob> = (drvs - jobs..drvs)
        .map(|i| {
            let name = raw[i].0.name().trim_end_matches(".drv");
            let (p, v) = name.rsplit_once('-').expect("dash");
            ManifestJob { drv: new_index[i], package: p.to_string(), version: v.to_string() }
        })
        .collect();
    mjobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
    Manifest {
        store_dir: StoreDir::nix(),
        systems: SYSTEMS.iter().map(|s| s.to_string()).collect(),
        drvs: mdrvs,
        jobs: mjobs,
    }
}

/// The node's facts: 3 builders per derivation; 1% failed, 0.5% queued, 1% building, 2% built
/// but not available, 1% not matching, the rest available.
fn node_facts(manifests: &[&Manifest]) -> HashMap<StorePath, DrvFacts> {
    let mut rng = Rng(7);
    let builders: Vec<String> = (0..3).map(|b| format!("builder{b}.example.org-1:{}", "A".repeat(43))).collect();
    let mut map = HashMap::new();
    for m in manifests {
        for d in &m.drvs {
            if map.contains_key(&d.drv) {
                continue;
            }
            let r = rng.below(1000);
            let outputs = |available: bool| {
                d.outputs.iter().map(|o| OutputFacts::new(o.path.clone(), available, 123_456, Some(45_678))).collect()
            };
            let f = match r {
                0..10 => DrvFacts {
                    state: FactState::Failed,
                    failures: vec![(builders[0].clone(), "builder exited with 1".into())],
                    ..DrvFacts::default()
                },
                10..15 => DrvFacts { state: FactState::Queued, ..DrvFacts::default() },
                15..25 => DrvFacts { state: FactState::Building, ..DrvFacts::default() },
                _ => DrvFacts {
                    state: FactState::Succeeded,
                    verdict: Some(if r < 35 { OutputVerdict::NotMatching } else { OutputVerdict::Matching }),
                    builders: builders.clone(),
                    outputs: outputs(!(35..55).contains(&r)),
                    built_at_ms: Some(1_000_000 + rng.below(48 * 3_600_000)),
                    failures: Vec::new(),
                },
            };
            map.insert(d.drv.clone(), f);
        }
    }
    map
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        out = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let best = times.iter().cloned().fold(f64::MAX, f64::min);
    let worst = times.iter().cloned().fold(0.0, f64::max);
    (best, worst, out.expect("ran"))
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn qa_100k_jobs() {
    let t = Instant::now();
    let base = synthetic(150_000, 100_000, 0);
    let target = synthetic(150_000, 100_000, 30);
    let edges: usize = base.drvs.iter().map(|d| d.inputs.len()).sum();
    let facts = node_facts(&[&base, &target]);
    let source = |p: &StorePath| facts.get(p).cloned().unwrap_or_default();
    println!(
        "setup: 2 revisions of {} jobs over {} drvs ({} input edges), {} facts: {:.0} ms",
        base.jobs.len(),
        base.drvs.len(),
        edges,
        facts.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    let now = 1_000_000 + 48 * 3_600_000;
    let runs = 5;
    let (c_best, c_worst, bf) = best_of(runs, || RevisionFacts::collect(&base, &source));
    let tf = RevisionFacts::collect(&target, &source);
    let (s_best, s_worst, bs) = best_of(runs, || revision_status(&base, &bf));
    let ts = revision_status(&target, &tf);
    let (cmp_best, cmp_worst, c) =
        best_of(runs, || compare("bench@base", &bs, "bench@target", &ts, &CompareOptions::default()));
    let opts = WeatherOptions { coverage: true, display_missing: false };
    let (w_best, w_worst, w) = best_of(runs, || weather(&target, &tf, now, opts));
    let (j_best, j_worst, json) = best_of(runs, || serde_json::to_vec(&c).expect("json").len());
    println!("| step (100,000 jobs, 150,000 drvs, 3 builders) | best ms | worst ms |");
    println!("|---|---|---|");
    println!("| collect facts (node closure, clones) | {c_best:.0} | {c_worst:.0} |");
    println!("| revision status | {s_best:.0} | {s_worst:.0} |");
    println!("| compare (two revisions) | {cmp_best:.0} | {cmp_worst:.0} |");
    println!("| weather with coverage | {w_best:.0} | {w_worst:.0} |");
    println!("| compare to JSON ({:.1} MiB) | {j_best:.0} | {j_worst:.0} |", json as f64 / (1 << 20) as f64);
    let cov = w.coverage.as_ref().expect("coverage");
    println!(
        "counts: {:?}; summary: {:?}; root causes: {} (top dependents {})",
        bs.counts["x86_64-linux"],
        c.summary.flat,
        cov.len(),
        cov.first().map_or(0, |c| c.dependents)
    );
}
