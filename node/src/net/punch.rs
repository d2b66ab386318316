//! Hole punching with QUIC first: libp2p's DCUtR ([`dcutr::Behaviour`]) behind a filter of the
//! address candidates it punches with.
//!
//! DCUtR sends the peer every address identify observed for this node (its NAT's mappings) and
//! both sides dial all of them at once; the first connection up wins. A node that reaches public
//! peers over TCP and QUIC (`nat.rs`: it dials its relay's QUIC address too) has a TCP and a UDP
//! candidate, and the TCP simultaneous open and the QUIC punch race: measured in `mesh_nat`,
//! TCP won 3 of 4 punches. A TCP punch is the fragile one (it needs the exact address pair,
//! which another dial can hold: docs/nat.md, "Why a punch failed here") and a punched TCP
//! connection is not replaced by a QUIC one later. So while this node knows a QUIC candidate,
//! its other candidates are held back and it punches over QUIC only; after the first punch that
//! fails (a peer behind a symmetric NAT, a network that drops UDP, ...), every candidate goes to
//! DCUtR from then on, and the next punch (the node's retry, `event_loop/nat.rs`) can take TCP.
//! A node that knows no QUIC candidate when a relayed connection comes up (DCUtR punches over
//! relayed connections only) hands DCUtR its TCP candidates then, instead of failing one punch
//! first. A direct connection does not: a home reaching its relay over TCP first learns its TCP
//! candidate, then opens the QUIC connection that brings the UDP one, and any direct connection
//! in between (that QUIC connection itself, an AutoNAT dial-back) used to hand over TCP for good,
//! so that punches raced TCP against QUIC again (`mesh_nat`'s TCP-given test punched over TCP in
//! 4 of 12 runs, 2026-12-07).

use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::NewExternalAddrCandidate;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, dcutr};

/// Candidates held back at most (DCUtR itself keeps 20).
const MAX_HELD: usize = 20;

/// [`dcutr::Behaviour`] that punches over QUIC while it can (see the module docs).
pub(crate) struct QuicFirstDcutr {
    inner: dcutr::Behaviour,
    /// Non-QUIC candidates not given to DCUtR (yet).
    held: Vec<Multiaddr>,
    /// Whether DCUtR was given a QUIC candidate.
    quic: bool,
    /// Whether a punch failed: every candidate goes to DCUtR.
    fallback: bool,
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

impl QuicFirstDcutr {
    /// DCUtR for the node `peer`.
    pub(crate) fn new(peer: PeerId) -> QuicFirstDcutr {
        QuicFirstDcutr { inner: dcutr::Behaviour::new(peer), held: Vec::new(), quic: false, fallback: false }
    }

    /// A connection is up: if it is relayed, DCUtR may punch over it, and a node that knows no
    /// QUIC candidate has nothing to prefer, so it hands over what it held instead of failing
    /// one punch first.
    fn release_without_quic(&mut self, addr: &Multiaddr) {
        if super::nat::is_relayed(addr) && !self.quic && !self.fallback && !self.held.is_empty() {
            tracing::debug!(
                held = self.held.len(),
                "no QUIC candidate when a relayed connection came up: punching with TCP too"
            );
            self.fall_back();
        }
    }

    /// A punch failed: hand DCUtR the held candidates, and every later one.
    fn fall_back(&mut self) {
        self.fallback = true;
        for addr in std::mem::take(&mut self.held) {
            self.inner.on_swarm_event(FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr: &addr }));
        }
    }
}

impl NetworkBehaviour for QuicFirstDcutr {
    type ConnectionHandler = THandler<dcutr::Behaviour>;
    type ToSwarm = dcutr::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A relayed inbound connection arrives on the circuit listen address.
        self.release_without_quic(local);
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release_without_quic(addr);
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) = event {
            if is_quic(addr) {
                self.quic = true;
            } else if !self.fallback {
                if !self.held.contains(addr) && self.held.len() < MAX_HELD {
                    self.held.push(addr.clone());
                }
                return;
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<dcutr::Event, THandlerInEvent<Self>>> {
        let ev = std::task::ready!(self.inner.poll(cx));
        if !self.fallback && matches!(&ev, ToSwarm::GenerateEvent(dcutr::Event { result: Err(_), .. })) {
            self.fall_back();
        }
        Poll::Ready(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(f: &mut QuicFirstDcutr, addr: &str) {
        let addr: Multiaddr = addr.parse().unwrap();
        f.on_swarm_event(FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr: &addr }));
    }

    /// An inbound connection on `local` (a circuit address when relayed).
    fn connect_on(f: &mut QuicFirstDcutr, local: &str) {
        let local: Multiaddr = local.parse().unwrap();
        let remote: Multiaddr = "/ip4/10.0.0.2/tcp/2".parse().unwrap();
        let _ =
            f.handle_established_inbound_connection(ConnectionId::new_unchecked(1), PeerId::random(), &local, &remote);
    }

    /// A relayed inbound connection: DCUtR may punch over it.
    fn connect(f: &mut QuicFirstDcutr) {
        connect_on(f, &format!("/ip4/10.0.0.1/tcp/1/p2p/{}/p2p-circuit", PeerId::random()));
    }

    #[test]
    fn tcp_candidates_wait_for_a_failed_punch_only_when_quic_is_known() {
        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        candidate(&mut f, "/ip4/203.0.113.7/udp/4001/quic-v1");
        connect(&mut f);
        assert_eq!(f.held.len(), 1, "with a QUIC candidate the TCP one is held back");
        assert!(!f.fallback);

        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        assert_eq!(f.held.len(), 1);
        connect(&mut f);
        assert!(f.held.is_empty() && f.fallback, "without a QUIC candidate nothing is held when a punch can start");
    }

    #[test]
    fn a_direct_connection_before_the_quic_candidate_does_not_release_tcp() {
        // A home reaches its relay over TCP (TCP candidate), then over QUIC: that connection,
        // or an AutoNAT dial-back, is up before identify brings the UDP candidate.
        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        connect_on(&mut f, "/ip4/10.0.0.1/udp/1/quic-v1");
        let relay: Multiaddr = "/ip4/10.0.0.9/udp/9/quic-v1".parse().unwrap();
        let _ = f.handle_established_outbound_connection(
            ConnectionId::new_unchecked(2),
            PeerId::random(),
            &relay,
            Endpoint::Dialer,
            PortUse::New,
        );
        assert!(!f.fallback && f.held.len() == 1, "a direct connection is no punch: TCP stays held");
        candidate(&mut f, "/ip4/203.0.113.7/udp/4001/quic-v1");
        connect(&mut f);
        assert!(!f.fallback && f.held.len() == 1, "the punch over the relayed connection offers QUIC only");
    }
}
