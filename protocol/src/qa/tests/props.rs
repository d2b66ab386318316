//! Properties over random graphs, checked against brute force.

use proptest::prelude::*;

use super::fixture::{ARM, Builder, F, X86, facts};
use crate::qa::{
    BuildChange, CompareOptions, FAILED_INPUTS_CAP, JobState, OutputVerdict, ReproChange, WeatherOptions, compare,
    revision_status, weather,
};
use crate::revision::Manifest;

const STATES: [Option<F>; 7] = [
    None,
    Some(F::Ok(OutputVerdict::Matching)),
    Some(F::Ok(OutputVerdict::NotMatching)),
    Some(F::Ok(OutputVerdict::Single)),
    Some(F::OkUnavailable),
    Some(F::Failed),
    Some(F::Queued),
];

/// A random DAG of `n` derivations (inputs among lower numbers, which the path order scrambles),
/// random facts, and jobs on some of them.
fn arb_case() -> impl Strategy<Value = (Manifest, Vec<(String, F)>)> {
    (1usize..30)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..4), n),
                proptest::collection::vec(0usize..STATES.len(), n),
                proptest::collection::vec((any::<bool>(), 0usize..5, any::<bool>()), n),
            )
        })
        .prop_map(|(n, inputs, states, jobs)| {
            let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
            let mut b = Builder::new();
            for i in 0..n {
                let ins: Vec<&str> =
                    if i == 0 { vec![] } else { inputs[i].iter().map(|x| names[x.index(i)].as_str()).collect() };
                let system = if jobs[i].2 { X86 } else { ARM };
                b = b.drv(&names[i], system, &ins);
                if jobs[i].0 {
                    b = b.job(&format!("p{}", jobs[i].1), &i.to_string(), &names[i]);
                }
            }
            let known = (0..n).filter_map(|i| STATES[states[i]].map(|f| (names[i].clone(), f))).collect();
            (b.build(), known)
        })
}

/// The derivations reachable from `d` through inputs, not crossing succeeded ones (`d` excluded).
fn reachable_unsucceeded(m: &Manifest, succeeded: &[bool], d: usize) -> Vec<usize> {
    let mut seen = vec![false; m.drvs.len()];
    let mut stack = vec![d];
    let mut out = Vec::new();
    while let Some(x) = stack.pop() {
        for &i in &m.drvs[x].inputs {
            let i = i as usize;
            if !seen[i] && !succeeded[i] {
                seen[i] = true;
                out.push(i);
                stack.push(i);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn status_counts_and_blocked_match_brute_force((m, known) in arb_case()) {
        let known: Vec<(&str, F)> = known.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        let f = facts(&m, &known, 0);
        let st = revision_status(&m, &f);
        prop_assert_eq!(st.jobs.len(), m.jobs.len());
        prop_assert_eq!(st.counts.values().map(|c| c.total()).sum::<u64>(), m.jobs.len() as u64);
        let failed: Vec<bool> = f.drvs.iter().map(|x| x.state == crate::qa::FactState::Failed).collect();
        let succeeded: Vec<bool> = f.drvs.iter().map(|x| x.state == crate::qa::FactState::Succeeded).collect();
        for (job, js) in m.jobs.iter().zip(&st.jobs) {
            let d = job.drv as usize;
            let mut blockers: Vec<usize> = reachable_unsucceeded(&m, &succeeded, d).into_iter().filter(|&i| failed[i]).collect();
            blockers.sort();
            let expect_blocked = !failed[d] && !succeeded[d] && !blockers.is_empty();
            prop_assert_eq!(js.status == JobState::Blocked, expect_blocked);
            if expect_blocked {
                let name = m.store_dir.display(&m.drvs[blockers[0]].drv);
                prop_assert_eq!(js.blocked_by.as_deref(), Some(name.as_str()));
                prop_assert_eq!(js.blocked_by_count as usize, blockers.len().min(FAILED_INPUTS_CAP));
            } else {
                prop_assert!(js.blocked_by.is_none());
            }
        }
    }

    #[test]
    fn compare_with_itself_has_no_change((m, known) in arb_case()) {
        let known: Vec<(&str, F)> = known.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        let st = revision_status(&m, &facts(&m, &known, 0));
        let c = compare("c@1", &st, "c@1", &st, &CompareOptions::default());
        prop_assert!(c.new_packages.is_empty() && c.removed_packages.is_empty() && c.version_changes.is_empty());
        prop_assert_eq!(c.derivation_changes.len(), m.jobs.len());
        for d in &c.derivation_changes {
            prop_assert!(!d.drv_changed);
            prop_assert!(matches!(
                d.build_change,
                BuildChange::StillWorking | BuildChange::StillFailing | BuildChange::Blocked | BuildChange::Unknown
            ), "{:?}", d.build_change);
            prop_assert!(matches!(
                d.repro_change,
                ReproChange::Unchanged | ReproChange::StillNotMatching | ReproChange::Unknown
            ), "{:?}", d.repro_change);
        }
    }

    #[test]
    fn dependents_match_brute_force((m, known) in arb_case()) {
        let known: Vec<(&str, F)> = known.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        let f = facts(&m, &known, 0);
        let w = weather(&m, &f, 0, WeatherOptions { coverage: true, display_missing: false });
        let all = vec![false; m.drvs.len()];
        let cov = w.coverage.expect("coverage");
        for c in &cov {
            let r = m.drvs.iter().position(|d| m.store_dir.display(&d.drv) == c.drv).expect("a drv");
            let brute = (0..m.drvs.len()).filter(|&d| reachable_unsucceeded(&m, &all, d).contains(&r)).count();
            prop_assert_eq!(c.dependents, brute as u64);
        }
        prop_assert!(cov.windows(2).all(|w| w[0].dependents >= w[1].dependents));
    }
}
