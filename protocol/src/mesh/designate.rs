//! Which builders should hold the claims of one derivation: a pure function of what a node knows.
//!
//! ## The rule
//! Inputs: the rank order `R` of the eligible live members for the derivation (weighted rendezvous,
//! [`crate::placement`]), the builders that already attested or failed it (*excluded*), the live
//! claimants, the *lapsed* builders (a lease that ran out, or a designated builder that never
//! claimed), the owners of the builders that attested, and `need` = k minus the trusted attesters.
//!
//! 1. The sequence `S` is: the live claimants (not excluded, in the view) in rank order, then the
//!    other non-excluded members of `R` that are not lapsed, in rank order, then the lapsed ones.
//!    Claims are sticky: a builder that holds a live claim keeps it even when a better-ranked member
//!    joins, so a join never cancels a running build.
//! 2. Diversity pass: walk the claimants and the non-lapsed members among the first `window`
//!    entries of `R`, taking each whose owner is not yet used (owners of attesters count as used).
//! 3. Fill pass: walk `S` and take anything not yet taken, until `need` are taken.
//!
//! With no claims, no exclusions and a window covering every candidate, this is exactly
//! [`crate::placement::View::place`]. With more than `need` live claimants, the worst-ranked ones
//! are not designated: they yield. Every node that knows the same facts computes the same set.
//!
//! The caller usually passes only the first `window` entries of `R` (`complete = false`); if the
//! fill pass runs past them, [`select`] answers [`Selection::NeedFullOrder`] and the caller passes
//! the whole order.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::id::NodeId;
use crate::wire::BuildMode;

/// One candidate builder: its rank key (mode, cost, id) and its owner group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cand {
    pub(crate) node: NodeId,
    pub(crate) mode: BuildMode,
    pub(crate) cost: f64,
    pub(crate) owner: u64,
}

impl Cand {
    /// The placement order: native before emulated, then cost, then node id.
    pub(crate) fn rank_cmp(&self, other: &Cand) -> Ordering {
        self.mode.cmp(&other.mode).then(self.cost.total_cmp(&other.cost)).then_with(|| self.node.cmp(&other.node))
    }
}

/// What [`select`] needs to know about one derivation.
#[derive(Debug)]
pub(crate) struct SelectInput<'a> {
    /// A prefix of the rank order (or all of it), best first.
    pub(crate) order: &'a [Cand],
    /// Whether `order` is the whole rank order.
    pub(crate) complete: bool,
    /// How many entries of the rank order the diversity pass looks at.
    pub(crate) window: usize,
    /// Live claimants that are in the view and eligible (any order; excluded ones are skipped).
    pub(crate) claimants: &'a [Cand],
    /// Attested or failed builders.
    pub(crate) excluded: &'a BTreeSet<NodeId>,
    /// Builders whose claim lapsed or who never claimed while designated.
    pub(crate) lapsed: &'a BTreeSet<NodeId>,
    /// Owner groups already represented among the attesters.
    pub(crate) used_owners: &'a BTreeSet<u64>,
    /// How many builders are still needed.
    pub(crate) need: usize,
}

/// The answer of [`select`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selection {
    /// The designated builders, in the order they were taken.
    Chosen(Vec<Cand>),
    /// The prefix was too short; call again with the whole order.
    NeedFullOrder,
}

/// Apply the rule of the module docs.
pub(crate) fn select(input: &SelectInput<'_>) -> Selection {
    let need = input.need;
    if need == 0 {
        return Selection::Chosen(Vec::new());
    }
    let mut claimants: Vec<Cand> =
        input.claimants.iter().filter(|c| !input.excluded.contains(&c.node)).copied().collect();
    claimants.sort_by(Cand::rank_cmp);
    claimants.dedup_by(|a, b| a.node == b.node);
    let is_claimant = |n: &NodeId| claimants.iter().any(|c| c.node == *n);
    let usable = |c: &&Cand| !input.excluded.contains(&c.node) && !is_claimant(&c.node);
    let fresh = |c: &&Cand| usable(c) && !input.lapsed.contains(&c.node);
    let stale = |c: &&Cand| usable(c) && input.lapsed.contains(&c.node);
    let window = input.window.min(input.order.len());

    let mut chosen: Vec<Cand> = Vec::with_capacity(need);
    let mut owners = input.used_owners.clone();
    for c in claimants.iter().chain(input.order[..window].iter().filter(fresh)) {
        if chosen.len() == need {
            break;
        }
        if owners.insert(c.owner) {
            chosen.push(*c);
        }
    }
    let taken = |chosen: &[Cand], c: &Cand| chosen.iter().any(|x| x.node == c.node);
    for c in claimants.iter().chain(input.order.iter().filter(fresh)) {
        if chosen.len() == need {
            return Selection::Chosen(chosen);
        }
        if !taken(&chosen, c) {
            chosen.push(*c);
        }
    }
    if chosen.len() < need && !input.complete {
        return Selection::NeedFullOrder;
    }
    for c in input.order.iter().filter(stale) {
        if chosen.len() == need {
            break;
        }
        chosen.push(*c);
    }
    Selection::Chosen(chosen)
}

/// The owner group of a member: its owner label, or (empty label) the node itself.
pub(crate) fn owner_key(node: &NodeId, owner: &str) -> u64 {
    let h = if owner.is_empty() {
        blake3::derive_key("buildmesh v1 mesh owner node", node.as_bytes())
    } else {
        blake3::derive_key("buildmesh v1 mesh owner label", owner.as_bytes())
    };
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::placement::{Member, PlacementKey, Requirements, View};
    use proptest::prelude::*;

    fn node(i: u32) -> NodeId {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        NodeKey::from_seed("n", seed).unwrap().node_id()
    }

    fn members(n: u32, owners: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: node(i),
                weight: 1 + i % 3,
                owner: if owners == 0 { String::new() } else { format!("o{}", i % owners) },
                native_systems: ["s".to_string()].into_iter().collect(),
                emulated_systems: if i % 4 == 0 { ["e".to_string()].into_iter().collect() } else { BTreeSet::new() },
                features: BTreeSet::new(),
                mandatory_features: BTreeSet::new(),
                slowdown: Default::default(),
            })
            .collect()
    }

    fn order(view: &View, ms: &[Member], key: &PlacementKey, req: &Requirements) -> Vec<Cand> {
        view.rank(key, req)
            .into_iter()
            .map(|r| {
                let m = ms.iter().find(|m| m.id == r.node).unwrap();
                Cand { node: r.node, mode: r.mode, cost: r.cost, owner: owner_key(&m.id, &m.owner) }
            })
            .collect()
    }

    fn chosen(s: Selection) -> Vec<NodeId> {
        match s {
            Selection::Chosen(c) => c.into_iter().map(|c| c.node).collect(),
            Selection::NeedFullOrder => panic!("needs the full order"),
        }
    }

    #[test]
    fn equals_placement_without_claims() {
        for owners in [0, 3, 50] {
            let ms = members(40, owners);
            let view = View::new(ms.clone()).unwrap();
            for (sys, d) in [("s", 0u32), ("e", 1)].into_iter().flat_map(|(s, o)| (0..60).map(move |d| (s, d * 2 + o)))
            {
                let req = Requirements::new(sys, Vec::<String>::new());
                let key = PlacementKey::from_bytes(&d.to_le_bytes());
                let ord = order(&view, &ms, &key, &req);
                for k in 1..5 {
                    let empty = BTreeSet::new();
                    let owners0 = BTreeSet::new();
                    let input = SelectInput {
                        order: &ord,
                        complete: true,
                        window: ord.len(),
                        claimants: &[],
                        excluded: &empty,
                        lapsed: &empty,
                        used_owners: &owners0,
                        need: k,
                    };
                    let mut got = chosen(select(&input));
                    got.sort_by_key(|n| ord.iter().position(|c| c.node == *n));
                    assert_eq!(got, view.place(&key, &req, k), "owners={owners} d={d} k={k}");
                }
            }
        }
    }

    #[test]
    fn sticky_claims_and_lowest_yields() {
        let ms = members(10, 0);
        let view = View::new(ms.clone()).unwrap();
        let req = Requirements::new("s", Vec::<String>::new());
        let key = PlacementKey::from_bytes(b"x");
        let ord = order(&view, &ms, &key, &req);
        let none = BTreeSet::new();
        // Claimants ranked 5th and 7th keep the job although 0 and 1 are better.
        let claimants = [ord[6], ord[4]];
        let input = SelectInput {
            order: &ord,
            complete: true,
            window: 16,
            claimants: &claimants,
            excluded: &none,
            lapsed: &none,
            used_owners: &BTreeSet::new(),
            need: 2,
        };
        assert_eq!(chosen(select(&input)), vec![ord[4].node, ord[6].node]);
        // Three claimants for two places: the worst-ranked is dropped.
        let claimants = [ord[6], ord[4], ord[1]];
        let input = SelectInput { claimants: &claimants, ..input };
        assert_eq!(chosen(select(&input)), vec![ord[1].node, ord[4].node]);
        // Excluded and lapsed members are skipped; lapsed come back only as a last resort.
        let excluded: BTreeSet<NodeId> = [ord[0].node].into_iter().collect();
        let lapsed: BTreeSet<NodeId> = ord[1..9].iter().map(|c| c.node).collect();
        let input = SelectInput { claimants: &[], excluded: &excluded, lapsed: &lapsed, need: 3, ..input };
        assert_eq!(chosen(select(&input)), vec![ord[9].node, ord[1].node, ord[2].node]);
    }

    #[test]
    fn short_prefix_asks_for_the_full_order() {
        let ms = members(30, 0);
        let view = View::new(ms.clone()).unwrap();
        let req = Requirements::new("s", Vec::<String>::new());
        let key = PlacementKey::from_bytes(b"y");
        let ord = order(&view, &ms, &key, &req);
        let excluded: BTreeSet<NodeId> = ord[..15].iter().map(|c| c.node).collect();
        let none = BTreeSet::new();
        let owners = BTreeSet::new();
        let input = SelectInput {
            order: &ord[..16],
            complete: false,
            window: 16,
            claimants: &[],
            excluded: &excluded,
            lapsed: &none,
            used_owners: &owners,
            need: 2,
        };
        assert_eq!(select(&input), Selection::NeedFullOrder);
        let full = SelectInput { order: &ord, complete: true, ..input };
        assert_eq!(chosen(select(&full)), vec![ord[15].node, ord[16].node]);
    }

    proptest! {
        /// The answer never exceeds `need`, never names an excluded node or a duplicate, prefers
        /// live claimants, and a prefix gives the same answer as the whole order whenever it gives
        /// one at all.
        #[test]
        fn selection_properties(n in 1u32..40, owners in 0u32..6, d in any::<u32>(), need in 0usize..6,
            excl in proptest::collection::vec(0usize..40, 0..10),
            laps in proptest::collection::vec(0usize..40, 0..10),
            claims in proptest::collection::vec(0usize..40, 0..5),
            prefix in 1usize..40, window in 1usize..20) {
            let ms = members(n, owners);
            let view = View::new(ms.clone()).unwrap();
            let req = Requirements::new("s", Vec::<String>::new());
            let key = PlacementKey::from_bytes(&d.to_le_bytes());
            let ord = order(&view, &ms, &key, &req);
            let pick = |ix: &[usize]| -> BTreeSet<NodeId> { ix.iter().filter(|&&i| i < ord.len()).map(|&i| ord[i].node).collect() };
            let excluded = pick(&excl);
            let lapsed = pick(&laps);
            let claimants: Vec<Cand> = claims.iter().filter(|&&i| i < ord.len()).map(|&i| ord[i]).collect();
            let owners0 = BTreeSet::new();
            let full = SelectInput { order: &ord, complete: true, window, claimants: &claimants, excluded: &excluded,
                lapsed: &lapsed, used_owners: &owners0, need };
            let all = chosen(select(&full));
            let usable: BTreeSet<NodeId> = ord.iter().map(|c| c.node).filter(|n| !excluded.contains(n)).collect();
            prop_assert_eq!(all.len(), need.min(usable.len()));
            prop_assert!(all.iter().all(|n| usable.contains(n)));
            let unique: BTreeSet<&NodeId> = all.iter().collect();
            prop_assert_eq!(unique.len(), all.len());
            let live: BTreeSet<NodeId> = claimants.iter().map(|c| c.node).filter(|n| !excluded.contains(n)).collect();
            let live_owners: BTreeSet<u64> = claimants.iter().filter(|c| live.contains(&c.node)).map(|c| c.owner).collect();
            if live.len() >= need && live_owners.len() == live.len() {
                prop_assert!(all.iter().all(|n| live.contains(n)), "claims are sticky");
            }
            let p = prefix.min(ord.len());
            let part = SelectInput { order: &ord[..p], complete: p == ord.len(), window: window.min(p), ..full };
            if window <= p {
                match select(&part) {
                    Selection::Chosen(c) => prop_assert_eq!(c.into_iter().map(|c| c.node).collect::<Vec<_>>(), all),
                    Selection::NeedFullOrder => prop_assert!(p < ord.len()),
                }
            }
        }
    }
}
