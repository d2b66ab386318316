//! Each decoding rule of [`Strike`], seen refusing a record that breaks it.

use super::codec::Encode;
use super::*;
use crate::id::JobId;
use crate::identity::NodeKey;
use crate::signed::{Envelope, SignedError};
use crate::store_path::{StoreDir, StorePath};

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed("k", [i; 32]).unwrap()
}

fn good() -> Strike {
    Strike {
        observer: key(1).node_id(),
        struck: key(2).node_id(),
        job: JobId::from_bytes([3; 32]),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([4; 20], "hello.drv").unwrap(),
        attempt: 1,
        claimed_at_ms: 1_000,
        lease_expires_at_ms: 121_000,
        observed_at_ms: 121_500,
    }
}

/// The field the decoder names for `s`, signed by the observer's key.
fn refused_field(s: &Strike) -> String {
    let env = Envelope::sign_raw_payload(&key(1), Kind::Strike, s.to_bytes());
    match Envelope::decode(&env.to_bytes()).unwrap().verify() {
        Err(SignedError::Decode(e)) => e.to_string(),
        other => panic!("accepted or refused for another reason: {other:?}"),
    }
}

#[test]
fn a_good_record_verifies_and_names_its_observer_as_author() {
    let v = Envelope::sign(&key(1), &Message::Strike(good())).unwrap();
    let back = Envelope::decode(&v.to_bytes()).unwrap().verify().unwrap();
    assert_eq!(back.value(), &Message::Strike(good()));
    assert_eq!(back.signer(), &key(1).node_id());
}

#[test]
fn each_rule_is_enforced() {
    let mut s = good();
    s.struck = s.observer;
    assert!(refused_field(&s).contains("strike.struck"), "{}", refused_field(&s));
    let mut s = good();
    s.attempt = 0;
    assert!(refused_field(&s).contains("strike.attempt"));
    let mut s = good();
    s.lease_expires_at_ms = s.claimed_at_ms + 1; // a release
    assert!(refused_field(&s).contains("strike.lease_expires_at_ms"));
    let mut s = good();
    s.lease_expires_at_ms = s.claimed_at_ms + MAX_LEASE_MS + 1;
    s.observed_at_ms = s.lease_expires_at_ms;
    assert!(refused_field(&s).contains("strike.lease_expires_at_ms"));
    let mut s = good();
    s.lease_expires_at_ms = s.claimed_at_ms - 1;
    assert!(refused_field(&s).contains("strike.lease_expires_at_ms"));
    let mut s = good();
    s.observed_at_ms = s.lease_expires_at_ms - 1;
    assert!(refused_field(&s).contains("strike.observed_at_ms"));
    let mut s = good();
    s.drv = StorePath::new([4; 20], "hello").unwrap();
    assert!(refused_field(&s).contains("strike.drv"));
}

#[test]
fn signed_by_another_key_than_the_observer_is_refused() {
    let env = Envelope::sign_raw_payload(&key(2), Kind::Strike, good().to_bytes());
    let err = Envelope::decode(&env.to_bytes()).unwrap().verify().unwrap_err();
    assert!(matches!(err, SignedError::AuthorMismatch { .. }), "{err:?}");
}
