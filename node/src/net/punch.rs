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
//! it punches each peer over QUIC only; after a punch *to that peer* fails (a peer behind a
//! symmetric NAT, a network that drops UDP, ...), every later punch to that peer (the node's
//! retry, `event_loop/nat.rs`) takes every candidate, TCP too, while punches to other peers
//! still offer QUIC only.
//!
//! libp2p-dcutr 0.15 keeps one candidate list per behaviour and gives each relayed connection's
//! handler a copy of it when the connection comes up (its three attempts on that connection use
//! that copy). So this wrapper runs two: `quic_only`, given the QUIC candidates only, and `all`,
//! given every candidate, and picks one per relayed connection by its remote peer; the handler
//! events of that connection go back to the one that made its handler. Both hear of every direct
//! connection, dial failure and closed connection (each tracks the direct connections, and only
//! the one that dialled a punch knows it by its connection id and reports it).
//!
//! A relayed connection that comes up while this node knows no QUIC candidate punches with the
//! TCP ones at once instead of failing one punch first. Only relayed connections choose: a home
//! reaching its relay over TCP first learns its TCP candidate, then opens the QUIC connection
//! that brings the UDP one, and any direct connection in between (that QUIC connection itself,
//! an AutoNAT dial-back) used to hand over TCP for good, so that punches raced TCP against QUIC
//! again (`mesh_nat`'s TCP-given test punched over TCP in 4 of 12 runs, 2026-12-07).

use std::collections::{HashSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, NewExternalAddrCandidate};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, dcutr};

/// Peers whose punch failed, remembered at most (the oldest is forgotten first).
const MAX_FAILED: usize = 1024;

/// [`dcutr::Behaviour`] that punches over QUIC while it can, per peer (see the module docs).
pub(crate) struct QuicFirstDcutr {
    /// DCUtR given the QUIC candidates only.
    quic_only: dcutr::Behaviour,
    /// DCUtR given every candidate.
    all: dcutr::Behaviour,
    /// Whether a QUIC candidate is known.
    quic: bool,
    /// Relayed connections whose punch `all` runs (the others': `quic_only`).
    on_all: HashSet<ConnectionId>,
    /// Peers a punch to failed, oldest first: punched with every candidate from then on.
    failed: VecDeque<PeerId>,
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

impl QuicFirstDcutr {
    /// DCUtR for the node `peer`.
    pub(crate) fn new(peer: PeerId) -> QuicFirstDcutr {
        QuicFirstDcutr {
            quic_only: dcutr::Behaviour::new(peer),
            all: dcutr::Behaviour::new(peer),
            quic: false,
            on_all: HashSet::new(),
            failed: VecDeque::new(),
        }
    }

    /// Whether the punch over a new relayed connection to `peer` takes every candidate: when
    /// no QUIC candidate is known (nothing to prefer), or a punch to this peer failed before.
    fn punch_with_all(&self, peer: &PeerId) -> bool {
        !self.quic || self.failed.contains(peer)
    }

    /// A punch to `peer` failed: later punches to it take every candidate.
    fn punch_failed(&mut self, peer: PeerId) {
        if self.failed.contains(&peer) {
            return;
        }
        tracing::debug!(%peer, "hole punch failed: the next punches to this peer may take TCP too");
        if self.failed.len() >= MAX_FAILED {
            self.failed.pop_front();
        }
        self.failed.push_back(peer);
    }

    /// The DCUtR that runs the punch of relayed connection `id`.
    fn owner(&mut self, id: &ConnectionId) -> &mut dcutr::Behaviour {
        if self.on_all.contains(id) { &mut self.all } else { &mut self.quic_only }
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
        self.all.handle_pending_inbound_connection(id, local, remote)?;
        self.quic_only.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A relayed inbound connection arrives on the circuit listen address: one DCUtR punches
        // over it. Both hear of every direct connection (each tracks them, and the one that
        // dialled it reports the punch).
        if super::nat::is_relayed(local) {
            if self.punch_with_all(&peer) {
                self.on_all.insert(id);
            }
            return self.owner(&id).handle_established_inbound_connection(id, peer, local, remote);
        }
        self.all.handle_established_inbound_connection(id, peer, local, remote)?;
        self.quic_only.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        // DCUtR adds no addresses to a dial.
        self.all.handle_pending_outbound_connection(id, peer, addresses, role)?;
        self.quic_only.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if super::nat::is_relayed(addr) {
            if self.punch_with_all(&peer) {
                self.on_all.insert(id);
            }
            return self.owner(&id).handle_established_outbound_connection(id, peer, addr, role, port_use);
        }
        self.all.handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        self.quic_only.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) if !is_quic(addr) => {
                self.all.on_swarm_event(event);
                return;
            }
            FromSwarm::NewExternalAddrCandidate(_) => self.quic = true,
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.on_all.remove(&connection_id);
            }
            _ => {}
        }
        self.all.on_swarm_event(event);
        self.quic_only.on_swarm_event(event);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        // Only the handler of a relayed connection speaks (a direct one has DCUtR's dummy).
        self.owner(&id).on_connection_handler_event(peer, id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<dcutr::Event, THandlerInEvent<Self>>> {
        let ev = match self.quic_only.poll(cx) {
            Poll::Ready(ev) => ev,
            Poll::Pending => std::task::ready!(self.all.poll(cx)),
        };
        if let ToSwarm::GenerateEvent(dcutr::Event { remote_peer_id, result: Err(_) }) = &ev {
            self.punch_failed(*remote_peer_id);
        }
        Poll::Ready(ev)
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::ConnectedPoint;

    use super::*;

    fn candidate(f: &mut QuicFirstDcutr, addr: &str) {
        let addr: Multiaddr = addr.parse().unwrap();
        f.on_swarm_event(FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr: &addr }));
    }

    /// An inbound connection `id` from `peer` on `local` (a circuit address when relayed).
    fn connect_on(f: &mut QuicFirstDcutr, id: usize, peer: PeerId, local: &str) {
        let local: Multiaddr = local.parse().unwrap();
        let remote: Multiaddr = "/ip4/10.0.0.2/tcp/2".parse().unwrap();
        f.handle_established_inbound_connection(ConnectionId::new_unchecked(id), peer, &local, &remote).unwrap();
    }

    /// A relayed inbound connection `id` from `peer`: DCUtR punches over it. Returns whether the
    /// punch takes every candidate (TCP too).
    fn relayed(f: &mut QuicFirstDcutr, id: usize, peer: PeerId) -> bool {
        connect_on(f, id, peer, &format!("/ip4/10.0.0.1/tcp/1/p2p/{}/p2p-circuit", PeerId::random()));
        f.on_all.contains(&ConnectionId::new_unchecked(id))
    }

    fn both_candidates() -> QuicFirstDcutr {
        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        candidate(&mut f, "/ip4/203.0.113.7/udp/4001/quic-v1");
        f
    }

    #[test]
    fn tcp_candidates_wait_for_a_failed_punch_only_when_quic_is_known() {
        let mut f = both_candidates();
        assert!(!relayed(&mut f, 1, PeerId::random()), "with a QUIC candidate the punch offers QUIC only");

        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        assert!(relayed(&mut f, 1, PeerId::random()), "without a QUIC candidate the punch takes TCP at once");
        candidate(&mut f, "/ip4/203.0.113.7/udp/4001/quic-v1");
        assert!(!relayed(&mut f, 2, PeerId::random()), "once QUIC is known, new punches offer QUIC only");
    }

    #[test]
    fn a_failed_punch_to_one_peer_lets_only_that_peer_take_tcp() {
        let mut f = both_candidates();
        let (x, y) = (PeerId::random(), PeerId::random());
        assert!(!relayed(&mut f, 1, x));
        f.punch_failed(x);
        assert!(relayed(&mut f, 2, x), "the retry to the peer whose punch failed takes TCP too");
        assert!(!relayed(&mut f, 3, y), "a punch to another peer still offers QUIC only");
        // The relayed connection closes: its choice is forgotten, the peer's failure is not.
        let endpoint = ConnectedPoint::Listener {
            local_addr: format!("/ip4/10.0.0.1/tcp/1/p2p/{}/p2p-circuit", PeerId::random()).parse().unwrap(),
            send_back_addr: "/ip4/10.0.0.2/tcp/2".parse().unwrap(),
        };
        f.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: x,
            connection_id: ConnectionId::new_unchecked(2),
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        assert!(!f.on_all.contains(&ConnectionId::new_unchecked(2)));
        assert!(relayed(&mut f, 4, x));
    }

    #[test]
    fn failed_peers_are_bounded() {
        let mut f = both_candidates();
        let first = PeerId::random();
        f.punch_failed(first);
        for _ in 0..MAX_FAILED {
            f.punch_failed(PeerId::random());
        }
        assert_eq!(f.failed.len(), MAX_FAILED);
        assert!(!f.punch_with_all(&first), "the oldest failure is forgotten first");
    }

    #[test]
    fn a_direct_connection_is_known_to_both_and_chooses_nothing() {
        // A home reaches its relay over TCP (TCP candidate), then over QUIC: that connection,
        // or an AutoNAT dial-back, is up before identify brings the UDP candidate.
        let mut f = QuicFirstDcutr::new(PeerId::random());
        candidate(&mut f, "/ip4/203.0.113.7/tcp/4001");
        let relay = PeerId::random();
        connect_on(&mut f, 1, relay, "/ip4/10.0.0.1/udp/1/quic-v1");
        let addr: Multiaddr = "/ip4/10.0.0.9/udp/9/quic-v1".parse().unwrap();
        let id = ConnectionId::new_unchecked(2);
        f.handle_established_outbound_connection(id, relay, &addr, Endpoint::Dialer, PortUse::New).unwrap();
        assert!(f.on_all.is_empty());
        // Both DCUtRs track it: closing it must not trip either one's bookkeeping.
        let endpoint =
            ConnectedPoint::Dialer { address: addr, role_override: Endpoint::Dialer, port_use: PortUse::New };
        f.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: relay,
            connection_id: id,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 1,
        }));
        candidate(&mut f, "/ip4/203.0.113.7/udp/4001/quic-v1");
        assert!(!relayed(&mut f, 3, PeerId::random()), "the punch over the relayed connection offers QUIC only");
    }
}
