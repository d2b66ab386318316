//! Tests of [`Batch`]: round trips, packing, and what a receiver refuses.

use proptest::collection::vec;
use proptest::prelude::*;

use super::codec::{Encode, put_u8, put_u32};
use super::tests::{arb_claim, arb_job, claim_for, key};
use super::*;
use crate::identity::NodeKey;
use crate::signed::{Envelope, Signed, SignedError};

/// Items made by one author: every generated item is rewritten to be `k`'s.
fn arb_items() -> impl Strategy<Value = (NodeKey, Vec<Message>)> {
    let jobs = vec(arb_job(), 1..8).prop_map(|v| {
        let k = v[0].0.clone();
        let items = v.into_iter().map(|(_, mut j)| {
            j.submitter = k.node_id();
            Message::JobSubmission(j)
        });
        (k.clone(), items.collect())
    });
    let claims = vec(arb_claim(), 1..8).prop_map(|v| {
        let k = v[0].0.clone();
        let items = v.into_iter().map(|(_, mut c)| {
            c.claimant = k.node_id();
            Message::Claim(c)
        });
        (k.clone(), items.collect())
    });
    prop_oneof![jobs, claims]
}

fn rejected(bytes: &[u8]) -> bool {
    Envelope::decode(bytes).map(|e| e.verify_as::<Batch>()).map_or(true, |v| v.is_err())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// decode(encode(x)) == x; signed, it verifies back to the same items; it is not one message.
    #[test]
    fn batch_round_trip((k, items) in arb_items()) {
        let batch = Batch::new(items.clone()).unwrap();
        let bytes = batch.to_bytes();
        prop_assert_eq!(bytes.len(), batch.encoded_len());
        let mut r = Reader::new(&bytes);
        prop_assert_eq!(&Batch::decode_payload(&mut r).unwrap(), &batch);
        r.finish().unwrap();
        let wire = Signed::sign(&k, &batch).unwrap().to_bytes();
        let envelope = Envelope::decode(&wire).unwrap();
        prop_assert_eq!(envelope.kind(), Kind::Batch);
        let verified = envelope.verify_as::<Batch>().unwrap();
        prop_assert_eq!(verified.value().items(), &items[..]);
        prop_assert_eq!(verified.signer(), &k.node_id());
        prop_assert!(envelope.verify().is_err(), "a batch is not one message");
    }

    /// Every single-byte change, truncation and extension of a signed batch is rejected.
    #[test]
    fn every_mutation_of_a_batch_is_rejected((k, items) in arb_items(), xor in 1u8..=255) {
        let wire = Signed::sign(&k, &Batch::new(items).unwrap()).unwrap().to_bytes();
        prop_assert!(!rejected(&wire));
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= xor;
            prop_assert!(rejected(&bad), "flip at {i} accepted");
        }
        for len in 0..wire.len() {
            prop_assert!(rejected(&wire[..len]), "truncation to {len} accepted");
        }
        let mut longer = wire.clone();
        longer.push(0);
        prop_assert!(rejected(&longer));
    }
}

#[test]
fn new_refuses_what_cannot_be_one_batch() {
    let (a, b) = (key(1), key(2));
    let claim = |k: &NodeKey| Message::Claim(claim_for(k));
    assert_eq!(Batch::new(vec![]), Err(BatchError::Empty));
    assert!(matches!(Batch::new(vec![claim(&a), claim(&b)]), Err(BatchError::MixedAuthors { index: 1, .. })));
    let announcement = Announcement {
        node: a.node_id(),
        seq: 1,
        timestamp_ms: 1,
        version: "v".into(),
        owner: String::new(),
        native_systems: Default::default(),
        emulated_systems: Default::default(),
        features: Default::default(),
        mandatory_features: Default::default(),
        slots: 1,
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    };
    assert_eq!(
        Batch::new(vec![Message::Announcement(announcement.clone())]),
        Err(BatchError::NotBatchable(Kind::Announcement))
    );
    assert!(matches!(
        Batch::new(vec![claim(&a), Message::Announcement(announcement)]),
        Err(BatchError::MixedKinds { index: 1, expected: Kind::Claim, found: Kind::Announcement })
    ));
    assert!(matches!(
        Batch::new(vec![claim(&a); MAX_BATCH_ITEMS + 1]),
        Err(BatchError::TooMany { count, .. }) if count == MAX_BATCH_ITEMS + 1
    ));
}

#[test]
fn pack_fills_batches_in_order_within_the_limits() {
    let k = key(3);
    let items: Vec<Message> = (0..2500u32)
        .map(|i| {
            let mut c = claim_for(&k);
            c.attempt = i + 1;
            Message::Claim(c)
        })
        .collect();
    let batches = Batch::pack(items.clone()).unwrap();
    assert!(batches.len() >= 3, "2500 items need at least 3 batches of {MAX_BATCH_ITEMS}");
    for b in &batches {
        assert!(b.items().len() <= MAX_BATCH_ITEMS);
        assert!(b.encoded_len() <= MAX_PAYLOAD_SIZE);
        Signed::sign(&k, b).unwrap();
    }
    let back: Vec<Message> = batches.into_iter().flat_map(Batch::into_items).collect();
    assert_eq!(back, items);
    assert!(Batch::pack(vec![]).unwrap().is_empty());
}

/// A payload signed correctly but not a valid batch.
fn raw(k: &NodeKey, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), SignedError> {
    let mut payload = Vec::new();
    f(&mut payload);
    Envelope::sign_raw_payload(k, Kind::Batch, payload).verify_as::<Batch>().map(drop)
}

#[test]
fn receivers_refuse_malformed_batches() {
    let (a, b) = (key(1), key(2));
    let field = |r: Result<(), SignedError>| match r {
        Err(SignedError::Decode(e)) => e.to_string(),
        other => panic!("expected a decode error, got {other:?}"),
    };
    // Mixed authors (each item is valid alone).
    let e = field(raw(&a, |p| {
        put_u8(p, Kind::Claim.tag());
        put_u32(p, 2);
        claim_for(&a).encode(p);
        claim_for(&b).encode(p);
    }));
    assert!(e.contains("batch.items") && e.contains("item 1"), "{e}");
    // Items by someone else than the signer.
    let r = raw(&a, |p| {
        put_u8(p, Kind::Claim.tag());
        put_u32(p, 1);
        claim_for(&b).encode(p);
    });
    assert!(matches!(r, Err(SignedError::AuthorMismatch { kind: Kind::Batch, .. })), "{r:?}");
    // A kind that is never batched, and an unknown one.
    for tag in [Kind::Attestation.tag(), Kind::Batch.tag(), 0, 200] {
        let e = field(raw(&a, |p| {
            put_u8(p, tag);
            put_u32(p, 1);
            claim_for(&a).encode(p);
        }));
        assert!(e.contains("batch.kind"), "{e}");
    }
    // Counts out of range, or larger than the items present.
    for (count, expected) in [(0, "batch.count"), (MAX_BATCH_ITEMS as u32 + 1, "batch.count"), (2, "claim.job")] {
        let e = field(raw(&a, |p| {
            put_u8(p, Kind::Claim.tag());
            put_u32(p, count);
            claim_for(&a).encode(p);
        }));
        assert!(e.contains(expected), "count {count}: {e}");
    }
    // Trailing bytes after the last item.
    let e = field(raw(&a, |p| {
        put_u8(p, Kind::Claim.tag());
        put_u32(p, 1);
        claim_for(&a).encode(p);
        p.push(0);
    }));
    assert!(e.contains("trailing"), "{e}");
    // A batch payload is not one message.
    let batch = Batch::new(vec![Message::Claim(claim_for(&a))]).unwrap();
    let env = Signed::sign(&a, &batch).unwrap().into_envelope();
    assert!(matches!(env.verify(), Err(SignedError::Decode(DecodeError::InvalidValue { field: "kind", .. }))));
}
