//! Configuration of the networking layer ([`NetConfig`]) and its validation.

use std::net::Ipv4Addr;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::peer_limits::PeerLimitsConfig;

/// Hard ceiling for any single request or response frame (64 MiB): a configuration above it is
/// refused, so a typo cannot turn into a gigabyte allocation per stream.
pub const MAX_FRAME_CEILING: usize = 64 * 1024 * 1024;

/// Default NAR chunk size: one `/buildmesh/nar/1` response carries at most this much NAR data.
pub const NAR_CHUNK_SIZE: u32 = 1024 * 1024;

/// Default gossip topics: announcements, claims, attestations, failures, jobs and revision headers.
pub const DEFAULT_TOPICS: [&str; 7] = [
    "buildmesh/announce/1",
    "buildmesh/claim/1",
    "buildmesh/attest/1",
    "buildmesh/failure/1",
    "buildmesh/job/1",
    "buildmesh/revision/1",
    "buildmesh/strike/1",
];

/// Size caps of one request-response protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrLimits {
    /// Largest request accepted or sent, in bytes.
    pub max_request: usize,
    /// Largest response accepted or sent, in bytes.
    pub max_response: usize,
}

/// Configuration of [`spawn`](super::spawn). `Default` gives production values (listen on all
/// interfaces, TCP and QUIC, mDNS on).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Listen multiaddrs (TCP `/ip4/../tcp/..` and QUIC `/ip4/../udp/../quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers; each must end in `/p2p/<peer id>`. They are dialled at start and
    /// re-dialled every `redial_interval` while disconnected.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Close connections that no protocol keeps alive after this long.
    pub idle_connection_timeout: Duration,
    /// Gossipsub heartbeat interval.
    pub gossip_heartbeat: Duration,
    /// How long gossipsub remembers a message id: the same bytes published or received again
    /// within this window are dropped as duplicates. It must be shorter than any interval at
    /// which the application republishes identical bytes (ed25519 signatures are deterministic,
    /// so a republished result is byte-identical); the application keeps its own seen set.
    pub gossip_duplicate_cache: Duration,
    /// Largest gossip payload (the application bytes) that may be published or is accepted.
    pub max_gossip_size: usize,
    /// Topics subscribed at start.
    pub topics: Vec<String>,
    /// Topics scored besides `topics` (invalid messages count against their sender there too):
    /// those the application may subscribe to later, such as the topics of the mesh's other
    /// shards (`crate::mesh::validate::all_topics`).
    pub scored_topics: Vec<String>,
    /// Limits of `/buildmesh/closure/1` (fetch a `.drv` closure).
    pub closure_limits: RrLimits,
    /// Limits of `/buildmesh/nar/1` (one bounded NAR chunk per response).
    pub nar_limits: RrLimits,
    /// Limits of `/buildmesh/sync/1` (anti-entropy).
    pub sync_limits: RrLimits,
    /// Time an outbound request may take (stream open, send, response) before it fails with
    /// [`RequestError::Timeout`](super::RequestError::Timeout); also the time an inbound request
    /// waits for [`NetHandle::respond`](super::NetHandle::respond).
    pub request_timeout: Duration,
    /// Time a dial may take before [`NetHandle::dial`](super::NetHandle::dial) gives up.
    pub dial_timeout: Duration,
    /// Kademlia query timeout (bounds [`NetHandle::get_providers`](super::NetHandle::get_providers)).
    pub kad_query_timeout: Duration,
    /// Re-dial disconnected bootstrap peers and dial routing-table peers this often.
    pub redial_interval: Duration,
    /// Dial peers from the Kademlia routing table while fewer than this many are connected.
    pub target_peers: usize,
    /// Provider-record keys kept in the Kademlia store (local and remote providers together).
    pub max_provider_keys: usize,
    /// Maximum established connections in total.
    pub max_connections: u32,
    /// Inbound connections (pending and established) from one IP address (an IPv4 address or an
    /// IPv6 /64) at most; 0 = no limit.
    pub max_connections_per_ip: u32,
    /// Concurrent request-response streams per connection and protocol (both directions).
    pub max_concurrent_streams: usize,
    /// Per-peer limits on inbound requests (rates, unanswered requests).
    pub peer_limits: PeerLimitsConfig,
    /// Capacity of the command channel (handle to event loop).
    pub command_buffer: usize,
    /// Capacity of the event channel (event loop to application) plus the loop's overflow queue;
    /// when both are full the loop stops polling the swarm (backpressure) but still serves commands.
    pub event_buffer: usize,
    /// Inbound requests awaiting [`NetHandle::respond`](super::NetHandle::respond) at most; more are
    /// refused (their stream is dropped).
    pub max_pending_inbound: usize,
    /// Publishes queued while no peer is subscribed to their topic, at most (over all topics).
    pub publish_queue_cap: usize,
    /// A queued publish is dropped after this long without a subscriber.
    pub publish_queue_ttl: Duration,
    /// NAT traversal: relays, the relay service, AutoNAT ([`super::nat`]).
    pub nat: super::nat::NatConfig,
    /// The congestion controller of every QUIC connection.
    pub quic_congestion: QuicCongestion,
}

/// The congestion controller of the node's QUIC connections (`[net] quic_congestion`; see
/// docs/nat.md, "Throughput"): quinn's BBR (the default) or its CUBIC.
///
/// Measured (docs/benchmarks.md): on a path of 300 ms round trip with 1% random loss a punched
/// QUIC connection moved a 16 MiB NAR at 2.5-3.0 MiB/s with BBR and at under 0.13 MiB/s with
/// CUBIC (which takes every loss for congestion); back to back on one machine BBR was 4-47%
/// slower than CUBIC. quinn calls its BBR experimental.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuicCongestion {
    /// BBR (v1): the window follows the measured delivery rate and round trip, not losses.
    #[default]
    Bbr,
    /// CUBIC, quinn's own default: the window shrinks at every loss.
    Cubic,
}

/// The `[net]` table of the configuration file: transport settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetSettings {
    /// QUIC's congestion controller: `"bbr"` (default) or `"cubic"`.
    pub quic_congestion: QuicCongestion,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED)).with(Protocol::Tcp(0)),
                Multiaddr::empty()
                    .with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            idle_connection_timeout: Duration::from_secs(60),
            gossip_heartbeat: Duration::from_secs(1),
            gossip_duplicate_cache: Duration::from_secs(60),
            max_gossip_size: 64 * 1024,
            topics: DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect(),
            scored_topics: Vec::new(),
            closure_limits: RrLimits { max_request: 64 * 1024, max_response: 32 * 1024 * 1024 },
            nar_limits: RrLimits { max_request: 4 * 1024, max_response: NAR_CHUNK_SIZE as usize + 4 * 1024 },
            sync_limits: RrLimits { max_request: 1024 * 1024, max_response: 16 * 1024 * 1024 },
            request_timeout: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(10),
            kad_query_timeout: Duration::from_secs(30),
            redial_interval: Duration::from_secs(30),
            target_peers: 8,
            max_provider_keys: 65_536,
            max_connections: 256,
            max_connections_per_ip: 16,
            max_concurrent_streams: 64,
            peer_limits: PeerLimitsConfig::default(),
            command_buffer: 256,
            event_buffer: 1024,
            max_pending_inbound: 256,
            publish_queue_cap: 1024,
            publish_queue_ttl: Duration::from_secs(120),
            nat: super::nat::NatConfig::default(),
            quic_congestion: QuicCongestion::default(),
        }
    }
}

/// A [`NetConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetConfigError {
    /// A bootstrap address lacks the trailing `/p2p/<peer id>`.
    #[error("bootstrap address {addr} must end in /p2p/<peer id>")]
    BootstrapWithoutPeerId {
        /// The offending address.
        addr: Multiaddr,
    },
    /// A numeric field is zero or above its ceiling.
    #[error("{field} = {value} is out of range (1..={max})")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// The configured value.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A request rate has a zero burst or a rate that is not a positive number.
    #[error("{field} needs a burst of at least 1 and a positive, finite rate")]
    BadRate {
        /// Field name.
        field: &'static str,
    },
    /// A duration field is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Field name.
        field: &'static str,
    },
    /// No listen address and no bootstrap peer: the node could not talk to anyone.
    #[error("no listen address and no bootstrap peer")]
    Isolated,
}

impl NetConfig {
    /// Checks every field; [`spawn`](super::spawn) calls this first.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        for addr in &self.bootstrap {
            if peer_id_of(addr).is_none() {
                return Err(NetConfigError::BootstrapWithoutPeerId { addr: addr.clone() });
            }
        }
        if self.listen.is_empty() && self.bootstrap.is_empty() && !self.mdns {
            return Err(NetConfigError::Isolated);
        }
        let ceiling = MAX_FRAME_CEILING as u64;
        let sizes = [
            ("max_gossip_size", self.max_gossip_size, 16 * 1024 * 1024),
            ("closure_limits.max_request", self.closure_limits.max_request, ceiling),
            ("closure_limits.max_response", self.closure_limits.max_response, ceiling),
            ("nar_limits.max_request", self.nar_limits.max_request, ceiling),
            ("nar_limits.max_response", self.nar_limits.max_response, ceiling),
            ("sync_limits.max_request", self.sync_limits.max_request, ceiling),
            ("sync_limits.max_response", self.sync_limits.max_response, ceiling),
            ("command_buffer", self.command_buffer, 1 << 20),
            ("event_buffer", self.event_buffer, 1 << 20),
            ("max_pending_inbound", self.max_pending_inbound, 1 << 20),
            ("publish_queue_cap", self.publish_queue_cap, 1 << 20),
            ("max_provider_keys", self.max_provider_keys, 1 << 24),
            ("max_concurrent_streams", self.max_concurrent_streams, 1 << 16),
            ("peer_limits.max_pending_per_peer", self.peer_limits.max_pending_per_peer, 1 << 20),
        ];
        for (field, value, max) in sizes {
            let value = value as u64;
            if value == 0 || value > max {
                return Err(NetConfigError::OutOfRange { field, value, max });
            }
        }
        for (field, rate) in [
            ("peer_limits.closure", self.peer_limits.closure),
            ("peer_limits.nar", self.peer_limits.nar),
            ("peer_limits.sync", self.peer_limits.sync),
        ] {
            if rate.burst == 0 || !(rate.per_sec > 0.0 && rate.per_sec.is_finite()) {
                return Err(NetConfigError::BadRate { field });
            }
        }
        if self.max_connections == 0 {
            return Err(NetConfigError::OutOfRange { field: "max_connections", value: 0, max: u64::from(u32::MAX) });
        }
        let durations = [
            ("idle_connection_timeout", self.idle_connection_timeout),
            ("gossip_heartbeat", self.gossip_heartbeat),
            ("gossip_duplicate_cache", self.gossip_duplicate_cache),
            ("request_timeout", self.request_timeout),
            ("dial_timeout", self.dial_timeout),
            ("kad_query_timeout", self.kad_query_timeout),
            ("redial_interval", self.redial_interval),
            ("publish_queue_ttl", self.publish_queue_ttl),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return Err(NetConfigError::ZeroDuration { field });
            }
        }
        Ok(())
    }
}

/// The peer id in a trailing `/p2p/<id>` component, if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let cfg = NetConfig::default();
        cfg.validate().unwrap();
        let listen: Vec<String> = cfg.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(listen, ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]);
    }

    #[test]
    fn bootstrap_needs_peer_id() {
        let cfg = NetConfig { bootstrap: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()], ..NetConfig::default() };
        assert!(matches!(cfg.validate(), Err(NetConfigError::BootstrapWithoutPeerId { .. })));
    }

    #[test]
    fn zero_and_huge_limits_are_refused() {
        let mut cfg = NetConfig::default();
        cfg.nar_limits.max_response = 0;
        assert!(matches!(cfg.validate(), Err(NetConfigError::OutOfRange { field: "nar_limits.max_response", .. })));
        cfg.nar_limits.max_response = MAX_FRAME_CEILING + 1;
        assert!(matches!(cfg.validate(), Err(NetConfigError::OutOfRange { .. })));
        let cfg = NetConfig { request_timeout: Duration::ZERO, ..NetConfig::default() };
        assert_eq!(cfg.validate(), Err(NetConfigError::ZeroDuration { field: "request_timeout" }));
    }

    #[test]
    fn isolated_config_is_refused() {
        let cfg = NetConfig { listen: vec![], mdns: false, ..NetConfig::default() };
        assert_eq!(cfg.validate(), Err(NetConfigError::Isolated));
    }
}
