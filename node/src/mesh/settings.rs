//! [`MeshSettings`]: the `[mesh]` table of the node's configuration, and how it turns into the
//! state machine's [`MeshConfig`] and the network layer's [`NetConfig`].

use std::collections::BTreeSet;
use std::time::Duration;

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::{MeshConfig, ReplicaRule, TrustConfig};
use buildmesh_protocol::store_path::StoreDir;
use serde::{Deserialize, Serialize};

use crate::net::NetConfig;

/// Timers of the mesh (`[mesh]` in the TOML file). Every time is in milliseconds; the defaults
/// are the protocol's production values. Tests and small local meshes shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSettings {
    /// Run the mesh (libp2p, gossip, placement). Also on whenever `bootstrap` is not empty.
    pub enabled: bool,
    /// How often the node announces itself.
    pub announce_interval_ms: u64,
    /// A member not heard from for this long leaves the view.
    pub member_ttl_ms: u64,
    /// Length of a build claim's lease.
    pub lease_ms: u64,
    /// How often a builder renews its lease.
    pub renew_interval_ms: u64,
    /// A designated builder that has not claimed within this long is skipped.
    pub claim_timeout_ms: u64,
    /// After start, how long the node only listens before it claims builds.
    pub warmup_ms: u64,
    /// A job learned this long after its publication waits one renewal interval before a claim.
    pub fresh_job_ms: u64,
    /// How often a submitter republishes an unfinished job.
    pub resubmit_interval_ms: u64,
    /// Least time between two republications of this node's own result for one derivation.
    pub republish_interval_ms: u64,
    /// How often the node compares its attestation set with a connected peer (anti-entropy),
    /// besides on every new connection.
    pub sync_interval_ms: u64,
    /// How often disconnected bootstrap peers are dialled again.
    pub redial_interval_ms: u64,
    /// Gossipsub heartbeat.
    pub heartbeat_ms: u64,
    /// Most attestations and failures stored per untrusted signing key (default 100,000);
    /// beyond it, that key's messages are dropped: not stored, not forwarded (see `quota`).
    pub untrusted_key_records: u64,
    /// Most envelope bytes stored per untrusted signing key (default 256 MiB).
    pub untrusted_key_bytes: u64,
    /// Most attestations and failures stored per trusted key (default 10,000,000; this node's
    /// own key has no limit).
    pub trusted_key_records: u64,
    /// Most envelope bytes stored per trusted key (default 16 GiB).
    pub trusted_key_bytes: u64,
    /// Inbound libp2p connections from one IP address (an IPv4 address or an IPv6 /64) at most
    /// (default 16; 0 = no limit). A local mesh of many nodes on 127.0.0.1 sets 0.
    pub max_connections_per_ip: u32,
    /// `/buildmesh/closure/1` requests one peer may keep sending per second (default 128; twice
    /// as many at once after a quiet spell). More are refused and count against the peer.
    pub peer_closure_requests_per_sec: u32,
    /// `/buildmesh/nar/1` requests (1 MiB chunks) per peer and second (default 512).
    pub peer_nar_requests_per_sec: u32,
    /// `/buildmesh/sync/1` requests per peer and second (default 128).
    pub peer_sync_requests_per_sec: u32,
    /// Largest `/buildmesh/sync/1` request body accepted, in bytes (default 1 MiB; at most
    /// 64 MiB). A larger frame is refused unread and costs its sender a strike. Honest requests
    /// are a few bytes (a shard filter names at most 1024 shards).
    pub sync_request_max_bytes: usize,
    /// Most peers remembered in the database (table `peers`) and dialled after a restart,
    /// besides `bootstrap` (default 1024; 0 = remember none and forget those remembered).
    pub remember_peers: usize,
    /// A remembered peer not seen for this many days is forgotten (default 14).
    pub forget_peers_after_days: u64,
    /// Peers the node keeps connected to (default 8): while fewer are, it dials peers of its
    /// Kademlia routing table and remembered peers. A peer it learns of while it has this many is
    /// not dialled (discovery by shard, `shard_peers`, still is).
    pub target_peers: usize,
    /// With `mesh_shards` > 1: connections to members of each shard the node hears (its own and
    /// those it observes) it looks for (default 4; 0 = no shard discovery). While it has fewer,
    /// it looks the shard's members up in Kademlia (each node provides a record for its own
    /// shard) and dials them (`driver/discovery.rs`; docs/protocol.md *Shards*).
    pub shard_peers: usize,
    /// Where the static busyboxes that measure the emulation slowdown are
    /// (`<dir>/<debian arch>/busybox`; default `/var/cache/buildmesh/busybox`, filled by
    /// `scripts/emulation.sh setup`; see `crate::slowdown`).
    pub emulation_probe_dir: std::path::PathBuf,
}

impl Default for MeshSettings {
    fn default() -> Self {
        let m = MeshConfig::default();
        MeshSettings {
            enabled: false,
            announce_interval_ms: m.announce_interval_ms,
            member_ttl_ms: m.member_ttl_ms,
            lease_ms: m.lease_ms,
            renew_interval_ms: m.renew_interval_ms,
            claim_timeout_ms: m.claim_timeout_ms,
            warmup_ms: m.warmup_ms,
            fresh_job_ms: m.fresh_job_ms,
            resubmit_interval_ms: m.resubmit_interval_ms,
            republish_interval_ms: m.republish_interval_ms,
            sync_interval_ms: 60_000,
            redial_interval_ms: 30_000,
            heartbeat_ms: 1_000,
            untrusted_key_records: 100_000,
            untrusted_key_bytes: 256 << 20,
            trusted_key_records: 10_000_000,
            trusted_key_bytes: 16 << 30,
            max_connections_per_ip: NetConfig::default().max_connections_per_ip,
            peer_closure_requests_per_sec: 128,
            peer_nar_requests_per_sec: 512,
            peer_sync_requests_per_sec: 128,
            sync_request_max_bytes: NetConfig::default().sync_limits.max_request,
            remember_peers: 1024,
            forget_peers_after_days: 14,
            target_peers: NetConfig::default().target_peers,
            shard_peers: 4,
            emulation_probe_dir: crate::slowdown::DEFAULT_PROBE_DIR.into(),
        }
    }
}

/// A configuration the mesh cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A trusted key does not parse.
    #[error("trusted key {key:?}: {reason}")]
    TrustedKey {
        /// The key as configured.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// A key of `submitters` or `builders` does not parse.
    #[error("{field}: {reason}")]
    Policy {
        /// `submitters` or `builders`.
        field: &'static str,
        /// Which key and why.
        reason: String,
    },
    /// A listen or bootstrap multiaddr does not parse.
    #[error("{field} address {addr:?}: {reason}")]
    Multiaddr {
        /// `listen` or `bootstrap`.
        field: &'static str,
        /// The address as configured.
        addr: String,
        /// Why it is refused.
        reason: String,
    },
    /// The timers break a rule of the state machine.
    #[error("[mesh] settings: {0}")]
    Timers(String),
    /// A number of shards the mesh cannot run with (`mesh_shards`).
    #[error("mesh_shards = {shards}: {reason}")]
    Shards {
        /// The configured count.
        shards: u32,
        /// Why it is refused.
        reason: String,
    },
    /// A zero interval.
    #[error("[mesh] {field} must be above 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
}

impl MeshSettings {
    /// Whether a node with these settings and the `bootstrap` peers of its configuration runs the
    /// mesh: `enabled`, or some bootstrap peer configured.
    pub fn is_enabled(&self, bootstrap: &[String]) -> bool {
        self.enabled || !bootstrap.is_empty()
    }

    /// Check the timers against the state machine's rules.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (field, v) in [
            ("sync_interval_ms", self.sync_interval_ms),
            ("redial_interval_ms", self.redial_interval_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("untrusted_key_records", self.untrusted_key_records),
            ("untrusted_key_bytes", self.untrusted_key_bytes),
            ("trusted_key_records", self.trusted_key_records),
            ("trusted_key_bytes", self.trusted_key_bytes),
            ("peer_closure_requests_per_sec", u64::from(self.peer_closure_requests_per_sec)),
            ("peer_nar_requests_per_sec", u64::from(self.peer_nar_requests_per_sec)),
            ("peer_sync_requests_per_sec", u64::from(self.peer_sync_requests_per_sec)),
            ("sync_request_max_bytes", self.sync_request_max_bytes as u64),
            ("forget_peers_after_days", self.forget_peers_after_days),
            ("target_peers", self.target_peers as u64),
        ] {
            if v == 0 {
                return Err(SettingsError::Zero { field });
            }
        }
        self.mesh_config(StoreDir::nix(), TrustConfig::default())
            .validate()
            .map_err(|e| SettingsError::Timers(e.to_string()))
    }

    /// The state machine's configuration with these timers. A node that trusts no key but its
    /// own (no `trusted_keys`) counts towards k the attestations of the builders placement
    /// designated ([`ReplicaRule::Designated`]): otherwise each such node would count only its
    /// own and build every job itself. With trusted keys, only trusted builders count.
    pub fn mesh_config(&self, store_dir: StoreDir, trust: TrustConfig) -> MeshConfig {
        let replicas_from = match &trust.trusted {
            Some(t) if t.len() <= 1 => ReplicaRule::Designated,
            _ => ReplicaRule::Trusted,
        };
        MeshConfig {
            replicas_from,
            store_dir,
            announce_interval_ms: self.announce_interval_ms,
            member_ttl_ms: self.member_ttl_ms,
            lease_ms: self.lease_ms,
            renew_interval_ms: self.renew_interval_ms,
            claim_timeout_ms: self.claim_timeout_ms,
            warmup_ms: self.warmup_ms,
            fresh_job_ms: self.fresh_job_ms,
            resubmit_interval_ms: self.resubmit_interval_ms,
            republish_interval_ms: self.republish_interval_ms,
            // Clocks of one machine's processes agree; remote clocks get the default skew.
            max_clock_skew_ms: MeshConfig::default().max_clock_skew_ms,
            trust,
            ..MeshConfig::default()
        }
    }
}

/// The trust policy of a node: the configured `trusted_keys` plus its own key, and `quorum`.
/// Also returns the key names by node (for the API).
pub fn trust_policy(
    trusted_keys: &[String],
    quorum: usize,
    me: NodeId,
    my_key_name: &str,
) -> Result<(TrustConfig, Vec<(NodeId, String)>), SettingsError> {
    let mut trusted = BTreeSet::from([me]);
    let mut names = vec![(me, my_key_name.to_string())];
    for k in trusted_keys {
        // Nix `name:base64` or a Guix `(public-key ...)` s-expression: one Ed25519 point either way.
        let pk = buildmesh_protocol::guix::parse_trusted_key(k)
            .map_err(|reason| SettingsError::TrustedKey { key: k.clone(), reason })?;
        let id = NodeId::from_bytes(&pk.verifying_key().to_bytes())
            .map_err(|e| SettingsError::TrustedKey { key: k.clone(), reason: e.to_string() })?;
        trusted.insert(id);
        names.push((id, pk.name().to_string()));
    }
    Ok((
        TrustConfig {
            trusted: Some(trusted),
            quorum: quorum.max(1),
            needs_native: false,
            no_emulation_for: Default::default(),
        },
        names,
    ))
}

/// Gossipsub's duplicate window: half the shortest interval at which the mesh republishes
/// identical bytes (own results, unfinished jobs), so a republication is never swallowed;
/// between 1 s and gossipsub's default of 60 s. The driver's own seen set still drops echoes.
pub fn duplicate_cache(s: &MeshSettings) -> Duration {
    let shortest = s.republish_interval_ms.min(s.resubmit_interval_ms);
    Duration::from_millis((shortest / 2).clamp(1_000, 60_000))
}

/// A per-peer request rate of `per_sec`, with a burst of twice that.
fn rate(per_sec: u32) -> crate::net::RateLimit {
    crate::net::RateLimit { burst: per_sec.saturating_mul(2).max(1), per_sec: f64::from(per_sec.max(1)) }
}

/// The network configuration of a node: its `listen` addresses, `bootstrap` peers and `mdns`
/// from the configuration; gossip heartbeat, duplicate window and redial interval from its
/// `[mesh]` settings `s`.
pub fn net_config(
    listen: &[String],
    bootstrap: &[String],
    mdns: bool,
    s: &MeshSettings,
) -> Result<NetConfig, SettingsError> {
    let parse = |field: &'static str, list: &[String]| -> Result<Vec<libp2p::Multiaddr>, SettingsError> {
        list.iter()
            .map(|a| {
                a.parse::<libp2p::Multiaddr>().map_err(|e| SettingsError::Multiaddr {
                    field,
                    addr: a.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    };
    Ok(NetConfig {
        listen: parse("listen", listen)?,
        bootstrap: parse("bootstrap", bootstrap)?,
        mdns,
        gossip_heartbeat: Duration::from_millis(s.heartbeat_ms.max(1)),
        gossip_duplicate_cache: duplicate_cache(s),
        redial_interval: Duration::from_millis(s.redial_interval_ms.max(1)),
        target_peers: s.target_peers.max(1),
        max_connections_per_ip: s.max_connections_per_ip,
        peer_limits: crate::net::PeerLimitsConfig {
            closure: rate(s.peer_closure_requests_per_sec),
            nar: rate(s.peer_nar_requests_per_sec),
            sync: rate(s.peer_sync_requests_per_sec),
            ..crate::net::PeerLimitsConfig::default()
        },
        sync_limits: crate::net::RrLimits { max_request: s.sync_request_max_bytes, ..NetConfig::default().sync_limits },
        ..NetConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_short_timers_too() {
        MeshSettings::default().validate().unwrap();
        let fast = MeshSettings {
            announce_interval_ms: 1000,
            member_ttl_ms: 4000,
            lease_ms: 6000,
            renew_interval_ms: 1500,
            claim_timeout_ms: 3000,
            warmup_ms: 1500,
            ..MeshSettings::default()
        };
        fast.validate().unwrap();
        let bad = MeshSettings { renew_interval_ms: 7000, lease_ms: 6000, ..fast.clone() };
        assert!(matches!(bad.validate(), Err(SettingsError::Timers(m)) if m.contains("renew_interval_ms")));
        let bad = MeshSettings { sync_interval_ms: 0, ..fast };
        assert_eq!(bad.validate(), Err(SettingsError::Zero { field: "sync_interval_ms" }));
    }

    #[test]
    fn duplicate_window_is_shorter_than_republication() {
        let d = MeshSettings::default();
        let w = duplicate_cache(&d);
        assert!(w.as_millis() < u128::from(d.republish_interval_ms.min(d.resubmit_interval_ms)), "{w:?}");
        let fast = MeshSettings { republish_interval_ms: 2000, resubmit_interval_ms: 4000, ..d.clone() };
        assert_eq!(duplicate_cache(&fast), Duration::from_secs(1));
        let slow = MeshSettings { republish_interval_ms: 600_000, resubmit_interval_ms: 600_000, ..d };
        assert_eq!(duplicate_cache(&slow), Duration::from_secs(60));
    }

    #[test]
    fn trust_includes_own_key_and_configured_ones() {
        let me = buildmesh_protocol::identity::NodeKey::from_seed("me", [1; 32]).unwrap();
        let other = buildmesh_protocol::identity::NodeKey::from_seed("other", [2; 32]).unwrap();
        let trusted = vec![other.nix_public_key().to_string()];
        let (trust, names) = trust_policy(&trusted, 3, me.node_id(), "me").unwrap();
        assert_eq!(trust.quorum, 3);
        assert!(trust.is_trusted(&me.node_id()) && trust.is_trusted(&other.node_id()));
        let stranger = buildmesh_protocol::identity::NodeKey::from_seed("x", [3; 32]).unwrap();
        assert!(!trust.is_trusted(&stranger.node_id()));
        assert!(names.contains(&(other.node_id(), "other".to_string())));
        // Replicas count by trust when keys are trusted, by designation when only this node is.
        let s = MeshSettings::default();
        assert_eq!(s.mesh_config(StoreDir::nix(), trust).replicas_from, ReplicaRule::Trusted);
        let (alone, _) = trust_policy(&[], 1, me.node_id(), "me").unwrap();
        assert_eq!(s.mesh_config(StoreDir::nix(), alone).replicas_from, ReplicaRule::Designated);
        let bad = vec!["nope".to_string()];
        assert!(matches!(trust_policy(&bad, 1, me.node_id(), "me"), Err(SettingsError::TrustedKey { .. })));
    }
}
