//! Debugging aids: the history of one derivation and what every node knows about it.

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::CancelReason;
use buildmesh_protocol::store_path::StorePath;

use std::collections::HashMap;

use buildmesh_protocol::mesh::{Event, Output};
use buildmesh_protocol::wire::Message;

use super::{T0, World};

/// What `--watch D` records: the derivation, the lines so far, and each node's last view line
/// (to print a view only when it changes).
#[derive(Debug)]
pub(super) struct Watch {
    drv: u32,
    log: Vec<String>,
    views: HashMap<u32, String>,
}

impl World {
    /// Print a status line on stderr every 2^22 events: virtual time, events, the event queue's
    /// length, deliveries, unresolved submissions and the process's CPU time (long runs).
    pub fn progress(&mut self, on: bool) {
        self.progress = on;
    }

    pub(super) fn print_progress(&self) {
        eprintln!(
            "sim: t={}s events={} queue={} deliveries={} unresolved={} cpu={:.0}s",
            (self.now - T0) / 1000,
            self.steps,
            self.queue.len(),
            self.deliveries,
            self.unresolved,
            crate::resources::cpu_seconds(),
        );
    }

    /// Record everything that happens to derivation `d` (see [`World::watch_log`]).
    pub fn watch(&mut self, d: u32) {
        self.watch = Some(Watch { drv: d, log: Vec::new(), views: HashMap::new() });
    }

    /// What was recorded for the watched derivation.
    pub fn watch_log(&self) -> &[String] {
        self.watch.as_ref().map_or(&[], |w| w.log.as_slice())
    }

    pub(super) fn note(&mut self, i: u32, drv: Option<&StorePath>, what: impl FnOnce() -> String) {
        let Some(w) = &mut self.watch else { return };
        let hit = drv.is_none_or(|p| self.by_drv.get(p) == Some(&w.drv));
        if hit {
            w.log.push(format!("{:>9} node {i:>3}: {}", self.now - T0, what()));
        }
    }

    /// What every live node knows about derivation `d`, and the ground truth (for debugging a
    /// failing seed).
    pub fn describe(&self, d: u32) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let Some(spec) = self.dag.drvs.get(d as usize) else { return s };
        let t = &self.checker.truth[d as usize];
        let _ = writeln!(
            s,
            "drv {d} {} system={} features={:?} deps={:?} broken={} attesters={} failures={} active={:?}",
            spec.path,
            spec.system,
            spec.features,
            spec.deps,
            spec.broken,
            t.attesters.len(),
            t.failures.len(),
            t.active
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(m) = &n.mesh else {
                let _ = writeln!(s, "  node {i}: down");
                continue;
            };
            let short = |v: &[NodeId]| v.iter().map(|x| self.index_of(x)).collect::<Vec<_>>();
            match m.job(&spec.path) {
                Some(j) => {
                    let _ = writeln!(
                        s,
                        "  node {i}: {} jobs={} claimants={:?} attesters={:?} failed={:?} designated={:?} building={} members={}",
                        j.state,
                        j.jobs.len(),
                        short(&j.claimants),
                        short(&j.attesters),
                        short(&j.failed),
                        short(&j.designated),
                        j.building,
                        m.member_count()
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  node {i}: unknown (members={}, pending={})",
                        m.member_count(),
                        m.pending_submissions()
                    );
                }
            }
        }
        s
    }

    /// Every cancellation so far: (virtual ms since start, node, drv, reason).
    pub fn cancels(&self) -> &[(u64, u32, u32, CancelReason)] {
        &self.cancels
    }

    /// Derivations attested by more than k builders so far (for debugging).
    pub fn over_replicated(&self) -> Vec<u32> {
        let k = usize::from(self.cfg.replicas);
        (0..self.dag.drvs.len() as u32).filter(|d| self.checker.truth[*d as usize].attesters.len() > k).collect()
    }

    /// Why node `i` claims `drv` (watch lines): the builders it designates and the members it
    /// penalises (`strikes.rs`), by index.
    pub(super) fn claim_context(&self, i: u32, drv: &StorePath) -> String {
        let Some(mesh) = self.nodes[i as usize].mesh.as_ref() else { return String::new() };
        let designated: Vec<usize> =
            mesh.job(drv).map(|j| j.designated.iter().map(|n| self.index_of(n)).collect()).unwrap_or_default();
        let penalised: Vec<usize> =
            mesh.strikes().filter(|(n, _)| mesh.penalised(n)).map(|(n, _)| self.index_of(n)).collect();
        format!("designated {designated:?} penalised {penalised:?}")
    }

    fn index_of(&self, id: &NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == *id).unwrap_or(usize::MAX)
    }

    /// Record an output of node `i` that concerns the watched derivation.
    pub(super) fn note_output(&mut self, i: u32, o: &Output) {
        if self.watch.is_none() {
            return;
        }
        let drv = match o {
            Output::Publish(Message::Claim(c)) => Some(&c.drv),
            Output::Publish(Message::JobSubmission(j)) => Some(&j.drv),
            Output::Publish(Message::Attestation(a)) => Some(&a.drv),
            Output::Publish(Message::BuildFailure(f)) => Some(&f.drv),
            Output::StartBuild(b) => Some(&b.drv),
            Output::CancelBuild { drv, .. } => Some(drv),
            Output::Event(Event::JobComplete { drv, .. } | Event::JobFailed { drv, .. }) => Some(drv),
            _ => None,
        };
        let Some(p) = drv.cloned() else { return };
        let text = match o {
            Output::Publish(Message::Claim(c)) => format!(
                "claim attempt {} lease {} {}",
                c.attempt,
                c.lease_expires_at_ms - c.claimed_at_ms,
                self.claim_context(i, &c.drv)
            ),
            other => format!("{other:?}").chars().take(160).collect(),
        };
        self.note(i, Some(&p), || text);
    }

    /// After node `i` handled an input: record its view of the watched derivation (designated
    /// builders, live claimants, attesters) when it changed. How the transient k + 1 claims of
    /// issue 18 were traced: the designations of two nodes drifting apart.
    pub(super) fn note_view(&mut self, i: u32) {
        let Some(w) = &self.watch else { return };
        let path = &self.dag.drvs[w.drv as usize].path;
        let Some(j) = self.nodes[i as usize].mesh.as_ref().and_then(|m| m.job(path)) else { return };
        let short = |v: &[NodeId]| v.iter().map(|x| self.index_of(x)).collect::<Vec<_>>();
        let line = format!(
            "{} designated {:?} claimants {:?} attesters {:?}",
            j.state,
            short(&j.designated),
            short(&j.claimants),
            short(&j.attesters)
        );
        let Some(w) = &mut self.watch else { return };
        if w.views.get(&i) != Some(&line) {
            w.views.insert(i, line.clone());
            self.note(i, None, || format!("view: {line}"));
        }
    }
}
