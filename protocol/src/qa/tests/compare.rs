//! Compare: every build_change and repro_change class, packages, versions, the system filter.

use super::fixture::{ARM, Builder, F, X86, abs, facts};
use crate::qa::{BuildChange, CompareOptions, Comparison, OutputVerdict, ReproChange, compare, revision_status};

use OutputVerdict::{Matching as M, NotMatching as NM, Single as S};

fn revisions() -> (crate::qa::RevisionStatus, crate::qa::RevisionStatus) {
    let base = Builder::new()
        .pkg("stays", "1", X86, &[])
        .pkg("stays", "1", ARM, &[])
        .pkg("p", "1", X86, &[])
        .pkg("q", "1", X86, &[])
        .drv("rdep", X86, &[])
        .pkg("r", "1", X86, &["rdep"])
        .pkg("s", "1", X86, &[])
        .pkg("t", "1", X86, &[])
        .pkg("u", "1", X86, &[])
        .pkg("v", "1", X86, &[])
        .pkg("w", "1", X86, &[])
        .pkg("x", "1", X86, &[])
        .pkg("gone", "1", X86, &[])
        .build();
    let target = Builder::new()
        .pkg("stays", "1", X86, &[])
        .pkg("stays", "1", ARM, &[])
        .pkg("p", "2", X86, &[])
        .pkg("q", "2", X86, &[])
        .pkg("r", "2", X86, &[])
        .pkg("s", "2", X86, &[])
        .drv("tdep", X86, &[])
        .pkg("t", "2", X86, &["tdep"])
        .pkg("u", "2", X86, &[])
        .pkg("v", "2", X86, &[])
        .pkg("w", "2", X86, &[])
        .pkg("x", "2", X86, &[])
        .pkg("new", "1", X86, &[])
        .build();
    let bf = facts(
        &base,
        &[
            ("stays-1", F::Ok(M)),
            ("stays-1-aarch64", F::Ok(M)),
            ("p-1", F::Ok(S)),
            ("q-1", F::Failed),
            ("rdep", F::Failed),
            ("s-1", F::Failed),
            ("t-1", F::Ok(M)),
            ("u-1", F::Ok(M)),
            ("v-1", F::Ok(M)),
            ("w-1", F::Ok(NM)),
            ("x-1", F::Ok(NM)),
            ("gone-1", F::Ok(M)),
        ],
        0,
    );
    let tf = facts(
        &target,
        &[
            ("stays-1", F::Ok(M)),
            ("stays-1-aarch64", F::Ok(M)),
            ("p-2", F::Failed),
            ("q-2", F::Ok(M)),
            ("r-2", F::Ok(S)),
            ("s-2", F::Failed),
            ("tdep", F::Failed),
            ("u-2", F::Queued),
            ("v-2", F::Ok(NM)),
            ("w-2", F::Ok(M)),
            ("x-2", F::Ok(NM)),
            ("new-1", F::Ok(M)),
        ],
        0,
    );
    (revision_status(&base, &bf), revision_status(&target, &tf))
}

fn change<'a>(c: &'a Comparison, package: &str, system: &str) -> &'a crate::qa::DerivationChange {
    c.derivation_changes
        .iter()
        .find(|d| d.package == package && d.system == system)
        .unwrap_or_else(|| panic!("{package} {system}"))
}

#[test]
fn every_class() {
    let (b, t) = revisions();
    let c = compare("nixpkgs@b", &b, "nixpkgs@t", &t, &CompareOptions::default());
    assert_eq!((c.base.as_str(), c.target.as_str()), ("nixpkgs@b", "nixpkgs@t"));
    let expect = [
        ("stays", BuildChange::StillWorking, ReproChange::Unchanged),
        ("p", BuildChange::Broken, ReproChange::Unknown),
        ("q", BuildChange::Fixed, ReproChange::Unknown),
        ("r", BuildChange::Fixed, ReproChange::Unknown),
        ("s", BuildChange::StillFailing, ReproChange::Unknown),
        ("t", BuildChange::Blocked, ReproChange::Unknown),
        ("u", BuildChange::Unknown, ReproChange::Unknown),
        ("v", BuildChange::StillWorking, ReproChange::NewlyNotMatching),
        ("w", BuildChange::StillWorking, ReproChange::NewlyMatching),
        ("x", BuildChange::StillWorking, ReproChange::StillNotMatching),
        ("new", BuildChange::Unknown, ReproChange::Unknown),
        ("gone", BuildChange::Unknown, ReproChange::Unknown),
    ];
    for (p, bc, rc) in expect {
        let d = change(&c, p, X86);
        assert_eq!((d.build_change, d.repro_change), (bc, rc), "{p}");
    }
    assert_eq!(change(&c, "t", X86).blocked_by.as_deref(), Some(abs("tdep").as_str()));
    assert_eq!(change(&c, "p", X86).base_drv.as_deref(), Some(abs("p-1").as_str()));
    assert_eq!(change(&c, "p", X86).target_drv.as_deref(), Some(abs("p-2").as_str()));
    assert!(change(&c, "p", X86).drv_changed);
    assert!(!change(&c, "stays", X86).drv_changed);
    assert_eq!(change(&c, "new", X86).base_drv, None);
    assert_eq!(change(&c, "gone", X86).target_drv, None);
    assert_eq!(c.new_packages, vec!["new"]);
    assert_eq!(c.removed_packages, vec!["gone"]);
    let vc: Vec<_> = c
        .version_changes
        .iter()
        .map(|v| (v.package.as_str(), v.base_version.as_str(), v.target_version.as_str()))
        .collect();
    assert!(vc.contains(&("p", "1", "2")));
    assert!(!vc.iter().any(|v| v.0 == "stays" || v.0 == "new" || v.0 == "gone"));
    assert_eq!(vc.len(), 9);
    // The summary counts every pair; the flat keys name every class.
    let s = &c.summary;
    assert_eq!(s.build_change[&BuildChange::StillWorking], 5); // stays x2, v, w, x
    assert_eq!(s.build_change[&BuildChange::Fixed], 2);
    assert_eq!(s.build_change[&BuildChange::Unknown], 3);
    assert_eq!(s.flat["broken"], 1);
    assert_eq!(s.flat["still-failing"], 1);
    assert_eq!(s.flat["blocked"], 1);
    assert_eq!(s.flat["newly-not-matching"], 1);
    assert_eq!(s.flat["newly-matching"], 1);
    assert_eq!(s.flat["still-not-matching"], 1);
    assert_eq!(s.flat["unchanged"], 2);
    assert_eq!(s.flat["repro-unknown"], 8);
    assert_eq!(s.build_change.values().sum::<u64>(), c.derivation_changes.len() as u64);
    assert_eq!(s.repro_change.values().sum::<u64>(), c.derivation_changes.len() as u64);
}

#[test]
fn system_filter_and_changed_only() {
    let (b, t) = revisions();
    let c = compare("a@1", &b, "a@2", &t, &CompareOptions { system: Some(ARM.into()), changed_only: false });
    assert_eq!(c.derivation_changes.len(), 1);
    assert_eq!(c.derivation_changes[0].package, "stays");
    assert!(c.new_packages.is_empty() && c.removed_packages.is_empty() && c.version_changes.is_empty());

    let c = compare("a@1", &b, "a@2", &t, &CompareOptions { system: None, changed_only: true });
    assert!(c.derivation_changes.iter().all(|d| d.drv_changed));
    assert!(!c.derivation_changes.iter().any(|d| d.package == "stays"));
    // The summary still counts the unchanged pairs.
    assert_eq!(c.summary.build_change[&BuildChange::StillWorking], 5);
}

#[test]
fn build_change_table() {
    use crate::qa::JobState::*;
    let cases = [
        (Succeeded, Failed, BuildChange::Broken),
        (Failed, Succeeded, BuildChange::Fixed),
        (Blocked, Succeeded, BuildChange::Fixed),
        (Failed, Failed, BuildChange::StillFailing),
        (Blocked, Failed, BuildChange::StillFailing),
        (Succeeded, Succeeded, BuildChange::StillWorking),
        (Succeeded, Blocked, BuildChange::Blocked),
        (Unknown, Blocked, BuildChange::Blocked),
        (Queued, Succeeded, BuildChange::Unknown),
        (Succeeded, Building, BuildChange::Unknown),
        (Unknown, Failed, BuildChange::Unknown),
    ];
    for (b, t, c) in cases {
        assert_eq!(BuildChange::classify(Some(b), Some(t)), c, "{b:?} -> {t:?}");
    }
    assert_eq!(BuildChange::classify(None, Some(Failed)), BuildChange::Unknown);
    let repro = [
        (Some(M), Some(NM), ReproChange::NewlyNotMatching),
        (Some(S), Some(NM), ReproChange::NewlyNotMatching),
        (Some(NM), Some(M), ReproChange::NewlyMatching),
        (Some(NM), Some(NM), ReproChange::StillNotMatching),
        (Some(NM), Some(S), ReproChange::Unchanged),
        (Some(S), Some(M), ReproChange::Unchanged),
        (None, Some(M), ReproChange::Unknown),
        (Some(NM), None, ReproChange::Unknown),
    ];
    for (b, t, c) in repro {
        assert_eq!(ReproChange::classify(b, t), c, "{b:?} -> {t:?}");
    }
}

#[test]
fn several_jobs_of_one_package_pair_by_drv_then_version() {
    // python 3.11 and 3.12 on both sides; 3.12's drv changed; 3.10 removed; 3.13 added.
    let base = Builder::new()
        .pkg("python", "3.10", X86, &[])
        .pkg("python", "3.11", X86, &[])
        .pkg("python", "3.12", X86, &[])
        .build();
    let target = Builder::new()
        .pkg("python", "3.11", X86, &[])
        .drv("python-3.12-new", X86, &[])
        .job("python", "3.12", "python-3.12-new")
        .pkg("python", "3.13", X86, &[])
        .build();
    let b = revision_status(&base, &facts(&base, &[], 0));
    let t = revision_status(&target, &facts(&target, &[], 0));
    let c = compare("a@1", &b, "a@2", &t, &CompareOptions::default());
    let pairs: Vec<(Option<String>, Option<String>)> =
        c.derivation_changes.iter().map(|d| (d.base_version.clone(), d.target_version.clone())).collect();
    let s = |v: &str| Some(v.to_string());
    assert!(pairs.contains(&(s("3.11"), s("3.11"))));
    assert!(pairs.contains(&(s("3.12"), s("3.12"))));
    // 3.10 and 3.13 are paired last, in order (same package and system).
    assert!(pairs.contains(&(s("3.10"), s("3.13"))));
    assert_eq!(pairs.len(), 3);
    assert_eq!(c.version_changes[0].base_version, "3.10, 3.11, 3.12");
    assert_eq!(c.version_changes[0].target_version, "3.11, 3.12, 3.13");
}
