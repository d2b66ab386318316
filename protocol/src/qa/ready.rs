//! The ready verdict (issue 13 item 7): is a target revision ready against a base, under the
//! operator's rule? Every failing reason is reported, with a machine code and words.

use serde::{Deserialize, Serialize};

use super::compare::{BuildChange, Comparison, ReproChange};
use super::status::{JobState, RevisionStatus};
use super::weather::Weather;
use crate::revision::RevisionHeader;

/// The operator's rule (`[qa.ready]` in the node's TOML); every field has the default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadyRule {
    /// At most this many `broken` (package, system) pairs.
    pub max_broken: u64,
    /// At most this many `newly-not-matching` pairs.
    pub max_newly_not_matching: u64,
    /// At least this ratio of available outputs on every system of the target (0 to 1).
    pub min_availability: f64,
    /// No job `unknown` or `queued` once the target is older than this (hours since its
    /// `created_at_ms`).
    pub max_unknown_age_hours: u64,
}

impl Default for ReadyRule {
    fn default() -> Self {
        ReadyRule { max_broken: 0, max_newly_not_matching: 0, min_availability: 0.95, max_unknown_age_hours: 24 }
    }
}

/// The machine code of a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    /// More `broken` pairs than `max_broken`.
    Broken,
    /// More `newly-not-matching` pairs than `max_newly_not_matching`.
    NewlyNotMatching,
    /// A system below `min_availability`.
    Availability,
    /// Jobs still `unknown` or `queued` after `max_unknown_age_hours`.
    StaleUnknown,
}

/// One reason the target is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyReason {
    /// The machine code.
    pub code: ReasonCode,
    /// The reason in words.
    pub message: String,
    /// How many pairs, outputs or jobs it is about.
    pub count: u64,
    /// The system, for `availability`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The first few packages concerned (at most [`REASON_PACKAGES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

/// How many package names a reason lists.
pub const REASON_PACKAGES: usize = 20;

/// The answer of `buildmesh ready TARGET --base BASE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyVerdict {
    /// Whether the target passes every part of the rule.
    pub ready: bool,
    /// The base revision.
    pub base: String,
    /// The target revision.
    pub target: String,
    /// Every failing reason (empty when ready).
    pub reasons: Vec<ReadyReason>,
    /// The rule applied.
    pub rule: ReadyRule,
}

const HOUR_MS: u64 = 3600 * 1000;

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict for `target` (its header and status), given its comparison with the base and its
/// weather, at `now_ms`.
pub fn ready(
    target: &RevisionHeader,
    status: &RevisionStatus,
    comparison: &Comparison,
    weather: &Weather,
    rule: &ReadyRule,
    now_ms: u64,
) -> ReadyVerdict {
    let mut reasons = Vec::new();
    let pkgs = |pred: &dyn Fn(&super::compare::DerivationChange) -> bool| -> Vec<String> {
        let mut v: Vec<String> = comparison
            .derivation_changes
            .iter()
            .filter(|c| pred(c))
            .map(|c| format!("{} ({})", c.package, c.system))
            .collect();
        v.truncate(REASON_PACKAGES);
        v
    };
    let broken = comparison.summary.build_change.get(&BuildChange::Broken).copied().unwrap_or(0);
    if broken > rule.max_broken {
        reasons.push(ReadyReason {
            code: ReasonCode::Broken,
            message: format!("{} broken (at most {} allowed)", plural(broken, "package", "packages"), rule.max_broken),
            count: broken,
            system: None,
            packages: pkgs(&|c| c.build_change == BuildChange::Broken),
        });
    }
    let nnm = comparison.summary.repro_change.get(&ReproChange::NewlyNotMatching).copied().unwrap_or(0);
    if nnm > rule.max_newly_not_matching {
        reasons.push(ReadyReason {
            code: ReasonCode::NewlyNotMatching,
            message: format!(
                "{} newly not matching (builders disagree; at most {} allowed)",
                plural(nnm, "package", "packages"),
                rule.max_newly_not_matching
            ),
            count: nnm,
            system: None,
            packages: pkgs(&|c| c.repro_change == ReproChange::NewlyNotMatching),
        });
    }
    for (system, w) in &weather.systems {
        if w.ratio < rule.min_availability {
            let missing = w.total - w.available.min(w.total);
            reasons.push(ReadyReason {
                code: ReasonCode::Availability,
                message: format!(
                    "{system}: {:.1}% of outputs available ({} of {}), below {:.1}%",
                    w.ratio * 100.0,
                    w.available,
                    w.total,
                    rule.min_availability * 100.0
                ),
                count: missing,
                system: Some(system.clone()),
                packages: Vec::new(),
            });
        }
    }
    let age_ms = now_ms.saturating_sub(target.created_at_ms);
    if age_ms > rule.max_unknown_age_hours.saturating_mul(HOUR_MS) {
        let stale: Vec<_> =
            status.jobs.iter().filter(|j| matches!(j.status, JobState::Unknown | JobState::Queued)).collect();
        if !stale.is_empty() {
            let n = stale.len() as u64;
            reasons.push(ReadyReason {
                code: ReasonCode::StaleUnknown,
                message: format!(
                    "{} still unknown or queued {} hours after the revision was created (at most {} hours allowed)",
                    plural(n, "job", "jobs"),
                    age_ms / HOUR_MS,
                    rule.max_unknown_age_hours
                ),
                count: n,
                system: None,
                packages: stale.iter().take(REASON_PACKAGES).map(|j| format!("{} ({})", j.package, j.system)).collect(),
            });
        }
    }
    ReadyVerdict {
        ready: reasons.is_empty(),
        base: comparison.base.clone(),
        target: comparison.target.clone(),
        reasons,
        rule: rule.clone(),
    }
}
