//! Tests of [`ManifestBuilder`]: graph, package/version, canonical order, errors.

use std::collections::{BTreeMap, BTreeSet};

use super::super::*;
use super::manifest::path;
use crate::derivation::{Derivation, Output};

fn drv(
    i: u8,
    name: &str,
    system: &str,
    inputs: &[&StorePath],
    env: &[(&str, &str)],
    outs: &[&str],
) -> (StorePath, Derivation) {
    let mut d =
        Derivation { system: system.as_bytes().to_vec(), builder: b"/bin/sh".to_vec(), ..Derivation::default() };
    for o in outs {
        let p = path(i + 100, &if *o == "out" { name.to_string() } else { format!("{name}-{o}") });
        d.outputs.insert((*o).to_string(), Output::input_addressed(Some(p)));
    }
    for input in inputs {
        d.input_drvs.insert((*input).clone(), BTreeSet::from(["out".to_string()]));
    }
    d.env.insert(b"name".to_vec(), name.as_bytes().to_vec());
    for (k, v) in env {
        d.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    (path(i, &format!("{name}.drv")), d)
}

#[test]
fn builds_the_graph_and_jobs_in_canonical_form() {
    let (libc, libc_d) = drv(9, "glibc-2.39", "x86_64-linux", &[], &[], &["dev", "out"]);
    let (gcc, gcc_d) = drv(2, "gcc-wrapper-13.2.0", "x86_64-linux", &[&libc], &[], &["out"]);
    let (hello, hello_d) =
        drv(5, "hello-2.12.1", "x86_64-linux", &[&gcc, &libc], &[("pname", "hello"), ("version", "2.12.1")], &["out"]);
    let (arm, arm_d) = drv(7, "foo-bar-baz", "aarch64-linux", &[], &[], &["out"]);
    let mut b = ManifestBuilder::new(StoreDir::nix());
    // Given in any order; the same drv twice is fine.
    for (p, d) in [(&hello, &hello_d), (&arm, &arm_d), (&libc, &libc_d), (&gcc, &gcc_d), (&libc, &libc_d)] {
        b.add_drv(p.clone(), d).unwrap();
    }
    b.add_job(hello.clone(), None, None)
        .add_job(gcc.clone(), None, None)
        .add_job(arm.clone(), None, None)
        .add_job(libc.clone(), Some("glibc".into()), Some("2.39-explicit".into()))
        .add_job(hello.clone(), None, None);
    let m = b.build().unwrap();
    assert_eq!(m.systems, ["aarch64-linux", "x86_64-linux"]);
    let names: Vec<&str> = m.drvs.iter().map(|d| d.drv.name()).collect();
    // Sorted by store path (digest [2;20] < [5;20] < [7;20] < [9;20]).
    assert_eq!(names, ["gcc-wrapper-13.2.0.drv", "hello-2.12.1.drv", "foo-bar-baz.drv", "glibc-2.39.drv"]);
    assert_eq!(m.drvs[0].inputs, [3]);
    assert_eq!(m.drvs[1].inputs, [0, 3]);
    assert_eq!(m.drvs[2].system, 0);
    assert_eq!(m.drvs[3].outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["dev", "out"]);
    let jobs: Vec<(&str, &str, u32)> = m.jobs.iter().map(|j| (j.package.as_str(), j.version.as_str(), j.drv)).collect();
    assert_eq!(
        jobs,
        [("foo-bar-baz", "", 2), ("gcc-wrapper", "13.2.0", 0), ("glibc", "2.39-explicit", 3), ("hello", "2.12.1", 1)]
    );
    assert_eq!(m.jobs_per_system(), BTreeMap::from([("aarch64-linux".into(), 1), ("x86_64-linux".into(), 3)]));
    assert_eq!(Manifest::decode(&m.encode_to_vec()).unwrap(), m);
}

#[test]
fn pname_and_version_win_over_the_name_and_explicit_wins_over_both() {
    let (p, d) = drv(
        1,
        "python3.12-requests-2.31.0",
        "x86_64-linux",
        &[],
        &[("pname", "requests"), ("version", "2.31.0")],
        &["out"],
    );
    let (q, e) = drv(2, "python3.12-urllib3-2.2.1", "x86_64-linux", &[], &[("pname", "urllib3")], &["out"]);
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(p.clone(), &d).unwrap().add_drv(q.clone(), &e).unwrap();
    // `pname` without `version`: the name is split instead.
    b.add_job(p.clone(), None, None).add_job(q.clone(), None, None).add_job(
        p.clone(),
        Some("py-requests".into()),
        None,
    );
    let m = b.build().unwrap();
    let jobs: Vec<(&str, &str)> = m.jobs.iter().map(|j| (j.package.as_str(), j.version.as_str())).collect();
    assert_eq!(jobs, [("py-requests", "2.31.0"), ("python3.12-urllib3", "2.2.1"), ("requests", "2.31.0")]);
}

#[test]
fn errors_name_the_derivation() {
    let (libc, libc_d) = drv(9, "glibc-2.39", "x86_64-linux", &[], &[], &["out"]);
    let (hello, hello_d) = drv(5, "hello-2.12.1", "x86_64-linux", &[&libc], &[], &["out"]);
    // Incomplete closure.
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(hello.clone(), &hello_d).unwrap().add_job(hello.clone(), None, None);
    let err = b.build().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "derivation /nix/store/{hello} has input /nix/store/{libc}, which was not given (give the whole closure)"
        )
    );
    // A job whose drv was not given.
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(libc.clone(), &libc_d).unwrap().add_job(hello.clone(), Some("hello".into()), None);
    let err = b.build().unwrap_err();
    assert!(matches!(err, ManifestBuildError::JobDrvNotGiven { .. }), "{err}");
    assert!(err.to_string().contains(&hello.to_string()));
    // The same path with other contents.
    let (_, other) = drv(9, "glibc-2.39", "aarch64-linux", &[], &[], &["out"]);
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(libc.clone(), &libc_d).unwrap();
    assert!(matches!(b.add_drv(libc.clone(), &other), Err(ManifestBuildError::Conflict { .. })));
    // Not a .drv, a bad system, an output without a path, no outputs.
    assert!(matches!(b.add_drv(path(1, "hello"), &libc_d), Err(ManifestBuildError::NotADerivation { .. })));
    let (p, bad_system) = drv(3, "x-1", "x86 64", &[], &[], &["out"]);
    assert!(matches!(b.add_drv(p, &bad_system), Err(ManifestBuildError::BadSystem { .. })));
    let (p, mut deferred) = drv(3, "x-1", "x86_64-linux", &[], &[], &["out"]);
    deferred.outputs.insert("out".into(), Output::input_addressed(None));
    let err = b.add_drv(p, &deferred).unwrap_err();
    assert!(err.to_string().contains("output \"out\" has no store path"), "{err}");
    let (p, none) = drv(3, "x-1", "x86_64-linux", &[], &[], &[]);
    assert!(matches!(b.add_drv(p, &none), Err(ManifestBuildError::NoOutputs { .. })));
    // Two versions of one (package, drv).
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(libc.clone(), &libc_d).unwrap();
    b.add_job(libc.clone(), Some("glibc".into()), Some("1".into())).add_job(
        libc.clone(),
        Some("glibc".into()),
        Some("2".into()),
    );
    assert!(matches!(b.build(), Err(ManifestBuildError::DuplicateJob { .. })));
    // A package that breaks its rule.
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(libc.clone(), &libc_d).unwrap();
    b.add_job(libc.clone(), Some("bad\npackage".into()), None);
    let err = b.build().unwrap_err().to_string();
    assert!(err.contains("control character"), "{err}");
    // A version that is too long comes from the derivation: the error names it.
    let (p, long) = drv(4, "x", "x86_64-linux", &[], &[("pname", "x"), ("version", &"9".repeat(65))], &["out"]);
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(p.clone(), &long).unwrap().add_job(p.clone(), None, None);
    let err = b.build().unwrap_err().to_string();
    assert!(err.starts_with(&format!("job of derivation /nix/store/{p}: version:")), "{err}");
}

#[test]
fn a_cycle_is_refused() {
    // Real derivations cannot form a cycle; a builder given forged ones refuses them.
    let a = path(1, "a.drv");
    let b_ = path(2, "b.drv");
    let (_, da) = drv(1, "a", "x86_64-linux", &[&b_], &[], &["out"]);
    let (_, db) = drv(2, "b", "x86_64-linux", &[&a], &[], &["out"]);
    let mut b = ManifestBuilder::new(StoreDir::nix());
    b.add_drv(a.clone(), &da).unwrap().add_drv(b_.clone(), &db).unwrap().add_job(a, None, None);
    let err = b.build().unwrap_err();
    assert!(matches!(err, ManifestBuildError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("cycle"), "{err}");
}
