//! Tests of the manifest encoding: round trips, every decode error class, the rules, lookups.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::super::*;
use super::header::{header, key};
use crate::signed::Signed;
use crate::wire::{DecodeError, Encode};

pub(super) fn path(i: u8, name: &str) -> StorePath {
    StorePath::new([i; 20], name).unwrap()
}

/// A small valid manifest: libc ← hello ← hello-wrapped, plus an aarch64 drv; three jobs.
pub(super) fn sample() -> Manifest {
    let drv = |i: u8, n: &str, system: u16, inputs: Vec<u32>, outs: &[&str]| ManifestDrv {
        drv: path(i, &format!("{n}.drv")),
        system,
        inputs,
        outputs: outs
            .iter()
            .map(|o| ManifestOutput {
                name: (*o).to_string(),
                path: path(i + 100, &if *o == "out" { n.to_string() } else { format!("{n}-{o}") }),
            })
            .collect(),
    };
    let m = Manifest {
        store_dir: StoreDir::nix(),
        systems: vec!["aarch64-linux".into(), "x86_64-linux".into()],
        // Digest bytes all equal: order by digest is by `i`.
        drvs: vec![
            drv(1, "glibc-2.39", 1, vec![], &["dev", "out"]),
            drv(2, "hello-2.12.1", 1, vec![0], &["out"]),
            drv(3, "hello-wrapped-2.12.1", 1, vec![0, 1], &["out"]),
            drv(4, "hello-2.12.1", 0, vec![], &["out"]),
        ],
        jobs: vec![
            ManifestJob { drv: 1, package: "hello".into(), version: "2.12.1".into() },
            ManifestJob { drv: 3, package: "hello".into(), version: "2.12.1".into() },
            ManifestJob { drv: 2, package: "hello-wrapped".into(), version: "2.12.1".into() },
        ],
    };
    m.validate().unwrap();
    m
}

fn decode_err(m: &Manifest) -> DecodeError {
    let bytes = m.encode_to_vec();
    let err = Manifest::decode(&bytes).unwrap_err();
    // `validate` refuses it too.
    assert!(m.validate().is_err(), "validate accepted what decode refused: {err}");
    err
}

fn invalid(err: &DecodeError) -> (&'static str, usize, String) {
    match err {
        DecodeError::InvalidValue { field, offset, reason } => (field, *offset, reason.clone()),
        other => panic!("not InvalidValue: {other}"),
    }
}

#[test]
fn sample_round_trips_and_lookups_work() {
    let m = sample();
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len());
    assert!(bytes.starts_with(b"buildmesh-manifest\0\x01"));
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    assert_eq!(m.hash(), *blake3::hash(&bytes).as_bytes());
    assert_eq!(m.hash(), manifest_hash(&bytes));
    assert_eq!(m.drv_index(&path(3, "hello-wrapped-2.12.1.drv")), Some(2));
    assert_eq!(m.drv_index(&path(3, "hello-wrapped-2.12.2.drv")), None);
    assert_eq!(m.job_system(&m.jobs[0]), "x86_64-linux");
    assert_eq!(m.job_system(&m.jobs[1]), "aarch64-linux");
    assert_eq!(m.job_drv(&m.jobs[2]).unwrap().drv, path(3, "hello-wrapped-2.12.1.drv"));
    assert_eq!(
        m.jobs_per_system(),
        BTreeMap::from([("aarch64-linux".to_string(), 1), ("x86_64-linux".to_string(), 2)])
    );
    // An empty manifest is the shortest encoding.
    let empty = Manifest { store_dir: StoreDir::new("/s").unwrap(), ..Manifest::default() };
    assert_eq!(empty.encode_to_vec().len(), MIN_MANIFEST_SIZE);
    assert_eq!(Manifest::decode(&empty.encode_to_vec()).unwrap(), empty);
}

#[test]
fn header_for_manifest_and_check_manifest() {
    let k = key(1);
    let m = sample();
    let bytes = m.encode_to_vec();
    let h = RevisionHeader::for_manifest(k.node_id(), 5, "nixpkgs", "master", "abc", 2, &m, &bytes).unwrap();
    assert_eq!(h.manifest_hash, m.hash());
    assert_eq!(h.manifest_size, bytes.len() as u64);
    assert_eq!(h.drv_count, 4);
    assert_eq!(h.job_count(), 3);
    let h = Signed::sign(&k, &h).unwrap().verify().unwrap().into_value();
    assert_eq!(h.check_manifest(&bytes).unwrap(), m);
    // Wrong size: refused before hashing; wrong bytes of the right size: hash mismatch.
    let err = h.check_manifest(&bytes[1..]).unwrap_err();
    assert!(matches!(err, ManifestCheckError::Size { .. }), "{err}");
    let mut flipped = bytes.clone();
    flipped[30] ^= 1;
    let err = h.check_manifest(&flipped).unwrap_err().to_string();
    assert!(err.starts_with("manifest hash mismatch: the revision header says blake3 "), "{err}");
    // A header whose counts lie about its (hash-correct) manifest.
    let mut lying = h.clone();
    lying.drv_count = 5;
    let err = lying.check_manifest(&bytes).unwrap_err().to_string();
    assert_eq!(err, "manifest disagrees with its revision header on drv_count: header 5, manifest 4");
    let mut lying = h.clone();
    lying.jobs_per_system.insert("riscv64-linux".into(), 1);
    assert!(matches!(lying.check_manifest(&bytes), Err(ManifestCheckError::Mismatch { field: "jobs_per_system", .. })));
    // Hash-correct bytes that do not decode (a submitter published garbage).
    let garbage = b"not a manifest at all, but hashed right".to_vec();
    let mut bad = h.clone();
    bad.manifest_size = garbage.len() as u64;
    bad.manifest_hash = manifest_hash(&garbage);
    assert!(matches!(bad.check_manifest(&garbage), Err(ManifestCheckError::Decode(_))));
    // Header field rules apply.
    let err = RevisionHeader::for_manifest(k.node_id(), 5, "nix pkgs", "master", "abc", 2, &m, &bytes).unwrap_err();
    assert!(err.to_string().contains("revision.channel"), "{err}");
}

#[test]
fn too_large_is_refused_before_reading() {
    let mut big = sample().encode_to_vec();
    big.resize(MAX_MANIFEST_SIZE + 1, 0);
    assert_eq!(
        Manifest::decode(&big),
        Err(DecodeError::TooLarge { len: MAX_MANIFEST_SIZE + 1, max: MAX_MANIFEST_SIZE })
    );
}

#[test]
fn every_truncation_and_trailing_bytes_are_refused() {
    let bytes = sample().encode_to_vec();
    for len in 0..bytes.len() {
        let err = Manifest::decode(&bytes[..len]).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. } | DecodeError::InvalidValue { .. }), "cut at {len}: {err}");
    }
    assert!(matches!(Manifest::decode(&bytes[..10]), Err(DecodeError::Truncated { field: "manifest.magic", .. })));
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Manifest::decode(&longer), Err(DecodeError::TrailingBytes { offset: bytes.len(), extra: 1 }));
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = sample().encode_to_vec();
    bytes[0] = b'B';
    let err = Manifest::decode(&bytes).unwrap_err();
    let (field, offset, reason) = invalid(&err);
    assert_eq!((field, offset), ("manifest.magic", 0));
    assert!(reason.contains("not a buildmesh manifest"));
    let mut bytes = sample().encode_to_vec();
    bytes[MANIFEST_MAGIC.len()] = 2;
    let err = Manifest::decode(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `manifest.version` at offset 19: manifest version 2 is not supported (this node reads version 1)"
    );
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // A drv count of 1,999,999 with a few bytes behind it.
    let mut m = sample();
    m.jobs.clear();
    let bytes = m.encode_to_vec();
    let drvs_at = bytes.len() - 4 - sample_drvs_len(&m) - 4;
    let mut bad = bytes[..drvs_at].to_vec();
    bad.extend_from_slice(&1_999_999u32.to_le_bytes());
    bad.extend_from_slice(&[0; 100]);
    assert!(matches!(Manifest::decode(&bad), Err(DecodeError::Truncated { field: "manifest.drvs", .. })));
    bad[drvs_at..drvs_at + 4].copy_from_slice(&(MAX_MANIFEST_DRVS as u32 + 1).to_le_bytes());
    assert!(matches!(Manifest::decode(&bad), Err(DecodeError::LimitExceeded { field: "manifest.drvs", .. })));
    // The job count.
    let bytes = sample().encode_to_vec();
    let jobs_at = sample().encoded_len() - sample_jobs_len(&sample()) - 4;
    let mut bad = bytes[..jobs_at].to_vec();
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Manifest::decode(&bad), Err(DecodeError::LimitExceeded { field: "manifest.jobs", .. })));
}

fn sample_drvs_len(m: &Manifest) -> usize {
    let only = Manifest { jobs: vec![], drvs: vec![], ..m.clone() };
    m.encoded_len() - only.encoded_len() - sample_jobs_len(m)
}

fn sample_jobs_len(m: &Manifest) -> usize {
    m.encoded_len() - Manifest { jobs: vec![], ..m.clone() }.encoded_len()
}

#[test]
fn unsorted_and_duplicate_drvs_are_refused() {
    let mut m = sample();
    m.drvs.swap(2, 3);
    // Fix the indices so that only the order is wrong.
    m.jobs[1].drv = 2;
    m.jobs[2].drv = 3;
    let err = decode_err(&m);
    let (field, _, reason) = invalid(&err);
    assert_eq!(field, "manifest.drvs.drv");
    assert!(reason.contains("is not after") && reason.contains("sorted by store path"), "{reason}");
    let mut m = sample();
    m.drvs[3] = m.drvs[2].clone();
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs.drv");
    assert!(reason.contains("no duplicates"), "{reason}");
    // Not a .drv path.
    let mut m = sample();
    m.drvs[3].drv = path(9, "hello");
    assert_eq!(invalid(&decode_err(&m)).0, "manifest.drvs.drv");
}

#[test]
fn indices_out_of_range_are_refused() {
    let mut m = sample();
    m.drvs[1].inputs = vec![7];
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs.inputs");
    assert!(reason.contains("input index 7 is out of range (the manifest has 4 derivations)"), "{reason}");
    let mut m = sample();
    m.jobs[0].drv = 4;
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.jobs");
    assert!(reason.contains("drv index 4 is out of range"), "{reason}");
    let mut m = sample();
    m.drvs[0].system = 2;
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs.system");
    assert!(reason.contains("system index 2 is out of range"), "{reason}");
}

#[test]
fn input_rules() {
    let mut m = sample();
    m.drvs[1].inputs = vec![0, 1];
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs.inputs");
    assert!(reason.contains("input index 1 is the derivation itself"), "{reason}");
    let mut m = sample();
    m.drvs[2].inputs = vec![1, 0];
    assert!(invalid(&decode_err(&m)).2.contains("input index 0 is not after 1"));
    let mut m = sample();
    m.drvs[2].inputs = vec![0, 0];
    assert!(invalid(&decode_err(&m)).2.contains("strictly increasing"));
    // A cycle: glibc depends on hello-wrapped, which depends on glibc.
    let mut m = sample();
    m.drvs[0].inputs = vec![2];
    let (field, offset, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs");
    assert!(offset > MANIFEST_MAGIC.len());
    assert!(reason.contains("the input graph has a cycle through"), "{reason}");
    assert!(m.validate().unwrap_err().to_string().contains("cycle"));
}

#[test]
fn system_and_output_rules() {
    let mut m = sample();
    m.systems.swap(0, 1);
    for d in &mut m.drvs {
        d.system = 1 - d.system;
    }
    assert_eq!(invalid(&decode_err(&m)).0, "manifest.systems");
    let mut m = sample();
    m.systems.push("z80-none".into());
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.systems");
    assert!(reason.contains("used by no derivation"), "{reason}");
    let mut m = sample();
    m.drvs[0].outputs.reverse();
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.drvs.outputs.name");
    assert!(reason.contains("output \"dev\" is not after \"out\""), "{reason}");
    let mut m = sample();
    m.drvs[1].outputs.clear();
    assert!(invalid(&decode_err(&m)).2.contains("has no outputs"));
}

#[test]
fn job_rules() {
    let mut m = sample();
    m.jobs.swap(0, 2);
    let (field, _, reason) = invalid(&decode_err(&m));
    assert_eq!(field, "manifest.jobs");
    assert!(reason.contains("sorted by package then drv"), "{reason}");
    let mut m = sample();
    m.jobs[1].drv = 1;
    m.jobs[1].version = "2.12.2".into();
    assert!(invalid(&decode_err(&m)).2.contains("no duplicates"));
    let mut m = sample();
    m.jobs[0].package = String::new();
    assert_eq!(invalid(&decode_err(&m)).0, "manifest.jobs.package");
    let mut m = sample();
    m.jobs[2].package = "p".repeat(MAX_PACKAGE_LEN + 1);
    assert!(matches!(decode_err(&m), DecodeError::LimitExceeded { field: "manifest.jobs.package", .. }));
    let mut m = sample();
    m.jobs[2].version = "1\n".into();
    assert_eq!(invalid(&decode_err(&m)).0, "manifest.jobs.version");
    let mut m = sample();
    m.jobs[2].version = "1".repeat(MAX_VERSION_LEN + 1);
    assert!(matches!(decode_err(&m), DecodeError::LimitExceeded { field: "manifest.jobs.version", .. }));
    // Edges that are allowed.
    let mut m = sample();
    m.jobs[2].package = "p".repeat(MAX_PACKAGE_LEN);
    m.jobs[2].version = "1".repeat(MAX_VERSION_LEN);
    m.jobs[0].version = String::new();
    Manifest::decode(&m.encode_to_vec()).unwrap();
    m.validate().unwrap();
}

// ---- property tests ----

type RawDrv = ([u8; 20], String, u16, u32, Vec<bool>, BTreeSet<String>);

/// A random valid manifest: random drvs (sorted, deduplicated), inputs only towards drvs of a lower
/// random rank (so acyclic, pointing either way in index order), used systems only, sorted jobs.
pub(super) fn arb_manifest() -> impl Strategy<Value = Manifest> {
    let drv = (
        any::<[u8; 20]>(),
        "[a-z][a-z0-9.+-]{0,15}",
        0u16..4,
        any::<u32>(),
        proptest::collection::vec(any::<bool>(), 0..12),
        proptest::collection::btree_set("[a-z]{1,5}", 1..4),
    );
    let job = (any::<u16>(), "[a-zA-Z0-9 ._+-]{1,20}", "[a-z0-9.]{0,10}");
    (proptest::collection::vec(drv, 0..24), proptest::collection::vec(job, 0..40)).prop_map(
        |(raw, jobs): (Vec<RawDrv>, Vec<(u16, String, String)>)| {
            const SYSTEMS: [&str; 4] = ["aarch64-darwin", "aarch64-linux", "i686-linux", "x86_64-linux"];
            let mut by_path: BTreeMap<StorePath, RawDrv> = BTreeMap::new();
            for r in raw {
                by_path.entry(StorePath::new(r.0, &format!("{}.drv", r.1)).unwrap()).or_insert(r);
            }
            let raws: Vec<(StorePath, RawDrv)> = by_path.into_iter().collect();
            let used: BTreeSet<u16> = raws.iter().map(|(_, r)| r.2).collect();
            let systems: Vec<String> = used.iter().map(|s| SYSTEMS[*s as usize].to_string()).collect();
            let n = raws.len();
            let drvs: Vec<ManifestDrv> = raws
                .iter()
                .enumerate()
                .map(|(i, (p, r))| {
                    let rank = |j: usize| (raws[j].1.3, j);
                    let inputs = (0..n)
                        .filter(|&j| r.4.get(j % r.4.len().max(1)).copied().unwrap_or(false) && rank(j) < rank(i))
                        .map(|j| j as u32)
                        .collect();
                    let outputs =
                        r.5.iter()
                            .map(|o| ManifestOutput { name: o.clone(), path: StorePath::new(r.0, o).unwrap() })
                            .collect();
                    let system = used.iter().position(|s| *s == r.2).unwrap() as u16;
                    ManifestDrv { drv: p.clone(), system, inputs, outputs }
                })
                .collect();
            let mut jobs: Vec<ManifestJob> = if n == 0 {
                vec![]
            } else {
                jobs.into_iter()
                    .map(|(d, package, version)| ManifestJob { drv: u32::from(d) % n as u32, package, version })
                    .collect()
            };
            jobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
            jobs.dedup_by(|a, b| (&a.package, a.drv) == (&b.package, b.drv));
            Manifest { store_dir: StoreDir::guix(), systems, drvs, jobs }
        },
    )
}

proptest! {
    #[test]
    fn manifest_round_trips(m in arb_manifest()) {
        prop_assert_eq!(m.validate(), Ok(()));
        let bytes = m.encode_to_vec();
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(&Manifest::decode(&bytes).unwrap(), &m);
        for (i, d) in m.drvs.iter().enumerate() {
            prop_assert_eq!(m.drv_index(&d.drv), Some(i as u32));
        }
        prop_assert_eq!(m.jobs_per_system().values().map(|n| *n as usize).sum::<usize>(), m.jobs.len());
    }

    #[test]
    fn mutated_manifests_never_panic_and_stay_canonical(m in arb_manifest(), flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4)) {
        let mut bytes = m.encode_to_vec();
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        if let Ok(d) = Manifest::decode(&bytes) {
            // Whatever decodes is valid and re-encodes to the same bytes.
            prop_assert_eq!(d.validate(), Ok(()));
            prop_assert_eq!(d.encode_to_vec(), bytes);
        }
    }

    #[test]
    fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600), prefix in any::<bool>()) {
        let mut bytes = if prefix { b"buildmesh-manifest\0\x01".to_vec() } else { vec![] };
        bytes.extend_from_slice(&tail);
        if let Ok(d) = Manifest::decode(&bytes) {
            prop_assert_eq!(d.encode_to_vec(), bytes);
        }
    }
}

#[test]
fn header_from_a_random_manifest_verifies() {
    let k = key(3);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..20 {
        let m = arb_manifest().new_tree(&mut runner).unwrap().current();
        let bytes = m.encode_to_vec();
        let Ok(h) = RevisionHeader::for_manifest(k.node_id(), 1, "guix", "master", "c0ffee", 3, &m, &bytes) else {
            // Jobs without derivations are impossible; an empty drv set has no jobs either.
            panic!("for_manifest refused {m:?}");
        };
        let h = Signed::sign(&k, &h).unwrap().verify().unwrap().into_value();
        assert_eq!(h.check_manifest(&bytes).unwrap(), m);
        assert_ne!(h, header(&k));
    }
}
