//! The task that owns the Swarm.
//!
//! One `select!` (biased) serves, in order: the priority inbox (shutdown), the event backlog, the
//! command channel (at most [`COMMAND_BURST`] in a row, so the swarm is never starved), the
//! housekeeping tick and the swarm. When the application does not drain events and the backlog
//! reaches `event_buffer`, the swarm is no longer polled (backpressure) but commands still are.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, mdns};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, trace, warn};

use super::behaviour::{
    ID_PROTOCOL_VERSION, KAD_PROTOCOL, MeshBehaviour, MeshBehaviourEvent, build_swarm, score_thresholds,
};
use super::config::{NetConfig, peer_id_of};
use super::handle::RequestError;
use super::handle::{Command, DialError, HandleTimeouts, NetError, NetHandle, Priority};
use super::peer_limits::PeerLimits;
use super::{GossipMessage, InboundId, NetEvent, RequestProtocol, SharedConduct, SpawnError};

mod commands;
mod nat;
mod relay_quic;
mod requests;

/// Commands handled in a row before the swarm gets a turn.
const COMMAND_BURST: u32 = 64;
/// Housekeeping period (publish-queue expiry, redials).
const TICK: Duration = Duration::from_millis(500);
/// Providers dialled per `get_providers` query at most.
const MAX_PROVIDER_DIALS: usize = 8;
/// Capacity of the priority inbox.
const PRIORITY_BUFFER: usize = 4;
/// Tracing target of the machine-readable events tests and tools may assert on.
const EVENTS: &str = "buildmesh::_events::net";
/// Addresses of one peer in Kademlia's routing table at most (libp2p keeps every address it is
/// given: a peer pushing identify with new addresses grew its entry without bound, and once an
/// answer naming it passed Kademlia's frame limit, every lookup through this node failed).
/// Also the most taken from one identify message. 20 peers of 8 addresses fit in one frame.
pub(crate) const MAX_ROUTING_ADDRS: usize = 8;

type Reply<T> = oneshot::Sender<T>;
type PendingRequests = HashMap<(RequestProtocol, OutboundRequestId), (PeerId, Reply<Result<Vec<u8>, RequestError>>)>;

struct QueuedPublish {
    data: Vec<u8>,
    queued_at: Instant,
}

struct PendingProviders {
    found: BTreeSet<PeerId>,
    dialled: usize,
    reply: Reply<Result<BTreeSet<PeerId>, NetError>>,
}

/// Owns the `Swarm<MeshBehaviour>`; created by [`spawn`](super::spawn), driven by [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<MeshBehaviour>,
    cfg: NetConfig,
    local_peer_id: PeerId,
    commands: mpsc::Receiver<Command>,
    priority: mpsc::Receiver<Priority>,
    events: mpsc::Sender<NetEvent>,
    events_closed: bool,
    backlog: VecDeque<NetEvent>,
    pending_dials: HashMap<ConnectionId, (Multiaddr, Reply<Result<PeerId, DialError>>)>,
    pending_requests: PendingRequests,
    /// Inbound requests waiting for an answer, with their requester.
    pending_inbound: HashMap<InboundId, (PeerId, ResponseChannel<Vec<u8>>)>,
    peer_limits: PeerLimits,
    /// Peers below the graylist threshold at the last tick (to log each crossing once).
    graylisted: BTreeSet<PeerId>,
    conduct: SharedConduct,
    pending_start_providing: HashMap<kad::QueryId, Reply<Result<(), NetError>>>,
    pending_get_providers: HashMap<kad::QueryId, PendingProviders>,
    publish_queue: HashMap<gossipsub::TopicHash, VecDeque<QueuedPublish>>,
    queued_publishes: usize,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Failed dials of bootstrap peers so far (the 1st, 10th, 100th, ... are logged at warn).
    bootstrap_dial_failures: u64,
    last_dial: HashMap<PeerId, Instant>,
    last_redial: Instant,
    kad_bootstrapped: bool,
    nat: nat::NatState,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("local_peer_id", &self.local_peer_id)
            .field("connected", &self.swarm.connected_peers().count())
            .field("pending_requests", &self.pending_requests.len())
            .field("pending_inbound", &self.pending_inbound.len())
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Builds the swarm, starts listening, subscribes the configured topics and dials the
    /// bootstrap peers; returns the loop (not yet running), its handle and the event receiver.
    pub fn new(
        keypair: Keypair,
        cfg: NetConfig,
    ) -> Result<(EventLoop, NetHandle, mpsc::Receiver<NetEvent>), SpawnError> {
        cfg.validate()?;
        let local_peer_id = keypair.public().to_peer_id();
        let mut registry = libp2p::metrics::Registry::default();
        let mut swarm = build_swarm(keypair, &cfg, &mut registry)?;
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| SpawnError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        }
        for topic in &cfg.topics {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic.clone()))
                .map_err(|e| SpawnError::Subscribe { topic: topic.clone(), reason: e.to_string() })?;
        }
        let mut bootstrap = Vec::new();
        for addr in &cfg.bootstrap {
            // validate() checked that every bootstrap address carries a peer id.
            if let Some(peer) = peer_id_of(addr) {
                bootstrap.push((peer, addr.clone()));
            }
        }

        let (cmd_tx, cmd_rx) = mpsc::channel(cfg.command_buffer);
        let (prio_tx, prio_rx) = mpsc::channel(PRIORITY_BUFFER);
        let (ev_tx, ev_rx) = mpsc::channel(cfg.event_buffer);
        let conduct = SharedConduct::default();
        let nat_shared = super::nat::SharedNat::default();
        let nat = nat::NatState::new(cfg.nat.clone(), nat_shared.clone(), nat::NatMetrics::register(&mut registry));
        let handle = NetHandle {
            limits: [cfg.closure_limits, cfg.nar_limits, cfg.sync_limits],
            unread: super::unread::SharedUnread::default(),
            nat: nat_shared,
            conduct: conduct.clone(),
            commands: cmd_tx,
            priority: prio_tx,
            local_peer_id,
            metrics: std::sync::Arc::new(registry),
            timeouts: HandleTimeouts {
                request: cfg.request_timeout,
                dial: cfg.dial_timeout,
                kad: cfg.kad_query_timeout,
            },
        };
        let mut event_loop = EventLoop {
            swarm,
            local_peer_id,
            commands: cmd_rx,
            priority: prio_rx,
            events: ev_tx,
            events_closed: false,
            backlog: VecDeque::new(),
            pending_dials: HashMap::new(),
            pending_requests: HashMap::new(),
            pending_inbound: HashMap::new(),
            peer_limits: PeerLimits::new(cfg.peer_limits),
            graylisted: BTreeSet::new(),
            conduct,
            pending_start_providing: HashMap::new(),
            pending_get_providers: HashMap::new(),
            publish_queue: HashMap::new(),
            queued_publishes: 0,
            bootstrap,
            bootstrap_dial_failures: 0,
            last_dial: HashMap::new(),
            last_redial: Instant::now(),
            kad_bootstrapped: false,
            nat,
            cfg,
        };
        event_loop.dial_bootstrap_peers();
        Ok((event_loop, handle, ev_rx))
    }

    /// Runs until shutdown is requested or every handle is dropped.
    pub async fn run(mut self) {
        info!(peer = %self.local_peer_id, "network event loop started");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut burst = 0u32;
        loop {
            let swarm_ready = self.backlog.len() < self.cfg.event_buffer;
            tokio::select! {
                biased;
                msg = self.priority.recv() => match msg {
                    Some(Priority::Shutdown) | None => break,
                },
                // An owned permit, so that no borrow of `self` outlives the branch.
                permit = self.events.clone().reserve_owned(), if !self.backlog.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(ev) = self.backlog.pop_front() {
                            permit.send(ev);
                        }
                    }
                    Err(_) => self.close_events(),
                },
                cmd = self.commands.recv(), if burst < COMMAND_BURST => {
                    burst += 1;
                    match cmd {
                        Some(cmd) => self.handle_command(cmd),
                        None => break,
                    }
                },
                _ = tick.tick() => {
                    burst = 0;
                    self.housekeeping();
                },
                ev = self.swarm.select_next_some(), if swarm_ready => {
                    burst = 0;
                    self.handle_swarm_event(ev);
                },
            }
        }
        info!(peer = %self.local_peer_id, "network event loop stopped");
    }

    fn close_events(&mut self) {
        if !self.events_closed {
            debug!("event receiver dropped; discarding further events");
        }
        self.events_closed = true;
        self.backlog.clear();
    }

    fn emit(&mut self, ev: NetEvent) {
        if self.events_closed {
            return;
        }
        if self.backlog.is_empty() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => self.backlog.push_back(ev),
                Err(mpsc::error::TrySendError::Closed(_)) => self.close_events(),
            }
        } else {
            self.backlog.push_back(ev);
        }
    }

    fn with_p2p(&self, addr: Multiaddr) -> Multiaddr {
        if peer_id_of(&addr).is_some() { addr } else { addr.with(Protocol::P2p(self.local_peer_id)) }
    }

    // ---------------------------------------------------------------- dialling

    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer_id || self.swarm.is_connected(&peer) {
            return;
        }
        let now = Instant::now();
        if let Some(last) = self.last_dial.get(&peer)
            && now.duration_since(*last) < self.cfg.redial_interval
        {
            return;
        }
        self.last_dial.insert(peer, now);
        let addrs = super::nat::relay_first(addrs, self.nat_private_as_public());
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, cause = %e, "dial not started");
        }
    }

    /// Dial again from a new port the addresses a dial could not bind its listening port for.
    ///
    /// A TCP dial reuses the listening port (for hole punching), binding `0.0.0.0:<port>`. Any
    /// other socket on that port on another local address (an outgoing connection from another
    /// interface, or its TIME_WAIT) makes that bind fail for as long as the socket lives,
    /// although the listener on `127.0.0.1:<port>` bound fine: every dial of such a node failed
    /// for a minute and it stayed out of the mesh. Returns whether a new dial took over (a
    /// pending [`Command::Dial`] reply moves to it).
    fn redial_from_new_port(
        &mut self,
        failed: ConnectionId,
        peer: Option<PeerId>,
        error: &libp2p::swarm::DialError,
    ) -> bool {
        let libp2p::swarm::DialError::Transport(errors) = error else { return false };
        let addrs: Vec<Multiaddr> = errors.iter().filter(|(_, e)| port_in_use(e)).map(|(a, _)| a.clone()).collect();
        if addrs.is_empty() {
            return false;
        }
        let opts = match peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::Disconnected)
                .allocate_new_port()
                .build(),
            None if addrs.len() == 1 => {
                DialOpts::unknown_peer_id().address(addrs[0].clone()).allocate_new_port().build()
            }
            None => return false,
        };
        let id = opts.connection_id();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(?peer, cause = %e, "dial from a new port not started");
            return false;
        }
        debug!(target: EVENTS, event = "dial_port_in_use", ?peer, "listening port taken for dialling; dialling from a new port");
        if let Some(pending) = self.pending_dials.remove(&failed) {
            self.pending_dials.insert(id, pending);
        }
        true
    }

    fn dial_bootstrap_peers(&mut self) {
        for (peer, addr) in self.bootstrap.clone() {
            let mut plain = addr.clone();
            if matches!(plain.iter().last(), Some(Protocol::P2p(_))) {
                plain.pop();
            }
            self.swarm.behaviour_mut().kad.add_address(&peer, plain);
            self.dial_peer(peer, vec![addr]);
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        // Expire queued publishes.
        let ttl = self.cfg.publish_queue_ttl;
        let mut expired = 0usize;
        for queue in self.publish_queue.values_mut() {
            while queue.front().is_some_and(|q| now.duration_since(q.queued_at) >= ttl) {
                queue.pop_front();
                expired += 1;
            }
        }
        if expired > 0 {
            self.queued_publishes -= expired;
            self.publish_queue.retain(|_, q| !q.is_empty());
            warn!(expired, "dropped queued gossip messages: no subscriber within publish_queue_ttl");
        }
        // Drop inbound requests whose requester is gone (libp2p also reports most of them).
        let limits = &mut self.peer_limits;
        self.pending_inbound.retain(|_, (peer, ch)| {
            let open = ch.is_open();
            if !open {
                limits.done(peer);
            }
            open
        });
        self.review_peers(now);
        self.nat_housekeeping();

        if now.duration_since(self.last_redial) >= self.cfg.redial_interval {
            self.last_redial = now;
            let interval = self.cfg.redial_interval;
            self.last_dial.retain(|_, t| now.duration_since(*t) < interval);
            self.dial_bootstrap_peers();
            self.top_up_peers();
            self.rebootstrap_if_lonely();
        }
    }

    /// Lets strikes decay (telling gossipsub the new application scores), logs each peer that
    /// fell below or rose above the graylist threshold, and publishes the conduct records.
    fn review_peers(&mut self, now: Instant) {
        for (peer, score) in self.peer_limits.decay(now) {
            self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
        }
        let threshold = score_thresholds().graylist_threshold;
        let mut records: HashMap<PeerId, super::PeerConduct> = HashMap::new();
        let mut peers: BTreeSet<PeerId> = self.swarm.connected_peers().copied().collect();
        peers.extend(self.peer_limits.peers().copied());
        peers.extend(self.graylisted.iter().copied());
        let mut graylisted = BTreeSet::new();
        for peer in peers {
            let mut c = self.peer_limits.conduct(&peer);
            c.gossip_score = self.swarm.behaviour().gossipsub.peer_score(&peer).map(|s| (s * 100.0).round() / 100.0);
            c.graylisted = c.gossip_score.is_some_and(|s| s < threshold);
            if c.graylisted {
                graylisted.insert(peer);
                if !self.graylisted.contains(&peer) {
                    warn!(target: EVENTS, event = "peer_graylisted", %peer, score = ?c.gossip_score, strikes = c.strikes, "peer graylisted: its gossip is ignored and its requests refused");
                }
            } else if self.graylisted.contains(&peer) && c.gossip_score.is_none() && c.strikes > 0.0 {
                // Gone, and gossipsub forgot its score: still held against it while strikes last.
                c.graylisted = true;
                graylisted.insert(peer);
            } else if self.graylisted.contains(&peer) {
                info!(target: EVENTS, event = "peer_forgiven", %peer, score = ?c.gossip_score, "peer no longer graylisted");
            }
            if c != super::PeerConduct::default() {
                records.insert(peer, c);
            }
        }
        self.graylisted = graylisted;
        *self.conduct.write().unwrap_or_else(std::sync::PoisonError::into_inner) = records;
    }

    /// Whether `peer` is below the graylist threshold now.
    fn is_graylisted(&self, peer: &PeerId) -> bool {
        self.swarm.behaviour().gossipsub.peer_score(peer).is_some_and(|s| s < score_thresholds().graylist_threshold)
    }

    /// Re-runs a Kademlia bootstrap while the node has fewer peers than it wants: the first
    /// bootstrap may have raced with peers that joined the bootstrap node a moment later.
    fn rebootstrap_if_lonely(&mut self) {
        if self.swarm.connected_peers().count() < self.cfg.target_peers && self.swarm.connected_peers().count() > 0 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Dials routing-table peers while fewer than `target_peers` are connected.
    fn top_up_peers(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected >= self.cfg.target_peers {
            return;
        }
        let mut candidates = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                candidates.push((*entry.node.key.preimage(), entry.node.value.iter().cloned().collect::<Vec<_>>()));
            }
        }
        let want = self.cfg.target_peers - connected;
        candidates.retain(|(p, _)| !self.swarm.is_connected(p));
        candidates.truncate(want);
        for (peer, addrs) in candidates {
            self.dial_peer(peer, addrs);
        }
    }

    // ---------------------------------------------------------------- swarm events

    fn handle_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(ev) => self.handle_behaviour_event(ev),
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = self.with_p2p(address);
                info!(%address, "listening");
                self.emit(NetEvent::NewListenAddr { address });
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.nat_connected(peer_id, connection_id, &endpoint);
                if num_established.get() == 1 {
                    let address = endpoint.get_remote_address().clone();
                    debug!(target: EVENTS, event = "peer_connected", peer = %peer_id, %address);
                    self.emit(NetEvent::PeerConnected { peer: peer_id, address });
                }
                if !self.kad_bootstrapped {
                    self.kad_bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.nat_disconnected(peer_id, connection_id);
                if num_established == 0 {
                    debug!(target: EVENTS, event = "peer_disconnected", peer = %peer_id, cause = ?cause);
                    self.emit(NetEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                debug!(peer = ?peer_id, cause = %error, "outgoing connection failed");
                if self.redial_from_new_port(connection_id, peer_id, &error) {
                    return;
                }
                if let Some(peer) = peer_id
                    && self.bootstrap.iter().any(|(b, _)| *b == peer)
                {
                    // An operator's first question when a node does not join: why.
                    self.bootstrap_dial_failures += 1;
                    if is_power_of_ten(self.bootstrap_dial_failures) {
                        warn!(%peer, failures = self.bootstrap_dial_failures, cause = %error, "bootstrap peer not reached");
                    }
                }
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(DialError::Failed { addr, reason: error.to_string() }));
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                if let libp2p::swarm::ListenError::Denied { cause } = &error
                    && let Some(t) = cause.downcast_ref::<super::ip_limits::TooManyFromIp>()
                {
                    // Every refusal at debug level; the 1st, 10th, 100th, ... at warn.
                    if is_power_of_ten(t.refused_total) {
                        warn!(target: EVENTS, event = "connections_per_ip_refused", %send_back_addr, max = t.max, refused_total = t.refused_total, "connection refused: too many from one IP address");
                    }
                }
                debug!(%send_back_addr, cause = %error, "incoming connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => warn!(cause = %error, "listener error"),
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                self.nat_listener_closed(listener_id);
                warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => debug!(%address, "listen address expired"),
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Gossipsub(ev) => self.on_gossipsub(ev),
            MeshBehaviourEvent::Kad(ev) => self.on_kad(ev),
            MeshBehaviourEvent::Identify(ev) => self.on_identify(ev),
            MeshBehaviourEvent::Mdns(ev) => self.on_mdns(ev),
            MeshBehaviourEvent::Closure(ev) => self.on_rr(RequestProtocol::Closure, ev),
            MeshBehaviourEvent::Nar(ev) => self.on_rr(RequestProtocol::Nar, ev),
            MeshBehaviourEvent::Sync(ev) => self.on_rr(RequestProtocol::Sync, ev),
            MeshBehaviourEvent::Autonat(ev) => self.on_autonat(ev),
            MeshBehaviourEvent::Relay(ev) => self.on_relay_server(ev),
            MeshBehaviourEvent::RelayClient(ev) => self.on_relay_client(ev),
            MeshBehaviourEvent::Dcutr(ev) => self.on_dcutr(ev),
            MeshBehaviourEvent::Ping(ev) => {
                if let Err(e) = ev.result {
                    debug!(peer = %ev.peer, cause = %e, "ping failed");
                }
            }
            MeshBehaviourEvent::Limits(never)
            | MeshBehaviourEvent::IpLimits(never)
            | MeshBehaviourEvent::Blocked(never) => match never {},
        }
    }

    fn on_gossipsub(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                let topic = message.topic.into_string();
                debug!(target: EVENTS, event = "gossip_received", msg_id = %message_id, %topic, from = %propagation_source, len = message.data.len());
                self.emit(NetEvent::Gossip(GossipMessage {
                    propagation_source,
                    id: message_id,
                    topic,
                    data: message.data,
                }));
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                debug!(target: EVENTS, event = "peer_subscribed", peer = %peer_id, %topic);
                self.flush_publish_queue(&topic);
                self.emit(NetEvent::PeerSubscribed { peer: peer_id, topic: topic.into_string() });
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                self.emit(NetEvent::PeerUnsubscribed { peer: peer_id, topic: topic.into_string() });
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                debug!(peer = %peer_id, "peer does not support gossipsub");
            }
            gossipsub::Event::SlowPeer { peer_id, failed_messages } => {
                debug!(peer = %peer_id, ?failed_messages, "slow gossip peer");
            }
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                kad::QueryResult::StartProviding(r) => {
                    if let Some(reply) = self.pending_start_providing.remove(&id) {
                        let _ = reply.send(r.map(|_| ()).map_err(|e| NetError::Kad(e.to_string())));
                    }
                }
                kad::QueryResult::GetProviders(r) => self.on_get_providers(id, r, step.last),
                kad::QueryResult::Bootstrap(r) => debug!(result = ?r.map(|ok| ok.num_remaining), "kad bootstrap step"),
                other => trace!(?other, "kad query progressed"),
            },
            kad::Event::RoutingUpdated { peer, is_new_peer, addresses, .. } => {
                trace!(%peer, is_new_peer, "kad routing updated");
                let addresses = self.nat_prune_routing(peer, addresses.into_vec());
                if is_new_peer && self.swarm.connected_peers().count() < self.cfg.target_peers {
                    self.dial_peer(peer, addresses);
                }
            }
            other => trace!(?other, "kad event"),
        }
    }

    fn on_get_providers(
        &mut self,
        id: kad::QueryId,
        r: Result<kad::GetProvidersOk, kad::GetProvidersError>,
        last: bool,
    ) {
        let Some(mut pending) = self.pending_get_providers.remove(&id) else { return };
        match r {
            Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                for p in providers {
                    if pending.found.insert(p) && pending.dialled < MAX_PROVIDER_DIALS && !self.swarm.is_connected(&p) {
                        pending.dialled += 1;
                        // The query still holds the provider's addresses: dial now so that a
                        // following request can reach it.
                        self.dial_peer(p, Vec::new());
                    }
                }
            }
            Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
            Err(kad::GetProvidersError::Timeout { .. }) => debug!(query = ?id, "get_providers timed out"),
        }
        if last {
            debug!(target: EVENTS, event = "providers_found", query = ?id, count = pending.found.len());
            let _ = pending.reply.send(Ok(pending.found));
        } else {
            self.pending_get_providers.insert(id, pending);
        }
    }

    fn on_identify(&mut self, ev: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = ev else { return };
        if info.protocol_version != ID_PROTOCOL_VERSION {
            warn!(peer = %peer_id, version = %info.protocol_version, "foreign protocol version; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        self.nat_identified(peer_id, &info.protocols, &info.listen_addrs);
        if info.protocols.contains(&KAD_PROTOCOL) {
            for addr in info.listen_addrs.iter().filter(|a| is_dialable(a)).take(MAX_ROUTING_ADDRS) {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
            }
        }
        self.emit(NetEvent::PeerIdentified {
            peer: peer_id,
            agent_version: info.agent_version,
            listen_addrs: info.listen_addrs,
        });
    }

    fn on_mdns(&mut self, ev: mdns::Event) {
        match ev {
            mdns::Event::Discovered(list) => {
                for (peer, addr) in list {
                    debug!(%peer, %addr, "mdns discovered");
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    self.dial_peer(peer, vec![addr]);
                }
            }
            mdns::Event::Expired(list) => {
                for (peer, addr) in list {
                    trace!(%peer, %addr, "mdns expired");
                }
            }
        }
    }
}

/// 1, 10, 100, ...: which occurrences of a repeated refusal are logged at warn level.
pub(super) fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// Whether a transport error is a dial that could not bind its local port (`EADDRINUSE`),
/// however deep the transport layers wrapped it. The `Either`s of the transport stack hide the
/// `io::Error` from `source()` chains, so the rendered error is what is matched: the OS's own
/// rendering of that code, `(os error 98)` on Linux.
fn port_in_use(error: &libp2p::TransportError<std::io::Error>) -> bool {
    let libp2p::TransportError::Other(e) = error else { return false };
    if e.kind() == std::io::ErrorKind::AddrInUse {
        return true;
    }
    let needle = format!("(os error {})", nix::errno::Errno::EADDRINUSE as i32);
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(&needle) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an address a peer reports is worth storing (not unspecified, not empty).
fn is_dialable(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialable_addresses() {
        assert!(is_dialable(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()));
        assert!(!is_dialable(&"/ip4/0.0.0.0/tcp/1".parse().unwrap()));
        assert!(!is_dialable(&Multiaddr::empty()));
    }

    #[test]
    fn a_port_in_use_is_found_under_the_transport_layers() {
        use std::io::{Error, ErrorKind};
        let wrapped = Error::other(Error::other(Error::from_raw_os_error(98)));
        assert!(port_in_use(&libp2p::TransportError::Other(wrapped)));
        let refused = Error::other(Error::from(ErrorKind::ConnectionRefused));
        assert!(!port_in_use(&libp2p::TransportError::Other(refused)));
        assert!(!port_in_use(&libp2p::TransportError::MultiaddrNotSupported(Multiaddr::empty())));
    }

    #[test]
    fn powers_of_ten() {
        let hits: Vec<u64> = (0..=1000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(hits, [1, 10, 100, 1000]);
    }
}
