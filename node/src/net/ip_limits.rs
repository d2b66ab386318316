//! A limit on inbound connections per remote IP address (an IPv4 address or an IPv6 /64):
//! libp2p's `connection_limits` bounds connections in total and per peer id, but peer ids are
//! free to mint, so one machine could otherwise open `max_connections` connections under as many
//! identities and crowd every honest peer out. Pending (handshaking) and established inbound
//! connections count; outbound connections (this node's own dials) and relayed connections (the
//! relay limits its circuits) do not.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// The address block one limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// One IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address (one customer network).
    V6([u8; 8]),
}

impl IpKey {
    /// The block of `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&v6.octets()[..8]);
                    IpKey::V6(p)
                }
            },
        }
    }

    /// The block of the first IP component of `addr`, if it has one.
    pub fn of_multiaddr(addr: &Multiaddr) -> Option<IpKey> {
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpKey::of(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => Some(IpKey::of(IpAddr::V6(ip))),
            _ => None,
        })
    }
}

/// Why an inbound connection was denied (inside the swarm's `ListenError::Denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{count} inbound connections from {key:?} already, the limit per IP address is {max}")]
pub struct TooManyFromIp {
    /// The address block.
    pub key: IpKey,
    /// Its connections when this one arrived.
    pub count: u32,
    /// The limit.
    pub max: u32,
    /// Connections this behaviour refused so far, this one included (for log thinning).
    pub refused_total: u64,
}

/// The behaviour: counts inbound connections per [`IpKey`], denies those above `max` (0 = no
/// limit).
#[derive(Debug, Default)]
pub struct Behaviour {
    max: u32,
    conns: HashMap<ConnectionId, IpKey>,
    per_ip: HashMap<IpKey, u32>,
    refused: u64,
}

impl Behaviour {
    /// At most `max` inbound connections per IP address (0: no limit).
    pub fn new(max: u32) -> Behaviour {
        Behaviour { max, ..Behaviour::default() }
    }

    /// Inbound connections from the block of `addr` now.
    pub fn count(&self, addr: &Multiaddr) -> u32 {
        IpKey::of_multiaddr(addr).and_then(|k| self.per_ip.get(&k).copied()).unwrap_or(0)
    }

    fn release(&mut self, id: ConnectionId) {
        if let Some(key) = self.conns.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        // A relayed connection carries the relay's address: the relay bounds its circuits per
        // peer and per IP address itself.
        if self.max == 0 || super::nat::is_relayed(remote_addr) {
            return Ok(());
        }
        let Some(key) = IpKey::of_multiaddr(remote_addr) else { return Ok(()) };
        let count = self.per_ip.get(&key).copied().unwrap_or(0);
        if count >= self.max {
            self.refused += 1;
            tracing::debug!(target: "buildmesh::_events::net", event = "connection_refused_ip", %remote_addr, count, max = self.max);
            return Err(ConnectionDenied::new(TooManyFromIp {
                key,
                count,
                max: self.max,
                refused_total: self.refused,
            }));
        }
        self.conns.insert(connection_id, key);
        *self.per_ip.entry(key).or_default() += 1;
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => self.release(connection_id),
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => self.release(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_ipv4_addresses_and_ipv6_slash_64s() {
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.2/udp/1/quic-v1".parse().unwrap();
        assert_ne!(IpKey::of_multiaddr(&a), IpKey::of_multiaddr(&b));
        let c: Multiaddr = "/ip6/2001:db8:1:2::1/tcp/1".parse().unwrap();
        let d: Multiaddr = "/ip6/2001:db8:1:2:ffff::9/tcp/1".parse().unwrap();
        let e: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/1".parse().unwrap();
        assert_eq!(IpKey::of_multiaddr(&c), IpKey::of_multiaddr(&d));
        assert_ne!(IpKey::of_multiaddr(&c), IpKey::of_multiaddr(&e));
        let mapped: Multiaddr = "/ip6/::ffff:10.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(IpKey::of_multiaddr(&mapped), IpKey::of_multiaddr(&a));
        assert_eq!(IpKey::of_multiaddr(&"/dns4/example.org/tcp/1".parse().unwrap()), None);
    }

    #[test]
    fn inbound_connections_are_counted_per_ip_and_released() {
        let mut b = Behaviour::new(2);
        let local: Multiaddr = "/ip4/10.0.0.9/tcp/4001".parse().unwrap();
        let from = |port: u16| -> Multiaddr { format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap() };
        let ids: Vec<ConnectionId> = (0..3).map(|_| ConnectionId::new_unchecked(rand_id())).collect();
        b.handle_pending_inbound_connection(ids[0], &local, &from(1)).unwrap();
        b.handle_pending_inbound_connection(ids[1], &local, &from(2)).unwrap();
        let denied = b.handle_pending_inbound_connection(ids[2], &local, &from(3)).unwrap_err();
        let why = denied.downcast::<TooManyFromIp>().unwrap();
        assert_eq!((why.count, why.max), (2, 2));
        // Another address is not affected.
        let other: Multiaddr = "/ip4/10.0.0.2/tcp/1".parse().unwrap();
        b.handle_pending_inbound_connection(ids[2], &local, &other).unwrap();
        assert_eq!(b.count(&from(9)), 2);
        b.release(ids[0]);
        assert_eq!(b.count(&from(9)), 1);
        // No limit: everything passes.
        let mut open = Behaviour::new(0);
        for id in &ids {
            open.handle_pending_inbound_connection(*id, &local, &from(1)).unwrap();
        }
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1_000_000);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
