//! The central baseline: the same workload on the same machines, scheduled by one omniscient
//! coordinator instead of the mesh, so that a run can say how far the mesh's makespan is from it.
//!
//! ## What is the same as the mesh run
//! - The DAG (systems, required features, dependencies, durations, broken derivations) and the
//!   machines ([`crate::dag::node_info`]: systems, emulation, features, slots); byzantine nodes
//!   are not used (their attestations do not count in the mesh either).
//! - The draws ([`crate::draws`]): the `nth` build started of a derivation has the same duration
//!   and the same transient failure in both runs; node `i` crashes and restarts at the same times,
//!   losing its running builds.
//! - What "done" means: every derivation has k successful builds on k distinct machines, or has
//!   failed by the protocol's rule (`failure_quorum` distinct machines saw it fail
//!   deterministically, or `max_attempts` distinct machines failed it); a derivation behind a
//!   failed one fails at once. A derivation can start only when its inputs are done (k builds),
//!   as in the mesh.
//! - The clock starts at the submission (virtual time 1 s, the mesh's `Ev::Submit`).
//!
//! ## The scheduler
//! A list scheduler with critical path first: every derivation's priority is its bottom level
//! (its own duration plus the longest chain of durations that depends on it), computed from the
//! nominal durations it knows in advance. Whenever a machine frees up, a build finishes or a node
//! restarts, the ready builds (inputs done, fewer than k builds running or done) are taken in
//! priority order and each goes to the free machine where it ends first (native before emulated,
//! then the machine with the fewest capabilities, then the lowest index); an emulated placement is
//! skipped when a native machine would end the build sooner after freeing up (earliest finish
//! time, as HEFT does). There is **no dispatch delay and no network**: a result is known
//! everywhere the instant it exists, so the baseline is a lower bound on what any coordinator
//! achieves on this hardware, and `makespan_ratio` an upper bound on the mesh's price.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound::{Excluded, Unbounded};

use buildmesh_protocol::mesh::MeshConfig;

use crate::SimConfig;
use crate::dag::{Dag, node_info};
use crate::draws::Draws;

/// What the central schedule measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralRun {
    /// From the submission until every derivation was done or failed (`None`: not within the
    /// time limit, e.g. a derivation with fewer than k machines that can build it).
    pub makespan_ms: Option<u64>,
    /// Builds started (crashed ones included).
    pub builds_started: u64,
    /// Derivations with k successful builds.
    pub complete: usize,
    /// Derivations failed (or behind a failed one).
    pub failed: usize,
    /// Builds that failed (transiently or not).
    pub build_failures: u64,
}

/// The submission time, as in the mesh run (ms after the world's start).
const SUBMIT_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Ordered first at equal times: a result is in before anything is dispatched.
    Done {
        node: u32,
        inc: u32,
        drv: u32,
        nth: u32,
    },
    Crash {
        node: u32,
    },
    Restart {
        node: u32,
    },
}

#[derive(Debug, Default)]
struct Machine {
    slots: u32,
    native: u64,
    emulated: u64,
    features: u64,
    /// Bits set (fewer: used first, so that versatile machines stay free for what needs them).
    breadth: u32,
    up: bool,
    inc: u32,
    crashes: u32,
    /// (drv, end) of the running builds.
    running: Vec<(u32, u64)>,
}

#[derive(Debug, Default, Clone)]
struct Job {
    system: u64,
    features: u64,
    missing_inputs: u32,
    ok: u32,
    running: u32,
    started: u32,
    /// Machines that built it or are building it (k distinct builders).
    used: Vec<u32>,
    /// Machines that failed it (distinct; a retry goes elsewhere if it can, as in the mesh, and
    /// back to one of them if no other machine can build it).
    failed_on: Vec<u32>,
    failed_by: u32,
    failed_det: u32,
    resolved: bool,
}

/// Schedule `dag` centrally on the machines of `cfg` (see the module documentation).
pub fn schedule(cfg: &SimConfig, mesh: &MeshConfig, dag: &Dag, byzantine: &[bool]) -> CentralRun {
    Central::new(cfg, mesh, dag, byzantine).run()
}

struct Central<'a> {
    dag: &'a Dag,
    draws: Draws,
    k: u32,
    failure_quorum: u32,
    max_attempts: u32,
    limit: u64,
    now: u64,
    events: BinaryHeap<Reverse<(u64, Ev)>>,
    machines: Vec<Machine>,
    jobs: Vec<Job>,
    dependents: Vec<Vec<u32>>,
    prio: Vec<u64>,
    ready: BTreeSet<(Reverse<u64>, u32)>,
    free: BTreeSet<u32>,
    unresolved: usize,
    out: CentralRun,
}

/// Interns system and feature names as bits.
#[derive(Default)]
struct Bits(BTreeMap<String, u64>);

impl Bits {
    fn of<'s>(&mut self, names: impl IntoIterator<Item = &'s String>) -> u64 {
        let mut mask = 0;
        for name in names {
            let next = 1u64 << (self.0.len() % 64);
            mask |= *self.0.entry(name.clone()).or_insert(next);
        }
        mask
    }
}

impl<'a> Central<'a> {
    fn new(cfg: &SimConfig, mesh: &MeshConfig, dag: &'a Dag, byzantine: &[bool]) -> Central<'a> {
        let (mut systems, mut features) = (Bits::default(), Bits::default());
        let draws = Draws::new(cfg);
        let mut machines = Vec::with_capacity(cfg.nodes);
        let mut events = BinaryHeap::new();
        for i in 0..cfg.nodes {
            let info = node_info(i, cfg.nodes);
            let honest = !byzantine.get(i).copied().unwrap_or(false);
            let mut m = Machine {
                slots: if honest { info.slots } else { 0 },
                native: systems.of(&info.native_systems),
                emulated: systems.of(&info.emulated_systems),
                features: features.of(&info.features),
                up: true,
                ..Machine::default()
            };
            m.breadth = m.native.count_ones() + m.emulated.count_ones() + m.features.count_ones();
            machines.push(m);
            if let Some(t) = draws.uptime_ms(i as u32, 0) {
                events.push(Reverse((t, Ev::Crash { node: i as u32 })));
            }
        }
        let mut dependents = vec![Vec::new(); dag.drvs.len()];
        let mut jobs = Vec::with_capacity(dag.drvs.len());
        for (d, spec) in dag.drvs.iter().enumerate() {
            let system = systems.of([&spec.system]);
            jobs.push(Job {
                system,
                features: features.of(&spec.features),
                missing_inputs: spec.deps.len() as u32,
                ..Job::default()
            });
            for &x in &spec.deps {
                dependents[x as usize].push(d as u32);
            }
        }
        // Bottom levels, dependents first (the DAG is in topological order).
        let mut prio = vec![0u64; dag.drvs.len()];
        for d in (0..dag.drvs.len()).rev() {
            let below = dependents[d].iter().map(|&c| prio[c as usize]).max().unwrap_or(0);
            prio[d] = dag.drvs[d].duration_ms + below;
        }
        let free = (0..cfg.nodes as u32).filter(|&i| machines[i as usize].slots > 0).collect();
        Central {
            dag,
            draws,
            k: u32::from(cfg.replicas),
            failure_quorum: mesh.failure_quorum,
            max_attempts: mesh.max_attempts,
            limit: cfg.max_virtual_ms,
            now: SUBMIT_MS,
            events,
            machines,
            unresolved: jobs.len(),
            jobs,
            dependents,
            prio,
            ready: BTreeSet::new(),
            free,
            out: CentralRun { makespan_ms: None, builds_started: 0, complete: 0, failed: 0, build_failures: 0 },
        }
    }

    fn run(mut self) -> CentralRun {
        for d in 0..self.jobs.len() as u32 {
            if self.jobs[d as usize].missing_inputs == 0 {
                self.ready.insert((Reverse(self.prio[d as usize]), d));
            }
        }
        self.dispatch();
        while self.unresolved > 0 {
            let Some(Reverse((t, ev))) = self.events.pop() else { break };
            if t > self.limit {
                break;
            }
            self.now = t.max(self.now);
            match ev {
                Ev::Done { node, inc, drv, nth } => self.done(node, inc, drv, nth),
                Ev::Crash { node } => self.crash(node),
                Ev::Restart { node } => self.restart(node),
            }
            if self.events.peek().is_none_or(|Reverse((t, _))| *t > self.now) {
                self.dispatch();
            }
        }
        if self.unresolved == 0 {
            self.out.makespan_ms = Some(self.now - SUBMIT_MS);
        }
        self.out
    }

    fn set_free(&mut self, node: u32) {
        let m = &self.machines[node as usize];
        if m.up && (m.running.len() as u32) < m.slots {
            self.free.insert(node);
        } else {
            self.free.remove(&node);
        }
    }

    fn requeue(&mut self, d: u32) {
        let j = &self.jobs[d as usize];
        if !j.resolved && j.missing_inputs == 0 && j.ok + j.running < self.k {
            self.ready.insert((Reverse(self.prio[d as usize]), d));
        }
    }

    fn done(&mut self, node: u32, inc: u32, d: u32, nth: u32) {
        let m = &mut self.machines[node as usize];
        if m.inc != inc {
            return;
        }
        if let Some(pos) = m.running.iter().position(|(x, _)| *x == d) {
            m.running.swap_remove(pos);
        }
        self.set_free(node);
        let job = &mut self.jobs[d as usize];
        job.running -= 1;
        if job.resolved {
            return;
        }
        let broken = self.dag.drvs[d as usize].broken;
        if broken || self.draws.flaky(d, nth) {
            self.out.build_failures += 1;
            job.used.retain(|&x| x != node);
            if !job.failed_on.contains(&node) {
                job.failed_on.push(node);
                job.failed_by += 1;
                job.failed_det += u32::from(broken);
            }
        } else {
            job.ok += 1;
            if job.ok >= self.k {
                self.resolve(d, false);
                return;
            }
        }
        if job.failed_det >= self.failure_quorum || job.failed_by >= self.max_attempts {
            self.resolve(d, true);
        } else {
            self.requeue(d);
        }
    }

    fn resolve(&mut self, d: u32, failed: bool) {
        let mut stack = vec![(d, failed)];
        while let Some((d, failed)) = stack.pop() {
            let job = &mut self.jobs[d as usize];
            if job.resolved {
                continue;
            }
            job.resolved = true;
            self.unresolved -= 1;
            self.ready.remove(&(Reverse(self.prio[d as usize]), d));
            if failed {
                self.out.failed += 1;
            } else {
                self.out.complete += 1;
            }
            for i in 0..self.dependents[d as usize].len() {
                let c = self.dependents[d as usize][i];
                if failed {
                    stack.push((c, true));
                } else {
                    self.jobs[c as usize].missing_inputs -= 1;
                    self.requeue(c);
                }
            }
        }
    }

    fn crash(&mut self, node: u32) {
        let m = &mut self.machines[node as usize];
        let down = self.draws.downtime_ms(node, m.crashes);
        m.crashes += 1;
        m.up = false;
        m.inc += 1;
        let lost: Vec<u32> = m.running.drain(..).map(|(d, _)| d).collect();
        self.free.remove(&node);
        for d in lost {
            let job = &mut self.jobs[d as usize];
            job.running -= 1;
            job.used.retain(|&x| x != node);
            self.requeue(d);
        }
        self.events.push(Reverse((self.now + down, Ev::Restart { node })));
    }

    fn restart(&mut self, node: u32) {
        let m = &mut self.machines[node as usize];
        m.up = true;
        let crashes = m.crashes;
        self.set_free(node);
        if let Some(t) = self.draws.uptime_ms(node, crashes) {
            self.events.push(Reverse((self.now + t, Ev::Crash { node })));
        }
    }

    /// Assign ready builds to free machines, critical path first: one pass over the ready list
    /// in priority order, each derivation taking as many free machines as it still needs.
    fn dispatch(&mut self) {
        // The (system, features) classes with no free machine at all in this round.
        let mut dead: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut cursor: Option<(Reverse<u64>, u32)> = None;
        while !self.free.is_empty() {
            let next = match cursor {
                None => self.ready.iter().next(),
                Some(c) => self.ready.range((Excluded(c), Unbounded)).next(),
            };
            let Some(&(prio, d)) = next else { return };
            cursor = Some((prio, d));
            while let Some((node, emulated)) = self.place(d, &mut dead) {
                self.start(d, node, emulated);
                if self.jobs[d as usize].ok + self.jobs[d as usize].running >= self.k {
                    break;
                }
            }
        }
    }

    /// The free machine for `d`, if one fits and it should start now.
    fn place(&self, d: u32, dead: &mut BTreeSet<(u64, u64)>) -> Option<(u32, bool)> {
        let job = &self.jobs[d as usize];
        let class = (job.system, job.features);
        if dead.contains(&class) {
            return None;
        }
        // Fresh machines first, then native ones, then the least versatile.
        let mut best: Option<(bool, bool, u32, u32)> = None;
        let mut any = false;
        for &i in &self.free {
            let m = &self.machines[i as usize];
            let native = m.native & job.system != 0;
            if !(native || m.emulated & job.system != 0) || job.features & !m.features != 0 {
                continue;
            }
            any = true;
            if job.used.contains(&i) {
                continue;
            }
            let key = (job.failed_on.contains(&i), !native, m.breadth, i);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        if !any {
            dead.insert(class);
            return None;
        }
        let (again, emulated, _, node) = best?;
        if again && self.fresh_machine_exists(job) {
            // Wait for a machine that has not failed it yet.
            return None;
        }
        if emulated {
            // Earliest finish: wait for a native machine if it would end the build sooner.
            let at = self.native_available_at(job);
            let base = self.dag.drvs[d as usize].duration_ms;
            if at.saturating_add(base) < self.now + 3 * base {
                return None;
            }
        }
        Some((node, emulated))
    }

    /// Whether a machine that has neither built nor failed `job` could build it (up or not).
    fn fresh_machine_exists(&self, job: &Job) -> bool {
        self.machines.iter().enumerate().any(|(i, m)| {
            m.slots > 0
                && (m.native | m.emulated) & job.system != 0
                && job.features & !m.features == 0
                && !job.used.contains(&(i as u32))
                && !job.failed_on.contains(&(i as u32))
        })
    }

    /// When the first native machine that may build `job` (it has not built or failed it) can
    /// start a build (`u64::MAX`: none is up).
    fn native_available_at(&self, job: &Job) -> u64 {
        self.machines
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.up && m.native & job.system != 0
                    && job.features & !m.features == 0
                    && !job.used.contains(&(*i as u32))
                    && !job.failed_on.contains(&(*i as u32))
            })
            .map(|(_, m)| m)
            .map(|m| {
                if (m.running.len() as u32) < m.slots {
                    self.now
                } else {
                    m.running.iter().map(|(_, end)| *end).min().unwrap_or(self.now)
                }
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    fn start(&mut self, d: u32, node: u32, emulated: bool) {
        let job = &mut self.jobs[d as usize];
        let nth = job.started;
        job.started += 1;
        job.running += 1;
        job.used.push(node);
        let t = self.draws.build_ms(self.dag.drvs[d as usize].duration_ms, emulated, d, nth);
        let m = &mut self.machines[node as usize];
        m.running.push((d, self.now + t));
        let inc = m.inc;
        self.events.push(Reverse((self.now + t, Ev::Done { node, inc, drv: d, nth })));
        self.out.builds_started += 1;
        self.set_free(node);
        let job = &self.jobs[d as usize];
        if job.ok + job.running >= self.k {
            self.ready.remove(&(Reverse(self.prio[d as usize]), d));
        }
    }
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::store_path::StorePath;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::dag::{self, DrvSpec};

    fn drv(i: u8, deps: &[u32], duration_ms: u64, broken: bool) -> DrvSpec {
        DrvSpec {
            path: StorePath::new([i; 20], &format!("d{i}.drv")).unwrap(),
            out: StorePath::new([i + 100; 20], &format!("d{i}")).unwrap(),
            system: dag::X86.to_string(),
            features: BTreeSet::new(),
            deps: deps.to_vec(),
            broken,
            unreproducible: false,
            duration_ms,
            true_hash: [i; 32],
            expected_fail: broken,
        }
    }

    fn cfg(nodes: usize) -> SimConfig {
        SimConfig { nodes, flaky: 0.0, ..SimConfig::default() }
    }

    #[test]
    fn a_chain_takes_the_sum_of_its_slowest_replicas() {
        let cfg = cfg(20);
        let dag = Dag {
            drvs: vec![drv(0, &[], 1000, false), drv(1, &[0], 2000, false), drv(2, &[1], 3000, false)],
            clients: vec![],
        };
        let r = schedule(&cfg, &MeshConfig::default(), &dag, &[]);
        let draws = Draws::new(&cfg);
        let expected: u64 = (0..3u32)
            .map(|d| (0..2).map(|n| draws.build_ms(dag.drvs[d as usize].duration_ms, false, d, n)).max().unwrap())
            .sum();
        assert_eq!(r.makespan_ms, Some(expected));
        assert_eq!((r.builds_started, r.complete, r.failed), (6, 3, 0));
    }

    #[test]
    fn a_broken_derivation_fails_with_everything_behind_it() {
        let dag = Dag {
            drvs: vec![drv(0, &[], 1000, true), drv(1, &[0], 2000, false), drv(2, &[], 500, false)],
            clients: vec![],
        };
        let r = schedule(&cfg(20), &MeshConfig::default(), &dag, &[]);
        // failure_quorum (2) builders confirm the failure (a third starts when the first fails,
        // as it would in the mesh, and is dropped); the dependent never starts.
        assert_eq!((r.builds_started, r.complete, r.failed), (5, 1, 2));
        assert!(r.makespan_ms.unwrap() < 1300);
    }

    #[test]
    fn generated_workloads_respect_the_lower_bounds_and_churn_costs_builds() {
        let mut cfg = SimConfig { nodes: 30, drvs: 400, ..SimConfig::default() };
        let byz = vec![false; cfg.nodes];
        let dag = dag::generate(&cfg, &byz, &mut ChaCha8Rng::seed_from_u64(1));
        let calm = schedule(&cfg, &MeshConfig::default(), &dag, &byz);
        let ms = calm.makespan_ms.unwrap();
        // The critical path at the fastest jitter (0.8) is a lower bound.
        let mut longest = vec![0u64; dag.drvs.len()];
        for (d, spec) in dag.drvs.iter().enumerate() {
            let before = spec.deps.iter().map(|&x| longest[x as usize]).max().unwrap_or(0);
            longest[d] = before + spec.duration_ms * 8 / 10;
        }
        assert!(ms >= *longest.iter().max().unwrap(), "{ms} below the critical path");
        // So is the work (k builds each) spread over every slot.
        let slots: u64 = (0..cfg.nodes).map(|i| u64::from(node_info(i, cfg.nodes).slots)).sum();
        let work: u64 = dag.drvs.iter().map(|d| 2 * d.duration_ms * 8 / 10).sum();
        assert!(ms >= work / slots, "{ms} below work / slots");
        assert_eq!(calm.complete + calm.failed, dag.drvs.len());
        cfg.churn = 3.0;
        let churned = schedule(&cfg, &MeshConfig::default(), &dag, &byz);
        assert!(churned.builds_started > calm.builds_started, "crashes lose running builds");
        assert_eq!(churned.complete + churned.failed, dag.drvs.len());
    }
}
