//! When to dial a relay's QUIC address (again).
//!
//! A node that is not public and reaches a relay it reserves on over TCP dials the relay's QUIC
//! listen address too, so that the relay observes its UDP mapping and DCUtR gets a UDP candidate
//! (`EventLoop::nat_identified`). That QUIC connection can close later (the relay restarts, the
//! NAT forgets the idle UDP mapping, ...); without it the node would punch over TCP only until it
//! restarts. So the dial is repeated whenever the relay has no QUIC connection from this node:
//! the first at once, each further one after a wait that doubles from [`REDIAL_BASE`] up to
//! [`REDIAL_MAX`] while the dials fail, and starts again from [`REDIAL_BASE`] once a QUIC
//! connection was up.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// The wait after a QUIC dial of a relay before the next one.
pub(crate) const REDIAL_BASE: Duration = Duration::from_secs(10);
/// The longest wait between two QUIC dials of one relay.
pub(crate) const REDIAL_MAX: Duration = Duration::from_secs(600);

/// One relay's QUIC address and when it may be dialled next.
#[derive(Debug)]
struct Entry {
    addr: Multiaddr,
    /// Dials since the last QUIC connection to the relay was up.
    dials: u32,
    next: Instant,
}

/// The QUIC addresses of this node's relays and the back-off of their dials.
#[derive(Debug, Default)]
pub(crate) struct RelayQuicDials {
    relays: HashMap<PeerId, Entry>,
}

impl RelayQuicDials {
    /// Identify announced `addr` as `relay`'s QUIC address: remember it (the latest one).
    pub(crate) fn learn(&mut self, relay: PeerId, addr: Multiaddr, now: Instant) {
        self.relays.entry(relay).and_modify(|e| e.addr = addr.clone()).or_insert(Entry { addr, dials: 0, next: now });
    }

    /// A QUIC connection to `relay` is up: the next dial, after it closes, is not held back.
    pub(crate) fn connected(&mut self, relay: &PeerId) {
        if let Some(e) = self.relays.get_mut(relay) {
            e.dials = 0;
        }
    }

    /// Forget the relays `keep` rejects (no longer this node's relays).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&PeerId) -> bool) {
        self.relays.retain(|p, _| keep(p));
    }

    /// The relays to dial over QUIC now, among those `wanted` accepts (reached, but not over
    /// QUIC): each returned one counts as dialled and waits its back-off before the next dial.
    pub(crate) fn due(&mut self, now: Instant, mut wanted: impl FnMut(&PeerId) -> bool) -> Vec<(PeerId, Multiaddr)> {
        let mut out = Vec::new();
        for (p, e) in &mut self.relays {
            if e.next > now || !wanted(p) {
                continue;
            }
            let wait = REDIAL_BASE.saturating_mul(1u32 << e.dials.min(16)).min(REDIAL_MAX);
            e.dials = e.dials.saturating_add(1);
            e.next = now + wait;
            out.push((*p, e.addr.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_is_dialled_again_after_its_quic_connection_closed_with_back_off() {
        let mut d = RelayQuicDials::default();
        let relay = PeerId::random();
        let addr: Multiaddr = "/ip4/198.51.100.1/udp/7801/quic-v1".parse().unwrap();
        let t0 = Instant::now();
        d.learn(relay, addr.clone(), t0);
        assert_eq!(d.due(t0, |_| true), vec![(relay, addr.clone())], "the first dial is at once");
        assert!(d.due(t0 + REDIAL_BASE / 2, |_| true).is_empty(), "no second dial while the first may run");
        // The dial failed: the next waits REDIAL_BASE, then twice that.
        assert_eq!(d.due(t0 + REDIAL_BASE, |_| true).len(), 1);
        assert!(d.due(t0 + REDIAL_BASE * 2, |_| true).is_empty());
        assert_eq!(d.due(t0 + REDIAL_BASE * 3, |_| true).len(), 1);
        // Up at last, then closed (relay restart): the back-off starts again from REDIAL_BASE.
        d.connected(&relay);
        let t1 = t0 + REDIAL_BASE * 10;
        assert!(d.due(t1, |_| false).is_empty(), "not while the relay has a QUIC connection");
        assert_eq!(d.due(t1, |_| true), vec![(relay, addr)], "closed: dialled again");
        assert!(d.due(t1 + REDIAL_BASE - Duration::from_millis(1), |_| true).is_empty());
        assert_eq!(d.due(t1 + REDIAL_BASE, |_| true).len(), 1);
    }

    #[test]
    fn the_wait_is_capped_and_forgotten_relays_are_not_dialled() {
        let mut d = RelayQuicDials::default();
        let relay = PeerId::random();
        let mut t = Instant::now();
        d.learn(relay, "/ip4/198.51.100.1/udp/7801/quic-v1".parse().unwrap(), t);
        for _ in 0..40 {
            assert_eq!(d.due(t, |_| true).len(), 1);
            t += REDIAL_MAX;
        }
        d.retain(|_| false);
        assert!(d.due(t, |_| true).is_empty());
    }
}
