//! The composed libp2p behaviour and the construction of the swarm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::metrics::Registry;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, allow_block_list, autonat, connection_limits, gossipsub, identify, kad, mdns,
    noise, ping, relay, request_response, tcp, yamux,
};

use super::codec::LengthPrefixedCodec;
use super::config::{NetConfig, RrLimits};
use super::ip_limits;
use super::{RequestProtocol, SpawnError};

/// Kademlia protocol name of the mesh (private: buildmesh nodes do not join the IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/buildmesh/kad/1.0.0");
/// Identify `protocol_version` of the mesh; peers announcing another value are disconnected.
pub const ID_PROTOCOL_VERSION: &str = "/buildmesh/id/1.0.0";
/// Identify `agent_version` of this build.
pub const AGENT_VERSION: &str = concat!("buildmesh/", env!("CARGO_PKG_VERSION"));

/// Everything the swarm runs. Field order is the order in which libp2p polls the behaviours.
#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) ip_limits: ip_limits::Behaviour,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) closure: request_response::Behaviour<LengthPrefixedCodec>,
    pub(crate) nar: request_response::Behaviour<LengthPrefixedCodec>,
    pub(crate) sync: request_response::Behaviour<LengthPrefixedCodec>,
    /// Reachability: probes peers and serves their probes ([`super::nat`]).
    pub(crate) autonat: autonat::Behaviour,
    /// The relay service (circuit relay v2 hop), bounded by [`super::nat::RelayLimits`].
    pub(crate) relay: relay::Behaviour,
    /// Reservations on relays and circuits through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Hole punching over a relayed connection, over QUIC while it can ([`super::punch`]).
    pub(crate) dcutr: super::punch::QuicFirstDcutr,
}

/// Content-addressed gossip message id: blake3 of the payload. Publishing the same bytes twice
/// (on any topic) within the duplicate-cache window yields [`PublishError::Duplicate`](super::PublishError::Duplicate).
pub fn message_id(data: &[u8]) -> gossipsub::MessageId {
    gossipsub::MessageId::new(blake3::hash(data).as_bytes())
}

/// Messages at least this large are announced with IDONTWANT to mesh peers on arrival.
const IDONTWANT_THRESHOLD: usize = 0;

/// Gossipsub mesh degree (target number of full-message peers per topic).
const MESH_N: usize = 4;

/// Bytes of protobuf framing (signature, key, topic, seqno) allowed on top of `max_gossip_size`.
const GOSSIP_ENVELOPE_OVERHEAD: usize = 2048;

fn gossipsub_behaviour(cfg: &NetConfig, registry: &mut Registry) -> Result<gossipsub::Behaviour, SpawnError> {
    // Every payload is already a signed envelope (domain-separated, by the node key that is also
    // the PeerId), so gossipsub's own author signature, key and sequence number would only add
    // about 140 bytes to every copy on the wire: messages are anonymous, identified by content.
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(cfg.gossip_heartbeat)
        .duplicate_cache_time(cfg.gossip_duplicate_cache)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| message_id(&m.data))
        .max_transmit_size(cfg.max_gossip_size + GOSSIP_ENVELOPE_OVERHEAD)
        // Tell mesh peers "do not send me this" for every message as soon as it arrives: the
        // validation below commits to redb before forwarding, which is time enough for those
        // notices to stop most duplicate copies (the default only does so above 1 KB).
        .idontwant_message_size_threshold(IDONTWANT_THRESHOLD)
        // Publish to the mesh peers only: flooding one's own messages to every connected peer
        // (gossipsub's default) makes each of them forward a copy the others already have.
        .flood_publish(false)
        // A sparser mesh than gossipsub's 6/5/12: every mesh link carries each message once (or
        // twice in a race), so the degree is the number of copies a node receives; lazy gossip
        // (IHAVE to non-mesh peers) and anti-entropy repair whatever the sparser mesh misses.
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_N - 1)
        .mesh_n_high(2 * MESH_N)
        .mesh_outbound_min(MESH_N / 2)
        .build()
        .map_err(|e| SpawnError::Behaviour(format!("gossipsub config: {e}")))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gcfg)
        .map_err(|e| SpawnError::Behaviour(format!("gossipsub: {e}")))?;
    gossipsub
        .with_peer_score(score_params(cfg.topics.iter().chain(&cfg.scored_topics)), score_thresholds())
        .map_err(|e| SpawnError::Behaviour(format!("gossipsub peer score: {e}")))?;
    Ok(gossipsub.with_metrics(registry.sub_registry_with_prefix("gossipsub"), Default::default()))
}

/// Peer scoring: only invalid messages (validation `Reject`) count against a peer, strongly and with
/// slow decay. Mesh-delivery penalties are off (topics are quiet by design) and so is the
/// IP-colocation penalty (local meshes run many nodes on one address).
fn score_params<'a>(topics: impl Iterator<Item = &'a String>) -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // One rejected message: -20 (below the gossip threshold); three: -180 (graylisted).
        invalid_message_deliveries_weight: -20.0,
        // Per decay interval (1 s): half-life of about 11.5 minutes.
        invalid_message_deliveries_decay: 0.999,
        ..gossipsub::TopicScoreParams::default()
    };
    let topics: HashMap<_, _> = topics.map(|t| (gossipsub::IdentTopic::new(t.clone()).hash(), topic.clone())).collect();
    gossipsub::PeerScoreParams {
        topics,
        ip_colocation_factor_weight: 0.0,
        app_specific_weight: 1.0,
        ..gossipsub::PeerScoreParams::default()
    }
}

/// The thresholds of [`score_params`]: below `graylist_threshold` a peer's gossip is ignored and
/// (see [`super::peer_limits`]) its requests are refused.
pub(crate) fn score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    }
}

fn rr_behaviour(
    protocol: RequestProtocol,
    limits: RrLimits,
    cfg: &NetConfig,
) -> request_response::Behaviour<LengthPrefixedCodec> {
    let codec = LengthPrefixedCodec { max_request: limits.max_request, max_response: limits.max_response };
    request_response::Behaviour::with_codec(
        codec,
        [(protocol.stream_protocol(), request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(cfg.request_timeout)
            .with_max_concurrent_streams(cfg.max_concurrent_streams),
    )
}

/// Every behaviour but the relay client, which the swarm builder makes with its transport: the
/// returned closure completes the [`MeshBehaviour`] with it.
fn build_behaviour(
    keypair: &Keypair,
    cfg: &NetConfig,
    registry: &mut Registry,
) -> Result<impl FnOnce(relay::client::Behaviour) -> MeshBehaviour + use<>, SpawnError> {
    let peer_id = keypair.public().to_peer_id();

    let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
    kad_cfg.set_query_timeout(cfg.kad_query_timeout);
    // libp2p's 16 KiB is tight for an answer of 20 peers with 8 relayed addresses each.
    kad_cfg.set_max_packet_size(64 * 1024);
    let store_cfg = MemoryStoreConfig { max_provided_keys: cfg.max_provider_keys, ..MemoryStoreConfig::default() };
    let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_cfg), kad_cfg);
    // Without a confirmed external address (never on loopback) kad would stay a client and
    // answer no queries.
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(ID_PROTOCOL_VERSION.to_string(), keypair.public())
            .with_agent_version(AGENT_VERSION.into())
            // Tell peers at once when a relayed address appears (a reservation), so that they
            // and their Kademlia answers can reach a node behind NAT.
            .with_push_listen_addr_updates(true),
    );

    let mdns = if cfg.mdns {
        let m = mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
            .map_err(|e| SpawnError::Behaviour(format!("mdns: {e}")))?;
        Some(m)
    } else {
        None
    };

    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.max_connections))
            // A relayed connection, its direct upgrade by DCUtR and one crossing dial.
            .with_max_established_per_peer(Some(3))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64)),
    );

    let gossipsub = gossipsub_behaviour(cfg, registry)?;
    let closure = rr_behaviour(RequestProtocol::Closure, cfg.closure_limits, cfg);
    let nar = rr_behaviour(RequestProtocol::Nar, cfg.nar_limits, cfg);
    let sync = rr_behaviour(RequestProtocol::Sync, cfg.sync_limits, cfg);
    let autonat = super::nat::autonat_behaviour(peer_id, &cfg.nat);
    let relay = super::nat::relay_server_behaviour(peer_id, &cfg.nat);
    let max_per_ip = cfg.max_connections_per_ip;
    Ok(move |relay_client| MeshBehaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits,
        ip_limits: ip_limits::Behaviour::new(max_per_ip),
        gossipsub,
        kad,
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: Toggle::from(mdns),
        closure,
        nar,
        sync,
        autonat,
        relay,
        relay_client,
        dcutr: super::punch::QuicFirstDcutr::new(peer_id),
    })
}

/// quinn's congestion controller for `choice`.
fn congestion_controller(
    choice: super::config::QuicCongestion,
) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
    match choice {
        super::config::QuicCongestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        super::config::QuicCongestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
    }
}

/// Builds the swarm: TCP (noise + yamux), QUIC and relayed (noise + yamux over a circuit)
/// transports, all behaviours, idle timeout.
/// Gossipsub's counters (per topic: messages and bytes sent, received with and without
/// duplicates, IDONTWANTs, ...) and the transports' byte counts are registered in `registry`.
pub(crate) fn build_swarm(
    keypair: Keypair,
    cfg: &NetConfig,
    registry: &mut Registry,
) -> Result<Swarm<MeshBehaviour>, SpawnError> {
    // Build the behaviour outside the builder closure so errors stay typed.
    let behaviour = build_behaviour(&keypair, cfg, registry)?;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| SpawnError::Transport(format!("tcp/noise: {e}")))?
        // BBR instead of quinn's default CUBIC for every QUIC connection, unless configured
        // (`[net] quic_congestion`): on a long lossy path (300 ms round trip, 1% random loss)
        // CUBIC took each loss for congestion, kept the window at 10-15 datagrams, and a punched
        // QUIC connection moved NARs at about 0.05 MiB/s against 1.2-1.4 MiB/s over the TCP
        // relay; BBR sizes the window from the delivery rate and moved them faster than the relay
        // (docs/nat.md, "Throughput"; quinn marks its BBR experimental). At LAN speed BBR was
        // 4-47% slower than CUBIC.
        .with_quic_config(|c| c.congestion_controller_factory(congestion_controller(cfg.quic_congestion)))
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| SpawnError::Transport(format!("relay client/noise: {e}")))?
        .with_bandwidth_metrics(registry.sub_registry_with_prefix("libp2p"))
        .with_behaviour(|_, relay_client| behaviour(relay_client))
        .map_err(|e| SpawnError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_connection_timeout))
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_blake3_of_data() {
        let id = message_id(b"hello");
        assert_eq!(id.0, blake3::hash(b"hello").as_bytes().to_vec());
        assert_ne!(message_id(b"hello"), message_id(b"hello!"));
    }

    #[test]
    fn score_params_are_accepted_by_gossipsub() {
        let topics: Vec<String> = super::super::config::DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect();
        score_params(topics.iter()).validate().unwrap();
        score_thresholds().validate().unwrap();
    }

    #[test]
    fn swarm_builds_with_and_without_mdns() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let cfg = NetConfig { mdns: false, ..NetConfig::default() };
            let swarm = build_swarm(Keypair::generate_ed25519(), &cfg, &mut Registry::default()).unwrap();
            assert!(!swarm.behaviour().mdns.is_enabled());
        });
    }
}
