//! Tests of the revision header: field rules, encoding, signing.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::*;
use crate::identity::NodeKey;
use crate::signed::{Envelope, SignError, Signed, SignedError};
use crate::wire::{DecodeError, Encode, Kind, Message, Payload, Reader};

pub(super) fn key(i: u8) -> NodeKey {
    NodeKey::from_seed(&format!("node-{i}.mesh-1"), [i; 32]).unwrap()
}

pub(super) fn header(k: &NodeKey) -> RevisionHeader {
    RevisionHeader {
        submitter: k.node_id(),
        created_at_ms: 1_765_000_000_000,
        store_dir: StoreDir::nix(),
        channel: "nixpkgs".into(),
        branch: "release-24.05".into(),
        commit: "4d1b2c3e".into(),
        manifest_hash: [7; 32],
        manifest_size: 1234,
        drv_count: 10,
        jobs_per_system: BTreeMap::from([("aarch64-linux".into(), 3), ("x86_64-linux".into(), 4)]),
        replicas: 2,
    }
}

fn decode(bytes: &[u8]) -> Result<RevisionHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let h = RevisionHeader::decode_payload(&mut r)?;
    r.finish()?;
    Ok(h)
}

fn rejected(h: &RevisionHeader) -> String {
    let err = decode(&h.to_bytes()).unwrap_err().to_string();
    assert_eq!(h.validate().unwrap_err().to_string(), err);
    assert!(matches!(Signed::sign(&key(1), h), Err(SignError::Invalid { kind: Kind::Revision, .. })));
    err
}

#[test]
fn kind_revision_has_tag_7_and_its_own_domain() {
    assert_eq!(Kind::Revision.tag(), 7);
    assert_eq!(Kind::from_tag(7), Some(Kind::Revision));
    assert_eq!(Kind::Revision.name(), "revision");
    assert_eq!(Kind::Revision.domain(), b"buildmesh/v1/revision\0");
    assert_eq!(<RevisionHeader as Payload>::KIND, Kind::Revision);
}

#[test]
fn header_signs_and_verifies() {
    let k = key(1);
    let h = header(&k);
    assert_eq!(h.validate(), Ok(()));
    let signed = Signed::sign(&k, &h).unwrap();
    let wire = signed.to_bytes();
    let verified = Signed::<RevisionHeader>::decode(&wire).unwrap().verify().unwrap();
    assert_eq!(verified.value(), &h);
    assert_eq!(verified.signer(), &k.node_id());
    assert_eq!(verified.id(), signed.id());
    assert_eq!(h.id().to_string(), "nixpkgs@4d1b2c3e");
    assert_eq!(h.job_count(), 7);
    // Through the untyped envelope as well.
    let env = Envelope::decode(&wire).unwrap();
    assert_eq!(env.kind(), Kind::Revision);
    assert_eq!(env.verify_as::<RevisionHeader>().unwrap().value(), &h);
    // Not a coordination message: `Envelope::verify` (which decodes a `Message`) refuses it.
    let err = env.verify().unwrap_err().to_string();
    assert!(err.contains("revision header is not a coordination message"), "{err}");
    let err = Message::decode_payload(Kind::Revision, &h.to_bytes(), 0).unwrap_err().to_string();
    assert!(err.contains("verify it as a `RevisionHeader`"), "{err}");
}

#[test]
fn header_is_signed_by_its_submitter_only() {
    let h = header(&key(1));
    assert!(matches!(Signed::sign(&key(2), &h), Err(SignError::NotAuthor { kind: Kind::Revision, .. })));
    // A header signed by another key (forged raw) is refused at verification.
    let forged = Envelope::sign_raw_payload(&key(2), Kind::Revision, h.to_bytes());
    assert!(matches!(forged.verify_as::<RevisionHeader>(), Err(SignedError::AuthorMismatch { .. })));
    // A signature under another kind's domain does not verify as a revision.
    let mut wire = Signed::sign(&key(1), &h).unwrap().to_bytes();
    wire[1] = Kind::JobSubmission.tag();
    let env = Envelope::decode(&wire).unwrap();
    assert!(matches!(env.verify(), Err(SignedError::BadSignature { .. })));
    assert!(matches!(env.verify_as::<RevisionHeader>(), Err(SignedError::Decode(DecodeError::WrongKind { .. }))));
}

#[test]
fn header_field_rules() {
    let k = key(1);
    let with = |f: &dyn Fn(&mut RevisionHeader)| {
        let mut h = header(&k);
        f(&mut h);
        h
    };
    for (h, needle) in [
        (with(&|h| h.channel = String::new()), "revision.channel"),
        (with(&|h| h.channel = "a".repeat(65)), "`revision.channel` at offset 54 has length 65, the limit is 64"),
        (with(&|h| h.channel = "nix@pkgs".into()), "contains '@'"),
        (with(&|h| h.channel = "nix:pkgs".into()), "contains ':'"),
        (with(&|h| h.channel = "nixpkgs/x".into()), "revision.channel"),
        (with(&|h| h.branch = "/master".into()), "must not start with '/'"),
        (with(&|h| h.branch = "a/../b".into()), "must not contain \"..\""),
        (with(&|h| h.branch = "a b".into()), "revision.branch"),
        (with(&|h| h.branch = "b".repeat(129)), "the limit is 128"),
        (with(&|h| h.branch = String::new()), "revision.branch"),
        (with(&|h| h.commit = "abc@1".into()), "revision.commit"),
        (with(&|h| h.commit = "abc/1".into()), "revision.commit"),
        (with(&|h| h.commit = "c".repeat(65)), "`revision.commit`"),
        (with(&|h| h.commit = String::new()), "revision.commit"),
        (with(&|h| h.replicas = 0), "revision.replicas"),
        (with(&|h| h.replicas = 17), "outside 1..=16"),
        (with(&|h| h.manifest_size = MAX_MANIFEST_SIZE as u64 + 1), "revision.manifest_size"),
        (with(&|h| h.manifest_size = 3), "revision.manifest_size"),
        (with(&|h| h.drv_count = MAX_MANIFEST_DRVS as u32 + 1), "revision.drv_count"),
        (with(&|h| h.drv_count = 0), "jobs without derivations"),
        (with(&|h| _ = h.jobs_per_system.insert("x86_64-linux".into(), 0)), "has 0 jobs"),
        (with(&|h| _ = h.jobs_per_system.insert("x86 64".into(), 1)), "revision.jobs_per_system"),
        (with(&|h| _ = h.jobs_per_system.insert("x86_64-linux".into(), MAX_MANIFEST_JOBS as u32)), "jobs in all"),
        (with(&|h| h.jobs_per_system = (0..65).map(|i| (format!("s{i:02}-linux"), 1)).collect()), "limit is 64"),
    ] {
        let err = rejected(&h);
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    // The edges that are allowed.
    for h in [
        with(&|h| h.channel = "a".repeat(64)),
        with(&|h| h.channel = "guix+extra_1.x-y".into()),
        with(&|h| h.branch = "wip/feature.x+y_z-1".into()),
        with(&|h| h.branch = "b".repeat(128)),
        with(&|h| h.commit = "v1.2_rc-3".into()),
        with(&|h| h.replicas = 16),
        with(&|h| h.manifest_size = MAX_MANIFEST_SIZE as u64),
        with(&|h| h.manifest_size = MIN_MANIFEST_SIZE as u64),
        with(&|h| h.jobs_per_system.clear()),
        with(&|h| h.jobs_per_system = (0..64).map(|i| (format!("s{i:02}-linux"), 1)).collect()),
    ] {
        assert_eq!(h.validate(), Ok(()), "{h:?}");
        Signed::sign(&k, &h).unwrap().verify().unwrap();
    }
}

#[test]
fn header_systems_must_be_sorted() {
    let h = header(&key(1));
    let mut bytes = h.to_bytes();
    // Swap the two system entries ("aarch64-linux" and "x86_64-linux" are not the same length, so
    // build the unsorted encoding by hand).
    let good = h.to_bytes();
    let a = b"aarch64-linux";
    let pos = good.windows(a.len()).position(|w| w == a).unwrap() - 4;
    let mut swapped = Vec::new();
    for (s, n) in [("x86_64-linux", 4u32), ("aarch64-linux", 3)] {
        swapped.extend_from_slice(&(s.len() as u32).to_le_bytes());
        swapped.extend_from_slice(s.as_bytes());
        swapped.extend_from_slice(&n.to_le_bytes());
    }
    bytes.splice(pos..pos + swapped.len(), swapped);
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::NotCanonical { field: "revision.jobs_per_system", .. }), "{err}");
}

fn arb_header() -> impl Strategy<Value = (NodeKey, RevisionHeader)> {
    (
        0u8..4,
        any::<u64>(),
        "[A-Za-z0-9_.+-]{1,64}",
        "[A-Za-z0-9_+-][A-Za-z0-9_+-]{0,20}(/[A-Za-z0-9_+-]{1,20}){0,3}",
        "[A-Za-z0-9_.-]{1,64}",
        any::<[u8; 32]>(),
        (MIN_MANIFEST_SIZE as u64)..=(MAX_MANIFEST_SIZE as u64),
        1u32..=(MAX_MANIFEST_DRVS as u32),
        proptest::collection::btree_map("[a-z0-9_]{1,8}-[a-z]{1,6}", 1u32..10_000, 0..8),
        1u8..=16,
    )
        .prop_map(|(k, t, channel, branch, commit, hash, size, drvs, jobs, replicas)| {
            let k = key(k);
            let h = RevisionHeader {
                submitter: k.node_id(),
                created_at_ms: t,
                store_dir: StoreDir::guix(),
                channel,
                branch,
                commit,
                manifest_hash: hash,
                manifest_size: size,
                drv_count: drvs,
                jobs_per_system: jobs,
                replicas,
            };
            (k, h)
        })
}

proptest! {
    #[test]
    fn header_round_trips((k, h) in arb_header()) {
        let bytes = h.to_bytes();
        prop_assert_eq!(bytes.len(), h.encoded_len());
        prop_assert_eq!(&decode(&bytes).unwrap(), &h);
        let verified = Signed::sign(&k, &h).unwrap().verify().unwrap();
        prop_assert_eq!(verified.value(), &h);
        // Every truncation is refused.
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn header_decode_of_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(h) = decode(&bytes) {
            prop_assert_eq!(h.to_bytes(), bytes);
        }
    }
}
