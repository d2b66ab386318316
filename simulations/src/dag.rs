//! The workload: a DAG of derivations with requirements, durations and fault flags, the nodes'
//! capabilities, and which client submits what.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::mesh::LocalInfo;
use buildmesh_protocol::store_path::StorePath;
use rand_chacha::ChaCha8Rng;

use crate::SimConfig;
use crate::rng::{chance, log_uniform, pick};

/// One derivation.
#[derive(Debug, Clone)]
pub struct DrvSpec {
    /// Its `.drv` path.
    pub path: StorePath,
    /// Its single output `out`.
    pub out: StorePath,
    /// `system`.
    pub system: String,
    /// `requiredSystemFeatures`.
    pub features: BTreeSet<String>,
    /// Direct dependencies (indices of earlier derivations).
    pub deps: Vec<u32>,
    /// Fails deterministically on every builder.
    pub broken: bool,
    /// Each builder gets another output.
    pub unreproducible: bool,
    /// Native build time.
    pub duration_ms: u64,
    /// The NarHash every honest builder gets (if reproducible).
    pub true_hash: [u8; 32],
    /// Broken (only leaves are): it must end as failed.
    pub expected_fail: bool,
}

/// The workload.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Derivations in topological order (dependencies first).
    pub drvs: Vec<DrvSpec>,
    /// (client node, derivations it submits in topological order).
    pub clients: Vec<(u32, Vec<u32>)>,
}

pub(crate) const X86: &str = "x86_64-linux";
pub(crate) const ARM: &str = "aarch64-linux";

/// The capabilities of node `i`: every fifth node is aarch64 (native), every fifth other one
/// emulates aarch64; even nodes have `big-parallel`; every tenth x86 node has `kvm`; owners group
/// three nodes; 1–4 slots.
pub fn node_info(i: usize, nodes: usize) -> LocalInfo {
    let mut info = LocalInfo::new("buildmesh-sim 0.1", Vec::<String>::new(), 1 + (i % 4) as u32);
    if i % 5 == 4 {
        info.native_systems.insert(ARM.to_string());
    } else {
        info.native_systems.insert(X86.to_string());
        if i % 5 == 1 {
            info.emulated_systems.insert(ARM.to_string());
        }
        if i % 10 == 3 {
            info.features.insert("kvm".to_string());
        }
    }
    if i.is_multiple_of(2) {
        info.features.insert("big-parallel".to_string());
    }
    info.owner = format!("owner-{}", i % (nodes / 3).max(1));
    info
}

/// How many nodes could build a derivation of `system` needing `features`.
fn eligible(infos: &[LocalInfo], system: &str, features: &BTreeSet<String>) -> usize {
    infos
        .iter()
        .filter(|i| {
            (i.native_systems.contains(system) || i.emulated_systems.contains(system))
                && features.is_subset(&i.features)
        })
        .count()
}

/// [`eligible`], remembered per (system, features): a scan of every node per derivation was
/// 10^9 set lookups at 10,000 nodes x 100,000 derivations.
struct Eligible<'a> {
    infos: &'a [LocalInfo],
    known: BTreeMap<(String, BTreeSet<String>), usize>,
}

impl Eligible<'_> {
    fn count(&mut self, system: &str, features: &BTreeSet<String>) -> usize {
        let infos = self.infos;
        *self.known.entry((system.to_string(), features.clone())).or_insert_with(|| eligible(infos, system, features))
    }
}

/// Generate the workload. `byzantine[i]` says whether node i lies; only honest nodes count as
/// eligible builders when requirements are chosen.
pub fn generate(cfg: &SimConfig, byzantine: &[bool], rng: &mut ChaCha8Rng) -> Dag {
    let n = cfg.drvs;
    let reach = (n / 10).max(20);
    let mut drvs: Vec<DrvSpec> = Vec::with_capacity(n);
    let infos: Vec<LocalInfo> = (0..cfg.nodes)
        .filter(|i| !byzantine.get(*i).copied().unwrap_or(false))
        .map(|i| node_info(i, cfg.nodes))
        .collect();
    let mut elig = Eligible { infos: &infos, known: BTreeMap::new() };
    for i in 0..n {
        let mut digest = [0u8; 20];
        let mut out = [0u8; 20];
        let mut hash = [0u8; 32];
        for b in digest.iter_mut().chain(out.iter_mut()).chain(hash.iter_mut()) {
            *b = rand_core::Rng::next_u32(rng) as u8;
        }
        let name = format!("pkg-{i}");
        let arm = cfg.nodes >= 10 && chance(rng, 0.2);
        let arm = arm && elig.count(ARM, &BTreeSet::new()) >= usize::from(cfg.replicas) + 2;
        let mut features = BTreeSet::new();
        if !arm && cfg.nodes >= 30 && chance(rng, 0.05) {
            features.insert("kvm".to_string());
        }
        if cfg.nodes >= 10 && chance(rng, 0.1) {
            features.insert("big-parallel".to_string());
        }
        // Every derivation must have enough eligible builders (k + 2) to be buildable under churn;
        // drop required features until it has.
        let system = if arm { ARM } else { X86 };
        while !features.is_empty() && elig.count(system, &features) < usize::from(cfg.replicas) + 2 {
            features.pop_first();
        }
        let mut deps = BTreeSet::new();
        if i >= 3 && !chance(rng, 0.05) {
            let count = 1 + pick(rng, cfg.max_deps.max(1));
            for _ in 0..count {
                let lo = i.saturating_sub(reach);
                deps.insert((lo + pick(rng, i - lo)) as u32);
            }
        }
        let deps: Vec<u32> = deps.into_iter().collect();
        let broken = chance(rng, cfg.broken);
        drvs.push(DrvSpec {
            // Names are valid store path names by construction.
            path: StorePath::new(digest, &format!("{name}.drv")).expect("generated names are valid store path names"),
            out: StorePath::new(out, &name).expect("generated names are valid store path names"),
            system: system.to_string(),
            features,
            deps,
            broken,
            unreproducible: chance(rng, cfg.unreproducible),
            duration_ms: log_uniform(rng, cfg.build_ms.0, cfg.build_ms.1),
            true_hash: hash,
            expected_fail: false,
        });
    }
    // Roots (nothing depends on them) go round-robin to the clients, each of which submits the
    // closure of its roots.
    let mut has_dependent = vec![false; n];
    for d in &drvs {
        for &x in &d.deps {
            has_dependent[x as usize] = true;
        }
    }
    // Broken derivations are leaves (as in a package set, where whatever depends on a broken
    // package is marked broken too); a failed build still blocks its dependents.
    for (d, dependent) in drvs.iter_mut().zip(&has_dependent) {
        d.broken &= !dependent;
        d.expected_fail = d.broken;
    }
    let mut client_nodes: Vec<u32> = Vec::new();
    while client_nodes.len() < cfg.clients {
        let c = pick(rng, cfg.nodes) as u32;
        if !client_nodes.contains(&c) {
            client_nodes.push(c);
        }
    }
    let mut sets: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); cfg.clients];
    let mut next = 0;
    for (i, dependent) in has_dependent.iter().enumerate().rev() {
        if *dependent {
            continue;
        }
        let set = &mut sets[next % cfg.clients];
        next += 1;
        let mut stack = vec![i as u32];
        while let Some(x) = stack.pop() {
            if set.insert(x) {
                stack.extend(drvs[x as usize].deps.iter().copied());
            }
        }
    }
    let clients = client_nodes.into_iter().zip(sets).map(|(c, s)| (c, s.into_iter().collect())).collect();
    Dag { drvs, clients }
}
