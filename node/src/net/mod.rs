//! The libp2p networking layer: one task owns the Swarm; a cloneable handle sends it commands.
//!
//! # Shape
//! [`spawn`] builds a `Swarm` (TCP + noise + yamux and QUIC; gossipsub, Kademlia, identify, ping,
//! optional mDNS, three request-response protocols) and moves it into an [`EventLoop`] task. The
//! application talks to it through a [`NetHandle`] (bounded command channel, one `oneshot` reply
//! per command) and receives [`NetEvent`]s on a bounded channel.
//!
//! This layer treats every payload as opaque, size-limited bytes: gossip data and request/response
//! bodies are encoded by `buildmesh_protocol::wire`.
//!
//! # Protocols
//! - gossipsub, signed with the node key, content-addressed message ids ([`message_id`]), every
//!   received message waits for [`NetHandle::report_validation`] before it is forwarded; `Reject`
//!   lowers the sender's peer score (graylisted after three rejects).
//! - every inbound request passes the per-peer limits ([`peer_limits`]: a token bucket per peer
//!   and protocol, a cap on a peer's unanswered requests); oversized frames and request floods
//!   are strikes that lower the peer's gossipsub application score, and a graylisted peer's
//!   requests are refused. Inbound connections per IP address are capped ([`ip_limits`]).
//! - Kademlia `/buildmesh/kad/1.0.0` (server mode) for peer routing and provider records.
//! - identify `/buildmesh/id/1.0.0`, ping, mDNS (optional).
//! - NAT traversal ([`nat`]): AutoNAT (reachability), circuit relay v2 (a bounded relay service
//!   and reservations on relays), DCUtR hole punching.
//! - request-response, length-prefixed frames with separate caps per direction:
//!   [`RequestProtocol::Closure`] `/buildmesh/closure/1`, [`RequestProtocol::Nar`]
//!   `/buildmesh/nar/1` (one bounded chunk per response; see [`NetHandle::fetch_chunked`]) and
//!   [`RequestProtocol::Sync`] `/buildmesh/sync/1`.

mod behaviour;
mod codec;
mod config;
mod event_loop;
mod handle;
pub mod ip_limits;
pub mod nat;
mod pacing;
pub mod peer_limits;
mod punch;
pub mod unread;

use std::fmt;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use behaviour::{AGENT_VERSION, ID_PROTOCOL_VERSION, KAD_PROTOCOL, message_id};
pub use codec::{FrameKind, FrameTooLarge};
pub use config::{
    DEFAULT_TOPICS, MAX_FRAME_CEILING, NAR_CHUNK_SIZE, NetConfig, NetConfigError, NetSettings, QuicCongestion,
    RrLimits, peer_id_of,
};
pub use event_loop::EventLoop;
pub use handle::{
    ChunkError, ChunkPlan, DialError, NetError, NetHandle, PublishError, Published, RequestError, RespondError,
};
pub use libp2p::gossipsub::{MessageAcceptance, MessageId};
pub use nat::{ConnectionKind, NatConfig, NatSettings, NatSettingsError, Reachability, RelayLimits};
pub use peer_limits::{PeerConduct, PeerLimitsConfig, RateLimit};
pub use unread::UnreadBook;

/// The per-peer records the event loop publishes for [`NetHandle::peer_conduct`].
pub(crate) type SharedConduct = std::sync::Arc<std::sync::RwLock<std::collections::HashMap<PeerId, PeerConduct>>>;

/// The three request-response protocols of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestProtocol {
    /// `/buildmesh/closure/1`: fetch a `.drv` closure.
    Closure,
    /// `/buildmesh/nar/1`: fetch one bounded chunk of a NAR (object + offset/length in the request).
    Nar,
    /// `/buildmesh/sync/1`: anti-entropy exchange.
    Sync,
}

impl RequestProtocol {
    /// All protocols.
    pub const ALL: [RequestProtocol; 3] = [RequestProtocol::Closure, RequestProtocol::Nar, RequestProtocol::Sync];

    /// The libp2p protocol name.
    pub fn name(self) -> &'static str {
        match self {
            RequestProtocol::Closure => "/buildmesh/closure/1",
            RequestProtocol::Nar => "/buildmesh/nar/1",
            RequestProtocol::Sync => "/buildmesh/sync/1",
        }
    }

    pub(crate) fn stream_protocol(self) -> StreamProtocol {
        StreamProtocol::new(self.name())
    }

    /// This protocol's limits in `cfg`.
    pub fn limits(self, cfg: &NetConfig) -> RrLimits {
        match self {
            RequestProtocol::Closure => cfg.closure_limits,
            RequestProtocol::Nar => cfg.nar_limits,
            RequestProtocol::Sync => cfg.sync_limits,
        }
    }
}

impl fmt::Display for RequestProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one inbound request until it is answered with [`NetHandle::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId {
    /// The protocol the request arrived on.
    pub protocol: RequestProtocol,
    pub(crate) id: libp2p::request_response::InboundRequestId,
}

impl fmt::Display for InboundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.protocol, self.id)
    }
}

/// A gossip message waiting for [`NetHandle::report_validation`]. Gossip is anonymous at the
/// gossipsub level (no author, signature or sequence number): the payload carries its own signed
/// envelope, which the receiver verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipMessage {
    /// The peer that forwarded it to us (pass it back in `report_validation`).
    pub propagation_source: PeerId,
    /// Content-addressed id ([`message_id`] of `data`).
    pub id: MessageId,
    /// Topic name.
    pub topic: String,
    /// The application payload (at most `max_gossip_size` bytes).
    pub data: Vec<u8>,
}

/// What the event loop reports to the application.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NetEvent {
    /// A gossip message arrived; it is not forwarded until the application reports
    /// Accept/Reject/Ignore through [`NetHandle::report_validation`].
    Gossip(GossipMessage),
    /// A peer sent a request; answer with [`NetHandle::respond`] within `request_timeout`.
    InboundRequest {
        /// The requester.
        peer: PeerId,
        /// Which protocol.
        protocol: RequestProtocol,
        /// The id to answer.
        id: InboundId,
        /// The request body (at most the protocol's `max_request`).
        data: Vec<u8>,
    },
    /// First connection to a peer established.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// The remote address of that connection.
        address: Multiaddr,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer completed identify with our protocol version.
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// Its agent version, e.g. `buildmesh/0.1.0`.
        agent_version: String,
        /// Its listen addresses as it reported them.
        listen_addrs: Vec<Multiaddr>,
    },
    /// We listen on a new address (full multiaddr ending in `/p2p/<our id>`).
    NewListenAddr {
        /// The address.
        address: Multiaddr,
    },
    /// A peer subscribed to a topic (publishing on it will now reach that peer).
    PeerSubscribed {
        /// The peer.
        peer: PeerId,
        /// Topic name.
        topic: String,
    },
    /// A peer unsubscribed from a topic.
    PeerUnsubscribed {
        /// The peer.
        peer: PeerId,
        /// Topic name.
        topic: String,
    },
}

/// Why [`spawn`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The configuration is invalid.
    #[error("invalid network config: {0}")]
    Config(#[from] NetConfigError),
    /// A behaviour could not be built.
    #[error("building libp2p behaviour: {0}")]
    Behaviour(String),
    /// A transport could not be built.
    #[error("building libp2p transport: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The listen address.
        addr: Multiaddr,
        /// The transport error.
        reason: String,
    },
    /// A gossip topic could not be subscribed.
    #[error("cannot subscribe to topic {topic:?}: {reason}")]
    Subscribe {
        /// Topic name.
        topic: String,
        /// The gossipsub error.
        reason: String,
    },
}

/// The libp2p keypair of a node from its 32-byte ed25519 seed (the same seed as its Nix signing
/// key, so the PeerId and the signing key name one identity).
pub fn keypair_from_seed(seed: [u8; 32]) -> Keypair {
    let mut seed = seed;
    // `ed25519_from_bytes` only fails on a wrong length, which the array type rules out; it zeroes
    // the buffer it is given.
    match Keypair::ed25519_from_bytes(&mut seed) {
        Ok(k) => k,
        Err(_) => unreachable!("a [u8; 32] is always a valid ed25519 seed"),
    }
}

/// Starts the networking task: validates `cfg`, builds the swarm, listens on `cfg.listen`,
/// subscribes to `cfg.topics`, dials `cfg.bootstrap`, and spawns the [`EventLoop`] on the current
/// tokio runtime, inside a `net` tracing span carrying the short peer id. The task ends when every
/// [`NetHandle`] is dropped or [`NetHandle::shutdown`] is called.
pub fn spawn(
    keypair: Keypair,
    cfg: NetConfig,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, JoinHandle<()>), SpawnError> {
    let (event_loop, handle, events) = EventLoop::new(keypair, cfg)?;
    let span = tracing::info_span!("net", peer = %short_peer_id(&handle.local_peer_id()));
    let join = tokio::spawn(tracing::Instrument::instrument(event_loop.run(), span));
    Ok((handle, events, join))
}

/// The last 8 characters of a peer id, for log fields.
pub fn short_peer_id(peer: &PeerId) -> String {
    let s = peer.to_base58();
    s[s.len().saturating_sub(8)..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_from_seed_is_deterministic_and_matches_ed25519() {
        let seed = [7u8; 32];
        let a = keypair_from_seed(seed);
        let b = keypair_from_seed(seed);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
        let ed = a.clone().try_into_ed25519().unwrap();
        assert_eq!(ed.public().to_bytes(), dalek.verifying_key().to_bytes());
        assert_ne!(keypair_from_seed([8u8; 32]).public().to_peer_id(), a.public().to_peer_id());
    }

    #[test]
    fn protocol_names() {
        let names: Vec<&str> = RequestProtocol::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["/buildmesh/closure/1", "/buildmesh/nar/1", "/buildmesh/sync/1"]);
    }
}
