//! Weather (issue 13 item 4), as `guix weather` does and more: per system, how many of the outputs
//! of a revision's jobs a user can substitute now, their NAR sizes, queued/building/failed counts
//! and the build rate; with `coverage`, the root causes of what is missing, ranked by how many
//! derivations of the graph depend on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::facts::{DrvFacts, FactState, RevisionFacts, all_outputs_available};
use super::graph::dependents;
use super::names::parse_drv_name;
use super::status::{JobState, drv_states};
use crate::revision::Manifest;
use crate::store_path::StoreDir;

/// One day in milliseconds (the window of `builds_per_hour`).
pub const DAY_MS: u64 = 24 * 3600 * 1000;

/// What [`weather`] computes beyond the per-system numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeatherOptions {
    /// Compute the root causes (`coverage`).
    pub coverage: bool,
    /// List the missing outputs (`missing`).
    pub display_missing: bool,
}

/// The weather of one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemWeather {
    /// Outputs of the jobs' derivations (each derivation counted once).
    pub total: u64,
    /// Of those, substitutable now under the node's quorum policy.
    pub available: u64,
    /// `available / total` (1 when `total` is 0).
    pub ratio: f64,
    /// Jobs queued.
    pub queued: u64,
    /// Jobs building.
    pub building: u64,
    /// Jobs failed (blocked ones are not counted here).
    pub failed: u64,
    /// Jobs blocked by a failed input.
    pub blocked: u64,
    /// NarSize sum of the available outputs.
    pub nar_bytes: u64,
    /// Compressed NAR sizes of the available outputs, where known.
    pub nar_bytes_compressed: u64,
    /// The jobs' derivations first built in the last 24 hours, divided by 24.
    pub builds_per_hour: f64,
}

/// Why a derivation is a root cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootCause {
    /// The mesh gave up on it.
    Failed,
    /// Some of its outputs are not available while every input's outputs are.
    Missing,
}

/// One root cause of missing outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageEntry {
    /// The `.drv` path.
    pub drv: String,
    /// The package (the job's, or from the derivation name when it is not a job).
    pub package: String,
    /// Its system.
    pub system: String,
    /// How many derivations of the revision's graph depend on it, transitively.
    pub dependents: u64,
    /// Why it is a root cause.
    pub reason: RootCause,
    /// Its status.
    pub status: JobState,
}

/// One output a user cannot substitute now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingOutput {
    /// The output path.
    pub path: String,
    /// Its derivation (or the path given, for a manifest file of output paths).
    pub drv: String,
    /// The package.
    pub package: String,
    /// The system.
    pub system: String,
}

/// The answer of `buildmesh weather`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Weather {
    /// Per system.
    pub systems: BTreeMap<String, SystemWeather>,
    /// Every output available (the CLI exits 0 only then).
    pub complete: bool,
    /// With `coverage`: the root causes, most dependents first (then by path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Vec<CoverageEntry>>,
    /// With `display_missing`: the outputs not available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<MissingOutput>>,
}

fn finish(systems: &mut BTreeMap<String, SystemWeather>, built: &BTreeMap<String, u64>) -> bool {
    let mut complete = true;
    for (name, w) in systems.iter_mut() {
        w.ratio = if w.total == 0 { 1.0 } else { w.available as f64 / w.total as f64 };
        w.builds_per_hour = built.get(name).copied().unwrap_or(0) as f64 / 24.0;
        complete &= w.available == w.total;
    }
    complete
}

fn recent(built_at_ms: Option<u64>, now_ms: u64) -> bool {
    built_at_ms.is_some_and(|t| t <= now_ms && now_ms - t < DAY_MS)
}

/// The weather of a revision: its manifest and the node's facts about every derivation of it.
/// Linear in the graph; `coverage` adds O((V+E)·R/64 + Σ dependents) for R root causes.
pub fn weather(manifest: &Manifest, facts: &RevisionFacts, now_ms: u64, options: WeatherOptions) -> Weather {
    let n = manifest.drvs.len();
    let st = drv_states(manifest, facts);
    let nsys = manifest.systems.len() + 1;
    let sys_of = |d: usize| (manifest.drvs[d].system as usize).min(nsys - 1);
    let sys_name = |s: usize| manifest.systems.get(s).map(String::as_str).unwrap_or("unknown");
    let mut per_sys = vec![SystemWeather::default(); nsys];
    let mut used_sys = vec![false; nsys];
    let mut built = vec![0u64; nsys];
    // The first job of each derivation (u32::MAX: not a job's).
    let mut job_of = vec![u32::MAX; n];
    let mut missing = options.display_missing.then(Vec::new);
    let store_dir = &manifest.store_dir;
    for (j, job) in manifest.jobs.iter().enumerate() {
        let d = job.drv as usize;
        if d >= n {
            continue;
        }
        let s = sys_of(d);
        used_sys[s] = true;
        let w = &mut per_sys[s];
        match st.states[d] {
            JobState::Queued => w.queued += 1,
            JobState::Building => w.building += 1,
            JobState::Failed => w.failed += 1,
            JobState::Blocked => w.blocked += 1,
            _ => {}
        }
        if job_of[d] != u32::MAX {
            continue; // outputs counted once per derivation
        }
        job_of[d] = j as u32;
        let f = facts.get(d);
        if recent(f.built_at_ms, now_ms) {
            built[s] += 1;
        }
        for o in &manifest.drvs[d].outputs {
            w.total += 1;
            match f.output(&o.path) {
                Some(of) if of.available => {
                    w.available += 1;
                    w.nar_bytes += of.nar_size;
                    w.nar_bytes_compressed += of.nar_size_compressed.unwrap_or(0);
                }
                _ => {
                    if let Some(m) = missing.as_mut() {
                        m.push(MissingOutput {
                            path: store_dir.display(&o.path),
                            drv: store_dir.display(&manifest.drvs[d].drv),
                            package: job.package.clone(),
                            system: sys_name(s).to_string(),
                        });
                    }
                }
            }
        }
    }
    let mut systems = BTreeMap::new();
    let mut built_by_name = BTreeMap::new();
    for (s, w) in per_sys.into_iter().enumerate() {
        if used_sys[s] {
            systems.insert(sys_name(s).to_string(), w);
            built_by_name.insert(sys_name(s).to_string(), built[s]);
        }
    }
    let complete = finish(&mut systems, &built_by_name);
    let coverage = options.coverage.then(|| {
        let avail: Vec<bool> = (0..n).map(|d| all_outputs_available(&manifest.drvs[d], facts.get(d))).collect();
        let n_in = |i: &u32| (*i as usize) < n;
        let roots: Vec<u32> = (0..n)
            .filter(|&d| {
                facts.get(d).state == FactState::Failed
                    || (!avail[d] && manifest.drvs[d].inputs.iter().filter(|i| n_in(i)).all(|&i| avail[i as usize]))
            })
            .map(|d| d as u32)
            .collect();
        let counts = dependents(manifest, &st.order, &roots);
        let mut ranked: Vec<(u64, u32)> = counts.into_iter().zip(roots).collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .into_iter()
            .map(|(dependents, d)| {
                let d = d as usize;
                let drv = &manifest.drvs[d];
                let package = match manifest.jobs.get(job_of[d] as usize) {
                    Some(job) => job.package.clone(),
                    None => parse_drv_name(drv.drv.name()).0.to_string(),
                };
                let failed = facts.get(d).state == FactState::Failed;
                CoverageEntry {
                    drv: store_dir.display(&drv.drv),
                    package,
                    system: sys_name(sys_of(d)).to_string(),
                    dependents,
                    reason: if failed { RootCause::Failed } else { RootCause::Missing },
                    status: st.states[d],
                }
            })
            .collect()
    });
    Weather { systems, complete, coverage, missing }
}

/// One entry of a manifest file given to `buildmesh weather --manifest FILE`: a store path or
/// `.drv` path, with what the node knows about it.
///
/// For a `.drv` the node gives the derivation's facts (its outputs with availability); for an
/// output path, facts with that one output. An item with no output facts counts as one missing
/// output named by `path`.
#[derive(Debug, Clone, Default)]
pub struct PathItem {
    /// The path as given (absolute).
    pub path: String,
    /// Its system (`unknown` when the node cannot tell).
    pub system: String,
    /// Its package, when known (else from the path's name).
    pub package: Option<String>,
    /// What the node knows.
    pub facts: DrvFacts,
}

/// The weather of a plain list of paths (no derivation graph: `coverage`, when asked, lists the
/// failed or incomplete items themselves with `dependents` 0).
pub fn weather_of_paths(store_dir: &StoreDir, items: &[PathItem], now_ms: u64, options: WeatherOptions) -> Weather {
    let mut systems: BTreeMap<String, SystemWeather> = BTreeMap::new();
    let mut built: BTreeMap<String, u64> = BTreeMap::new();
    let mut missing = options.display_missing.then(Vec::new);
    let mut coverage = options.coverage.then(Vec::new);
    for item in items {
        let w = systems.entry(item.system.clone()).or_default();
        let f = &item.facts;
        let package = || {
            item.package.clone().unwrap_or_else(|| {
                let base = item.path.rsplit('/').next().unwrap_or(&item.path);
                let name = base.split_once('-').map_or(base, |(_, n)| n);
                parse_drv_name(name).0.to_string()
            })
        };
        match f.state {
            FactState::Queued => w.queued += 1,
            FactState::Building => w.building += 1,
            FactState::Failed => w.failed += 1,
            _ => {}
        }
        if recent(f.built_at_ms, now_ms) {
            *built.entry(item.system.clone()).or_default() += 1;
        }
        let mut all = true;
        if f.outputs.is_empty() {
            w.total += 1;
            all = false;
            if let Some(m) = missing.as_mut() {
                m.push(MissingOutput {
                    path: item.path.clone(),
                    drv: item.path.clone(),
                    package: package(),
                    system: item.system.clone(),
                });
            }
        }
        for o in &f.outputs {
            w.total += 1;
            if o.available {
                w.available += 1;
                w.nar_bytes += o.nar_size;
                w.nar_bytes_compressed += o.nar_size_compressed.unwrap_or(0);
            } else {
                all = false;
                if let Some(m) = missing.as_mut() {
                    m.push(MissingOutput {
                        path: store_dir.display(&o.path),
                        drv: item.path.clone(),
                        package: package(),
                        system: item.system.clone(),
                    });
                }
            }
        }
        if let Some(c) = coverage.as_mut() {
            let failed = f.state == FactState::Failed;
            if failed || !all {
                c.push(CoverageEntry {
                    drv: item.path.clone(),
                    package: package(),
                    system: item.system.clone(),
                    dependents: 0,
                    reason: if failed { RootCause::Failed } else { RootCause::Missing },
                    status: match f.state {
                        FactState::Succeeded => JobState::Succeeded,
                        FactState::Failed => JobState::Failed,
                        FactState::Building => JobState::Building,
                        FactState::Queued => JobState::Queued,
                        FactState::Unknown => JobState::Unknown,
                    },
                });
            }
        }
    }
    if let Some(c) = coverage.as_mut() {
        c.sort_by(|a, b| a.drv.cmp(&b.drv));
    }
    let complete = finish(&mut systems, &built);
    Weather { systems, complete, coverage, missing }
}
