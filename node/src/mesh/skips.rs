//! Peers that served wrong bytes for an object (issue 18): an object this node fetches by a
//! signed hash (a revision's manifest, a NAR by its NarHash, a build log by its builder's signed
//! digests) is refused when the bytes a peer serves do not match, and the next peer is asked.
//! Without a memory of it, the same peer would be asked again at the next attempt (the manifest
//! fetcher's retry round, the next build needing that NAR, the next request for that log) and
//! would cost this node up to the object's signed size each time. So such a peer is **skipped**
//! for that object for [`MISMATCH_SKIP`]: the other peers are still asked. No strike: the peer
//! may be honest (a disk that rots, a builder that rebuilt and keeps only its latest log).
//!
//! Bounds (the book is keyed only by what a peer did: the object it was asked for and served
//! wrong bytes of, so no other peer can add to or clear an entry):
//! - at most [`MAX_SKIPPED`] peers per object; a further one pushes out the skip that ends first,
//!   whose peer is then asked again (and skipped again if it still serves wrong bytes);
//! - at most [`MAX_OBJECTS`] objects per book; a new object in a full book first drops the objects
//!   with no live skip, then, if still full, the one whose last skip ends first. A new skip is
//!   thus always recorded: a flood of wrong objects only shortens the oldest skips. Each entry
//!   costs whoever made it one object this node asked for and fetched in full (or to its first
//!   wrong chunk), so a flood is as slow as the node's own fetches.
//!
//! The node keeps one book per kind of object (manifests, NARs, logs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a peer whose bytes were not the signed object is not asked for it again.
pub const MISMATCH_SKIP: Duration = Duration::from_secs(3600);
/// Peers skipped for one object at most (the skip that ends first is forgotten first).
pub const MAX_SKIPPED: usize = 16;
/// Objects one book remembers skips for, at most.
pub const MAX_OBJECTS: usize = 4096;

/// Per object (its signed hash, or a hash of what identifies it), the peers that served wrong
/// bytes for it and until when they are skipped (see the module docs).
#[derive(Debug, Default)]
pub struct Skips {
    by_object: BTreeMap<[u8; 32], Vec<(PeerId, Instant)>>,
}

impl Skips {
    /// Skip `peer` for `object` until `now + MISMATCH_SKIP`.
    pub fn add(&mut self, object: [u8; 32], peer: PeerId, now: Instant) {
        if !self.by_object.contains_key(&object) && self.by_object.len() >= MAX_OBJECTS {
            self.by_object.retain(|_, l| l.iter().any(|(_, until)| *until > now));
            if self.by_object.len() >= MAX_OBJECTS {
                let first =
                    self.by_object.iter().min_by_key(|(_, l)| l.iter().map(|(_, until)| *until).max()).map(|(k, _)| *k);
                if let Some(k) = first {
                    self.by_object.remove(&k);
                }
            }
        }
        let list = self.by_object.entry(object).or_default();
        list.retain(|(p, until)| *p != peer && *until > now);
        if list.len() >= MAX_SKIPPED {
            // Skips are pushed in time order: the first ends first.
            list.remove(0);
        }
        list.push((peer, now + MISMATCH_SKIP));
    }

    /// Whether `peer` is skipped for `object` at `now`.
    pub fn skipped(&self, object: &[u8; 32], peer: &PeerId, now: Instant) -> bool {
        self.by_object.get(object).is_some_and(|l| l.iter().any(|(p, until)| p == peer && *until > now))
    }

    /// Forget the skips of `object` (it was fetched).
    pub fn forget(&mut self, object: &[u8; 32]) {
        self.by_object.remove(object);
    }

    /// Objects with skips remembered (live or not yet dropped).
    pub fn objects(&self) -> usize {
        self.by_object.len()
    }
}

/// A [`Skips`] book shared between the clones of a fetcher.
#[derive(Debug, Clone, Default)]
pub struct SharedSkips(Arc<Mutex<Skips>>);

impl SharedSkips {
    fn book(&self) -> std::sync::MutexGuard<'_, Skips> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Skip `peer` for `object` from now ([`Skips::add`]).
    pub fn add(&self, object: [u8; 32], peer: PeerId) {
        self.book().add(object, peer, Instant::now());
    }

    /// Whether `peer` is skipped for `object` now.
    pub fn skipped(&self, object: &[u8; 32], peer: &PeerId) -> bool {
        self.book().skipped(object, peer, Instant::now())
    }

    /// `peers` without those skipped for `object` now, in order.
    pub fn retain_unskipped(&self, object: &[u8; 32], peers: &mut Vec<PeerId>) {
        let (book, now) = (self.book(), Instant::now());
        peers.retain(|p| !book.skipped(object, p, now));
    }

    /// Forget the skips of `object` ([`Skips::forget`]).
    pub fn forget(&self, object: &[u8; 32]) {
        self.book().forget(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(i: u32) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h[31] = 9;
        h
    }

    #[test]
    fn a_peer_that_served_wrong_bytes_is_skipped_for_that_object_a_while() {
        let (p, q) = (PeerId::random(), PeerId::random());
        let (h1, h2) = ([1u8; 32], [2u8; 32]);
        let mut s = Skips::default();
        let t0 = Instant::now();
        s.add(h1, p, t0);
        assert!(s.skipped(&h1, &p, t0));
        assert!(!s.skipped(&h1, &q, t0) && !s.skipped(&h2, &p, t0), "only that peer, only that object");
        assert!(s.skipped(&h1, &p, t0 + MISMATCH_SKIP - Duration::from_secs(1)));
        assert!(!s.skipped(&h1, &p, t0 + MISMATCH_SKIP));
        // Bounded per object: the oldest is forgotten first.
        let many: Vec<PeerId> = (0..MAX_SKIPPED).map(|_| PeerId::random()).collect();
        for m in &many {
            s.add(h1, *m, t0);
        }
        assert!(!s.skipped(&h1, &p, t0) && many.iter().all(|m| s.skipped(&h1, m, t0)));
        assert_eq!(s.by_object[&h1].len(), MAX_SKIPPED);
        s.forget(&h1);
        assert!(!many.iter().any(|m| s.skipped(&h1, m, t0)), "forgotten once fetched");
    }

    #[test]
    fn a_flood_of_objects_pushes_out_the_oldest_skips_and_a_new_one_is_always_recorded() {
        let mut s = Skips::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (first, liar, flooder) = (PeerId::random(), PeerId::random(), PeerId::random());
        s.add([1; 32], first, at(0));
        s.add([2; 32], liar, at(1));
        for i in 0..MAX_OBJECTS as u32 {
            s.add(object(i), flooder, at(2 + u64::from(i)));
        }
        let now = at(10_000);
        assert_eq!(s.objects(), MAX_OBJECTS);
        assert!(!s.skipped(&[1; 32], &first, now) && !s.skipped(&[2; 32], &liar, now), "the oldest made room");
        assert!(s.skipped(&object(MAX_OBJECTS as u32 - 1), &flooder, now), "the newest is recorded");
        // A later liar is still skipped in a full book.
        let late = PeerId::random();
        s.add([3; 32], late, now);
        assert!(s.skipped(&[3; 32], &late, now) && s.objects() == MAX_OBJECTS);
        // Expired skips go first.
        let later = now + MISMATCH_SKIP;
        s.add([4; 32], late, later);
        assert_eq!(s.objects(), 1, "every expired object was dropped");
    }
}
