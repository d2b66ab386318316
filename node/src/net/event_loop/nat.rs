//! NAT traversal on the event loop ([`super::super::nat`]): reachability from AutoNAT,
//! reservations on relays, the relay service's events, hole punches, and which connections to a
//! peer are relayed (a relayed connection is closed as soon as a direct one exists, so requests,
//! which libp2p spreads over a peer's connections, take the direct path).
//!
//! A peer still reached only through a relay is punched again: DCUtR makes its few attempts
//! when a relayed connection opens and then gives up, and a punch can fail for reasons that
//! pass (a NAT mapping not yet made, a busy machine missing the synchronised moment). Once
//! DCUtR has given up on the peer (or after [`PUNCH_RETRY_FALLBACK`] without a word from it),
//! and [`PUNCH_RETRY_BASE`] later (doubled each time, at most [`PUNCH_RETRIES`] times per
//! peer), this node dials the peer through the relay again (the address it dialled, or, when
//! the peer dialled it, the peer's address on the same relay); the new relayed connection
//! starts a new punch, and the relayed ones are closed as soon as a direct connection exists.
//! Only the peer with the smaller id dials again, and a new punch never starts while one to
//! the same peer may still be dialling: a TCP punch
//! dials from the listen port to the peer's NAT address, and a second dial of that same address
//! pair finds it taken and goes out from a new port, which the peer's NAT drops.
//!
//! Two peers can end up with two direct QUIC connections on the same address pair (seen in
//! `bench_wan_relay`: home B held one it dialled and one it accepted, both at home A's NAT
//! address): a punch dials from the listen port, and a second punch of the same pair (DCUtR's
//! next attempt after the first timed out on one side, or the punch of a second relayed
//! connection when both peers dialled each other through the relay) completes a second
//! connection on the same 4-tuple, which QUIC tells apart by connection ids. It carried traffic
//! (libp2p spreads requests over a peer's connections), counted against the per-peer limit and
//! kept a second congestion state on the same path. So a new direct QUIC connection at the
//! address of one the peer already has is closed at once, by the peer with the smaller id only
//! (both see both connections, and might pick different ones were both to close one).
//!
//! As an AutoNAT server, this node closes each dial-back connection as soon as it is up (when
//! the peer has another connection): it has proved the address, and kept, it would count against
//! the per-peer connection limit on both sides (libp2p spreads requests over a peer's
//! connections, so sync and NAR traffic keeps it from ever going idle). The next dial-back to that
//! peer was then refused by the limit, AutoNAT v1 answers any failed dial-back "dial error", and
//! a public node (a relay reached over TCP and QUIC by its homes) took itself for private.

use std::collections::{BTreeSet, HashMap};

use libp2p::core::transport::{ListenerId, PortUse};
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::super::RequestProtocol;
use super::super::nat::{ConnectionKind, NatConfig, Reachability, SharedNat, circuit_listen_addr, is_public_addr};
use super::{EVENTS, EventLoop, MAX_ROUTING_ADDRS};

type Labels = Vec<(String, String)>;

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
}

/// The wait, after a peer was reached through a relay only, before it is punched again
/// (doubled for every further try).
pub(crate) const PUNCH_RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(4);
/// New hole punches tried per peer after the one DCUtR makes itself.
pub(crate) const PUNCH_RETRIES: u32 = 5;
/// The wait for DCUtR's verdict on a relayed connection before punching again anyway (its
/// three attempts take at most 3 x 10 s, the dial timeout).
pub(crate) const PUNCH_RETRY_FALLBACK: std::time::Duration = std::time::Duration::from_secs(40);

/// A peer reached only through a relay: how to dial it there again, and when (see the module
/// docs).
#[derive(Debug)]
struct PunchRetry {
    relayed_addr: Multiaddr,
    failures: u32,
    next: Instant,
}

/// The counters of NAT traversal, served at `GET /metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct NatMetrics {
    /// Bytes of responses received, by protocol and by the kind of connection that carried them.
    response_bytes: Family<Labels, Counter>,
    /// Hole punches by result (`success`, `failure`).
    hole_punches: Family<Labels, Counter>,
    /// As a relay: reservations accepted and circuits opened for others.
    relay_served: Family<Labels, Counter>,
}

impl NatMetrics {
    /// Registers the counters (`buildmesh_nat_*`) in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> NatMetrics {
        let m = NatMetrics::default();
        let r = registry.sub_registry_with_prefix("buildmesh_nat");
        r.register(
            "response_bytes",
            "Bytes of request-response answers received, by protocol and connection (direct, relayed)",
            m.response_bytes.clone(),
        );
        r.register("hole_punches", "DCUtR hole punches, by result", m.hole_punches.clone());
        r.register(
            "relay_served",
            "Relay service: reservations accepted and circuits opened for other peers",
            m.relay_served.clone(),
        );
        m
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The loop's NAT traversal state.
#[derive(Debug)]
pub(crate) struct NatState {
    cfg: NatConfig,
    shared: SharedNat,
    metrics: NatMetrics,
    reachability: Reachability,
    /// Open connections per peer: whether each is relayed, and its remote address.
    conns: HashMap<PeerId, HashMap<ConnectionId, (bool, Multiaddr)>>,
    /// Reservation listeners (pending or accepted) by relay.
    listeners: HashMap<ListenerId, PeerId>,
    /// Relays that accepted a reservation (and whose listener is still open).
    reserved: BTreeSet<PeerId>,
    /// Relays picked among connected peers once private (besides the configured ones).
    auto: HashMap<PeerId, Multiaddr>,
    /// Connected peers offering the relay service, with the address this node dialled them on.
    hop_peers: HashMap<PeerId, Multiaddr>,
    /// Addresses this node dialled, per peer (a relay candidate's address).
    dialled: HashMap<PeerId, Multiaddr>,
    last_try: HashMap<PeerId, Instant>,
    /// The relayed address this node dialled each peer on (to dial it again for a new punch).
    relayed_dialled: HashMap<PeerId, Multiaddr>,
    /// Peers reached only through a relay, to be punched again (see the module docs).
    punch_retries: HashMap<PeerId, PunchRetry>,
    /// Relays this node dials on their QUIC address too, having reached them over TCP first
    /// (see [`EventLoop::nat_identified`]), and when ([`super::relay_quic`]).
    relay_quic: super::relay_quic::RelayQuicDials,
    /// AutoNAT dial-backs this node (as a server) is making: per peer (one at a time), the probe
    /// and the addresses it dials (see the module docs).
    dial_backs: HashMap<PeerId, (autonat::ProbeId, Vec<Multiaddr>)>,
}

impl NatState {
    pub(crate) fn new(cfg: NatConfig, shared: SharedNat, metrics: NatMetrics) -> NatState {
        NatState {
            cfg,
            shared,
            metrics,
            reachability: Reachability::Unknown,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            reserved: BTreeSet::new(),
            auto: HashMap::new(),
            hop_peers: HashMap::new(),
            dialled: HashMap::new(),
            last_try: HashMap::new(),
            relayed_dialled: HashMap::new(),
            punch_retries: HashMap::new(),
            relay_quic: Default::default(),
            dial_backs: HashMap::new(),
        }
    }

    /// Whether a connection this node dialled to `peer` at `address` is its AutoNAT dial-back
    /// (AutoNAT dials from a new port, as the dialer, one of the addresses of its probe);
    /// forgets the dial-back if so.
    fn take_dial_back(&mut self, peer: &PeerId, endpoint: &ConnectedPoint) -> bool {
        let ConnectedPoint::Dialer { address, role_override: Endpoint::Dialer, port_use: PortUse::New } = endpoint
        else {
            return false;
        };
        let ours = self.dial_backs.get(peer).is_some_and(|(_, addrs)| addrs.contains(address));
        if ours {
            self.dial_backs.remove(peer);
        }
        ours
    }

    /// AutoNAT's server side: remember the dial-back of a probe until its connection is up or it
    /// failed.
    fn on_inbound_probe(&mut self, ev: &autonat::InboundProbeEvent) {
        match ev {
            autonat::InboundProbeEvent::Request { probe_id, peer, addresses } => {
                self.dial_backs.insert(*peer, (*probe_id, addresses.clone()));
            }
            autonat::InboundProbeEvent::Response { probe_id, peer, .. }
            | autonat::InboundProbeEvent::Error { probe_id, peer, .. } => {
                // A refused second request of the same peer does not end the one under way.
                if self.dial_backs.get(peer).is_some_and(|(p, _)| p == probe_id) {
                    self.dial_backs.remove(peer);
                }
            }
        }
    }

    /// Whether `peer` already has a direct QUIC connection at `remote` (ignoring a trailing
    /// `/p2p/<peer id>`): a new one is the duplicate of a simultaneous open (see the module docs).
    fn duplicate_quic(&self, peer: &PeerId, remote: &Multiaddr) -> bool {
        let bare = |a: &Multiaddr| -> Multiaddr {
            a.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()
        };
        let remote = bare(remote);
        self.conns.get(peer).is_some_and(|c| c.values().any(|(r, a)| !r && is_quic(a) && bare(a) == remote))
    }

    fn kind(&self, peer: &PeerId) -> ConnectionKind {
        match self.conns.get(peer) {
            Some(c) if c.values().any(|(relayed, _)| !relayed) => ConnectionKind::Direct,
            Some(c) if !c.is_empty() => ConnectionKind::Relayed,
            _ => ConnectionKind::None,
        }
    }

    fn publish(&self, peer: PeerId) {
        let kind = self.kind(&peer);
        let direct: Vec<Multiaddr> = self
            .conns
            .get(&peer)
            .map(|c| c.values().filter(|(relayed, _)| !relayed).map(|(_, a)| a.clone()).collect())
            .unwrap_or_default();
        let mut map = self.shared.connections.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kind == ConnectionKind::None {
            map.remove(&peer);
        } else {
            map.insert(peer, kind);
        }
        drop(map);
        let mut map = self.shared.direct_addresses.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if direct.is_empty() {
            map.remove(&peer);
        } else {
            map.insert(peer, direct);
        }
    }

    /// Counts a response of `len` bytes from `peer` on `conn`.
    pub(crate) fn count_response(&self, protocol: RequestProtocol, peer: &PeerId, conn: &ConnectionId, len: usize) {
        let relayed = self.conns.get(peer).and_then(|c| c.get(conn)).is_some_and(|(relayed, _)| *relayed);
        let kind = if relayed { "relayed" } else { "direct" };
        let name = protocol.to_string();
        let name = name.rsplit('/').nth(1).unwrap_or(&name).to_string();
        self.metrics
            .response_bytes
            .get_or_create(&labels(&[("protocol", &name), ("connection", kind)]))
            .inc_by(len as u64);
    }
}

impl EventLoop {
    /// A connection came up: record whether it is relayed; a direct one replaces relayed ones;
    /// an AutoNAT dial-back is closed at once (see the module docs).
    pub(super) fn nat_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        if self.nat.take_dial_back(&peer, endpoint) && self.nat.conns.get(&peer).is_some_and(|c| !c.is_empty()) {
            // AutoNAT has seen it (behaviours hear of a connection before the loop does) and
            // answers the probe on the connection the request came on.
            debug!(target: EVENTS, event = "autonat_dial_back_closed", %peer, address = %endpoint.get_remote_address());
            self.swarm.close_connection(id);
            return;
        }
        let relayed = endpoint.is_relayed();
        if !relayed && is_quic(endpoint.get_remote_address()) {
            if self.nat.duplicate_quic(&peer, endpoint.get_remote_address()) && self.local_peer_id < peer {
                info!(target: EVENTS, event = "duplicate_connection_closed", %peer, address = %endpoint.get_remote_address(), "a second QUIC connection on the same address pair; closing the new one");
                self.swarm.close_connection(id);
                return;
            }
            self.nat.relay_quic.connected(&peer);
        }
        match endpoint {
            ConnectedPoint::Dialer { address, .. } if relayed => {
                self.nat.relayed_dialled.insert(peer, address.clone());
            }
            ConnectedPoint::Dialer { address, .. } => {
                self.nat.dialled.insert(peer, address.clone());
            }
            // The peer dialled us through a relay: it is reached on the same relay at our
            // circuit address with its id in place of ours.
            ConnectedPoint::Listener { local_addr, .. } if relayed => {
                let mut addr: Multiaddr =
                    local_addr.iter().take_while(|p| !matches!(p, libp2p::multiaddr::Protocol::P2pCircuit)).collect();
                addr.push(libp2p::multiaddr::Protocol::P2pCircuit);
                addr.push(libp2p::multiaddr::Protocol::P2p(peer));
                self.nat.relayed_dialled.entry(peer).or_insert(addr);
            }
            ConnectedPoint::Listener { .. } => {}
        }
        let conns = self.nat.conns.entry(peer).or_default();
        conns.insert(id, (relayed, endpoint.get_remote_address().clone()));
        let has_direct = conns.values().any(|(r, _)| !r);
        let relayed_ids: Vec<ConnectionId> = conns.iter().filter(|(_, (r, _))| *r).map(|(c, _)| *c).collect();
        debug!(target: EVENTS, event = "connection", %peer, relayed, address = %endpoint.get_remote_address());
        if has_direct {
            self.nat.punch_retries.remove(&peer);
        } else if let Some(addr) = self.nat.relayed_dialled.get(&peer).cloned() {
            // DCUtR is punching on this connection now: the retry waits for its verdict.
            let r = self.nat.punch_retries.entry(peer).or_insert(PunchRetry {
                relayed_addr: addr,
                failures: 0,
                next: Instant::now(),
            });
            r.next = r.next.max(Instant::now() + PUNCH_RETRY_FALLBACK);
        }
        if has_direct && !relayed_ids.is_empty() {
            info!(target: EVENTS, event = "direct_connection", %peer, closed_relayed = relayed_ids.len(), "direct connection to a peer reached through a relay; closing the relayed one");
            for c in relayed_ids {
                self.swarm.close_connection(c);
            }
        }
        self.nat.publish(peer);
    }

    /// Kademlia recorded `addresses` for `peer`: when the peer has a relayed address (it is
    /// behind NAT), its direct reachable-looking ones are dropped from the routing table again
    /// ([`super::super::nat::relay_first`]); the rest is returned. Kademlia records the address
    /// of every connection this node dialled, a punched one too, and hands it to every peer that
    /// asks: those peers' queries then dial the NAT address at the same time as the relayed one,
    /// which breaks their punch (docs/nat.md, "Why a punch failed here").
    ///
    /// Of the rest, only the [`MAX_ROUTING_ADDRS`] added last are kept (Kademlia appends new
    /// addresses): a peer announcing ever new addresses cannot grow its entry.
    pub(super) fn nat_prune_routing(&mut self, peer: PeerId, addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let mut keep = super::super::nat::relay_first(addresses.clone(), self.nat.cfg.private_as_public);
        for a in addresses.iter().filter(|a| !keep.contains(a)) {
            debug!(target: EVENTS, event = "nat_address_unlisted", %peer, address = %a);
            self.swarm.behaviour_mut().kad.remove_address(&peer, a);
        }
        if keep.len() > MAX_ROUTING_ADDRS {
            let surplus: Vec<Multiaddr> = keep.drain(..keep.len() - MAX_ROUTING_ADDRS).collect();
            debug!(target: EVENTS, event = "routing_addresses_capped", %peer, dropped = surplus.len());
            for a in &surplus {
                self.swarm.behaviour_mut().kad.remove_address(&peer, a);
            }
        }
        keep
    }

    /// Whether private address ranges count as reachable (`nat.private_as_public`).
    pub(super) fn nat_private_as_public(&self) -> bool {
        self.nat.cfg.private_as_public
    }

    /// A connection closed.
    pub(super) fn nat_disconnected(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(c) = self.nat.conns.get_mut(&peer) {
            c.remove(&id);
            if c.is_empty() {
                self.nat.conns.remove(&peer);
                self.nat.dial_backs.remove(&peer);
                self.nat.hop_peers.remove(&peer);
                self.nat.relayed_dialled.remove(&peer);
                self.nat.punch_retries.remove(&peer);
            }
        }
        self.nat.publish(peer);
    }

    /// Identify told us what `peer` runs and where it listens: remember peers offering the
    /// relay service, and reach a relay this node reserves on over QUIC as well when it was
    /// reached over TCP only.
    ///
    /// DCUtR punches with the addresses identify observed for this node, so over the transports
    /// this node reaches public peers with: a home that reaches its relay over TCP only has no
    /// UDP candidate and punches over TCP only (where a TCP simultaneous open is the fragile
    /// one: docs/nat.md, "Why a punch failed here"). So while this node is not public and a
    /// relay it reserves on (configured or picked) announces a reachable QUIC listen address,
    /// it dials that address too (a second connection to the relay): the relay observes this
    /// node's UDP mapping, which then goes into every punch as a candidate. It dials it again
    /// whenever that QUIC connection is gone, with a back-off ([`super::relay_quic`]).
    pub(super) fn nat_identified(&mut self, peer: PeerId, protocols: &[libp2p::StreamProtocol], listen: &[Multiaddr]) {
        if protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            if let Some(addr) = self.nat.dialled.get(&peer)
                && is_public_addr(addr, self.nat.cfg.private_as_public)
                && !super::super::nat::is_relayed(addr)
            {
                self.nat.hop_peers.insert(peer, addr.clone());
            }
        } else {
            self.nat.hop_peers.remove(&peer);
            return;
        }
        if !self.nat_is_our_relay(&peer) || self.nat.reachability == Reachability::Public {
            return;
        }
        let Some(quic) = listen.iter().find(|a| {
            is_quic(a) && !super::super::nat::is_relayed(a) && is_public_addr(a, self.nat.cfg.private_as_public)
        }) else {
            return;
        };
        self.nat.relay_quic.learn(peer, quic.clone(), Instant::now());
        self.relay_quic_dial();
    }

    /// Whether `peer` is a relay this node reserves on (configured or picked).
    fn nat_is_our_relay(&self, peer: &PeerId) -> bool {
        self.nat.auto.contains_key(peer)
            || self.nat.cfg.relays.iter().any(|a| super::super::peer_id_of(a) == Some(*peer))
    }

    /// Dial the QUIC address of each relay of this node that it reaches, but not over QUIC, and
    /// whose back-off allows it ([`super::relay_quic`]): at once the first time, and again after
    /// that QUIC connection closed (relay restart, NAT mapping expiry).
    fn relay_quic_dial(&mut self) {
        let mut ours: BTreeSet<PeerId> = self.nat.cfg.relays.iter().filter_map(super::super::peer_id_of).collect();
        ours.extend(self.nat.auto.keys().copied());
        let NatState { relay_quic, conns, .. } = &mut self.nat;
        relay_quic.retain(|p| ours.contains(p));
        // Reached directly (over TCP), not over QUIC: a relay not reached at all is dialled
        // over TCP by the reservation first, and identify on that connection brings it here.
        let due = relay_quic.due(Instant::now(), |p| {
            conns.get(p).is_some_and(|c| c.values().any(|(r, _)| !r) && !c.values().any(|(r, a)| !r && is_quic(a)))
        });
        for (peer, quic) in due {
            info!(target: EVENTS, event = "relay_quic_dial", relay = %peer, address = %quic, "reaching the relay over QUIC as well, for UDP hole punches");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(vec![quic])
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(target: EVENTS, event = "relay_quic_dial_failed", relay = %peer, cause = %e);
            }
        }
    }

    /// A listener closed: a reservation ended (or could not be made).
    pub(super) fn nat_listener_closed(&mut self, id: ListenerId) {
        if let Some(relay) = self.nat.listeners.remove(&id) {
            self.nat.reserved.remove(&relay);
            info!(target: EVENTS, event = "relay_reservation_closed", %relay, "reservation on a relay ended");
        }
    }

    /// Every tick: punch again where a punch failed; reserve on relays while this node is not
    /// public.
    pub(super) fn nat_housekeeping(&mut self) {
        self.punch_again();
        if self.nat.reachability == Reachability::Public {
            return;
        }
        self.relay_quic_dial();
        let now = Instant::now();
        let retry = self.cfg.redial_interval.max(std::time::Duration::from_secs(1));
        let mut wanted: Vec<(PeerId, Multiaddr)> = Vec::new();
        for addr in &self.nat.cfg.relays {
            if let Some(peer) = super::super::peer_id_of(addr) {
                wanted.push((peer, addr.clone()));
            }
        }
        if self.nat.reachability == Reachability::Private {
            let room = self.nat.cfg.auto_relays.saturating_sub(self.nat.auto.len());
            let picks: Vec<(PeerId, Multiaddr)> = self
                .nat
                .hop_peers
                .iter()
                .filter(|(p, _)| !self.nat.auto.contains_key(p) && !wanted.iter().any(|(w, _)| w == *p))
                .filter_map(|(p, a)| Some((*p, super::super::nat::picked_relay_addr(a, *p)?)))
                .take(room)
                .collect();
            for (p, a) in picks {
                info!(target: EVENTS, event = "relay_picked", relay = %p, address = %a, "reserving on a connected peer that offers the relay service");
                self.nat.auto.insert(p, a);
            }
            wanted.extend(self.nat.auto.iter().map(|(p, a)| (*p, a.clone())));
        }
        for (relay, addr) in wanted {
            if self.nat.listeners.values().any(|r| *r == relay) {
                continue;
            }
            if self.nat.last_try.get(&relay).is_some_and(|t| now.duration_since(*t) < retry) {
                continue;
            }
            self.nat.last_try.insert(relay, now);
            let circuit = circuit_listen_addr(&addr);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    debug!(target: EVENTS, event = "relay_reserving", %relay, address = %circuit);
                    self.nat.listeners.insert(id, relay);
                }
                Err(e) => warn!(%relay, address = %circuit, cause = %e, "cannot reserve a slot on a relay"),
            }
        }
    }

    pub(super) fn on_autonat(&mut self, ev: autonat::Event) {
        match ev {
            autonat::Event::StatusChanged { old, new } => {
                let r = match &new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                info!(target: EVENTS, event = "reachability", reachability = r.as_str(), ?old, ?new, "reachability changed");
                self.nat.reachability = r;
                *self.nat.shared.reachability.write().unwrap_or_else(std::sync::PoisonError::into_inner) = r;
                if r == Reachability::Public {
                    // Reservations on picked relays are not needed any more (configured ones stay).
                    self.nat.auto.clear();
                }
            }
            autonat::Event::InboundProbe(probe) => {
                debug!(?probe, "autonat");
                self.nat.on_inbound_probe(&probe);
            }
            other => debug!(?other, "autonat"),
        }
    }

    pub(super) fn on_relay_server(&mut self, ev: relay::Event) {
        match ev {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed } => {
                if !renewed {
                    info!(target: EVENTS, event = "relay_reservation_accepted", peer = %src_peer_id, "a peer reserved a slot on this relay");
                }
                self.nat.metrics.relay_served.get_or_create(&labels(&[("kind", "reservation")])).inc();
            }
            relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                info!(target: EVENTS, event = "relay_circuit", src = %src_peer_id, dst = %dst_peer_id, "relaying a circuit");
                self.nat.metrics.relay_served.get_or_create(&labels(&[("kind", "circuit")])).inc();
            }
            relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                debug!(target: EVENTS, event = "relay_circuit_denied", src = %src_peer_id, dst = %dst_peer_id, ?status);
            }
            relay::Event::ReservationReqDenied { src_peer_id, status } => {
                debug!(target: EVENTS, event = "relay_reservation_denied", peer = %src_peer_id, ?status);
            }
            relay::Event::StatusChanged { status } => {
                info!(target: EVENTS, event = "relay_service", ?status, "relay service status");
            }
            other => debug!(?other, "relay service"),
        }
    }

    pub(super) fn on_relay_client(&mut self, ev: relay::client::Event) {
        match ev {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, limit } => {
                self.nat.reserved.insert(relay_peer_id);
                if !renewal {
                    info!(target: EVENTS, event = "relay_reserved", relay = %relay_peer_id, ?limit, "reserved a slot on a relay");
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                debug!(target: EVENTS, event = "circuit_out", relay = %relay_peer_id);
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                debug!(target: EVENTS, event = "circuit_in", src = %src_peer_id);
            }
        }
    }

    /// Dial again, through the relay, the peers whose punch failed and whose retry is due (see
    /// the module docs).
    fn punch_again(&mut self) {
        let now = Instant::now();
        let due: Vec<(PeerId, Multiaddr)> = self
            .nat
            .punch_retries
            .iter()
            // One side of each pair dials again (the smaller peer id), so that two new relayed
            // connections, each starting a punch of the same address pair, do not collide.
            .filter(|(p, r)| r.next <= now && self.local_peer_id < **p && self.nat.kind(p) == ConnectionKind::Relayed)
            .map(|(p, r)| (*p, r.relayed_addr.clone()))
            .collect();
        for (peer, addr) in due {
            if let Some(r) = self.nat.punch_retries.get_mut(&peer) {
                r.failures += 1;
                // The new relayed connection's punch reports first (`on_dcutr`); a peer that
                // is out of retries is left on the relay.
                r.next = if r.failures >= PUNCH_RETRIES {
                    now + std::time::Duration::from_secs(24 * 3600)
                } else {
                    now + PUNCH_RETRY_FALLBACK
                };
            }
            info!(target: EVENTS, event = "hole_punch_retry", %peer, address = %addr, "dialling a peer through the relay again for a new hole punch");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(vec![addr])
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(target: EVENTS, event = "hole_punch_retry_failed", %peer, cause = %e);
            }
        }
    }

    pub(super) fn on_dcutr(&mut self, ev: dcutr::Event) {
        let peer = ev.remote_peer_id;
        match ev.result {
            Ok(conn) => {
                info!(target: EVENTS, event = "hole_punched", %peer, connection = ?conn, "hole punch succeeded: direct connection");
                self.nat.metrics.hole_punches.get_or_create(&labels(&[("result", "success")])).inc();
            }
            Err(e) => {
                info!(target: EVENTS, event = "hole_punch_failed", %peer, cause = %e, "hole punch failed; staying on the relay");
                self.nat.metrics.hole_punches.get_or_create(&labels(&[("result", "failure")])).inc();
                // DCUtR is done with this connection: punch again after the back-off.
                if let Some(r) = self.nat.punch_retries.get_mut(&peer)
                    && r.failures < PUNCH_RETRIES
                {
                    r.next = Instant::now() + PUNCH_RETRY_BASE * 2u32.pow(r.failures);
                }
            }
        }
    }
}
