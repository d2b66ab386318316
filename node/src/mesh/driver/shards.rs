//! Shards on the real node (`buildmesh_protocol::mesh::shard`, `mesh_shards`): which gossip
//! topics the node hears.
//!
//! With `S > 1` shards a node subscribes at start to its own shard's topics (every coordination
//! kind) and the revision topic ([`crate::mesh::validate::node_topics`]). When it submits a job
//! (or restores one after a restart) it also subscribes to the job topics of the shards of that
//! derivation and of the inputs it waits for ([`crate::mesh::validate::observed_topics`]):
//! it observes them to completion like the protocol says. A build being prepared whose inputs'
//! attestations are missing here observes its inputs' shards too (`Driver::observe_inputs`),
//! while it is pending. Once no unfinished submission of the node has its derivation or an input
//! there, and no pending build an input, any more, it unsubscribes from an observed shard's
//! topics ([`Subscribed::release`]; never from its own shard's). Anti-entropy asks peers for the
//! records of the heard shards only ([`Subscribed::filter`]). With one shard nothing changes:
//! the unsharded topics, no extra subscription, unfiltered sync.

use super::*;
use crate::mesh::rpc::ShardFilter;
use crate::mesh::validate::{node_topics, observed_topics};
use buildmesh_protocol::mesh::{MeshConfig, ReplicaRule, shard};

/// Refuse a sharded configuration the protocol cannot run: observers count trusted builders'
/// attestations towards k, so nodes that trust nobody but themselves
/// ([`ReplicaRule::Designated`]) could never see another shard's job complete.
pub(super) fn check(cfg: &MeshConfig) -> Result<(), SettingsError> {
    if cfg.shards > 1 && cfg.replicas_from == ReplicaRule::Designated {
        return Err(SettingsError::Shards {
            shards: cfg.shards,
            reason: "a sharded mesh needs trusted builders (trusted_keys): a node that trusts only \
                     itself cannot count the builds of another shard; keep mesh_shards = 1"
                .into(),
        });
    }
    Ok(())
}

/// `MeshConfig::max_finished_drvs` from the setting `mesh_max_finished_drvs` (0 = keep all).
pub(super) fn finished_limit(setting: u64) -> usize {
    if setting == 0 { usize::MAX } else { usize::try_from(setting).unwrap_or(usize::MAX) }
}

/// The node's shard, the count, and the shards whose topics it is subscribed to.
#[derive(Debug)]
pub(super) struct Subscribed {
    shard: u32,
    shards: u32,
    heard: BTreeSet<u32>,
    /// Bumped each time a shard is added to `heard`: a sync run started before missed its
    /// records ([`crate::mesh::sync::SyncScope::from_zero`]).
    generation: u64,
}

impl Subscribed {
    /// A node of shard `shard` of `shards`, subscribed to its own shard.
    pub(super) fn new(shard: u32, shards: u32) -> Subscribed {
        Subscribed { shard, shards: shards.max(1), heard: BTreeSet::from([shard]), generation: 0 }
    }

    /// The topics subscribed at start.
    pub(super) fn start_topics(&self) -> Vec<String> {
        node_topics(self.shard, self.shards)
    }

    /// The shard count.
    pub(super) fn count(&self) -> u32 {
        self.shards
    }

    /// This node's shard.
    pub(super) fn own(&self) -> u32 {
        self.shard
    }

    /// The shards whose topics the node hears: its own and those it observes.
    pub(super) fn heard(&self) -> &BTreeSet<u32> {
        &self.heard
    }

    /// How many times a shard was added to the heard ones.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The anti-entropy filter: the heard shards (`None` with one shard: every record).
    pub(super) fn filter(&self) -> Option<ShardFilter> {
        (self.shards > 1).then(|| ShardFilter { shards: self.shards, of: self.heard.iter().copied().collect() })
    }

    /// Forget the observed shards none of `needed` lies in (the derivations and inputs of the
    /// node's unfinished submissions); returns them, to unsubscribe. The node's own shard stays.
    fn release<'a>(&mut self, needed: impl IntoIterator<Item = &'a StorePath>) -> Vec<u32> {
        if self.shards <= 1 {
            return Vec::new();
        }
        let mut keep = BTreeSet::from([self.shard]);
        keep.extend(needed.into_iter().map(|d| shard::drv_shard(d, self.shards)));
        let gone: Vec<u32> = self.heard.difference(&keep).copied().collect();
        self.heard.retain(|s| keep.contains(s));
        gone
    }

    /// The shards of `drvs` not heard yet (marked heard).
    fn new_shards(&mut self, drvs: &[StorePath]) -> Vec<u32> {
        if self.shards <= 1 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for d in drvs {
            let s = shard::drv_shard(d, self.shards);
            if self.heard.insert(s) {
                self.generation += 1;
                out.push(s);
            }
        }
        out
    }
}

impl Driver {
    /// Subscribe to the job topics of the shards of `drvs` not heard yet.
    pub(super) async fn observe(&mut self, drvs: &[StorePath]) {
        for s in self.shards.new_shards(drvs) {
            tracing::info!(target: EVENTS, event = "shard_observed", shard = s, shards = self.shards.count());
            for topic in observed_topics(s, self.shards.count()) {
                if let Err(e) = self.ctx.net.subscribe(topic.clone()).await {
                    tracing::warn!(%topic, cause = %e, "cannot subscribe to another shard's topic");
                }
            }
        }
    }

    /// Unsubscribe from the observed shards that no unfinished submission and no pending local
    /// build (its inputs) of this node needs any more (after one finished).
    pub(super) async fn release_shards(&mut self) {
        let needed: Vec<StorePath> = self
            .submissions
            .iter()
            .flat_map(|(drv, job)| std::iter::once(drv).chain(job.inputs.iter()))
            .filter_map(|b| StorePath::from_basename(b).ok())
            .chain(self.building.values().flat_map(|slot| slot.inputs.iter().cloned()))
            .collect();
        for s in self.shards.release(&needed) {
            tracing::info!(target: EVENTS, event = "shard_released", shard = s, shards = self.shards.count());
            for topic in observed_topics(s, self.shards.count()) {
                if let Err(e) = self.ctx.net.unsubscribe(topic.clone()).await {
                    tracing::warn!(%topic, cause = %e, "cannot unsubscribe from another shard's topic");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(i: u8) -> StorePath {
        StorePath::new([i; 20], "x.drv").unwrap()
    }

    #[test]
    fn a_submission_adds_the_shards_of_its_derivation_and_inputs_once() {
        let mut s = Subscribed::new(0, 2);
        assert_eq!(s.start_topics().len(), 7, "6 sharded kinds and the revision topic");
        let other = (0..40).map(drv).find(|d| shard::drv_shard(d, 2) == 1).unwrap();
        let mine = (0..40).map(drv).find(|d| shard::drv_shard(d, 2) == 0).unwrap();
        assert_eq!(s.new_shards(std::slice::from_ref(&mine)), Vec::<u32>::new(), "its own shard is heard already");
        assert_eq!(s.new_shards(&[mine.clone(), other.clone(), other.clone()]), vec![1]);
        assert_eq!(s.new_shards(&[other]), Vec::<u32>::new(), "subscribed once");
        let mut one = Subscribed::new(0, 1);
        assert_eq!(one.start_topics(), node_topics(0, 1));
        assert!(one.new_shards(&[mine]).is_empty());
    }

    #[test]
    fn an_observed_shard_is_released_when_nothing_needs_it_and_the_own_shard_never() {
        let in_shard = |want: u32| (0..60).map(drv).filter(move |d| shard::drv_shard(d, 3) == want);
        let own = 0;
        let mut s = Subscribed::new(own, 3);
        let (a1, a2) = {
            let mut i = in_shard(1);
            (i.next().unwrap(), i.next().unwrap())
        };
        let b = in_shard(2).next().unwrap();
        let mine = in_shard(own).next().unwrap();
        assert_eq!(s.new_shards(&[a1.clone(), b.clone()]), vec![1, 2]);
        assert_eq!(s.generation(), 2);
        assert_eq!(s.filter(), Some(ShardFilter { shards: 3, of: vec![0, 1, 2] }));
        // Another derivation of shard 1 still waits: only shard 2 goes.
        assert_eq!(s.release([&a2, &mine]), vec![2]);
        assert_eq!(s.heard(), &BTreeSet::from([0, 1]));
        // Nothing needed at all: shard 1 goes, the own shard stays.
        assert_eq!(s.release([]), vec![1]);
        assert_eq!(s.heard(), &BTreeSet::from([own]));
        assert_eq!(s.release([]), Vec::<u32>::new(), "the own shard is never released");
        // Heard again later: a new generation (sync pages from 0 again).
        assert_eq!(s.new_shards(std::slice::from_ref(&b)), vec![2]);
        assert_eq!(s.generation(), 3);
        let mut one = Subscribed::new(0, 1);
        assert!(one.release([]).is_empty() && one.filter().is_none());
    }

    #[test]
    fn zero_finished_limit_keeps_all() {
        assert_eq!(finished_limit(0), usize::MAX);
        assert_eq!(finished_limit(500), 500);
    }

    #[test]
    fn trusting_only_itself_refuses_shards() {
        let cfg = MeshConfig { shards: 2, replicas_from: ReplicaRule::Designated, ..MeshConfig::default() };
        assert!(matches!(check(&cfg), Err(SettingsError::Shards { shards: 2, .. })));
        assert!(check(&MeshConfig { shards: 1, ..cfg.clone() }).is_ok());
        assert!(check(&MeshConfig { replicas_from: ReplicaRule::Trusted, ..cfg }).is_ok());
    }
}
