//! Unit tests of the strike book: quorum, the deterministic penalty, bounds and expiry.

use super::*;
use crate::id::JobId;
use crate::identity::NodeKey;
use crate::store_path::StoreDir;

fn id(i: u8) -> NodeId {
    NodeKey::from_seed("n", [i; 32]).unwrap().node_id()
}

fn drv(d: u8) -> StorePath {
    StorePath::new([d; 20], &format!("p-{d}.drv")).unwrap()
}

fn rec(observer: u8, struck: u8, d: u8, lease_end: u64) -> Strike {
    Strike {
        observer: id(observer),
        struck: id(struck),
        job: JobId::derive(&id(struck), "j", u64::from(d)),
        store_dir: StoreDir::nix(),
        drv: drv(d),
        attempt: 1,
        claimed_at_ms: lease_end - 100,
        lease_expires_at_ms: lease_end,
        observed_at_ms: lease_end + 5,
    }
}

#[test]
fn one_observer_is_not_a_quorum_two_are() {
    let mut b = StrikeBook::default();
    assert_eq!(b.insert(&rec(1, 9, 1, 1000), 2, 100, 64), Inserted::New { changed: false });
    assert!(!b.penalised(&id(9), 1001), "one observer cannot strike alone");
    assert_eq!(b.insert(&rec(1, 9, 1, 1000), 2, 100, 64), Inserted::Duplicate, "replay");
    assert_eq!(b.insert(&rec(2, 9, 1, 1000), 2, 100, 64), Inserted::New { changed: true });
    assert!(b.penalised(&id(9), 1099) && !b.penalised(&id(9), 1100));
    assert_eq!(b.insert(&rec(3, 9, 1, 1000), 2, 100, 64), Inserted::Duplicate, "quorum reached: no more kept");
    assert!(b.has_quorum(&id(9), &drv(1), 2));
}

#[test]
fn the_penalty_is_a_function_of_the_records_not_of_their_order() {
    let recs = [rec(1, 9, 1, 1000), rec(2, 9, 1, 1010), rec(1, 9, 2, 1050), rec(2, 9, 2, 1040), rec(3, 9, 3, 5000)];
    let mut until = None;
    for perm in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [3, 4, 0, 2, 1]] {
        let mut b = StrikeBook::default();
        for i in perm {
            b.insert(&recs[i], 2, 100, 64);
        }
        let got: Vec<(NodeId, u32, u64)> = b.summary().map(|(n, e, u)| (*n, e, u)).collect();
        // Two events (drv 1 at 1010, drv 2 at 1050 within the first penalty: doubled).
        assert_eq!(got, vec![(id(9), 2, 1050 + 200)]);
        assert!(until.is_none_or(|u| u == got[0].2));
        until = Some(got[0].2);
    }
}

#[test]
fn bounded_per_observer_per_member_and_in_members() {
    let mut b = StrikeBook::default();
    for d in 0..(MAX_DRVS_PER_MEMBER as u8 + 4) {
        b.insert(&rec(1, 9, d, 1000 + u64::from(d)), 1, 100, 64);
    }
    assert_eq!(b.len(), MAX_DRVS_PER_MEMBER, "oldest derivations forgotten");
    let mut b = StrikeBook::default();
    let mut refused = 0;
    for m in 0..20u8 {
        for d in 0..16u8 {
            if b.insert(&rec(1, 100 + m, d, 1000), 2, 100, 64) == Inserted::ObserverQuota {
                refused += 1;
            }
        }
    }
    assert_eq!(b.len(), MAX_RECORDS_PER_OBSERVER);
    assert_eq!(refused, 20 * 16 - MAX_RECORDS_PER_OBSERVER);
    let mut b = StrikeBook::default();
    for m in 0..10u8 {
        b.insert(&rec(1, 100 + m, 1, 1000 + u64::from(m)), 1, 100, 4);
    }
    assert_eq!(b.summary().count(), 4, "at most max_members members");
    assert_eq!(b.per_observer.get(&id(1)), Some(&4), "forgotten records are given back to their observer");
}

#[test]
fn records_are_pruned_after_their_horizon() {
    let mut b = StrikeBook::default();
    b.insert(&rec(1, 9, 1, 1000), 2, 100, 64);
    b.insert(&rec(2, 9, 1, 1000), 2, 100, 64);
    assert_eq!(b.records_of(&id(1), 1050).len(), 1, "republished while penalised");
    assert!(b.records_of(&id(1), 1100).is_empty(), "not after");
    b.prune(1000 + 1600 - 1, 2, 100);
    assert_eq!(b.len(), 2);
    b.prune(1000 + 1600, 2, 100);
    assert_eq!(b.len(), 0);
    assert!(b.per_observer.is_empty());
}
