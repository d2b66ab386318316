//! Compare two revisions (issue 13 item 3): new, removed and version-changed packages, and per
//! (package, system) the derivation change, `build_change` and `repro_change`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::facts::OutputVerdict;
use super::status::{JobState, JobStatus, RevisionStatus};

/// How the build of a (package, system) changed from base to target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildChange {
    /// Base succeeded, target failed.
    Broken,
    /// Base failed or blocked, target succeeded.
    Fixed,
    /// Both failed (or base blocked and target failed).
    StillFailing,
    /// Both succeeded.
    StillWorking,
    /// The target is not built because an input failed (`blocked_by` names it).
    Blocked,
    /// On one side only, or no result yet on a side.
    Unknown,
}

impl BuildChange {
    /// Every class, in the order the summary prints them.
    pub const ALL: [BuildChange; 6] = [
        BuildChange::Broken,
        BuildChange::Fixed,
        BuildChange::StillFailing,
        BuildChange::StillWorking,
        BuildChange::Blocked,
        BuildChange::Unknown,
    ];

    /// The JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildChange::Broken => "broken",
            BuildChange::Fixed => "fixed",
            BuildChange::StillFailing => "still-failing",
            BuildChange::StillWorking => "still-working",
            BuildChange::Blocked => "blocked",
            BuildChange::Unknown => "unknown",
        }
    }

    /// The class of a (base, target) pair of jobs.
    pub fn classify(base: Option<JobState>, target: Option<JobState>) -> BuildChange {
        use JobState::*;
        let (Some(b), Some(t)) = (base, target) else {
            return BuildChange::Unknown;
        };
        match (b, t) {
            (_, Blocked) => BuildChange::Blocked,
            (Succeeded, Succeeded) => BuildChange::StillWorking,
            (Failed | Blocked, Succeeded) => BuildChange::Fixed,
            (Succeeded, Failed) => BuildChange::Broken,
            (Failed | Blocked, Failed) => BuildChange::StillFailing,
            _ => BuildChange::Unknown,
        }
    }
}

/// How the reproducibility verdict of a (package, system) changed from base to target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReproChange {
    /// The target's outputs are not matching; the base's were (matching or single).
    NewlyNotMatching,
    /// The base's outputs were not matching; the target's are matching.
    NewlyMatching,
    /// Not matching on both sides.
    StillNotMatching,
    /// Any other pair of verdicts (matching→matching, single→matching, not-matching→single, …).
    Unchanged,
    /// A side has no verdict (not succeeded, or on one side only).
    Unknown,
}

impl ReproChange {
    /// Every class, in the order the summary prints them.
    pub const ALL: [ReproChange; 5] = [
        ReproChange::NewlyNotMatching,
        ReproChange::NewlyMatching,
        ReproChange::StillNotMatching,
        ReproChange::Unchanged,
        ReproChange::Unknown,
    ];

    /// The JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            ReproChange::NewlyNotMatching => "newly-not-matching",
            ReproChange::NewlyMatching => "newly-matching",
            ReproChange::StillNotMatching => "still-not-matching",
            ReproChange::Unchanged => "unchanged",
            ReproChange::Unknown => "unknown",
        }
    }

    /// The class of a (base, target) pair of verdicts.
    pub fn classify(base: Option<OutputVerdict>, target: Option<OutputVerdict>) -> ReproChange {
        use OutputVerdict::*;
        match (base, target) {
            (Some(NotMatching), Some(NotMatching)) => ReproChange::StillNotMatching,
            (Some(_), Some(NotMatching)) => ReproChange::NewlyNotMatching,
            (Some(NotMatching), Some(Matching)) => ReproChange::NewlyMatching,
            (Some(_), Some(_)) => ReproChange::Unchanged,
            _ => ReproChange::Unknown,
        }
    }
}

/// A package whose set of versions differs between base and target (present on both sides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    /// The package.
    pub package: String,
    /// The base's versions, sorted and joined with `, ` (usually one).
    pub base_version: String,
    /// The target's versions, the same way.
    pub target_version: String,
}

/// The change of one (package, system) between base and target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivationChange {
    /// The package.
    pub package: String,
    /// The system.
    pub system: String,
    /// The base's `.drv` path (absent when the package is new on this system).
    pub base_drv: Option<String>,
    /// The target's `.drv` path (absent when it was removed on this system).
    pub target_drv: Option<String>,
    /// How its build changed.
    pub build_change: BuildChange,
    /// How its reproducibility changed.
    pub repro_change: ReproChange,
    /// Whether the derivation differs (false: same `.drv`, so a rebuild was not needed).
    pub drv_changed: bool,
    /// The base's version and status, when on the base side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<String>,
    /// The target's version, when on the target side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The base job's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_status: Option<JobState>,
    /// The target job's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_status: Option<JobState>,
    /// The base job's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_verdict: Option<OutputVerdict>,
    /// The target job's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_verdict: Option<OutputVerdict>,
    /// When the target is blocked: the failed input that blocks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
}

/// What [`compare`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompareOptions {
    /// Only jobs of this system (everything, packages included, is filtered).
    pub system: Option<String>,
    /// List only the pairs whose derivation differs or that are on one side only in
    /// `derivation_changes` (the summary still counts every pair).
    pub changed_only: bool,
}

/// Counts of the classes over every (package, system) pair.
///
/// Flat keys for scripts (`broken`, `fixed`, `still-failing`, `still-working`, `blocked`,
/// `unknown` from build_change; `newly-not-matching`, `newly-matching`, `still-not-matching`,
/// `unchanged` and `repro-unknown` from repro_change), and the two unambiguous maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareSummary {
    /// Flat `{class: n}` (see the type's doc for the keys).
    #[serde(flatten)]
    pub flat: BTreeMap<String, u64>,
    /// `{build_change: n}`, every class present.
    pub build_change: BTreeMap<BuildChange, u64>,
    /// `{repro_change: n}`, every class present.
    pub repro_change: BTreeMap<ReproChange, u64>,
}

/// The answer of `buildmesh compare BASE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// The base revision (`C@ID`).
    pub base: String,
    /// The target revision (`C@ID`).
    pub target: String,
    /// The system filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Packages only in the target (any system), sorted.
    pub new_packages: Vec<String>,
    /// Packages only in the base (any system), sorted.
    pub removed_packages: Vec<String>,
    /// Packages on both sides whose versions differ.
    pub version_changes: Vec<VersionChange>,
    /// Per (package, system), sorted by package then system.
    pub derivation_changes: Vec<DerivationChange>,
    /// Class counts.
    pub summary: CompareSummary,
}

/// Compare `target` to `base` (their statuses from [`super::revision_status`]).
/// O(J log J) in the number of jobs.
pub fn compare(
    base_name: &str,
    base: &RevisionStatus,
    target_name: &str,
    target: &RevisionStatus,
    options: &CompareOptions,
) -> Comparison {
    let b = sorted_jobs(base, options.system.as_deref());
    let t = sorted_jobs(target, options.system.as_deref());

    let versions = |v: &[&JobStatus]| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for j in v {
            m.entry(j.package.as_str()).or_default().insert(j.version.as_str());
        }
        m.into_iter().map(|(p, vs)| (p.to_string(), vs.into_iter().map(str::to_string).collect())).collect()
    };
    let bv = versions(&b);
    let tv = versions(&t);
    let new_packages = tv.keys().filter(|p| !bv.contains_key(*p)).cloned().collect();
    let removed_packages = bv.keys().filter(|p| !tv.contains_key(*p)).cloned().collect();
    let join = |s: &BTreeSet<String>| s.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
    let version_changes = bv
        .iter()
        .filter_map(|(p, vb)| {
            let vt = tv.get(p)?;
            (vb != vt).then(|| VersionChange { package: p.clone(), base_version: join(vb), target_version: join(vt) })
        })
        .collect();

    let mut summary = CompareSummary::default();
    for c in BuildChange::ALL {
        summary.build_change.insert(c, 0);
    }
    for c in ReproChange::ALL {
        summary.repro_change.insert(c, 0);
    }
    let mut derivation_changes = Vec::new();
    let (mut i, mut k) = (0, 0);
    while i < b.len() || k < t.len() {
        let group = match (b.get(i), t.get(k)) {
            (Some(x), Some(y)) => key(x).min(key(y)),
            (Some(x), None) => key(x),
            (None, Some(y)) => key(y),
            (None, None) => break,
        };
        let i_end = i + b[i..].iter().take_while(|j| key(j) == group).count();
        let k_end = k + t[k..].iter().take_while(|j| key(j) == group).count();
        for (bj, tj) in pair_group(&b[i..i_end], &t[k..k_end]) {
            let change = derivation_change(group, bj, tj);
            *summary.build_change.entry(change.build_change).or_default() += 1;
            *summary.repro_change.entry(change.repro_change).or_default() += 1;
            if !options.changed_only || change.drv_changed {
                derivation_changes.push(change);
            }
        }
        i = i_end;
        k = k_end;
    }
    for (c, n) in &summary.build_change {
        summary.flat.insert(c.as_str().to_string(), *n);
    }
    for (c, n) in &summary.repro_change {
        let name = if *c == ReproChange::Unknown { "repro-unknown" } else { c.as_str() };
        summary.flat.insert(name.to_string(), *n);
    }
    Comparison {
        base: base_name.to_string(),
        target: target_name.to_string(),
        system: options.system.clone(),
        new_packages,
        removed_packages,
        version_changes,
        derivation_changes,
        summary,
    }
}

/// The jobs of `st` (of `system` only, if given) sorted by (package, system, version, drv).
fn sorted_jobs<'a>(st: &'a RevisionStatus, system: Option<&str>) -> Vec<&'a JobStatus> {
    let mut v: Vec<&JobStatus> = st.jobs.iter().filter(|j| system.is_none_or(|s| j.system == s)).collect();
    v.sort_unstable_by(|a, b| {
        (&a.package, &a.system, &a.version, &a.drv).cmp(&(&b.package, &b.system, &b.version, &b.drv))
    });
    v
}

fn key(j: &JobStatus) -> (&str, &str) {
    (j.package.as_str(), j.system.as_str())
}

type Pair<'a> = (Option<&'a JobStatus>, Option<&'a JobStatus>);

/// Pair the jobs of one (package, system) group: same derivation first, then same version, then
/// the rest in (version, drv) order; what is left is on one side only. O(n log n) in the group
/// (a hostile manifest may put every job in one group).
fn pair_group<'a>(b: &[&'a JobStatus], t: &[&'a JobStatus]) -> Vec<Pair<'a>> {
    if b.len() <= 1 && t.len() <= 1 {
        return vec![(b.first().copied(), t.first().copied())];
    }
    let mut b_used = vec![false; b.len()];
    let mut t_used = vec![false; t.len()];
    let mut pairs = Vec::new();
    let rules: [fn(&JobStatus) -> &str; 3] = [|j| &j.drv, |j| &j.version, |_| ""];
    for key in rules {
        let mut free: BTreeMap<&str, VecDeque<usize>> = BTreeMap::new();
        for (ti, tj) in t.iter().enumerate() {
            if !t_used[ti] {
                free.entry(key(tj)).or_default().push_back(ti);
            }
        }
        for (bi, bj) in b.iter().enumerate() {
            if b_used[bi] {
                continue;
            }
            if let Some(ti) = free.get_mut(key(bj)).and_then(VecDeque::pop_front) {
                b_used[bi] = true;
                t_used[ti] = true;
                pairs.push((Some(*bj), Some(t[ti])));
            }
        }
    }
    pairs.extend(b.iter().zip(&b_used).filter(|(_, u)| !**u).map(|(j, _)| (Some(*j), None)));
    pairs.extend(t.iter().zip(&t_used).filter(|(_, u)| !**u).map(|(j, _)| (None, Some(*j))));
    pairs
}

fn derivation_change(group: (&str, &str), b: Option<&JobStatus>, t: Option<&JobStatus>) -> DerivationChange {
    let both = b.is_some() && t.is_some();
    DerivationChange {
        package: group.0.to_string(),
        system: group.1.to_string(),
        base_drv: b.map(|j| j.drv.clone()),
        target_drv: t.map(|j| j.drv.clone()),
        build_change: if both {
            BuildChange::classify(b.map(|j| j.status), t.map(|j| j.status))
        } else {
            BuildChange::Unknown
        },
        repro_change: ReproChange::classify(b.and_then(|j| j.verdict), t.and_then(|j| j.verdict)),
        drv_changed: b.map(|j| &j.drv) != t.map(|j| &j.drv),
        base_version: b.map(|j| j.version.clone()),
        target_version: t.map(|j| j.version.clone()),
        base_status: b.map(|j| j.status),
        target_status: t.map(|j| j.status),
        base_verdict: b.and_then(|j| j.verdict),
        target_verdict: t.and_then(|j| j.verdict),
        blocked_by: t.and_then(|j| j.blocked_by.clone()),
    }
}
