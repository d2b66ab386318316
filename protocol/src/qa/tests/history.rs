//! History of a package across revisions; revisions of a derivation.

use super::fixture::{ARM, Builder, F, X86, abs, facts, header, sp};
use crate::qa::{HistoryRevision, JobState, OutputVerdict, drv_history, package_history, revision_status};

#[test]
fn package_and_derivation_history() {
    // r1: hello-1 (x86, arm); r2: hello-1 (x86), hello-2 (arm); r3: hello-2 (x86, arm).
    let r1 = Builder::new().pkg("hello", "1", X86, &[]).pkg("hello", "1", ARM, &[]).pkg("zz", "1", X86, &[]).build();
    let r2 = Builder::new()
        .pkg("hello", "1", X86, &[])
        .drv("zz-1", X86, &[])
        .pkg("tool", "1", X86, &["zz-1"])
        .pkg("hello", "2", ARM, &[])
        .build();
    let r3 = Builder::new().pkg("hello", "2", X86, &[]).pkg("hello", "2", ARM, &[]).pkg("aa", "1", X86, &[]).build();
    // The fixture names derivations by name, so r1's and r2's hello-1 are the same path.
    let known = [("hello-1", F::Ok(OutputVerdict::Matching)), ("hello-2", F::Failed)];
    let s1 = revision_status(&r1, &facts(&r1, &known, 0));
    let s2 = revision_status(&r2, &facts(&r2, &known, 0));
    let s3 = revision_status(&r3, &facts(&r3, &known, 0));
    let (h1, h2, h3) = (header("c1", 100), header("c2", 200), header("c3", 300));
    let revs = [
        HistoryRevision { header: &h1, manifest: &r1, status: &s1 },
        HistoryRevision { header: &h2, manifest: &r2, status: &s2 },
        HistoryRevision { header: &h3, manifest: &r3, status: &s3 },
    ];
    let h = package_history("hello", &revs);
    let got: Vec<(&str, &str, &str, &str, u64, JobState)> = h
        .derivations
        .iter()
        .map(|e| {
            (
                e.system.as_str(),
                e.drv.as_str(),
                e.first_revision.as_str(),
                e.last_revision.as_str(),
                e.revisions,
                e.status,
            )
        })
        .collect();
    let (d1x, d1a, d2a, d2x) = (abs("hello-1"), abs("hello-1-aarch64"), abs("hello-2-aarch64"), abs("hello-2"));
    let mut expect = vec![
        (X86, d1x.as_str(), "nixpkgs@c1", "nixpkgs@c2", 2, JobState::Succeeded),
        (ARM, d1a.as_str(), "nixpkgs@c1", "nixpkgs@c1", 1, JobState::Unknown),
        (ARM, d2a.as_str(), "nixpkgs@c2", "nixpkgs@c3", 2, JobState::Unknown),
        (X86, d2x.as_str(), "nixpkgs@c3", "nixpkgs@c3", 1, JobState::Failed),
    ];
    // Within one revision, entries come in the manifest's job order (by drv path).
    if sp("hello-1-aarch64.drv") < sp("hello-1.drv") {
        expect.swap(0, 1);
    }
    assert_eq!(got, expect);
    let e = &h.derivations.iter().find(|e| e.drv == d1x).expect("hello-1");
    assert_eq!((e.first_seen_ms, e.last_seen_ms, e.version.as_str()), (100, 200, "1"));
    assert_eq!(e.verdict, Some(OutputVerdict::Matching));
    assert_eq!(e.outputs.len(), 1);
    assert_eq!(e.outputs[0].path, crate::store_path::StoreDir::nix().display(&sp("hello-1")));
    assert!(package_history("nope", &revs).derivations.is_empty());

    // zz-1 is a job in r1 and only in the closure in r2; not in r3.
    let d = drv_history(&sp("zz-1.drv"), &[(&h1, &r1), (&h2, &r2), (&h3, &r3)]);
    let got: Vec<(&str, usize)> = d.revisions.iter().map(|r| (r.revision.as_str(), r.jobs.len())).collect();
    assert_eq!(got, vec![("nixpkgs@c1", 1), ("nixpkgs@c2", 0)]);
    assert_eq!(d.revisions[0].jobs[0].package, "zz");
    assert_eq!(d.revisions[0].branch, "master");
}
