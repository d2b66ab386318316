//! The live view: members heard from within the TTL, with the data placement needs.

use std::collections::{BTreeMap, VecDeque};

use super::designate::{Cand, owner_key};
use crate::id::NodeId;
use crate::placement::{Member, PlacementKey, Requirements, View, clamped_weight, median_slots, placement_slots};
use crate::wire::Announcement;

/// How many view changes are remembered for incremental updates of rank windows.
const CHANGE_LOG: usize = 1024;

/// One member of the view.
#[derive(Debug, Clone)]
pub(crate) struct MemberEntry {
    /// Its latest announcement.
    pub(crate) ann: Announcement,
    /// A one-member view, to rank this member alone (its cost for a derivation depends on the
    /// other members only through its clamped weight). `None` only if placement refused the
    /// member (it cannot: one member has no duplicate).
    solo: Option<View>,
    /// Its placement weight: its slots clamped by the view's median ([`clamped_weight`]).
    weight: u32,
    /// Its owner group.
    pub(crate) owner: u64,
    /// When it was last heard from (local clock).
    pub(crate) last_heard_ms: u64,
    /// When it entered the view (local clock).
    pub(crate) joined_at_ms: u64,
    /// The epoch of its last change that placement sees (join, capabilities).
    since_epoch: u64,
}

impl MemberEntry {
    fn new(ann: Announcement, now_ms: u64, epoch: u64, median: u32) -> MemberEntry {
        let weight = clamped_weight(placement_slots(&ann), median);
        let owner = owner_key(&ann.node, &ann.owner);
        let solo = Self::solo(&ann, weight);
        MemberEntry { ann, solo, weight, owner, last_heard_ms: now_ms, joined_at_ms: now_ms, since_epoch: epoch }
    }

    /// A view of this member alone, with its weight already clamped (a lone member is its own
    /// median, so the view clamps nothing more).
    fn solo(ann: &Announcement, weight: u32) -> Option<View> {
        View::new([Member { weight, ..Member::from_announcement(ann) }]).ok()
    }

    /// This member as a candidate for a derivation, if eligible.
    pub(crate) fn cand(&self, key: &PlacementKey, req: &Requirements) -> Option<Cand> {
        let ranked = self.solo.as_ref()?.rank(key, req);
        ranked.first().map(|r| Cand { node: r.node, mode: r.mode, cost: r.cost, owner: self.owner })
    }
}

/// Whether two announcements of one node agree on everything placement uses.
fn same_capabilities(a: &Announcement, b: &Announcement) -> bool {
    a.slots == b.slots
        && a.slowdown == b.slowdown
        && a.disk_pressure == b.disk_pressure
        && a.owner == b.owner
        && a.native_systems == b.native_systems
        && a.emulated_systems == b.emulated_systems
        && a.features == b.features
        && a.mandatory_features == b.mandatory_features
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// New in the view.
    Joined,
    /// Its capabilities changed.
    Changed,
    /// Its announcement was renewed without a change that placement sees.
    Renewed,
}

/// What [`Membership::renew`] did with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Older than the latest known (`seq`).
    Stale,
    /// The latest known again.
    Duplicate,
    /// Newer, with the same capabilities: the member is renewed.
    Renewed,
    /// Not a member, or newer with other capabilities: nothing done ([`Membership::upsert`]).
    Other,
}

/// The members and the derived placement view.
#[derive(Debug)]
pub(crate) struct Membership {
    members: BTreeMap<NodeId, MemberEntry>,
    /// (expiry, node) in time order, lazily cleaned: an entry whose member has another expiry
    /// by now (renewed since, or gone) is stale and skipped; the first entry is never stale.
    /// A renewal appends (the clock only goes forward) instead of moving an entry in a tree:
    /// renewals are most of what a node of a large mesh does.
    expiry: VecDeque<(u64, NodeId)>,
    ttl_ms: u64,
    me: NodeId,
    epoch: u64,
    view: Option<View>,
    /// (epoch, node) of every join or change, most recent last.
    log: VecDeque<(u64, NodeId)>,
    /// Every change after this epoch is in `log`.
    log_floor: u64,
    /// The lower median of the members' non-zero slots (what weights are clamped by).
    median: u32,
}

/// A prefix of a derivation's rank order, kept up to date with the view.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    epoch: u64,
    pub(crate) order: Vec<Cand>,
    pub(crate) complete: bool,
}

impl Membership {
    pub(crate) fn new(me: NodeId, ttl_ms: u64) -> Membership {
        Membership {
            members: BTreeMap::new(),
            expiry: VecDeque::new(),
            ttl_ms,
            me,
            epoch: 1,
            view: None,
            log: VecDeque::new(),
            log_floor: 0,
            median: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn get(&self, node: &NodeId) -> Option<&MemberEntry> {
        self.members.get(node)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values()
    }

    fn bump(&mut self, node: NodeId) -> u64 {
        self.epoch += 1;
        self.view = None;
        self.log.push_back((self.epoch, node));
        while self.log.len() > CHANGE_LOG {
            if let Some((e, _)) = self.log.pop_front() {
                self.log_floor = e;
            }
        }
        self.epoch
    }

    /// The fast path of an announcement (already checked for freshness) of a known member, with
    /// one lookup: stale or duplicate by `seq`, or a renewal that changes nothing placement uses
    /// (the member is renewed, no string copied). [`Renewal::Other`] leaves the view as it was:
    /// the caller decides whether to [`Membership::upsert`].
    pub(crate) fn renew(&mut self, ann: &Announcement, now_ms: u64) -> Renewal {
        let Some(m) = self.members.get_mut(&ann.node) else { return Renewal::Other };
        if ann.seq < m.ann.seq {
            return Renewal::Stale;
        }
        if ann.seq == m.ann.seq {
            return Renewal::Duplicate;
        }
        if !same_capabilities(&m.ann, ann) {
            return Renewal::Other;
        }
        m.last_heard_ms = now_ms;
        m.ann.seq = ann.seq;
        m.ann.timestamp_ms = ann.timestamp_ms;
        m.ann.load = ann.load;
        if m.ann.version != ann.version {
            m.ann.version.clone_from(&ann.version);
        }
        if ann.node != self.me {
            self.push_expiry(now_ms.saturating_add(self.ttl_ms), ann.node);
        }
        Renewal::Renewed
    }

    /// The expiry `at` of `node` (its latest): appended in time order; stale entries at the front
    /// are dropped, and the queue is rebuilt when stale entries outnumber the members (a member
    /// that announces very often).
    fn push_expiry(&mut self, at: u64, node: NodeId) {
        if self.expiry.back().is_none_or(|(t, _)| *t <= at) {
            self.expiry.push_back((at, node));
        } else {
            let pos = self.expiry.partition_point(|(t, _)| *t <= at);
            self.expiry.insert(pos, (at, node));
        }
        self.drop_stale_expiries();
        if self.expiry.len() > 4 * self.members.len() + 16 {
            let mut all: Vec<(u64, NodeId)> = self
                .members
                .values()
                .filter(|m| m.ann.node != self.me)
                .map(|m| (m.last_heard_ms.saturating_add(self.ttl_ms), m.ann.node))
                .collect();
            all.sort_unstable();
            self.expiry = all.into();
        }
    }

    /// Whether an expiry entry is the member's current expiry.
    fn current(&self, (at, node): (u64, NodeId)) -> bool {
        self.members.get(&node).is_some_and(|m| m.last_heard_ms.saturating_add(self.ttl_ms) == at)
    }

    fn drop_stale_expiries(&mut self) {
        while let Some(&front) = self.expiry.front() {
            if self.current(front) {
                break;
            }
            self.expiry.pop_front();
        }
    }

    /// Insert or renew a member from an announcement already checked for freshness. This node's
    /// own entry never expires. A renewal that changes nothing placement uses copies no strings.
    pub(crate) fn upsert(&mut self, ann: &Announcement, now_ms: u64) -> Change {
        let node = ann.node;
        let expires = now_ms.saturating_add(self.ttl_ms);
        if let Some(m) = self.members.get_mut(&node) {
            m.last_heard_ms = now_ms;
            if same_capabilities(&m.ann, ann) {
                m.ann.seq = ann.seq;
                m.ann.timestamp_ms = ann.timestamp_ms;
                m.ann.load = ann.load;
                if m.ann.version != ann.version {
                    m.ann.version.clone_from(&ann.version);
                }
                if node != self.me {
                    self.push_expiry(expires, node);
                }
                return Change::Renewed;
            }
            let joined = m.joined_at_ms;
            let epoch = self.bump(node);
            let mut entry = MemberEntry::new(ann.clone(), now_ms, epoch, self.median);
            entry.joined_at_ms = joined;
            self.members.insert(node, entry);
            if node != self.me {
                self.push_expiry(expires, node);
            }
            self.reweigh();
            return Change::Changed;
        }
        let epoch = self.bump(node);
        self.members.insert(node, MemberEntry::new(ann.clone(), now_ms, epoch, self.median));
        if node != self.me {
            self.push_expiry(expires, node);
        }
        self.reweigh();
        Change::Joined
    }

    /// Recompute the median of the slots; every member whose clamped weight changed with it
    /// counts as changed (its rank windows are recomputed).
    fn reweigh(&mut self) {
        let median = median_slots(self.members.values().map(|m| placement_slots(&m.ann)));
        if median == self.median {
            return;
        }
        self.median = median;
        let moved: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| clamped_weight(placement_slots(&m.ann), median) != m.weight)
            .map(|m| m.ann.node)
            .collect();
        for node in moved {
            let epoch = self.bump(node);
            if let Some(m) = self.members.get_mut(&node) {
                m.weight = clamped_weight(placement_slots(&m.ann), median);
                m.solo = MemberEntry::solo(&m.ann, m.weight);
                m.since_epoch = epoch;
            }
        }
    }

    /// The earliest expiry.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.expiry.front().map(|(t, _)| *t)
    }

    /// Remove the members not heard from within the TTL; returns them.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<NodeId> {
        let mut gone = Vec::new();
        while let Some(&(t, node)) = self.expiry.front() {
            if t > now_ms {
                break;
            }
            self.expiry.pop_front();
            self.members.remove(&node);
            self.drop_stale_expiries();
            self.epoch += 1;
            self.view = None;
            gone.push((t, node));
        }
        if !gone.is_empty() {
            self.reweigh();
        }
        // In (expiry, node) order, whatever order the renewals came in.
        gone.sort_unstable();
        gone.into_iter().map(|(_, node)| node).collect()
    }

    /// The placement view of the current members (`None` only if placement refused the member
    /// list, which it cannot: members are keyed by node id, so there is no duplicate).
    pub(crate) fn view(&mut self) -> Option<&View> {
        if self.view.is_none() {
            self.view = View::new(self.members.values().map(|m| Member::from_announcement(&m.ann))).ok();
        }
        self.view.as_ref()
    }

    /// The first `len` entries of the rank order for a derivation, and whether that is all of it.
    fn order(&mut self, key: &PlacementKey, req: &Requirements, len: usize) -> (Vec<Cand>, bool) {
        let ranked = self.view().map(|v| v.rank(key, req)).unwrap_or_default();
        let complete = ranked.len() <= len;
        let order = ranked
            .into_iter()
            .take(len)
            .map(|r| {
                let owner = self.members.get(&r.node).map_or(0, |m| m.owner);
                Cand { node: r.node, mode: r.mode, cost: r.cost, owner }
            })
            .collect();
        (order, complete)
    }

    /// The whole rank order for a derivation.
    pub(crate) fn full_order(&mut self, key: &PlacementKey, req: &Requirements) -> Vec<Cand> {
        self.order(key, req, usize::MAX).0
    }

    /// A fresh window of the first `len` entries.
    pub(crate) fn window(&mut self, key: &PlacementKey, req: &Requirements, len: usize) -> Window {
        let (order, complete) = self.order(key, req, len);
        Window { epoch: self.epoch, order, complete }
    }

    /// Bring a window up to date: members that left or changed force a recomputation (rare per
    /// derivation); members that joined are ranked alone and inserted.
    pub(crate) fn refresh(&mut self, w: &mut Window, key: &PlacementKey, req: &Requirements, len: usize) {
        if w.epoch == self.epoch {
            return;
        }
        let stale_entry = w.order.iter().any(|c| self.members.get(&c.node).is_none_or(|m| m.since_epoch > w.epoch));
        if w.epoch < self.log_floor || stale_entry {
            *w = self.window(key, req, len);
            return;
        }
        let start = self.log.partition_point(|(e, _)| *e <= w.epoch);
        for &(e, node) in self.log.range(start..) {
            let Some(m) = self.members.get(&node) else { continue };
            if m.since_epoch != e {
                continue;
            }
            let Some(c) = m.cand(key, req) else { continue };
            let pos = w.order.partition_point(|x| x.rank_cmp(&c).is_lt());
            if pos < w.order.len() || w.complete {
                w.order.insert(pos, c);
                if w.order.len() > len {
                    w.order.pop();
                    w.complete = false;
                }
            }
        }
        w.epoch = self.epoch;
    }
}
