//! NAT traversal: reachability (AutoNAT), relays (circuit relay v2, server and client) and hole
//! punching (DCUtR); their settings (`[nat]` in the node's configuration) and what the event loop
//! publishes about them (reachability, the kind of connection to each peer).
//!
//! # How a node behind NAT joins
//! 1. AutoNAT asks connected peers to dial it back on the addresses they observed; a node that
//!    is reached is `public`, one that is not is `private` ([`Reachability`]).
//! 2. While it is not `public`, a node reserves a slot on every configured relay (`relays`,
//!    `--relay`) and, once `private`, on up to `auto_relays` connected peers that offer the relay
//!    service. Its relayed addresses (`…/p2p/<relay>/p2p-circuit/p2p/<me>`) are listen addresses:
//!    identify tells them to peers and Kademlia spreads them, so others can dial it.
//! 3. A peer that dials a relayed address gets a relayed connection; DCUtR then has both sides
//!    dial each other's observed addresses at once (TCP simultaneous open, QUIC), and when a
//!    direct connection comes up the relayed one is closed, so requests (NAR chunks, closures,
//!    sync pages) use the direct connection.
//! 4. When the punch fails (symmetric NAT: a new port per destination), the peers keep the
//!    relayed connection; the relay's limits ([`RelayLimits`]) are sized so a mesh's traffic
//!    fits in a circuit, and an expired circuit is dialled again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat, relay};
use serde::{Deserialize, Serialize};

/// Whether this node can be dialled from the internet, as AutoNAT last found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Peers dialled it back on an address they observed.
    Public,
    /// Peers could not dial it back: behind NAT or a firewall.
    Private,
    /// Not tested yet (no peer to ask, or too few answers).
    #[default]
    Unknown,
}

impl Reachability {
    /// `public`, `private` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Unknown => "unknown",
        }
    }
}

/// How this node is connected to a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// At least one connection that goes straight to the peer (possibly punched through NAT).
    Direct,
    /// Only connections through a relay.
    Relayed,
    /// No connection.
    #[default]
    None,
}

/// Limits of the relay service (circuit relay v2 "hop") this node offers. Every reservation and
/// circuit is bounded: a relay forwards other people's bytes, so it caps how many peers may
/// reserve a slot, how many circuits run at once (in all and per peer) and how long and how many
/// bytes one circuit may carry. A circuit that reaches a limit is closed; its peers dial again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, over all peers.
    pub max_reservations: usize,
    /// Reservations one peer may hold at once.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the peer must renew it (the client renews on its own).
    pub reservation_duration: Duration,
    /// Circuits relayed at once, over all peers.
    pub max_circuits: usize,
    /// Circuits one peer may have at once (as source or destination).
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit carries (both directions together).
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// libp2p's defaults (2 minutes and 128 KiB per circuit) are meant for a hole punch only;
    /// a mesh sends NAR chunks of 1 MiB and keeps gossiping over a connection that cannot be
    /// punched (symmetric NAT), so a circuit here carries up to 256 MiB for up to 30 minutes,
    /// with fewer circuits per peer than reservations allow.
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(30 * 60),
            max_circuit_bytes: 256 << 20,
        }
    }
}

/// AutoNAT timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutonatTimers {
    /// Delay after start before the first probe (time to connect to some peers).
    pub boot_delay: Duration,
    /// Time between probes while the answer is unknown or not yet confident.
    pub retry_interval: Duration,
    /// Time between probes once confident.
    pub refresh_interval: Duration,
}

impl Default for AutonatTimers {
    fn default() -> Self {
        AutonatTimers {
            boot_delay: Duration::from_secs(15),
            retry_interval: Duration::from_secs(90),
            refresh_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// NAT traversal settings of the network layer ([`super::NetConfig::nat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Offer the relay service: `Some(true)` always, `Some(false)` never, `None` only while
    /// AutoNAT has confirmed a public address (libp2p's automatic mode).
    pub relay_server: Option<bool>,
    /// Relays to reserve a slot on while this node is not public; each ends in `/p2p/<id>`.
    pub relays: Vec<Multiaddr>,
    /// Once private, also reserve on up to this many connected peers that offer the relay service.
    pub auto_relays: usize,
    /// Treat private address ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) as
    /// reachable: AutoNAT probes and serves peers there, and such peers count as public relays.
    pub private_as_public: bool,
    /// AutoNAT timers.
    pub autonat: AutonatTimers,
    /// The relay service's limits.
    pub relay_limits: RelayLimits,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            relay_server: None,
            relays: Vec::new(),
            auto_relays: 2,
            private_as_public: false,
            autonat: AutonatTimers::default(),
            relay_limits: RelayLimits::default(),
        }
    }
}

/// The `[nat]` table of the node's configuration (flags: `--relay-server`, `--relay`,
/// `--private-as-public`). Times in milliseconds or seconds as named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatSettings {
    /// Serve as a relay: `true` always, `false` never; absent (the default) only while AutoNAT
    /// finds this node public.
    pub relay_server: Option<bool>,
    /// Relays (multiaddrs ending in `/p2p/<peer id>`) to reserve a slot on while this node is not
    /// publicly reachable.
    pub relays: Vec<String>,
    /// Once AutoNAT finds this node private, also reserve on up to this many connected peers that
    /// offer the relay service (default 2; 0 = only the configured `relays`).
    pub auto_relays: usize,
    /// Treat private address ranges as reachable (a mesh on a private network, tests in network
    /// namespaces whose "public" network uses 10.x or 192.168.x).
    pub private_as_public: bool,
    /// Delay after start before AutoNAT's first probe.
    pub autonat_boot_delay_ms: u64,
    /// Time between AutoNAT probes while unsure.
    pub autonat_retry_interval_ms: u64,
    /// Time between AutoNAT probes once sure.
    pub autonat_refresh_interval_ms: u64,
    /// Relay service: reservations held at once.
    pub relay_max_reservations: usize,
    /// Relay service: reservations per peer.
    pub relay_max_reservations_per_peer: usize,
    /// Relay service: life of a reservation, in seconds.
    pub relay_reservation_duration_secs: u64,
    /// Relay service: circuits at once.
    pub relay_max_circuits: usize,
    /// Relay service: circuits per peer.
    pub relay_max_circuits_per_peer: usize,
    /// Relay service: life of one circuit, in seconds.
    pub relay_max_circuit_duration_secs: u64,
    /// Relay service: bytes one circuit carries at most.
    pub relay_max_circuit_bytes: u64,
}

impl Default for NatSettings {
    fn default() -> Self {
        let t = AutonatTimers::default();
        let r = RelayLimits::default();
        NatSettings {
            relay_server: None,
            relays: Vec::new(),
            auto_relays: 2,
            private_as_public: false,
            autonat_boot_delay_ms: t.boot_delay.as_millis() as u64,
            autonat_retry_interval_ms: t.retry_interval.as_millis() as u64,
            autonat_refresh_interval_ms: t.refresh_interval.as_millis() as u64,
            relay_max_reservations: r.max_reservations,
            relay_max_reservations_per_peer: r.max_reservations_per_peer,
            relay_reservation_duration_secs: r.reservation_duration.as_secs(),
            relay_max_circuits: r.max_circuits,
            relay_max_circuits_per_peer: r.max_circuits_per_peer,
            relay_max_circuit_duration_secs: r.max_circuit_duration.as_secs(),
            relay_max_circuit_bytes: r.max_circuit_bytes,
        }
    }
}

/// A `[nat]` value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatSettingsError {
    /// A relay address does not parse or lacks its `/p2p/<peer id>`.
    #[error("nat.relays: {addr:?}: {reason}")]
    Relay {
        /// The address as configured.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// A limit or timer is zero.
    #[error("nat.{field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
}

impl NatSettings {
    /// The network layer's [`NatConfig`], or the first field at fault.
    pub fn to_config(&self) -> Result<NatConfig, NatSettingsError> {
        let mut relays = Vec::new();
        for a in &self.relays {
            let ma: Multiaddr = a.parse().map_err(|e: libp2p::multiaddr::Error| NatSettingsError::Relay {
                addr: a.clone(),
                reason: e.to_string(),
            })?;
            if super::peer_id_of(&ma).is_none() {
                return Err(NatSettingsError::Relay { addr: a.clone(), reason: "must end in /p2p/<peer id>".into() });
            }
            if is_relayed(&ma) {
                return Err(NatSettingsError::Relay { addr: a.clone(), reason: "is itself a relayed address".into() });
            }
            relays.push(ma);
        }
        let numbers = [
            ("autonat_boot_delay_ms", self.autonat_boot_delay_ms),
            ("autonat_retry_interval_ms", self.autonat_retry_interval_ms),
            ("autonat_refresh_interval_ms", self.autonat_refresh_interval_ms),
            ("relay_max_reservations", self.relay_max_reservations as u64),
            ("relay_max_reservations_per_peer", self.relay_max_reservations_per_peer as u64),
            ("relay_reservation_duration_secs", self.relay_reservation_duration_secs),
            ("relay_max_circuits", self.relay_max_circuits as u64),
            ("relay_max_circuits_per_peer", self.relay_max_circuits_per_peer as u64),
            ("relay_max_circuit_duration_secs", self.relay_max_circuit_duration_secs),
            ("relay_max_circuit_bytes", self.relay_max_circuit_bytes),
        ];
        if let Some((field, _)) = numbers.iter().find(|(_, v)| *v == 0) {
            return Err(NatSettingsError::Zero { field });
        }
        // libp2p panics on a circuit duration above u32::MAX seconds.
        let circuit_secs = self.relay_max_circuit_duration_secs.min(u64::from(u32::MAX));
        Ok(NatConfig {
            relay_server: self.relay_server,
            relays,
            auto_relays: self.auto_relays,
            private_as_public: self.private_as_public,
            autonat: AutonatTimers {
                boot_delay: Duration::from_millis(self.autonat_boot_delay_ms),
                retry_interval: Duration::from_millis(self.autonat_retry_interval_ms),
                refresh_interval: Duration::from_millis(self.autonat_refresh_interval_ms),
            },
            relay_limits: RelayLimits {
                max_reservations: self.relay_max_reservations,
                max_reservations_per_peer: self.relay_max_reservations_per_peer,
                reservation_duration: Duration::from_secs(self.relay_reservation_duration_secs),
                max_circuits: self.relay_max_circuits,
                max_circuits_per_peer: self.relay_max_circuits_per_peer,
                max_circuit_duration: Duration::from_secs(circuit_secs),
                max_circuit_bytes: self.relay_max_circuit_bytes,
            },
        })
    }
}

/// What the event loop publishes about NAT traversal, read by [`super::NetHandle`] without a
/// round trip through the loop (the API's snapshots read it often).
#[derive(Debug, Default)]
pub(crate) struct NatShared {
    pub(crate) reachability: RwLock<Reachability>,
    pub(crate) connections: RwLock<HashMap<PeerId, ConnectionKind>>,
    /// The remote addresses of the direct (not relayed) connections to each peer.
    pub(crate) direct_addresses: RwLock<HashMap<PeerId, Vec<Multiaddr>>>,
}

/// Shared handle on [`NatShared`].
pub(crate) type SharedNat = Arc<NatShared>;

/// Whether `addr` goes through a relay (`…/p2p-circuit…`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether the first IP of `addr` is reachable from the internet: not loopback, unspecified,
/// link-local, and (unless `private_as_public`) not in a private or shared range. DNS names
/// count as reachable.
pub fn is_public_addr(addr: &Multiaddr, private_as_public: bool) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let private = ip.is_private() || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64);
            !(ip.is_loopback() || ip.is_unspecified() || ip.is_link_local() || ip.is_broadcast())
                && (private_as_public || !private)
        }
        Some(Protocol::Ip6(ip)) => {
            let seg = ip.segments()[0];
            let private = (seg & 0xfe00) == 0xfc00;
            let link_local = (seg & 0xffc0) == 0xfe80;
            !(ip.is_loopback() || ip.is_unspecified() || link_local) && (private_as_public || !private)
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

/// The addresses to dial a peer on: all of `addrs`, except that when the peer has a relayed
/// address (it is behind NAT: a node reserves on relays only while it is not public) its direct
/// reachable-looking addresses are left out and it is dialled through the relay only; DCUtR then
/// makes the direct connection. Dialling such an address is not only futile (the peer's NAT
/// drops it) but breaks the punch: the dial leaves a mapping in this node's own NAT from the
/// listen port to the peer's NAT address, the exact pair the punch uses, so the peer's punch
/// packet gets through to this node's *listening* socket instead of its punching one (both
/// sides then wait in the listener role until the upgrade times out), and this node's punch
/// finds that address pair taken and is sent from a new port the peer's NAT drops. Addresses
/// that are not reachable from the internet (a shared LAN, unless `private_as_public`) are kept.
pub(crate) fn relay_first(mut addrs: Vec<Multiaddr>, private_as_public: bool) -> Vec<Multiaddr> {
    if addrs.iter().any(is_relayed) {
        addrs.retain(|a| is_relayed(a) || !is_public_addr(a, private_as_public));
    }
    addrs
}

/// The AutoNAT (v1) behaviour of `cfg`: probes connected peers, serves their probes.
pub(crate) fn autonat_behaviour(peer: PeerId, cfg: &NatConfig) -> autonat::Behaviour {
    autonat::Behaviour::new(
        peer,
        autonat::Config {
            boot_delay: cfg.autonat.boot_delay,
            retry_interval: cfg.autonat.retry_interval,
            refresh_interval: cfg.autonat.refresh_interval,
            // Ask a peer again soon: a small mesh has few peers to ask.
            throttle_server_period: cfg.autonat.retry_interval.min(Duration::from_secs(90)),
            only_global_ips: !cfg.private_as_public,
            ..autonat::Config::default()
        },
    )
}

/// The relay service of `cfg`, with per-peer and per-IP rates of reservations and circuits on
/// top of the limits (libp2p's defaults: 30 reservations and 30 circuits per peer per hour
/// after a burst, 60 per IP address).
pub(crate) fn relay_server_behaviour(peer: PeerId, cfg: &NatConfig) -> relay::Behaviour {
    let l = cfg.relay_limits;
    let defaults = relay::Config::default();
    let config = relay::Config {
        max_reservations: l.max_reservations,
        max_reservations_per_peer: libp2p_per_peer(l.max_reservations_per_peer),
        reservation_duration: l.reservation_duration,
        max_circuits: l.max_circuits,
        max_circuits_per_peer: libp2p_per_peer(l.max_circuits_per_peer),
        max_circuit_duration: l.max_circuit_duration,
        max_circuit_bytes: l.max_circuit_bytes,
        ..defaults
    };
    let mut b = relay::Behaviour::new(peer, config);
    match cfg.relay_server {
        Some(true) => b.set_status(Some(relay::Status::Enable)),
        Some(false) => b.set_status(Some(relay::Status::Disable)),
        None => {}
    }
    b
}

/// The value to give libp2p's relay for a per-peer bound of `max`: libp2p (0.57, relay 0.22)
/// refuses a peer's new reservation or circuit only when the peer already holds *more* than its
/// `max_*_per_peer` (`count > max`), so it lets `max + 1` through; one less makes the bound the
/// one configured (at least 1: the settings refuse 0).
pub(crate) fn libp2p_per_peer(max: usize) -> usize {
    max.saturating_sub(1)
}

/// The address of a relay picked among connected peers, ending in `/p2p/<relay>` exactly once:
/// the address this node dialled it on may carry the id already (a bootstrap address, a punch),
/// and `/p2p/X/p2p/X/p2p-circuit` is refused by the relay transport, so that reserving a slot
/// failed at every try. `None` when the address names another peer.
pub(crate) fn picked_relay_addr(dialled: &Multiaddr, relay: PeerId) -> Option<Multiaddr> {
    dialled.clone().with_p2p(relay).ok()
}

/// A relay's reservation address: `addr/p2p-circuit` (`addr` ends in `/p2p/<relay>`).
pub(crate) fn circuit_listen_addr(relay_addr: &Multiaddr) -> Multiaddr {
    relay_addr.clone().with(Protocol::P2pCircuit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_convert_and_bad_values_are_named() {
        assert_eq!(NatSettings::default().to_config().unwrap(), NatConfig::default());
        let bad = NatSettings { relays: vec!["/ip4/1.2.3.4/tcp/1".into()], ..NatSettings::default() };
        assert!(matches!(bad.to_config(), Err(NatSettingsError::Relay { .. })));
        let bad = NatSettings { relay_max_circuit_bytes: 0, ..NatSettings::default() };
        assert_eq!(bad.to_config(), Err(NatSettingsError::Zero { field: "relay_max_circuit_bytes" }));
        let peer = PeerId::random();
        let ok = NatSettings { relays: vec![format!("/ip4/1.2.3.4/tcp/1/p2p/{peer}")], ..NatSettings::default() };
        assert_eq!(ok.to_config().unwrap().relays.len(), 1);
    }

    #[test]
    fn public_and_private_addresses() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert!(is_public_addr(&a("/ip4/8.8.8.8/tcp/1"), false));
        assert!(!is_public_addr(&a("/ip4/10.1.2.3/tcp/1"), false));
        assert!(is_public_addr(&a("/ip4/10.1.2.3/tcp/1"), true));
        assert!(!is_public_addr(&a("/ip4/192.168.1.1/tcp/1"), false));
        assert!(!is_public_addr(&a("/ip4/100.64.0.1/tcp/1"), false));
        assert!(!is_public_addr(&a("/ip4/127.0.0.1/tcp/1"), true));
        assert!(!is_public_addr(&a("/ip6/fd00::1/tcp/1"), false));
        assert!(is_public_addr(&a("/ip6/2001:db8::1/tcp/1"), false));
        let relayed = a(&format!("/ip4/8.8.8.8/tcp/1/p2p/{}/p2p-circuit", PeerId::random()));
        assert!(is_relayed(&relayed) && !is_relayed(&a("/ip4/8.8.8.8/tcp/1")));
    }

    #[test]
    fn a_peer_behind_nat_is_dialled_through_its_relay_only() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let relayed = a(&format!("/ip4/8.8.8.8/tcp/1/p2p/{}/p2p-circuit", PeerId::random()));
        let public = a("/ip4/9.9.9.9/tcp/4001");
        let lan = a("/ip4/192.168.1.7/tcp/4001");
        let all = vec![lan.clone(), public.clone(), relayed.clone()];
        assert_eq!(relay_first(all.clone(), false), vec![lan.clone(), relayed.clone()]);
        assert_eq!(relay_first(all, true), vec![relayed]);
        // No relayed address: every address is dialled.
        assert_eq!(relay_first(vec![lan.clone(), public.clone()], false), vec![lan, public]);
    }

    #[test]
    fn a_picked_relay_address_is_one_the_relay_transport_takes() {
        use libp2p::core::transport::{ListenerId, Transport};
        let relay = PeerId::random();
        let (mut transport, _behaviour) = libp2p::relay::client::new(PeerId::random());
        for dialled in ["/ip4/10.0.0.1/tcp/4001", &format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{relay}")] {
            let dialled: Multiaddr = dialled.parse().unwrap();
            let addr = picked_relay_addr(&dialled, relay).unwrap();
            assert_eq!(addr.iter().filter(|p| matches!(p, Protocol::P2p(_))).count(), 1, "{addr}");
            let circuit = circuit_listen_addr(&addr);
            assert!(transport.listen_on(ListenerId::next(), circuit.clone()).is_ok(), "{circuit}");
        }
        let other: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{}", PeerId::random()).parse().unwrap();
        assert_eq!(picked_relay_addr(&other, relay), None);
    }

    #[test]
    fn json_names() {
        assert_eq!(serde_json::to_string(&Reachability::Public).unwrap(), "\"public\"");
        assert_eq!(serde_json::to_string(&ConnectionKind::Relayed).unwrap(), "\"relayed\"");
        assert_eq!(serde_json::to_string(&ConnectionKind::None).unwrap(), "\"none\"");
    }
}
