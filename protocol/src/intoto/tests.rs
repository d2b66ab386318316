//! The builder's provenance: made, carried and checked; every reason to refuse one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::id::ArtifactHash;
use crate::signed::{Signed, SignedError};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::codec::{DecodeError, Encode as _, Reader};
use crate::wire::{OutputAttestation, Payload as _};

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&format!("node-{n}"), [n; 32]).unwrap()
}

fn output(k: &NodeKey, name: &str, hash: u8) -> OutputAttestation {
    let path = StorePath::new([hash; 20], name).unwrap();
    let drv = StorePath::new([4; 20], "p.drv").unwrap();
    OutputAttestation::new_signed(
        k,
        &StoreDir::nix(),
        path,
        [hash; 32],
        9,
        BTreeSet::new(),
        ArtifactHash::from_bytes([7; 32]),
        Some(drv),
    )
    .unwrap()
}

fn attestation(k: &NodeKey) -> Attestation {
    Attestation {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([4; 20], "p.drv").unwrap(),
        mode: BuildMode::Native,
        started_at_ms: 1_796_584_800_000,
        finished_at_ms: 1_796_584_801_500,
        outputs: BTreeMap::from([("dev".to_string(), output(k, "p-dev", 5)), ("out".to_string(), output(k, "p", 6))]),
        log: None,
        provenance: None,
    }
}

fn drv(inputs: usize) -> Derivation {
    Derivation {
        input_drvs: (0..inputs)
            .map(|i| (StorePath::new([(i % 200) as u8 + 1; 20], &format!("in-{i}.drv")).unwrap(), BTreeSet::new()))
            .collect(),
        input_srcs: BTreeSet::from([StorePath::new([9; 20], "builder.sh").unwrap()]),
        system: b"x86_64-linux".to_vec(),
        ..Derivation::default()
    }
}

/// `st` as the payload of a provenance signed by `k` (whatever it says).
fn signed_by(k: &NodeKey, st: &Statement) -> Provenance {
    let payload = st.to_bytes();
    Provenance { signature: *k.sign_nix(&pae(PAYLOAD_TYPE, &payload)).bytes(), payload }
}

fn statement_of(a: &Attestation) -> Statement {
    Statement::of(a, Some(&drv(2)), &builder_id(a).unwrap(), None)
}

#[test]
fn a_builders_provenance_travels_in_the_attestation_and_verifies() {
    let k = key(1);
    let mut a = attestation(&k);
    let plain = a.to_bytes();
    a.provenance = Provenance::sign(&k, &a, Some(&drv(2)));
    let p = a.provenance.clone().unwrap();
    // The statement names the outputs, their NarHashes, the .drv, the builder and the inputs.
    let st = p.verify(&a).unwrap();
    assert_eq!(st.subject.len(), 2);
    assert_eq!(st.subject[1].name, StoreDir::nix().display(&a.outputs["out"].path));
    assert_eq!(st.subject[1].digest.sha256, hex::encode([6; 32]));
    assert_eq!(st.predicate.run_details.builder.id, k.nix_public_key().to_string());
    assert_eq!(st.predicate.build_definition.resolved_dependencies.len(), 3);
    assert_eq!(st.predicate.build_definition.internal_parameters.system.as_deref(), Some("x86_64-linux"));
    assert_eq!(st.predicate.run_details.metadata.started_on, "2026-12-06T19:20:00.000Z");
    assert!(st.predicate.run_details.metadata.invocation_id.is_none());
    // Deterministic: the same attestation and .drv give the same bytes.
    assert_eq!(Provenance::sign(&k, &a, Some(&drv(2))).unwrap().payload, p.payload);
    // The extension follows the old encoding, which is unchanged.
    let bytes = a.to_bytes();
    assert_eq!(&bytes[..plain.len()], &plain[..]);
    assert_eq!(Attestation::decode_payload(&mut Reader::new(&bytes)).unwrap(), a);
    let v = Signed::sign(&k, &a).unwrap().verify().unwrap();
    assert_eq!(v.provenance.as_ref(), Some(&p));
    // An independent check of the DSSE signature: ed25519 over the PAE under the builder's key.
    let vk = ed25519_dalek::VerifyingKey::from_bytes(k.node_id().as_bytes()).unwrap();
    let pae =
        [b"DSSEv1 28 application/vnd.in-toto+json ".as_slice(), p.payload.len().to_string().as_bytes(), b" "].concat();
    let msg = [pae.as_slice(), &p.payload].concat();
    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&p.signature)).unwrap();
}

#[test]
fn a_large_statement_drops_its_dependencies_and_says_how_many() {
    let k = key(1);
    let mut a = attestation(&k);
    let big = drv(400);
    assert!(Statement::of(&a, Some(&big), "x", None).to_bytes().len() > MAX_STATEMENT_LEN);
    a.provenance = Provenance::sign(&k, &a, Some(&big));
    let st = a.provenance.as_ref().unwrap().verify(&a).unwrap();
    assert!(st.predicate.build_definition.resolved_dependencies.is_empty());
    assert_eq!(st.predicate.build_definition.internal_parameters.resolved_dependencies_omitted, Some(401));
    Signed::sign(&k, &a).unwrap().verify().unwrap();
}

/// Each way a provenance can be wrong, and the error that names it.
#[test]
fn every_wrong_provenance_is_refused_with_its_reason() {
    let (k, other) = (key(1), key(2));
    let a = attestation(&k);
    let good = statement_of(&a);
    let refuse = |p: Provenance| p.verify(&a).unwrap_err();
    let field = |e: ProvenanceError| match e {
        ProvenanceError::Field { field, .. } => field,
        e => panic!("not a field error: {e}"),
    };

    // Signed by another key (its statement otherwise right), or altered after signing.
    assert_eq!(refuse(signed_by(&other, &good)), ProvenanceError::BadSignature);
    let mut altered = signed_by(&k, &good);
    altered.payload[20] ^= 1;
    assert_eq!(refuse(altered), ProvenanceError::BadSignature);
    // Too large: refused before the signature or JSON are looked at.
    let huge = Provenance { payload: vec![b' '; MAX_STATEMENT_LEN + 1], signature: [0; 64] };
    assert!(matches!(refuse(huge), ProvenanceError::TooLarge { .. }));
    // Not a statement (signed correctly).
    let junk = Provenance {
        payload: b"{\"_type\":".to_vec(),
        signature: *k.sign_nix(&pae(PAYLOAD_TYPE, b"{\"_type\":")).bytes(),
    };
    assert!(matches!(refuse(junk), ProvenanceError::NotAStatement(_)));

    let with = |f: &dyn Fn(&mut Statement)| {
        let mut st = good.clone();
        f(&mut st);
        refuse(signed_by(&k, &st))
    };
    assert_eq!(field(with(&|s| s.type_ = "https://in-toto.io/Statement/v0.1".into())), "_type");
    assert_eq!(field(with(&|s| s.predicate_type = "https://slsa.dev/provenance/v0.2".into())), "predicateType");
    assert_eq!(field(with(&|s| s.predicate.build_definition.build_type = "other".into())), "buildType");
    let other_drv = StoreDir::nix().display(&StorePath::new([8; 20], "q.drv").unwrap());
    assert_eq!(
        field(with(&|s| s.predicate.build_definition.external_parameters.derivation = other_drv.clone())),
        "externalParameters.derivation"
    );
    assert_eq!(
        field(with(&|s| s.predicate.build_definition.internal_parameters.emulated = true)),
        "internalParameters.emulated"
    );
    // The builder id of another key, in a statement the builder signed.
    let other_id = other.nix_public_key().to_string();
    assert_eq!(field(with(&|s| s.predicate.run_details.builder.id = other_id.clone())), "runDetails.builder.id");
    assert_eq!(
        field(with(&|s| s.predicate.run_details.metadata.finished_on = rfc3339_ms(0))),
        "runDetails.metadata.finishedOn"
    );
    assert_eq!(
        field(with(&|s| s.predicate.run_details.metadata.started_on = rfc3339_ms(0))),
        "runDetails.metadata.startedOn"
    );

    // Subjects: a NarHash swapped, two outputs' hashes exchanged, one missing, one extra, one twice.
    let subjects = |f: &dyn Fn(&mut Vec<Subject>)| with(&|s| f(&mut s.subject));
    let is_subjects = |e: ProvenanceError| assert!(matches!(e, ProvenanceError::Subjects(_)), "{e}");
    is_subjects(subjects(&|v| v[1].digest.sha256 = hex::encode([0xee; 32])));
    is_subjects(subjects(&|v| {
        let d = v[0].digest.clone();
        v[0].digest = v[1].digest.clone();
        v[1].digest = d;
    }));
    is_subjects(subjects(&|v| {
        v.pop();
    }));
    is_subjects(subjects(&|v| v.push(Subject { name: "/nix/store/x".into(), digest: v[0].digest.clone() })));
    is_subjects(subjects(&|v| v.push(v[0].clone())));
    // A second digest algorithm in a subject is not a buildmesh statement.
    let mut json: serde_json::Value = serde_json::from_slice(&good.to_bytes()).unwrap();
    json["subject"][0]["digest"]["sha512"] = "00".into();
    let payload = serde_json::to_vec(&json).unwrap();
    let p = Provenance { signature: *k.sign_nix(&pae(PAYLOAD_TYPE, &payload)).bytes(), payload };
    assert!(matches!(refuse(p), ProvenanceError::NotAStatement(_)));

    // The good one passes.
    signed_by(&k, &good).verify(&a).unwrap();
}

/// A wrong provenance makes the whole attestation invalid; an oversized one is refused by the
/// decoder before its bytes are read.
#[test]
fn an_attestation_with_a_wrong_provenance_is_invalid() {
    let (k, other) = (key(1), key(2));
    let mut a = attestation(&k);
    a.provenance = Some(signed_by(&other, &statement_of(&a)));
    assert!(Signed::sign(&k, &a).is_err(), "a builder cannot sign it by mistake");
    let env = crate::signed::Envelope::sign_raw_payload(&k, crate::wire::Kind::Attestation, a.to_bytes());
    let err = env.verify_as::<Attestation>().unwrap_err();
    assert!(matches!(&err, SignedError::Check { reason, .. } if reason.contains("DSSE")), "{err}");

    a.provenance = Some(Provenance { payload: vec![b' '; MAX_STATEMENT_LEN + 1], signature: [0; 64] });
    let err = Attestation::decode_payload(&mut Reader::new(&a.to_bytes())).unwrap_err();
    assert!(matches!(err, DecodeError::LimitExceeded { field: "attestation.provenance", .. }), "{err}");
    // Truncated after the tag.
    a.provenance = Some(signed_by(&k, &statement_of(&a)));
    let bytes = a.to_bytes();
    assert!(Attestation::decode_payload(&mut Reader::new(&bytes[..bytes.len() - 1])).is_err());
}

#[test]
fn pae_is_dsse_v1() {
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
}

#[test]
fn times_are_rfc3339() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339_ms(1_796_584_800_000), "2026-12-06T19:20:00.000Z");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any attestation with its builder's provenance encodes, decodes and verifies unchanged; its
    /// statement parses back to the one signed.
    #[test]
    fn provenance_round_trips(seed in 1u8..=255, hashes in proptest::collection::vec(any::<u8>(), 1..5),
                              inputs in 0usize..40, emulated in any::<bool>(), start in 0u64..4_000_000_000_000,
                              dur in 0u64..1_000_000) {
        let k = key(seed);
        let mut a = attestation(&k);
        a.outputs = hashes.iter().enumerate().map(|(i, h)| (format!("o{i}"), output(&k, &format!("p-{i}"), *h))).collect();
        a.mode = if emulated { BuildMode::Emulated } else { BuildMode::Native };
        a.started_at_ms = start;
        a.finished_at_ms = start + dur;
        a.provenance = Provenance::sign(&k, &a, Some(&drv(inputs)));
        let bytes = a.to_bytes();
        let back = Attestation::decode_payload(&mut Reader::new(&bytes)).unwrap();
        prop_assert_eq!(&back, &a);
        let v = Signed::sign(&k, &a).unwrap().verify().unwrap();
        let p = v.provenance.as_ref().unwrap();
        prop_assert_eq!(Statement::parse(&p.payload).unwrap(), Statement::of(&a, Some(&drv(inputs)), &builder_id(&a).unwrap(), None));
    }
}
