//! Placement: which nodes build a derivation, by weighted rendezvous hashing.
//!
//! Placement is a pure function of (derivation key, requirements, membership view, k): two nodes
//! with the same view compute the same answer, on any platform.
//!
//! ## Weight
//! A member's weight is its announced slots, which nobody can check. So that a member cannot
//! capture placement by announcing more slots than it has, the weight used is clamped:
//! `weight = min(slots, MAX_WEIGHT_OVER_MEDIAN × median)`, where `median` is the lower median of
//! the slots of the view's members with slots above 0 (announcements above
//! [`crate::wire::MAX_SLOTS`] do not even decode). A member's expected share of derivations is
//! its weight over the total, so one member can get at most [`MAX_WEIGHT_OVER_MEDIAN`] times the
//! share of a typical member, whatever it announces; moving the median needs half of the
//! members. Below the clamp the weight is linear in the slots: for honest members that is what
//! gives each the share of the work its capacity can take. A sub-linear weight would not bound a
//! liar any better (the clamp does) and would only take work from honest large machines.
//!
//! ## Eligibility
//! A member can build a derivation when
//! - its weight (slots) is above 0;
//! - the derivation's `system` is one of its native systems (mode native) or, failing that, one of
//!   its emulated systems (mode emulated);
//! - every required feature is one of its features or mandatory features (Nix's `allSupported`);
//! - every one of its mandatory features is required by the derivation.
//!
//! ## Emulation and disk pressure
//! An emulated member's weight for a system is further divided by its announced slowdown for that
//! system ([`Announcement::slowdown`], measured by the node; [`DEFAULT_SLOWDOWN`] when it states
//! none): its cost is multiplied by the factor, so among the emulated members of a system one
//! twice as slow gets half the share. A factor below 1x is not accepted, so announcing a small
//! factor gains at most what a native member of the same weight gets among emulated ones, and
//! nothing against native members, which rank first anyway. A member that announces disk pressure
//! ([`Announcement::disk_pressure`]) has weight 0 (it takes no new builds until it is under its
//! limits again), whatever slots it states.
//!
//! ## Order
//! Every eligible member gets a cost `-ln(u) / weight` (times its slowdown when emulated), where `u ∈ (0, 1)` is a 53-bit uniform
//! value from a hash of (derivation key, member). The cost is an exponential variable with rate
//! `weight`, so the cheapest member is member *i* with probability `weight_i / Σ weight`: each node's
//! expected share of derivations equals its share of the total weight (weighted rendezvous
//! hashing, Schindelhauer & Schomaker 2005; Resch's `-weight/ln(u)` form). The rank order is
//! (native before emulated, cost ascending, [`NodeId`] ascending): every native member ranks above
//! every emulated one, and exact cost ties (practically never) are broken by node id.
//!
//! Because a member's cost depends only on the derivation, that member and its weight, adding or
//! removing a member leaves every other member's relative order unchanged (unless it moves the
//! median so that some clamped weight changes): the only placements that change are those whose
//! selection contained the member (before a departure, after an arrival).
//!
//! ## Selection of k
//! [`Candidates::place`] walks the rank order and takes the first member of each distinct owner
//! until it has k; if there are fewer than k owners, it fills up with the best remaining members in
//! rank order. The result is returned in rank order: the first is the primary builder, and when a
//! selected node leaves, the next in line takes over. A member with an empty owner label counts as
//! its own owner.
//!
//! ## Determinism
//! The hash is blake3 (for the per-derivation and per-member keys) and a fixed integer mixer (per
//! pair); `ln` is computed with a fixed series using only IEEE-754 `+ - * /`, which are correctly
//! rounded everywhere, so no platform `libm` enters the result.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::id::NodeId;
use crate::store_path::StorePath;
use crate::wire::{Announcement, BuildMode, JobSubmission};

/// How many times the median member's slots a member's placement weight may be (see the module
/// docs).
pub const MAX_WEIGHT_OVER_MEDIAN: u32 = 2;

/// The slowdown (hundredths) an emulated member that states none for a system is assumed to have:
/// 10x, about what a QEMU user-mode build takes on the benchmarks of docs/benchmarks.md, so a
/// measured faster emulator ranks before an unmeasured one and a measured slower one after it.
pub const DEFAULT_SLOWDOWN: u32 = 1000;

/// The slots an announcement counts with in placement: 0 under disk pressure, else its slots.
pub fn placement_slots(a: &Announcement) -> u32 {
    if a.disk_pressure.is_some() { 0 } else { a.slots }
}

/// The lower median of the non-zero `slots`, or 0 if there is none (what weights are clamped by).
pub fn median_slots(slots: impl Iterator<Item = u32>) -> u32 {
    let mut v: Vec<u32> = slots.filter(|s| *s > 0).collect();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// The placement weight of a member announcing `slots` in a view whose median is `median`.
pub fn clamped_weight(slots: u32, median: u32) -> u32 {
    slots.min(median.saturating_mul(MAX_WEIGHT_OVER_MEDIAN))
}

/// Why a membership view could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// The same node appears twice.
    #[error("node {0} appears twice in the membership")]
    DuplicateMember(NodeId),
}

/// A member of the mesh as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// Relative capacity (its announced build slots); 0 = not eligible. Placement clamps it
    /// relative to the view's median (see the module docs; [`View::weight`]).
    pub weight: u32,
    /// Owner label for diversity; empty = unknown (its own owner).
    pub owner: String,
    /// Systems built natively.
    pub native_systems: BTreeSet<String>,
    /// Systems built under emulation.
    pub emulated_systems: BTreeSet<String>,
    /// Supported features.
    pub features: BTreeSet<String>,
    /// Mandatory features.
    pub mandatory_features: BTreeSet<String>,
    /// Measured slowdown per emulated system, in hundredths (missing: [`DEFAULT_SLOWDOWN`]).
    pub slowdown: BTreeMap<String, u32>,
}

impl Member {
    /// The member an announcement describes (weight = slots, 0 under disk pressure; current load is
    /// deliberately ignored so that placement depends only on slowly changing facts).
    pub fn from_announcement(a: &Announcement) -> Member {
        Member {
            id: a.node,
            weight: placement_slots(a),
            owner: a.owner.clone(),
            native_systems: a.native_systems.clone(),
            emulated_systems: a.emulated_systems.clone(),
            features: a.features.clone(),
            mandatory_features: a.mandatory_features.clone(),
            slowdown: a.slowdown.clone(),
        }
    }

    /// The slowdown of this member building `system` (hundredths): 100 when native, its announced
    /// factor (at least 1x, at most [`crate::wire::MAX_SLOWDOWN`]) or [`DEFAULT_SLOWDOWN`] when
    /// emulated.
    pub fn slowdown_of(&self, system: &str, mode: BuildMode) -> u32 {
        match mode {
            BuildMode::Native => 100,
            BuildMode::Emulated => self
                .slowdown
                .get(system)
                .copied()
                .unwrap_or(DEFAULT_SLOWDOWN)
                .clamp(crate::wire::MIN_SLOWDOWN, crate::wire::MAX_SLOWDOWN),
        }
    }

    /// How this member could build a derivation with these requirements, if at all.
    pub fn eligibility(&self, req: &Requirements) -> Option<BuildMode> {
        if self.weight == 0 {
            return None;
        }
        let mode = if self.native_systems.contains(&req.system) {
            BuildMode::Native
        } else if self.emulated_systems.contains(&req.system) {
            BuildMode::Emulated
        } else {
            return None;
        };
        let supported =
            req.required_features.iter().all(|f| self.features.contains(f) || self.mandatory_features.contains(f));
        let mandatory_ok = self.mandatory_features.is_subset(&req.required_features);
        (supported && mandatory_ok).then_some(mode)
    }
}

/// What a derivation needs from its builder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirements {
    /// The derivation's `system`.
    pub system: String,
    /// Its `requiredSystemFeatures`.
    pub required_features: BTreeSet<String>,
}

impl Requirements {
    /// Requirements from a system and features.
    pub fn new(system: &str, required_features: impl IntoIterator<Item = impl Into<String>>) -> Requirements {
        Requirements {
            system: system.to_string(),
            required_features: required_features.into_iter().map(Into::into).collect(),
        }
    }

    /// The requirements a job submission states.
    pub fn of_submission(job: &JobSubmission) -> Requirements {
        Requirements { system: job.system.clone(), required_features: job.required_features.clone() }
    }
}

/// What is placed: 32 bytes identifying a derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlacementKey([u8; 32]);

impl PlacementKey {
    /// The key of a derivation: blake3 (derive-key mode) of its store path base name.
    pub fn for_drv(drv: &StorePath) -> PlacementKey {
        PlacementKey::from_bytes(drv.to_string().as_bytes())
    }

    /// The key of arbitrary bytes (hashed, so any input is fine).
    pub fn from_bytes(bytes: &[u8]) -> PlacementKey {
        PlacementKey(blake3::derive_key("buildmesh v1 placement derivation", bytes))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn word(&self) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(w)
    }
}

/// One entry of a rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The member.
    pub node: NodeId,
    /// How it would build.
    pub mode: BuildMode,
    /// Its cost `-ln(u)/weight` (lower ranks first within a mode).
    pub cost: f64,
}

#[derive(Debug, Clone)]
struct Prepared {
    member: Member,
    /// The weight used: `member.weight` clamped (see the module docs).
    weight: u32,
    k0: u64,
    k1: u64,
    /// Index of its owner group (members with an empty owner get a group of their own).
    owner_group: u32,
}

/// A membership view prepared for placement (per-member hash keys computed once).
#[derive(Debug, Clone)]
pub struct View {
    members: Vec<Prepared>,
}

impl View {
    /// Prepare a view. Members are sorted by id; a node listed twice is an error.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<View, PlacementError> {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by_key(|m| m.id);
        if let Some(w) = members.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::DuplicateMember(w[0].id));
        }
        let median = median_slots(members.iter().map(|m| m.weight));
        let mut groups: BTreeMap<String, u32> = BTreeMap::new();
        let mut next_group = 0u32;
        let members = members
            .into_iter()
            .map(|member| {
                let key = blake3::derive_key("buildmesh v1 placement node", member.id.as_bytes());
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&key[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(w)
                };
                let owner_group = if member.owner.is_empty() {
                    next_group += 1;
                    next_group - 1
                } else {
                    *groups.entry(member.owner.clone()).or_insert_with(|| {
                        next_group += 1;
                        next_group - 1
                    })
                };
                Prepared {
                    k0: word(0),
                    k1: word(1),
                    owner_group,
                    weight: clamped_weight(member.weight, median),
                    member,
                }
            })
            .collect();
        Ok(View { members })
    }

    /// The placement weight of `node` in this view (its slots, clamped), if it is a member.
    pub fn weight(&self, node: &NodeId) -> Option<u32> {
        self.members.binary_search_by(|p| p.member.id.cmp(node)).ok().map(|i| self.members[i].weight)
    }

    /// The members, sorted by id.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &Member> {
        self.members.iter().map(|p| &p.member)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members eligible for `req` (compute once, place many derivations with it).
    pub fn candidates(&self, req: &Requirements) -> Candidates<'_> {
        let eligible = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.member.eligibility(req).map(|mode| {
                    let factor = f64::from(p.member.slowdown_of(&req.system, mode)) / 100.0;
                    (i as u32, mode, factor)
                })
            })
            .collect();
        Candidates { view: self, eligible }
    }

    /// The full rank order of the eligible members for this derivation.
    pub fn rank(&self, key: &PlacementKey, req: &Requirements) -> Vec<Ranked> {
        self.candidates(req).rank(key)
    }

    /// The k builders for this derivation, in rank order (fewer if fewer are eligible).
    pub fn place(&self, key: &PlacementKey, req: &Requirements, k: usize) -> Vec<NodeId> {
        self.candidates(req).place(key, k)
    }
}

/// The eligible members of a [`View`] for one set of [`Requirements`].
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    view: &'a View,
    /// (member index, mode, slowdown factor: 1.0 native).
    eligible: Vec<(u32, BuildMode, f64)>,
}

/// Sort key: (mode, cost, id) ascending.
#[derive(Debug, Clone, Copy)]
struct Score<'a> {
    mode: BuildMode,
    cost: f64,
    id: &'a NodeId,
    index: u32,
}

impl Score<'_> {
    fn better_than(&self, other: &Score<'_>) -> bool {
        self.cmp(other).is_lt()
    }

    fn cmp(&self, other: &Score<'_>) -> std::cmp::Ordering {
        self.mode.cmp(&other.mode).then(self.cost.total_cmp(&other.cost)).then_with(|| self.id.cmp(other.id))
    }
}

impl<'a> Candidates<'a> {
    /// Number of eligible members.
    pub fn len(&self) -> usize {
        self.eligible.len()
    }

    /// Whether no member is eligible.
    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    fn score(&self, word: u64, index: u32, mode: BuildMode, factor: f64) -> Score<'a> {
        let p = &self.view.members[index as usize];
        let cost = cost(word, p.k0, p.k1, p.weight) * factor;
        Score { mode, cost, id: &p.member.id, index }
    }

    fn sorted(&self, key: &PlacementKey) -> Vec<Score<'a>> {
        let word = key.word();
        let mut scores: Vec<Score<'a>> =
            self.eligible.iter().map(|&(i, mode, f)| self.score(word, i, mode, f)).collect();
        scores.sort_by(|a, b| a.cmp(b));
        scores
    }

    /// The full rank order.
    pub fn rank(&self, key: &PlacementKey) -> Vec<Ranked> {
        self.sorted(key).into_iter().map(|s| Ranked { node: *s.id, mode: s.mode, cost: s.cost }).collect()
    }

    /// The first in rank order (the primary builder); what `place(key, 1)` returns, in O(n).
    pub fn primary(&self, key: &PlacementKey) -> Option<NodeId> {
        let word = key.word();
        let mut best: Option<Score<'a>> = None;
        for &(i, mode, f) in &self.eligible {
            let s = self.score(word, i, mode, f);
            if best.as_ref().is_none_or(|b| s.better_than(b)) {
                best = Some(s);
            }
        }
        best.map(|s| *s.id)
    }

    /// The k builders, in rank order, preferring distinct owners (see the module docs).
    pub fn place(&self, key: &PlacementKey, k: usize) -> Vec<NodeId> {
        if k == 0 {
            return Vec::new();
        }
        if k == 1 {
            return self.primary(key).into_iter().collect();
        }
        let order = self.sorted(key);
        let mut chosen = vec![false; order.len()];
        let mut owners = BTreeSet::new();
        let mut n = 0;
        for (pos, s) in order.iter().enumerate() {
            if n == k {
                break;
            }
            if owners.insert(self.view.members[s.index as usize].owner_group) {
                chosen[pos] = true;
                n += 1;
            }
        }
        for c in chosen.iter_mut() {
            if n == k {
                break;
            }
            if !*c {
                *c = true;
                n += 1;
            }
        }
        order.iter().zip(chosen).filter(|(_, c)| *c).map(|(s, _)| *s.id).collect()
    }
}

/// Rank the eligible `members` for a derivation (convenience over [`View::rank`]).
pub fn rank(key: &PlacementKey, req: &Requirements, members: &[Member]) -> Result<Vec<Ranked>, PlacementError> {
    Ok(View::new(members.iter().cloned())?.rank(key, req))
}

/// Place a derivation on k of `members` (convenience over [`View::place`]).
pub fn place(
    key: &PlacementKey,
    req: &Requirements,
    members: &[Member],
    k: usize,
) -> Result<Vec<NodeId>, PlacementError> {
    Ok(View::new(members.iter().cloned())?.place(key, req, k))
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The pair hash of a derivation word and a member's two key words.
fn pair_hash(word: u64, k0: u64, k1: u64) -> u64 {
    fmix64(fmix64(word ^ k0) ^ k1)
}

/// `-ln(u) / weight` for the pair's uniform `u ∈ (0, 1)`.
fn cost(word: u64, k0: u64, k1: u64, weight: u32) -> f64 {
    let h = pair_hash(word, k0, k1);
    // 53 bits, centred in their interval: u = (m + 0.5) / 2^53, exactly representable, never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    neg_ln(u) / f64::from(weight)
}

/// `-ln(u)` for `u ∈ (0, 1)`, with only `+ - * /` (deterministic on every IEEE-754 platform).
/// `u = m·2^e` with `m ∈ [√½, √2)`; `ln m = 2·atanh(s)`, `s = (m−1)/(m+1)`, `|s| < 0.1716`, summed to
/// `s^23` (truncation error below 2^-60 relative).
fn neg_ln(u: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m >= SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    const C: [f64; 12] = [
        1.0 / 23.0,
        1.0 / 21.0,
        1.0 / 19.0,
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ];
    let mut p = 0.0;
    for c in C {
        p = p * z + c;
    }
    let ln_m = 2.0 * s * p;
    -(e as f64 * LN_2 + ln_m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn node(i: u32) -> NodeId {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        NodeKey::from_seed("n", seed).unwrap().node_id()
    }

    fn member(i: u32, weight: u32, owner: &str, native: &[&str], emulated: &[&str]) -> Member {
        Member {
            id: node(i),
            weight,
            owner: owner.to_string(),
            native_systems: native.iter().map(|s| s.to_string()).collect(),
            emulated_systems: emulated.iter().map(|s| s.to_string()).collect(),
            features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            slowdown: BTreeMap::new(),
        }
    }

    #[test]
    fn neg_ln_matches_std() {
        let mut u: f64 = 1e-16;
        while u < 1.0 {
            let want = -u.ln();
            let got = neg_ln(u);
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs().max(1e-300), "u={u} got={got} want={want}");
            u *= 1.37;
        }
        let r = std::f64::consts::FRAC_1_SQRT_2;
        for u in [0.5f64, 0.25, 1.0 - 1e-12, r, r.next_down(), r.next_up()] {
            assert!((neg_ln(u) + u.ln()).abs() <= 4.0 * f64::EPSILON * u.ln().abs());
        }
    }

    #[test]
    fn eligibility_rules() {
        let mut m = member(1, 2, "a", &["x86_64-linux"], &["aarch64-linux"]);
        m.features = ["kvm", "big-parallel"].iter().map(|s| s.to_string()).collect();
        m.mandatory_features = ["benchmark"].iter().map(|s| s.to_string()).collect();
        let req = |sys: &str, f: &[&str]| Requirements::new(sys, f.iter().copied());
        assert_eq!(m.eligibility(&req("x86_64-linux", &["benchmark"])), Some(BuildMode::Native));
        assert_eq!(m.eligibility(&req("aarch64-linux", &["benchmark", "kvm"])), Some(BuildMode::Emulated));
        // Mandatory feature not required: refused.
        assert_eq!(m.eligibility(&req("x86_64-linux", &[])), None);
        // Unsupported feature: refused.
        assert_eq!(m.eligibility(&req("x86_64-linux", &["benchmark", "cuda"])), None);
        assert_eq!(m.eligibility(&req("riscv64-linux", &["benchmark"])), None);
        m.weight = 0;
        assert_eq!(m.eligibility(&req("x86_64-linux", &["benchmark"])), None);
    }

    #[test]
    fn native_ranks_before_emulated() {
        let mut members: Vec<Member> = (0..10).map(|i| member(i, 100, "", &[], &["x86_64-linux"])).collect();
        members.push(member(10, 1, "", &["x86_64-linux"], &[]));
        let req = Requirements::new("x86_64-linux", Vec::<String>::new());
        for d in 0..200u32 {
            let key = PlacementKey::from_bytes(&d.to_le_bytes());
            let r = rank(&key, &req, &members).unwrap();
            assert_eq!(r.len(), 11);
            assert_eq!((r[0].node, r[0].mode), (node(10), BuildMode::Native));
            assert!(r[1..].iter().all(|x| x.mode == BuildMode::Emulated));
            assert!(r.windows(2).all(|w| w[0].mode < w[1].mode || (w[0].mode == w[1].mode && w[0].cost <= w[1].cost)));
            assert_eq!(place(&key, &req, &members, 3).unwrap()[0], node(10));
        }
    }

    /// Issue 16: an emulated member's weight is divided by its measured slowdown. Two emulators of
    /// equal slots, 2x and 8x slow, behind a native member: the native one still ranks first for
    /// every derivation, and among the emulated the 2x one ranks first in 1/2 / (1/2 + 1/8) = 80 %
    /// of derivations (50 % when neither states a factor, or both state the same).
    #[test]
    fn emulated_weight_is_lowered_by_the_slowdown() {
        let sys = "aarch64-linux";
        let req = Requirements::new(sys, Vec::<String>::new());
        let emulator = |i, x: Option<u32>| {
            let mut m = member(i, 4, "", &["x86_64-linux"], &[sys]);
            m.slowdown.extend(x.map(|x| (sys.to_string(), x)));
            m
        };
        let share = |a: Option<u32>, b: Option<u32>| {
            let members = vec![member(0, 1, "", &[sys], &[]), emulator(1, a), emulator(2, b)];
            let view = View::new(members).unwrap();
            let mut first = 0u32;
            for d in 0..4000u32 {
                let r = view.rank(&PlacementKey::from_bytes(&d.to_le_bytes()), &req);
                assert_eq!((r[0].node, r[0].mode), (node(0), BuildMode::Native), "native first");
                assert!(r[1..].iter().all(|x| x.mode == BuildMode::Emulated));
                first += u32::from(r[1].node == node(1));
            }
            f64::from(first) / 4000.0
        };
        let fast = share(Some(200), Some(800));
        assert!((0.77..0.83).contains(&fast), "2x vs 8x: {fast}");
        let even = share(None, None);
        assert!((0.47..0.53).contains(&even), "unmeasured: {even}");
        assert!((0.47..0.53).contains(&share(Some(500), Some(500))));
        let unmeasured = share(Some(DEFAULT_SLOWDOWN * 2), None);
        assert!((0.30..0.37).contains(&unmeasured), "20x vs the 10x default: {unmeasured}");
        // A native member never pays a factor; a factor below 1x counts as 1x.
        let m = Member { slowdown: [(sys.to_string(), 1)].into(), ..emulator(3, None) };
        assert_eq!(m.slowdown_of(sys, BuildMode::Emulated), crate::wire::MIN_SLOWDOWN);
        assert_eq!(m.slowdown_of(sys, BuildMode::Native), 100);
    }

    /// Issue 15: a member announcing disk pressure gets no derivation, whatever slots it states.
    #[test]
    fn disk_pressure_means_weight_zero() {
        let a = crate::wire::Announcement {
            node: node(5),
            seq: 1,
            timestamp_ms: 1,
            version: "v".into(),
            owner: String::new(),
            native_systems: ["s".to_string()].into(),
            emulated_systems: BTreeSet::new(),
            features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            slots: 8,
            load: 0,
            slowdown: BTreeMap::new(),
            disk_pressure: None,
        };
        assert_eq!(Member::from_announcement(&a).weight, 8);
        let pressed = crate::wire::Announcement { disk_pressure: Some("store over max_store_bytes".into()), ..a };
        let m = Member::from_announcement(&pressed);
        assert_eq!((m.weight, placement_slots(&pressed)), (0, 0));
        assert_eq!(m.eligibility(&Requirements::new("s", Vec::<String>::new())), None);
    }

    #[test]
    fn diversity_prefers_distinct_owners_then_falls_back() {
        let members: Vec<Member> =
            (0..6).map(|i| member(i, 1, if i < 4 { "alice" } else { "bob" }, &["x86_64-linux"], &[])).collect();
        let view = View::new(members.clone()).unwrap();
        let req = Requirements::new("x86_64-linux", Vec::<String>::new());
        let owner = |id: &NodeId| members.iter().find(|m| m.id == *id).map(|m| m.owner.clone()).unwrap();
        for d in 0..300u32 {
            let key = PlacementKey::from_bytes(&d.to_le_bytes());
            let order: Vec<NodeId> = view.rank(&key, &req).into_iter().map(|r| r.node).collect();
            let two = view.place(&key, &req, 2);
            assert_ne!(owner(&two[0]), owner(&two[1]));
            assert_eq!(two[0], order[0]);
            let four = view.place(&key, &req, 4);
            assert_eq!(four.len(), 4);
            let pos: Vec<usize> = four.iter().map(|n| order.iter().position(|o| o == n).unwrap()).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "returned in rank order");
            assert_eq!(view.place(&key, &req, 10).len(), 6);
            assert_eq!(view.place(&key, &req, 1), vec![order[0]]);
            assert_eq!(view.candidates(&req).primary(&key), Some(order[0]));
        }
    }

    #[test]
    fn ties_and_duplicates() {
        let a = node(1);
        let b = node(2);
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let s1 = Score { mode: BuildMode::Native, cost: 1.0, id: &hi, index: 0 };
        let s2 = Score { mode: BuildMode::Native, cost: 1.0, id: &lo, index: 1 };
        assert!(s2.better_than(&s1));
        let m = member(1, 1, "", &["x"], &[]);
        assert_eq!(View::new([m.clone(), m]).unwrap_err(), PlacementError::DuplicateMember(node(1)));
        let none = place(&PlacementKey::from_bytes(b"x"), &Requirements::new("y", Vec::<String>::new()), &[], 3);
        assert_eq!(none.unwrap(), Vec::<NodeId>::new());
    }

    #[test]
    fn placement_is_independent_of_member_order() {
        let members: Vec<Member> = (0..20).map(|i| member(i, 1 + i % 3, "", &["s"], &[])).collect();
        let mut rev = members.clone();
        rev.reverse();
        let req = Requirements::new("s", Vec::<String>::new());
        for d in 0..100u32 {
            let key = PlacementKey::from_bytes(&d.to_le_bytes());
            assert_eq!(place(&key, &req, &members, 3).unwrap(), place(&key, &req, &rev, 3).unwrap());
        }
    }

    #[test]
    fn weights_are_clamped_to_twice_the_median() {
        assert_eq!(median_slots([4, 0, 1, 9, 2].into_iter()), 2, "lower median of the non-zero slots");
        assert_eq!(median_slots([0, 0].into_iter()), 0);
        assert_eq!(median_slots([7].into_iter()), 7);
        assert_eq!((clamped_weight(3, 2), clamped_weight(4, 2), clamped_weight(u32::MAX, 2)), (3, 4, 4));
        assert_eq!(clamped_weight(0, 2), 0, "0 slots stay ineligible");
        let mut members: Vec<Member> = (0..4).map(|i| member(i, 2, "", &["s"], &[])).collect();
        members.push(member(9, u32::MAX, "", &["s"], &[]));
        let view = View::new(members).unwrap();
        assert_eq!(view.weight(&node(9)), Some(4));
        assert_eq!(view.weight(&node(1)), Some(2));
        assert_eq!(view.weight(&node(5)), None);
    }

    /// Pin the function: any change to hashing or cost would silently re-place every derivation
    /// in a mixed-version mesh.
    #[test]
    fn golden_placement() {
        let members: Vec<Member> = (0..8).map(|i| member(i, 1 + i, "", &["s"], &[])).collect();
        let req = Requirements::new("s", Vec::<String>::new());
        let drv = StorePath::from_basename("0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv").unwrap();
        let order: Vec<String> =
            rank(&PlacementKey::for_drv(&drv), &req, &members).unwrap().iter().map(|r| r.node.fmt_short()).collect();
        let got = order.join(",");
        assert_eq!(got, GOLDEN, "placement changed");
    }

    const GOLDEN: &str = "a2fa2f4a35,9be3287795,3479076430,6b79c57e6a,f4bd46521c,cecc1507dc,3b6a27bcce,dadbd184a2";
}
