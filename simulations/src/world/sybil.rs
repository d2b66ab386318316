//! A sybil attacker (`--sybils N`, issue 10 finding 6): keys that are not nodes and whose messages
//! the world injects as if they came over the network.
//!
//! - One *liar* member announces [`MAX_SLOTS`] build slots every announcement interval (it claims
//!   nothing: every job placement gives it waits for a lapse), to capture placement.
//! - `N` *throwaway* keys each publish a deterministic failure of every job as soon as it is
//!   published, to give every job up.
//!
//! Their messages bypass the checkers' bookkeeping (a failure a sybil signed is no evidence that a
//! derivation may fail), so the liveness checker still demands every sound derivation complete:
//! a job given up because of the sybils is a violation.

use std::collections::BTreeSet;
use std::rc::Rc;

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StoreDir;
use buildmesh_protocol::wire::{Announcement, BuildFailure, BuildMode, FailureReason, MAX_SLOTS, Message};

use super::{Ev, World};
use crate::rng::between;

/// The attacker's keys and what it already did.
#[derive(Debug)]
pub(super) struct Sybils {
    liar: NodeKey,
    throwaway: Vec<NodeKey>,
    failed: BTreeSet<u32>,
}

impl Sybils {
    /// `n` throwaway keys and a liar.
    pub(super) fn new(n: usize) -> anyhow::Result<Sybils> {
        let key = |i: usize| {
            let mut seed = [0x5bu8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            NodeKey::from_seed(&format!("sybil-{i}"), seed)
        };
        Ok(Sybils {
            liar: key(usize::MAX)?,
            throwaway: (0..n).map(key).collect::<Result<_, _>>()?,
            failed: BTreeSet::new(),
        })
    }
}

impl World {
    /// Deliver a forged message to every node after a network latency.
    fn inject(&mut self, m: Message) {
        let mut deliveries = Vec::with_capacity(self.nodes.len());
        for to in 0..self.nodes.len() as u32 {
            let latency = between(&mut self.rng, self.cfg.latency_ms);
            self.seq += 1;
            deliveries.push((self.now + latency, self.seq, to));
        }
        self.fan_out(Rc::new(m), deliveries);
    }

    /// The liar announces itself again (and schedules its next announcement).
    pub(super) fn sybil_announce(&mut self) {
        let Some(s) = &self.sybil else { return };
        let systems: BTreeSet<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.info.native_systems.iter().chain(&n.info.emulated_systems))
            .cloned()
            .collect();
        let features: BTreeSet<String> = self.nodes.iter().flat_map(|n| n.info.features.iter()).cloned().collect();
        let ann = Announcement {
            node: s.liar.node_id(),
            seq: self.now,
            timestamp_ms: self.now,
            version: "sybil".into(),
            owner: String::new(),
            native_systems: systems,
            emulated_systems: BTreeSet::new(),
            features,
            mandatory_features: BTreeSet::new(),
            slots: MAX_SLOTS,
            load: 0,
            slowdown: Default::default(),
            disk_pressure: None,
        };
        self.inject(Message::Announcement(ann));
        self.push(self.now + self.mesh_cfg.announce_interval_ms, Ev::SybilAnnounce);
    }

    /// Every throwaway key fails derivation `d` (once).
    pub(super) fn sybil_fail(&mut self, d: u32) {
        let Some(s) = &mut self.sybil else { return };
        if !s.failed.insert(d) {
            return;
        }
        let drv = self.dag.drvs[d as usize].path.clone();
        let failures: Vec<Message> = s
            .throwaway
            .iter()
            .map(|k| {
                Message::BuildFailure(BuildFailure {
                    builder: k.node_id(),
                    store_dir: StoreDir::nix(),
                    drv: drv.clone(),
                    attempt: 1,
                    mode: BuildMode::Native,
                    at_ms: self.now,
                    reason: FailureReason::BuilderExit { code: 1 },
                    log: None,
                })
            })
            .collect();
        for m in failures {
            self.inject(m);
        }
    }
}
