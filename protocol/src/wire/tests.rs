//! Round-trip, canonicality, mutation and domain-separation tests of the wire format and envelopes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use super::codec::{Encode, put_str};
use super::*;
use crate::hash::{HashAlgo, NixHash};
use crate::id::{ArtifactHash, JobId};
use crate::identity::NodeKey;
use crate::signed::{Envelope, SignError, Signed, SignedError};
use crate::store_path::{StoreDir, StorePath};

pub(super) fn key(i: u8) -> NodeKey {
    NodeKey::from_seed(&format!("node-{i}.mesh-1"), [i; 32]).unwrap()
}

fn arb_key() -> impl Strategy<Value = NodeKey> {
    (0u8..8).prop_map(key)
}

fn arb_store_dir() -> impl Strategy<Value = StoreDir> {
    prop_oneof![Just(StoreDir::nix()), Just(StoreDir::guix()), Just(StoreDir::new("/tmp/x-store").unwrap())]
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9+._?=-]{0,40}"
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), arb_name()).prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn arb_drv() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z0-9][a-z0-9.-]{0,20}").prop_map(|(d, n)| StorePath::new(d, &format!("{n}.drv")).unwrap())
}

fn arb_systems() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set("[a-z0-9_]{1,8}-[a-z]{1,6}", 0..4)
}

fn arb_features() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set("[a-z0-9+._-]{1,12}", 0..4)
}

fn arb_outputs() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set("[a-z][a-z0-9]{0,6}", 0..4)
}

fn arb_hash() -> impl Strategy<Value = NixHash> {
    (0usize..4, vec(any::<u8>(), 64)).prop_map(|(a, bytes)| {
        let algo = HashAlgo::ALL[a];
        NixHash::new(algo, bytes[..algo.digest_len()].to_vec()).unwrap()
    })
}

fn arb_mode() -> impl Strategy<Value = BuildMode> {
    prop_oneof![Just(BuildMode::Native), Just(BuildMode::Emulated)]
}

prop_compose! {
    fn arb_announcement()(k in arb_key(), seq in any::<u64>(), ts in any::<u64>(), version in "[ -~]{1,20}",
        owner in "[ -~]{0,20}", native in arb_systems(), emulated in arb_systems(), features in arb_features(),
        mandatory in arb_features(), slots in 0..=super::MAX_SLOTS, load in any::<u32>(),
        factor in proptest::option::of(MIN_SLOWDOWN..=MAX_SLOWDOWN), pressure in proptest::option::of("[ -~]{1,40}"))
        -> (NodeKey, Announcement) {
        let emulated: BTreeSet<String> = emulated.difference(&native).cloned().collect();
        let slowdown = factor.map(|x| emulated.iter().map(|s| (s.clone(), x)).collect()).unwrap_or_default();
        let a = Announcement { node: k.node_id(), seq, timestamp_ms: ts, version, owner, native_systems: native,
            emulated_systems: emulated, features, mandatory_features: mandatory, slots, load, slowdown,
            disk_pressure: pressure };
        (k, a)
    }
}

prop_compose! {
    pub(super) fn arb_job()(k in arb_key(), job in any::<[u8; 32]>(), at in any::<u64>(), store_dir in arb_store_dir(),
        drv in arb_drv(), outputs in arb_outputs(), system in "[a-z0-9_]{1,8}-[a-z]{1,6}", features in arb_features(),
        priority in any::<i32>(), replicas in 1u8..=MAX_REPLICAS) -> (NodeKey, JobSubmission) {
        let j = JobSubmission { job: JobId::from_bytes(job), submitter: k.node_id(), submitted_at_ms: at, store_dir,
            drv, outputs, system, required_features: features, priority, replicas };
        (k, j)
    }
}

prop_compose! {
    pub(super) fn arb_claim()(k in arb_key(), job in any::<[u8; 32]>(), store_dir in arb_store_dir(), drv in arb_drv(),
        attempt in 1u32.., at in 0u64..u64::MAX / 2, lease in 1u64..=MAX_LEASE_MS) -> (NodeKey, Claim) {
        let c = Claim { job: JobId::from_bytes(job), claimant: k.node_id(), store_dir, drv, attempt,
            claimed_at_ms: at, lease_expires_at_ms: at + lease };
        (k, c)
    }
}

prop_compose! {
    fn arb_output_parts()(path in arb_path(), nar_hash in any::<[u8; 32]>(), nar_size in 1u64..,
        references in btree_set(arb_path(), 0..5), content in any::<[u8; 32]>(), deriver in proptest::option::of(arb_drv()))
        -> (StorePath, [u8; 32], u64, BTreeSet<StorePath>, ArtifactHash, Option<StorePath>) {
        (path, nar_hash, nar_size, references, ArtifactHash::from_bytes(content), deriver)
    }
}

prop_compose! {
    fn arb_attestation()(k in arb_key(), store_dir in arb_store_dir(), drv in arb_drv(), mode in arb_mode(),
        start in 0u64..u64::MAX / 2, dur in 0u64..1_000_000,
        outs in proptest::collection::btree_map("[a-z][a-z0-9]{0,6}", arb_output_parts(), 1..4)) -> (NodeKey, Attestation) {
        let outputs: BTreeMap<String, OutputAttestation> = outs.into_iter().map(|(name, (p, h, s, r, c, d))| {
            (name, OutputAttestation::new_signed(&k, &store_dir, p, h, s, r, c, d).unwrap())
        }).collect();
        let a = Attestation { builder: k.node_id(), store_dir, drv, mode, started_at_ms: start,
            finished_at_ms: start + dur, outputs, log: None, provenance: None };
        (k, a)
    }
}

fn arb_reason() -> impl Strategy<Value = FailureReason> {
    prop_oneof![
        any::<i32>().prop_map(|code| FailureReason::BuilderExit { code }),
        any::<u8>().prop_map(|signal| FailureReason::BuilderSignal { signal }),
        any::<u64>().prop_map(|limit_ms| FailureReason::Timeout { limit_ms }),
        ("[a-z]{1,5}", arb_hash(), any::<[u8; 64]>()).prop_map(|(output, expected, b)| {
            let actual = NixHash::new(expected.algo(), b[..expected.algo().digest_len()].to_vec()).unwrap();
            FailureReason::HashMismatch { output, expected, actual }
        }),
        arb_path().prop_map(|path| FailureReason::MissingInput { path }),
        ".{0,60}".prop_map(|message| FailureReason::Executor { message }),
        ".{0,60}".prop_map(|message| FailureReason::Other { message }),
    ]
}

prop_compose! {
    fn arb_failure()(k in arb_key(), store_dir in arb_store_dir(), drv in arb_drv(), attempt in 1u32..,
        mode in arb_mode(), at in any::<u64>(), reason in arb_reason()) -> (NodeKey, BuildFailure) {
        let f = BuildFailure { builder: k.node_id(), store_dir, drv, attempt, mode, at_ms: at, reason, log: None };
        (k, f)
    }
}

prop_compose! {
    pub(super) fn arb_strike()(k in arb_key(), struck in arb_key(), job in any::<[u8; 32]>(), store_dir in arb_store_dir(),
        drv in arb_drv(), attempt in 1u32.., at in 0u64..u64::MAX / 4, lease in 2u64..=MAX_LEASE_MS,
        late in 0u64..u64::MAX / 4) -> (NodeKey, Strike) {
        let s = Strike { observer: k.node_id(), struck: struck.node_id(), job: JobId::from_bytes(job), store_dir, drv,
            attempt, claimed_at_ms: at, lease_expires_at_ms: at + lease, observed_at_ms: at + lease + late };
        (k, s)
    }
}

fn arb_message() -> impl Strategy<Value = (NodeKey, Message)> {
    prop_oneof![
        arb_announcement().prop_map(|(k, m)| (k, m.into())),
        arb_job().prop_map(|(k, m)| (k, m.into())),
        arb_claim().prop_map(|(k, m)| (k, m.into())),
        arb_attestation().prop_map(|(k, m)| (k, m.into())),
        arb_failure().prop_map(|(k, m)| (k, m.into())),
        arb_strike().prop_filter("observer = struck", |(_, s)| s.observer != s.struck).prop_map(|(k, m)| (k, m.into())),
    ]
}

/// decode(encode(x)) == x, `encoded_len` is exact, and the typed and untyped decoders agree.
fn round_trip<T: Payload + PartialEq + std::fmt::Debug + Clone + Into<Message>>(key: &NodeKey, value: &T) {
    let bytes = value.to_bytes();
    assert_eq!(bytes.len(), value.encoded_len());
    let mut r = Reader::new(&bytes);
    assert_eq!(&T::decode_payload(&mut r).unwrap(), value);
    r.finish().unwrap();
    let message: Message = value.clone().into();
    assert_eq!(Message::decode_payload(T::KIND, &bytes, 0).unwrap(), message);
    // Signed: the envelope is canonical and verifies back to the value.
    let signed = Signed::sign(key, value).unwrap();
    let wire = signed.to_bytes();
    assert_eq!(wire.len(), signed.encoded_len());
    assert_eq!(wire.len(), bytes.len() + ENVELOPE_OVERHEAD);
    let back = Signed::<T>::decode(&wire).unwrap();
    let verified = back.verify().unwrap();
    assert_eq!(verified.value(), value);
    assert_eq!(verified.signer(), &key.node_id());
    assert_eq!(verified.id(), signed.id());
    assert_eq!(verified.envelope().to_bytes(), wire);
    let any = Envelope::decode(&wire).unwrap().verify().unwrap();
    assert_eq!(any.value(), &message);
    assert_eq!(Envelope::sign(key, &message).unwrap().to_bytes(), wire, "ed25519 is deterministic");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn announcement_round_trip((k, m) in arb_announcement()) { round_trip(&k, &m); }

    #[test]
    fn job_round_trip((k, m) in arb_job()) { round_trip(&k, &m); }

    #[test]
    fn claim_round_trip((k, m) in arb_claim()) { round_trip(&k, &m); }

    #[test]
    fn attestation_round_trip((k, m) in arb_attestation()) { round_trip(&k, &m); }

    #[test]
    fn failure_round_trip((k, m) in arb_failure()) { round_trip(&k, &m); }

    #[test]
    fn strike_round_trip((k, m) in arb_strike().prop_filter("observer = struck", |(_, s)| s.observer != s.struck)) {
        round_trip(&k, &m);
    }
}

fn rejected(bytes: &[u8]) -> bool {
    Envelope::decode(bytes).map(|e| e.verify()).map_or(true, |v| v.is_err())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every single-byte change (one random non-zero XOR per position), every truncation and every
    /// extension of a signed message is rejected.
    #[test]
    fn every_mutation_is_rejected((k, m) in arb_message(), xors in vec(1u8..=255, 64), tail in vec(any::<u8>(), 1..5)) {
        let wire = Envelope::sign(&k, &m).unwrap().to_bytes();
        prop_assert!(!rejected(&wire));
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= xors[i % xors.len()];
            prop_assert!(rejected(&bad), "flip at {i} accepted");
        }
        for len in 0..wire.len() {
            prop_assert!(rejected(&wire[..len]), "truncation to {len} accepted");
        }
        let mut longer = wire.clone();
        longer.extend_from_slice(&tail);
        prop_assert!(rejected(&longer));
    }

    /// A signature made under one kind never verifies under another, even on the same bytes.
    #[test]
    fn kinds_are_domain_separated((k, m) in arb_message()) {
        let wire = Envelope::sign(&k, &m).unwrap().to_bytes();
        for other in Kind::ALL {
            if other == m.kind() {
                continue;
            }
            let mut bad = wire.clone();
            bad[1] = other.tag();
            let env = Envelope::decode(&bad).unwrap();
            prop_assert_eq!(env.verify().unwrap_err(), SignedError::BadSignature { kind: other, signer: k.node_id() });
        }
    }
}

/// Exhaustive: all 255 changes of every byte of one signed claim.
#[test]
fn every_byte_value_of_a_claim_is_rejected() {
    let k = key(1);
    let claim = Claim {
        job: JobId::from_bytes([4; 32]),
        claimant: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::from_basename("0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv").unwrap(),
        attempt: 1,
        claimed_at_ms: 1_700_000_000_000,
        lease_expires_at_ms: 1_700_000_600_000,
    };
    let wire = Signed::sign(&k, &claim).unwrap().to_bytes();
    for i in 0..wire.len() {
        for x in 1..=255u8 {
            let mut bad = wire.clone();
            bad[i] ^= x;
            assert!(rejected(&bad), "byte {i} ^ {x:#x} accepted");
        }
    }
}

#[test]
fn oversize_is_rejected_before_decoding() {
    let junk = vec![PROTOCOL_VERSION; MAX_MESSAGE_SIZE + 1];
    assert_eq!(
        Envelope::decode(&junk),
        Err(DecodeError::TooLarge { len: MAX_MESSAGE_SIZE + 1, max: MAX_MESSAGE_SIZE })
    );
    assert!(matches!(Message::decode_payload(Kind::Claim, &junk, 0), Err(DecodeError::TooLarge { .. })));
    // A message too large to sign is refused by the signer.
    let k = key(2);
    let sd = StoreDir::nix();
    let refs: BTreeSet<StorePath> = (0..1500u32)
        .map(|i| StorePath::new([(i % 251) as u8; 20], &format!("ref-{i:05}-{}", "x".repeat(20))).unwrap())
        .collect();
    let out = OutputAttestation::new_signed(
        &k,
        &sd,
        StorePath::new([1; 20], "big").unwrap(),
        [0; 32],
        1,
        refs,
        ArtifactHash::of(b""),
        None,
    )
    .unwrap();
    let a = Attestation {
        builder: k.node_id(),
        store_dir: sd,
        drv: StorePath::new([2; 20], "big.drv").unwrap(),
        mode: BuildMode::Native,
        started_at_ms: 0,
        finished_at_ms: 0,
        outputs: [("out".to_string(), out)].into_iter().collect(),
        log: None,
        provenance: None,
    };
    assert!(matches!(Signed::sign(&k, &a), Err(SignError::TooLarge { .. })));
}

pub(super) fn claim_for(k: &NodeKey) -> Claim {
    Claim {
        job: JobId::from_bytes([1; 32]),
        claimant: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([3; 20], "x.drv").unwrap(),
        attempt: 2,
        claimed_at_ms: 10,
        lease_expires_at_ms: 20,
    }
}

#[test]
fn author_must_be_signer() {
    let (a, b) = (key(1), key(2));
    let claim = claim_for(&b);
    assert!(matches!(Signed::sign(&a, &claim), Err(SignError::NotAuthor { .. })));
    let env = Envelope::sign_raw_payload(&a, Kind::Claim, claim.to_bytes());
    assert!(matches!(env.verify(), Err(SignedError::AuthorMismatch { .. })));
    assert!(matches!(env.verify_as::<Claim>(), Err(SignedError::AuthorMismatch { .. })));
    assert!(matches!(
        env.verify_as::<Announcement>(),
        Err(SignedError::Decode(DecodeError::WrongKind { expected: Kind::Announcement, found: Kind::Claim }))
    ));
}

#[test]
fn attestation_nix_signatures_are_checked() {
    let (a, b) = (key(1), key(2));
    let sd = StoreDir::nix();
    let out = |signer: &NodeKey| {
        OutputAttestation::new_signed(
            signer,
            &sd,
            StorePath::new([1; 20], "hello").unwrap(),
            [7; 32],
            128,
            BTreeSet::new(),
            ArtifactHash::of(b"nar"),
            None,
        )
        .unwrap()
    };
    let mut att = Attestation {
        builder: a.node_id(),
        store_dir: sd.clone(),
        drv: StorePath::new([2; 20], "hello.drv").unwrap(),
        mode: BuildMode::Emulated,
        started_at_ms: 5,
        finished_at_ms: 6,
        outputs: [("out".to_string(), out(&a))].into_iter().collect(),
        log: None,
        provenance: None,
    };
    let ok = Signed::sign(&a, &att).unwrap().verify().unwrap();
    // The narinfo the gateway would serve verifies with the builder's Nix key.
    let narinfo = ok.outputs["out"].to_narinfo(&sd);
    let v = narinfo.verify(&[a.nix_public_key()]).unwrap();
    assert!(v.is_valid(), "{v:?}");
    assert!(!narinfo.verify(&[b.nix_public_key()]).unwrap().is_valid());
    // An output signed (for Nix) by another key is refused at signing and at verification.
    att.outputs.insert("out".to_string(), out(&b));
    assert!(matches!(Signed::sign(&a, &att), Err(SignError::Check { .. })));
    let env = Envelope::sign_raw_payload(&a, Kind::Attestation, att.to_bytes());
    assert!(matches!(env.verify(), Err(SignedError::Check { .. })));
}

/// Decoding names the field and offset of what is wrong.
#[test]
fn decode_errors_are_typed() {
    let k = key(3);
    let claim = claim_for(&k);
    let good = claim.to_bytes();
    // Lease that ends before the claim.
    let mut c = claim.clone();
    c.lease_expires_at_ms = 5;
    let err = Claim::decode_payload(&mut Reader::new(&c.to_bytes())).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidValue { field: "claim.lease_expires_at_ms", .. }), "{err}");
    // A drv that is not a .drv.
    let mut c = claim.clone();
    c.drv = StorePath::new([3; 20], "x").unwrap();
    let err = Claim::decode_payload(&mut Reader::new(&c.to_bytes())).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidValue { field: "claim.drv", offset: 78, .. }), "{err}");
    // A store path name with a bad character, patched into the bytes.
    let mut bad = good.clone();
    let pos = bad.windows(5).position(|w| w == b"x.drv").unwrap();
    bad[pos] = b'/';
    let err = Claim::decode_payload(&mut Reader::new(&bad)).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidStorePath { field: "claim.drv", .. }), "{err}");
    // Unsupported version, unknown kind.
    let mut wire = Signed::sign(&k, &claim).unwrap().to_bytes();
    wire[0] = 2;
    assert_eq!(Envelope::decode(&wire), Err(DecodeError::UnsupportedVersion { found: 2, supported: 1 }));
    wire[0] = 1;
    wire[1] = 99;
    assert_eq!(Envelope::decode(&wire), Err(DecodeError::UnknownKind { tag: 99, offset: 1 }));
    // Zero replicas.
    let job = JobSubmission {
        job: JobId::from_bytes([0; 32]),
        submitter: k.node_id(),
        submitted_at_ms: 0,
        store_dir: StoreDir::nix(),
        drv: StorePath::new([3; 20], "x.drv").unwrap(),
        outputs: BTreeSet::new(),
        system: "x86_64-linux".into(),
        required_features: BTreeSet::new(),
        priority: 0,
        replicas: 0,
    };
    assert!(matches!(Signed::sign(&k, &job), Err(SignError::Invalid { .. })));
    // An unsorted set (hand-encoded) is not canonical.
    let mut a = Vec::new();
    k.node_id().encode(&mut a);
    a.extend_from_slice(&[0; 16]);
    put_str(&mut a, "v");
    put_str(&mut a, "");
    a.extend_from_slice(&2u32.to_le_bytes());
    put_str(&mut a, "z-linux");
    put_str(&mut a, "a-linux");
    let err = Announcement::decode_payload(&mut Reader::new(&a)).unwrap_err();
    assert!(matches!(err, DecodeError::NotCanonical { field: "announcement.native_systems", .. }), "{err}");
    // Native and emulated must be disjoint.
    let ann = Announcement {
        node: k.node_id(),
        seq: 1,
        timestamp_ms: 1,
        version: "buildmesh 0.1.0".into(),
        owner: "".into(),
        native_systems: ["x86_64-linux".to_string()].into(),
        emulated_systems: ["x86_64-linux".to_string()].into(),
        features: BTreeSet::new(),
        mandatory_features: BTreeSet::new(),
        slots: 1,
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    };
    assert!(matches!(Signed::sign(&k, &ann), Err(SignError::Invalid { .. })));
    // More slots than any machine has (the placement weight): refused, the field named.
    let ann = Announcement { emulated_systems: BTreeSet::new(), slots: MAX_SLOTS + 1, ..ann };
    assert!(matches!(Signed::sign(&k, &ann), Err(SignError::Invalid { .. })));
    let err = Announcement::decode_payload(&mut Reader::new(&ann.to_bytes())).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidValue { field: "announcement.slots", .. }), "{err}");
    let ok = Announcement { slots: MAX_SLOTS, ..ann };
    assert_eq!(Announcement::decode_payload(&mut Reader::new(&ok.to_bytes())).unwrap().slots, MAX_SLOTS);
    // A bad failure-reason tag.
    let f = BuildFailure {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([3; 20], "x.drv").unwrap(),
        attempt: 1,
        mode: BuildMode::Native,
        at_ms: 0,
        reason: FailureReason::Timeout { limit_ms: 1 },
        log: None,
    };
    let mut b = f.to_bytes();
    let tag_pos = b.len() - 9;
    b[tag_pos] = 7;
    let err = BuildFailure::decode_payload(&mut Reader::new(&b)).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidTag { field: "build_failure.reason", tag: 7, .. }), "{err}");
}

#[test]
fn message_ids_ignore_nothing_but_the_signature() {
    let k = key(4);
    let c = claim_for(&k);
    let s1 = Signed::sign(&k, &c).unwrap();
    let mut c2 = c.clone();
    c2.attempt = 3;
    let s2 = Signed::sign(&k, &c2).unwrap();
    assert_ne!(s1.id(), s2.id());
    assert_eq!(s1.id(), Signed::<Claim>::decode(&s1.to_bytes()).unwrap().id());
}

/// The log digest (issue 14) is an extension appended at the end: a message without it keeps the
/// encoding it always had, one with it is that encoding plus `1 ‖ sha256 ‖ size`, and both verify
/// and round-trip; a repeated or unknown extension tag is refused, naming the field.
#[test]
fn log_digest_is_an_optional_trailing_extension() {
    let k = key(5);
    let f = BuildFailure {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([3; 20], "x.drv").unwrap(),
        attempt: 1,
        mode: BuildMode::Native,
        at_ms: 7,
        reason: FailureReason::BuilderExit { code: 2 },
        log: None,
    };
    let old = f.to_bytes();
    let digest = LogDigest::of(b"building\nfailed\n");
    assert!(digest.matches(b"building\nfailed\n"));
    assert!(!digest.matches(b"building\nworked\n"));
    let with = BuildFailure { log: Some(digest), ..f.clone() };
    let new = with.to_bytes();
    assert_eq!(&new[..old.len()], &old[..], "the older fields keep their encoding");
    assert_eq!(new.len(), old.len() + 1 + 32 + 8);
    assert_eq!(new[old.len()], LogDigest::TAG);
    assert_eq!(BuildFailure::decode_payload(&mut Reader::new(&old)).unwrap(), f);
    assert_eq!(BuildFailure::decode_payload(&mut Reader::new(&new)).unwrap(), with);
    let signed = Signed::sign(&k, &with).unwrap().verify().unwrap();
    assert_eq!(signed.log, Some(digest));

    let mut twice = new.clone();
    twice.extend_from_slice(&new[old.len()..]);
    let err = BuildFailure::decode_payload(&mut Reader::new(&twice)).unwrap_err();
    assert!(matches!(err, DecodeError::NotCanonical { field: "build_failure.extensions", .. }), "{err}");
    let mut unknown = old.clone();
    unknown.push(9);
    let err = BuildFailure::decode_payload(&mut Reader::new(&unknown)).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidTag { field: "build_failure.extensions", tag: 9, .. }), "{err}");
    let truncated = &new[..new.len() - 1];
    assert!(BuildFailure::decode_payload(&mut Reader::new(truncated)).is_err());

    let a = Attestation {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([4; 20], "y.drv").unwrap(),
        mode: BuildMode::Native,
        started_at_ms: 1,
        finished_at_ms: 2,
        outputs: BTreeMap::from([("out".to_string(), {
            let path = StorePath::new([5; 20], "y").unwrap();
            OutputAttestation::new_signed(
                &k,
                &StoreDir::nix(),
                path,
                [6; 32],
                9,
                BTreeSet::new(),
                ArtifactHash::from_bytes([7; 32]),
                None,
            )
            .unwrap()
        })]),
        log: None,
        provenance: None,
    };
    let old = a.to_bytes();
    let with = Attestation { log: Some(digest), ..a.clone() };
    let new = with.to_bytes();
    assert_eq!(&new[..old.len()], &old[..]);
    assert_eq!(Attestation::decode_payload(&mut Reader::new(&old)).unwrap(), a);
    assert_eq!(Signed::sign(&k, &with).unwrap().verify().unwrap().log, Some(digest));
}

/// A `/gnu/store` attestation with the builder's Guix signatures (appended after the outputs)
/// round-trips through signing and verification; without them the encoding is the old one; an
/// empty trailer is not canonical; a wrong Guix signature makes the attestation invalid.
#[test]
fn guix_signatures_follow_the_outputs_and_are_checked() {
    let k = key(4);
    let sd = StoreDir::new("/gnu/store").unwrap();
    let mk = |sd: &StoreDir, name: &str| {
        OutputAttestation::new_signed(
            &k,
            sd,
            StorePath::new([5; 20], name).unwrap(),
            [1; 32],
            9,
            BTreeSet::new(),
            ArtifactHash::of(b"n"),
            None,
        )
        .unwrap()
    };
    let att = |sd: &StoreDir| Attestation {
        builder: k.node_id(),
        store_dir: sd.clone(),
        drv: StorePath::new([2; 20], "g.drv").unwrap(),
        mode: BuildMode::Native,
        started_at_ms: 1,
        finished_at_ms: 2,
        outputs: [("dev".to_string(), mk(sd, "g-dev")), ("out".to_string(), mk(sd, "g"))].into_iter().collect(),
        log: None,
        provenance: None,
    };
    let a = att(&sd);
    assert!(a.outputs.values().all(|o| o.guix_signature.is_some()));
    let signed = Signed::sign(&k, &a).unwrap();
    let back = Signed::<Attestation>::decode(&signed.to_bytes()).unwrap().verify().unwrap();
    assert_eq!(back.value(), &a);
    // Without Guix signatures: exactly the encoding before the field existed (no trailer).
    let mut plain = a.clone();
    plain.outputs.values_mut().for_each(|o| o.guix_signature = None);
    let with = a.to_bytes();
    let without = plain.to_bytes();
    assert!(with.starts_with(&without) && with.len() > without.len());
    // A trailer with no signature in it is not canonical.
    let mut empty = without.clone();
    empty.extend_from_slice(&[2, 0, 0]);
    let mut r = Reader::new(&empty);
    assert!(matches!(Attestation::decode_payload(&mut r), Err(DecodeError::NotCanonical { .. })));
    // Another output's signature in this output's place: refused by the check.
    let mut swapped = a.clone();
    let dev = swapped.outputs["dev"].guix_signature.clone();
    swapped.outputs.get_mut("out").unwrap().guix_signature = dev;
    let e = swapped.check().unwrap_err();
    assert!(e.contains("output out") && e.contains("Guix"), "{e}");
}
