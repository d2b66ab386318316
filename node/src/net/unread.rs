//! Peers whose answers this node cannot read (issue 18): an answer whose variant index this build
//! does not know costs the peer no strike (a newer build appends variants), but a peer that
//! sends nothing else wastes every request sent to it. So such answers are counted per peer and
//! protocol; [`UNREAD_IN_A_ROW`] of them in a row, with no readable answer between, **bench** the
//! peer on that protocol for [`BENCH`]: [`NetHandle::send_request`] then refuses to ask it
//! ([`RequestError::Benched`], nothing is sent) and the asker goes on to its next peer, as after
//! any failed request. No strike, no graylisting: its gossip and its other protocols are
//! untouched. A readable answer (of any kind, an error included) clears the count.
//!
//! ## Bounds, and why a flood of peer ids cannot blind the book
//!
//! Counts and benches are kept apart, each bounded, and neither ever makes room by refusing a
//! newcomer (someone holding thousands of peer ids must not be able to fill the book so that a
//! later misbehaving peer is no longer counted):
//!
//! - at most [`MAX_COUNTS`] partial counts (fewer than [`UNREAD_IN_A_ROW`] in a row). A new one
//!   in a full book first drops the counts idle for [`BENCH`] or longer, then, if still full,
//!   the one updated longest ago. A flood of new ids thus only ever pushes out the stalest
//!   partial counts, never a bench, and a peer being counted now (whose unreadable answers keep
//!   arriving) is the last to go: to reset it, a flood must bring [`MAX_COUNTS`] new ids, each
//!   asked by this node and answering it, between two of its answers.
//! - at most [`MAX_BENCHES`] live benches. A new bench in a full book drops the expired ones,
//!   then, if still full, the one that ends first (the oldest). So a misbehaving peer is always
//!   benched; flooding the book with benched ids only shortens the oldest bench, whose peer is
//!   then asked again, and benched again after [`UNREAD_IN_A_ROW`] more unreadable answers.
//!   Filling it takes [`MAX_BENCHES`] ids with a connection each (at most
//!   `max_connections_per_ip` per address) answering [`UNREAD_IN_A_ROW`] requests each.
//!
//! Counts are kept across reconnections on purpose: dropping a peer's count when it disconnects
//! would let it reset its count by reconnecting every [`UNREAD_IN_A_ROW`]` - 1` answers.
//! Everything here is keyed by the peer that sent the unreadable answers and the protocol it
//! sent them on: nothing another peer does adds to or clears its count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{NetHandle, RequestError, RequestProtocol};

/// Unreadable answers in a row that bench a peer on a protocol.
pub const UNREAD_IN_A_ROW: u32 = 16;
/// How long a benched peer is not asked on that protocol.
pub const BENCH: Duration = Duration::from_secs(600);
/// Partial counts ((peer, protocol) entries not benched) kept at most.
pub const MAX_COUNTS: usize = 4096;
/// Live benches kept at most.
pub const MAX_BENCHES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Count {
    in_a_row: u32,
    last: Instant,
}

type Key = (PeerId, RequestProtocol);

/// The counts of unreadable answers per peer and protocol (see the module docs).
#[derive(Debug, Default)]
pub struct UnreadBook {
    counts: HashMap<Key, Count>,
    benches: HashMap<Key, Instant>,
}

impl UnreadBook {
    /// Count an answer of `peer` on `protocol` that this build cannot read, at `now`. Returns
    /// whether this one benched the peer.
    pub fn unread(&mut self, peer: PeerId, protocol: RequestProtocol, now: Instant) -> bool {
        let key = (peer, protocol);
        if self.benched(peer, protocol, now) {
            return false;
        }
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_COUNTS {
            self.make_room_for_a_count(now);
        }
        let c = self.counts.entry(key).or_insert(Count { in_a_row: 0, last: now });
        c.in_a_row += 1;
        c.last = now;
        if c.in_a_row < UNREAD_IN_A_ROW {
            return false;
        }
        self.counts.remove(&key);
        if self.benches.len() >= MAX_BENCHES {
            self.make_room_for_a_bench(now);
        }
        self.benches.insert(key, now + BENCH);
        true
    }

    /// Drop the counts idle for [`BENCH`] or more, then, if the book is still full, the one
    /// updated longest ago.
    fn make_room_for_a_count(&mut self, now: Instant) {
        self.counts.retain(|_, c| now.saturating_duration_since(c.last) < BENCH);
        if self.counts.len() >= MAX_COUNTS
            && let Some(oldest) = self.counts.iter().min_by_key(|(_, c)| c.last).map(|(k, _)| *k)
        {
            self.counts.remove(&oldest);
        }
    }

    /// Drop the expired benches, then, if the book is still full, the one that ends first.
    fn make_room_for_a_bench(&mut self, now: Instant) {
        self.benches.retain(|_, until| *until > now);
        if self.benches.len() >= MAX_BENCHES
            && let Some(first) = self.benches.iter().min_by_key(|(_, until)| **until).map(|(k, _)| *k)
        {
            self.benches.remove(&first);
        }
    }

    /// A readable answer of `peer` on `protocol`: its count starts over.
    pub fn read(&mut self, peer: PeerId, protocol: RequestProtocol) {
        self.counts.remove(&(peer, protocol));
    }

    /// Whether `peer` is benched on `protocol` at `now`.
    pub fn benched(&mut self, peer: PeerId, protocol: RequestProtocol, now: Instant) -> bool {
        let key = (peer, protocol);
        match self.benches.get(&key) {
            Some(t) if *t > now => true,
            Some(_) => {
                self.benches.remove(&key);
                false
            }
            None => false,
        }
    }

    /// The live benches at `now`: (peer, protocol), ordered by peer, then protocol.
    pub fn benches(&self, now: Instant) -> Vec<(PeerId, RequestProtocol)> {
        let mut live: Vec<Key> = self.benches.iter().filter(|(_, t)| **t > now).map(|(k, _)| *k).collect();
        live.sort();
        live
    }
}
/// The book a [`NetHandle`] shares between its clones.
pub(crate) type SharedUnread = Arc<Mutex<UnreadBook>>;

impl NetHandle {
    fn unread_book(&self) -> std::sync::MutexGuard<'_, UnreadBook> {
        self.unread.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Count an answer of `peer` on `protocol` whose variant this build does not know (no
    /// strike; see the module docs). Returns whether it benched the peer (logged as
    /// `peer_benched`).
    pub fn answer_unread(&self, peer: PeerId, protocol: RequestProtocol) -> bool {
        let benched = self.unread_book().unread(peer, protocol, Instant::now());
        if benched {
            tracing::warn!(target: "buildmesh::_events::net", event = "peer_benched", %peer, %protocol,
                in_a_row = UNREAD_IN_A_ROW, secs = BENCH.as_secs(),
                "peer answers only what this build cannot read; not asked on this protocol for a while");
        }
        benched
    }

    /// A readable answer of `peer` on `protocol` (see [`NetHandle::answer_unread`]).
    pub fn answer_read(&self, peer: PeerId, protocol: RequestProtocol) {
        self.unread_book().read(peer, protocol);
    }

    /// Whether this node does not ask `peer` on `protocol` for now (see the module docs).
    pub fn benched(&self, peer: PeerId, protocol: RequestProtocol) -> bool {
        self.unread_book().benched(peer, protocol, Instant::now())
    }

    /// The (peer, protocol) pairs benched now, as `GET /api/v1/peers` shows them
    /// (`conduct.benched`).
    pub fn benches(&self) -> Vec<(PeerId, RequestProtocol)> {
        self.unread_book().benches(Instant::now())
    }

    /// [`RequestError::Benched`] when `peer` is benched on `protocol`.
    pub(crate) fn check_benched(&self, peer: PeerId, protocol: RequestProtocol) -> Result<(), RequestError> {
        if self.benched(peer, protocol) { Err(RequestError::Benched { protocol, peer }) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_answers_in_a_row_bench_a_peer_for_a_while() {
        let (p, q) = (PeerId::random(), PeerId::random());
        let (sync, nar) = (RequestProtocol::Sync, RequestProtocol::Nar);
        let mut b = UnreadBook::default();
        let t0 = Instant::now();
        // A readable answer between clears the count.
        for _ in 0..UNREAD_IN_A_ROW - 1 {
            assert!(!b.unread(p, sync, t0));
        }
        b.read(p, sync);
        for _ in 0..UNREAD_IN_A_ROW - 1 {
            assert!(!b.unread(p, sync, t0));
            assert!(!b.unread(q, sync, t0));
        }
        assert!(!b.benched(p, sync, t0));
        assert!(b.unread(p, sync, t0), "the 16th in a row benches");
        assert!(b.benched(p, sync, t0));
        // Only that peer, only that protocol.
        assert!(!b.benched(q, sync, t0) && !b.benched(p, nar, t0));
        assert_eq!(b.benches(t0), vec![(p, sync)], "listed while benched");
        assert!(!b.unread(p, sync, t0), "already benched: not benched again");
        // For a while.
        assert!(b.benched(p, sync, t0 + BENCH - Duration::from_secs(1)));
        assert!(!b.benched(p, sync, t0 + BENCH));
        assert!(b.benches(t0 + BENCH).is_empty(), "not listed once the bench is over");
        for _ in 0..UNREAD_IN_A_ROW - 1 {
            assert!(!b.unread(p, sync, t0 + BENCH));
        }
        assert!(b.unread(p, sync, t0 + BENCH), "counted from zero again after the bench");
    }

    /// Bench `p` on `protocol` at `now` (16 unreadable answers in a row).
    fn bench(b: &mut UnreadBook, p: PeerId, protocol: RequestProtocol, now: Instant) {
        for _ in 0..UNREAD_IN_A_ROW - 1 {
            assert!(!b.unread(p, protocol, now));
        }
        assert!(b.unread(p, protocol, now), "benched");
    }

    #[test]
    fn a_flood_of_peer_ids_does_not_blind_the_book() {
        let mut b = UnreadBook::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let (sync, closure) = (RequestProtocol::Sync, RequestProtocol::Closure);
        // Benches and a peer part-way to one, before the flood.
        let early: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        for p in &early {
            bench(&mut b, *p, sync, s(0));
        }
        let halfway = PeerId::random();
        for _ in 0..UNREAD_IN_A_ROW / 2 {
            b.unread(halfway, closure, s(0));
        }
        // The flood: more ids than the book holds counts for, one unreadable answer each; the
        // peer being counted keeps answering unreadably during it.
        for i in 0..(MAX_COUNTS + MAX_COUNTS / 2) as u64 {
            b.unread(PeerId::random(), sync, s(1 + i));
            if i % 512 == 0 && b.counts.get(&(halfway, closure)).is_some_and(|c| c.in_a_row < UNREAD_IN_A_ROW - 1) {
                b.unread(halfway, closure, s(1 + i));
            }
        }
        assert!(b.counts.len() <= MAX_COUNTS && b.benches.len() <= MAX_BENCHES);
        let after = s(10_000);
        // The benches survive a flood of counts.
        assert!(early.iter().all(|p| b.benched(*p, sync, after)), "a bench was dropped for a count");
        // The peer counted during the flood kept its count.
        assert!(
            b.counts.get(&(halfway, closure)).is_some_and(|c| c.in_a_row == UNREAD_IN_A_ROW - 1),
            "a peer counted during the flood lost its count"
        );
        assert!(b.unread(halfway, closure, after), "the peer counted during the flood is benched");
        // A later misbehaving peer is still counted and benched.
        let late = PeerId::random();
        bench(&mut b, late, sync, after);
        assert!(b.benched(late, sync, after) && b.counts.len() <= MAX_COUNTS);
        // Counts idle for a bench's length go first.
        let idle = PeerId::random();
        b.unread(idle, sync, after);
        let later = after + BENCH;
        for _ in 0..MAX_COUNTS {
            b.unread(PeerId::random(), sync, later);
        }
        assert!(!b.counts.contains_key(&(idle, sync)) && b.counts.len() <= MAX_COUNTS);
    }

    #[test]
    fn a_flood_of_benches_drops_the_oldest_and_still_benches_a_newcomer() {
        let mut b = UnreadBook::default();
        let t0 = Instant::now();
        let sync = RequestProtocol::Sync;
        let first = PeerId::random();
        bench(&mut b, first, sync, t0);
        let flood: Vec<PeerId> = (0..MAX_BENCHES).map(|_| PeerId::random()).collect();
        for (i, p) in flood.iter().enumerate() {
            bench(&mut b, *p, sync, t0 + Duration::from_millis(1 + i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(b.benches.len(), MAX_BENCHES);
        assert!(!b.benched(first, sync, now), "the oldest bench made room");
        let late = PeerId::random();
        bench(&mut b, late, sync, now);
        assert!(b.benched(late, sync, now), "a full book of benches still benches a newcomer");
        assert!(b.benches.len() <= MAX_BENCHES);
        assert!(flood[1..].iter().all(|p| b.benched(*p, sync, now)), "only the oldest benches made room");
        // The evicted peer is benched again after as many unreadable answers.
        bench(&mut b, first, sync, now);
    }
}
