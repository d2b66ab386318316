//! Peers whose answers this node cannot read (issue 18): an answer whose variant index this build
//! does not know costs the peer no strike (a newer build appends variants), but a peer that
//! sends nothing else wastes every request sent to it. So such answers are counted per peer and
//! protocol; [`UNREAD_IN_A_ROW`] of them in a row, with no readable answer between, **bench** the
//! peer on that protocol for [`BENCH`]: [`NetHandle::send_request`] then refuses to ask it
//! ([`RequestError::Benched`], nothing is sent) and the asker goes on to its next peer, as after
//! any failed request. No strike, no graylisting: its gossip and its other protocols are
//! untouched. A readable answer (of any kind, an error included) clears the count.
//!
//! The book holds at most [`MAX_TRACKED`] (peer, protocol) entries; when it is full, every entry
//! that is not a live bench is dropped (counts start over), and when it is full of live benches
//! a new peer is not counted until one expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{NetHandle, RequestError, RequestProtocol};

/// Unreadable answers in a row that bench a peer on a protocol.
pub const UNREAD_IN_A_ROW: u32 = 16;
/// How long a benched peer is not asked on that protocol.
pub const BENCH: Duration = Duration::from_secs(600);
/// (peer, protocol) entries kept at most.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    in_a_row: u32,
    benched_until: Option<Instant>,
}

/// The counts of unreadable answers per peer and protocol (see the module docs).
#[derive(Debug, Default)]
pub struct UnreadBook {
    entries: HashMap<(PeerId, RequestProtocol), Entry>,
}

impl UnreadBook {
    /// Count an answer of `peer` on `protocol` that this build cannot read, at `now`. Returns
    /// whether this one benched the peer.
    pub fn unread(&mut self, peer: PeerId, protocol: RequestProtocol, now: Instant) -> bool {
        let key = (peer, protocol);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED {
            self.entries.retain(|_, e| e.benched_until.is_some_and(|t| t > now));
            if self.entries.len() >= MAX_TRACKED {
                return false;
            }
        }
        let e = self.entries.entry(key).or_default();
        if e.benched_until.is_some_and(|t| t > now) {
            return false;
        }
        e.in_a_row += 1;
        if e.in_a_row < UNREAD_IN_A_ROW {
            return false;
        }
        *e = Entry { in_a_row: 0, benched_until: Some(now + BENCH) };
        true
    }

    /// A readable answer of `peer` on `protocol`: its count starts over.
    pub fn read(&mut self, peer: PeerId, protocol: RequestProtocol) {
        self.entries.remove(&(peer, protocol));
    }

    /// Whether `peer` is benched on `protocol` at `now`.
    pub fn benched(&mut self, peer: PeerId, protocol: RequestProtocol, now: Instant) -> bool {
        let key = (peer, protocol);
        match self.entries.get(&key).and_then(|e| e.benched_until) {
            Some(t) if t > now => true,
            Some(_) => {
                self.entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// The live benches at `now`: (peer, protocol), ordered by peer, then protocol.
    pub fn benches(&self, now: Instant) -> Vec<(PeerId, RequestProtocol)> {
        let mut live: Vec<(PeerId, RequestProtocol)> =
            self.entries.iter().filter(|(_, e)| e.benched_until.is_some_and(|t| t > now)).map(|(k, _)| *k).collect();
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

    #[test]
    fn the_book_is_bounded() {
        let mut b = UnreadBook::default();
        let t0 = Instant::now();
        let sync = RequestProtocol::Sync;
        // Full of counts: they are dropped for a new peer.
        let counted: Vec<PeerId> = (0..MAX_TRACKED).map(|_| PeerId::random()).collect();
        for p in &counted {
            b.unread(*p, sync, t0);
        }
        b.unread(PeerId::random(), sync, t0);
        assert_eq!(b.entries.len(), 1);
        // Full of live benches: a new peer is not counted until they expire.
        for p in &counted {
            for _ in 0..UNREAD_IN_A_ROW {
                b.unread(*p, sync, t0);
            }
        }
        assert_eq!(b.entries.len(), MAX_TRACKED);
        let late = PeerId::random();
        for _ in 0..UNREAD_IN_A_ROW {
            assert!(!b.unread(late, sync, t0), "a book full of benches counts no new peer");
        }
        assert_eq!(b.entries.len(), MAX_TRACKED);
        for _ in 0..UNREAD_IN_A_ROW - 1 {
            b.unread(late, sync, t0 + BENCH);
        }
        assert!(b.unread(late, sync, t0 + BENCH), "counted once the benches expired");
    }
}
