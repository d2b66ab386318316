//! The peer book: which mesh peers this node remembers across restarts, and which of them it
//! dials when it has too few connections (issue 18 item 4). The rows live in the store's `peers`
//! table ([`crate::store::PeerRecord`]); this module decides what goes there and is pure (the
//! clock is a parameter), so its bounds are unit-tested without a network.
//!
//! # What is remembered
//! Only peers that completed identify with this mesh's protocol version (the network layer
//! disconnects the others before the driver hears of them), with the listen addresses they
//! reported, filtered ([`filter_addrs`]): TCP or QUIC over an IP or DNS name (and relayed
//! `/p2p-circuit` addresses through such a relay), no unspecified or multicast IP, a loopback
//! address only from a peer whose connection came from loopback (it runs on this host), a
//! private-range address only from a peer connected from loopback or a private range (unless
//! `private_as_public`), at most [`MAX_ADDR_BYTES`] bytes each and
//! [`PeerBookLimits::max_addrs_per_peer`] per peer.
//!
//! # Bounds (an attacker must not fill the table or the disk)
//! At most `max_peers` rows and `max_peers_per_ip` per source IP (loopback exempt). When full, a
//! new peer replaces the disconnected entry seen longest ago, untrusted before trusted; a new
//! untrusted peer never replaces a trusted one, and connected entries are never replaced. Peers
//! not seen for `forget_after_ms` are forgotten.
//!
//! # Writes
//! Changes are collected and written in batches ([`PeerBook::take_batch`]): a new peer or a new
//! address at most every [`URGENT_FLUSH_MS`], `last_seen` of connected peers every
//! [`FLUSH_MS`]; never one commit per identify event.
//!
//! # Dialling
//! While fewer than `target` peers are connected, [`PeerBook::due_dials`] hands out remembered
//! peers, most recently seen first, at most `max_in_flight` at once; a peer that could not be
//! reached waits [`BACKOFF_MIN_MS`], doubling up to [`BACKOFF_MAX_MS`], before its next try.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::store::{PeerRecord, PeerRows, Reachability};

/// Longest address remembered, in bytes of its binary form.
pub const MAX_ADDR_BYTES: usize = 128;
/// Least time between two writes of new peers or addresses.
pub const URGENT_FLUSH_MS: u64 = 2_000;
/// Time between two writes of `last_seen` of connected peers.
pub const FLUSH_MS: u64 = 60_000;
/// First wait before dialling again a remembered peer that could not be reached.
pub const BACKOFF_MIN_MS: u64 = 2_000;
/// Longest wait between two dials of an unreachable remembered peer.
pub const BACKOFF_MAX_MS: u64 = 10 * 60_000;

/// The bounds of a [`PeerBook`] (from `[mesh]`: `remember_peers`, `forget_peers_after_days`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBookLimits {
    /// Rows at most (0: remember nothing and dial nothing remembered).
    pub max_peers: usize,
    /// Addresses kept per peer at most.
    pub max_addrs_per_peer: usize,
    /// Rows whose connection came from one IP address at most (loopback exempt).
    pub max_peers_per_ip: usize,
    /// A peer not seen for this long is forgotten.
    pub forget_after_ms: u64,
    /// Treat private address ranges as reachable from anywhere (meshes on private networks;
    /// the `--private-as-public` flag of the NAT work).
    pub private_as_public: bool,
    /// Dial remembered peers while fewer than this many peers are connected.
    pub target: usize,
    /// Dials of remembered peers in flight at most.
    pub max_in_flight: usize,
}

impl Default for PeerBookLimits {
    fn default() -> Self {
        PeerBookLimits {
            max_peers: 1024,
            max_addrs_per_peer: 8,
            max_peers_per_ip: 8,
            forget_after_ms: 14 * 24 * 3600 * 1000,
            private_as_public: false,
            target: 8,
            max_in_flight: 8,
        }
    }
}

/// Where an IP address can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This host only.
    Loopback,
    /// A private network (RFC 1918, CGNAT, link-local, IPv6 ULA and link-local).
    Private,
    /// Anywhere.
    Public,
}

/// The scope of `ip`, or `None` when it is never dialable (unspecified, multicast, broadcast).
pub fn scope_of(ip: IpAddr) -> Option<Scope> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || o[0] == 0 {
                None
            } else if v4.is_loopback() {
                Some(Scope::Loopback)
            } else if v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some(Scope::Private)
            } else {
                Some(Scope::Public)
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return scope_of(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_unspecified() || v6.is_multicast() {
                None
            } else if v6.is_loopback() {
                Some(Scope::Loopback)
            } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                Some(Scope::Private)
            } else {
                Some(Scope::Public)
            }
        }
    }
}

/// The IP address of a connection's remote address (its first component), if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Whether this node may dial `addr` reported by `peer`, whose connection came from an address
/// of scope `seen_from` (`None` when unknown: treated as public). Returns the address without a
/// trailing `/p2p/<peer>` (an address naming another peer at its end is refused).
pub fn dialable(
    addr: &Multiaddr,
    peer: &PeerId,
    seen_from: Option<Scope>,
    private_as_public: bool,
) -> Option<Multiaddr> {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(id)) = addr.iter().last() {
        if id != *peer {
            return None;
        }
        addr.pop();
    }
    if addr.to_vec().len() > MAX_ADDR_BYTES {
        return None;
    }
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    let scope = match parts.first()? {
        Protocol::Ip4(ip) => scope_of(IpAddr::V4(*ip))?,
        Protocol::Ip6(ip) => scope_of(IpAddr::V6(*ip))?,
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => {
            if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
                Scope::Loopback
            } else {
                Scope::Public
            }
        }
        _ => return None,
    };
    let transport_len = match parts.get(1..) {
        Some([Protocol::Tcp(p), ..]) if *p != 0 => 2,
        Some([Protocol::Udp(p), Protocol::QuicV1, ..]) if *p != 0 => 3,
        _ => return None,
    };
    match &parts[transport_len..] {
        [] => {}
        // A relayed address: the relay's transport address, its id, then `/p2p-circuit`.
        [Protocol::P2p(_), Protocol::P2pCircuit] => {}
        _ => return None,
    }
    let seen_from = seen_from.unwrap_or(Scope::Public);
    let allowed = match scope {
        Scope::Public => true,
        Scope::Private => private_as_public || seen_from <= Scope::Private,
        Scope::Loopback => seen_from == Scope::Loopback,
    };
    allowed.then_some(addr)
}

/// The addresses of `addrs` this node remembers for `peer` (see [`dialable`]), deduplicated, in
/// the peer's order, at most `max`.
pub fn filter_addrs(
    addrs: &[Multiaddr],
    peer: &PeerId,
    seen_from: Option<Scope>,
    private_as_public: bool,
    max: usize,
) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in addrs {
        if out.len() >= max {
            break;
        }
        if let Some(a) = dialable(a, peer, seen_from, private_as_public)
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

/// A batch of changes for [`crate::store::Store::write_peers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBatch {
    /// Rows to insert or replace.
    pub put: Vec<(String, PeerRecord)>,
    /// Rows to delete.
    pub remove: Vec<String>,
}

impl PeerBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    rec: PeerRecord,
    trusted: bool,
    /// Next dial not before (Unix ms) and the wait after the next failure.
    next_dial_ms: u64,
    backoff_ms: u64,
}

/// The remembered peers in memory (see the module docs).
#[derive(Debug)]
pub struct PeerBook {
    limits: PeerBookLimits,
    local: PeerId,
    entries: HashMap<PeerId, Entry>,
    /// Connected peers and the scope and IP their connection came from.
    connected: HashMap<PeerId, (Option<Scope>, Option<IpAddr>)>,
    dialing: HashSet<PeerId>,
    dirty: BTreeSet<PeerId>,
    removed: BTreeSet<String>,
    urgent: bool,
    last_flush_ms: u64,
    last_full_flush_ms: u64,
}

impl PeerBook {
    /// The book of `local` with the stored `rows` (expired and malformed rows are forgotten,
    /// the surplus over `max_peers` too: the next batch deletes them); `is_trusted` tells which
    /// peers' keys this node trusts (they are evicted last).
    pub fn load(
        limits: PeerBookLimits,
        local: PeerId,
        rows: PeerRows,
        now: u64,
        is_trusted: impl Fn(&PeerId) -> bool,
    ) -> PeerBook {
        let mut book = PeerBook {
            limits,
            local,
            entries: HashMap::new(),
            connected: HashMap::new(),
            dialing: HashSet::new(),
            dirty: BTreeSet::new(),
            removed: rows.corrupt.into_iter().collect(),
            urgent: false,
            last_flush_ms: now,
            last_full_flush_ms: now,
        };
        let mut rows = rows.rows;
        // Most recently seen first, so that the surplus dropped is the oldest.
        rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen_ms));
        for (key, mut rec) in rows {
            let peer = match key.parse::<PeerId>() {
                Ok(p) if p != local => p,
                _ => {
                    book.removed.insert(key);
                    continue;
                }
            };
            let expired = now.saturating_sub(rec.last_seen_ms) > book.limits.forget_after_ms;
            if expired || book.entries.len() >= book.limits.max_peers {
                book.removed.insert(key);
                continue;
            }
            if rec.addrs.len() > book.limits.max_addrs_per_peer {
                rec.addrs.truncate(book.limits.max_addrs_per_peer);
                book.dirty.insert(peer);
            }
            let trusted = is_trusted(&peer);
            book.entries.insert(peer, Entry { rec, trusted, next_dial_ms: 0, backoff_ms: BACKOFF_MIN_MS });
        }
        book.urgent = !book.removed.is_empty() || !book.dirty.is_empty();
        book
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When `peer` was last seen (Unix ms), if it is remembered.
    pub fn last_seen(&self, peer: &PeerId) -> Option<u64> {
        self.entries.get(peer).map(|e| e.rec.last_seen_ms)
    }

    /// The remembered record of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.entries.get(peer).map(|e| &e.rec)
    }

    /// A connection to `peer` opened; `remote` is its remote address (which IP it came from).
    pub fn connected(&mut self, peer: PeerId, remote: &Multiaddr, now: u64) {
        let ip = ip_of(remote);
        self.connected.insert(peer, (ip.and_then(scope_of), ip));
        self.dialing.remove(&peer);
        if let Some(e) = self.entries.get_mut(&peer) {
            e.backoff_ms = BACKOFF_MIN_MS;
            e.next_dial_ms = 0;
            e.rec.last_seen_ms = now;
            self.dirty.insert(peer);
        }
    }

    /// The last connection to `peer` closed.
    pub fn disconnected(&mut self, peer: &PeerId, now: u64) {
        self.connected.remove(peer);
        if let Some(e) = self.entries.get_mut(peer) {
            e.rec.last_seen_ms = now;
            self.dirty.insert(*peer);
        }
    }

    /// `peer` completed identify with our protocol version and reported `listen_addrs`; `trusted`:
    /// its key is among this node's trusted keys. Returns whether it is remembered now.
    pub fn identified(&mut self, peer: PeerId, listen_addrs: &[Multiaddr], trusted: bool, now: u64) -> bool {
        if self.limits.max_peers == 0 || peer == self.local {
            return false;
        }
        let (scope, ip) = self.connected.get(&peer).copied().unwrap_or((None, None));
        let addrs =
            filter_addrs(listen_addrs, &peer, scope, self.limits.private_as_public, self.limits.max_addrs_per_peer);
        if addrs.is_empty() {
            return false;
        }
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        if let Some(e) = self.entries.get_mut(&peer) {
            e.trusted = trusted;
            e.rec.last_seen_ms = now;
            if e.rec.addrs != addrs {
                e.rec.addrs = addrs;
                self.urgent = true;
            }
            self.dirty.insert(peer);
            return true;
        }
        let seen_from = ip.map(|ip| ip.to_string()).unwrap_or_default();
        if scope != Some(Scope::Loopback) && !seen_from.is_empty() {
            let same_ip = self.entries.values().filter(|e| e.rec.seen_from == seen_from).count();
            if same_ip >= self.limits.max_peers_per_ip {
                return false;
            }
        }
        if self.entries.len() >= self.limits.max_peers && !self.evict_for(trusted) {
            return false;
        }
        let rec =
            PeerRecord { addrs, last_seen_ms: now, first_seen_ms: now, reachability: Reachability::Unknown, seen_from };
        self.entries.insert(peer, Entry { rec, trusted, next_dial_ms: 0, backoff_ms: BACKOFF_MIN_MS });
        self.removed.remove(&peer.to_base58());
        self.dirty.insert(peer);
        self.urgent = true;
        true
    }

    /// Make room for a new peer (`trusted` or not): forget the disconnected entry seen longest
    /// ago, untrusted ones first; a trusted entry only for a trusted newcomer.
    fn evict_for(&mut self, trusted: bool) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(p, e)| !self.connected.contains_key(*p) && (trusted || !e.trusted))
            .min_by_key(|(p, e)| (e.trusted, e.rec.last_seen_ms, p.to_bytes()))
            .map(|(p, _)| *p);
        match victim {
            Some(p) => {
                self.forget(&p);
                true
            }
            None => false,
        }
    }

    /// The reachability of `peer` (from AutoNAT or its announcement), if it is remembered.
    pub fn set_reachability(&mut self, peer: &PeerId, reachability: Reachability) {
        if let Some(e) = self.entries.get_mut(peer)
            && e.rec.reachability != reachability
        {
            e.rec.reachability = reachability;
            self.dirty.insert(*peer);
            self.urgent = true;
        }
    }

    /// Forget `peer` (blocked by the operator, or evicted).
    pub fn forget(&mut self, peer: &PeerId) {
        if self.entries.remove(peer).is_some() {
            self.dirty.remove(peer);
            self.removed.insert(peer.to_base58());
            self.urgent = true;
        }
    }

    /// Remembered peers to dial now, most recently seen first, with their addresses (each with
    /// `/p2p/<peer>`): none while `connected_count` reaches the target, at most `max_in_flight`
    /// dials at once, none to a peer connected, being dialled or waiting out its backoff.
    pub fn due_dials(&mut self, now: u64, connected_count: usize) -> Vec<(PeerId, Vec<Multiaddr>)> {
        if connected_count >= self.limits.target || self.dialing.len() >= self.limits.max_in_flight {
            return Vec::new();
        }
        let mut due: Vec<(&PeerId, &Entry)> = self
            .entries
            .iter()
            .filter(|(p, e)| !self.connected.contains_key(*p) && !self.dialing.contains(*p) && e.next_dial_ms <= now)
            .collect();
        due.sort_by_key(|(p, e)| (std::cmp::Reverse(e.rec.last_seen_ms), p.to_bytes()));
        let room = (self.limits.max_in_flight - self.dialing.len()).min(self.limits.target - connected_count);
        let picked: Vec<(PeerId, Vec<Multiaddr>)> = due
            .into_iter()
            .take(room)
            .map(|(p, e)| {
                let addrs = e
                    .rec
                    .addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .map(|a| a.with(Protocol::P2p(*p)))
                    .collect();
                // A peer behind NAT (it has a relayed address) is dialled through its relay
                // only: its NAT address is dropped by its router (a dial that hangs until the
                // dial timeout, failing every request waiting for it) and such a dial breaks
                // hole punching (docs/nat.md, "Why a punch failed here").
                (*p, crate::net::nat::relay_first(addrs, self.limits.private_as_public))
            })
            .collect();
        for (p, _) in &picked {
            self.dialing.insert(*p);
            if let Some(e) = self.entries.get_mut(p) {
                e.next_dial_ms = now.saturating_add(e.backoff_ms);
                e.backoff_ms = (e.backoff_ms.saturating_mul(2)).min(BACKOFF_MAX_MS);
            }
        }
        picked
    }

    /// A dial handed out by [`PeerBook::due_dials`] ended (`ok`: a connection opened).
    pub fn dial_done(&mut self, peer: &PeerId, ok: bool) {
        self.dialing.remove(peer);
        if ok && let Some(e) = self.entries.get_mut(peer) {
            e.backoff_ms = BACKOFF_MIN_MS;
        }
    }

    /// The changes to write now, if any are due: new peers, addresses or removals once
    /// [`URGENT_FLUSH_MS`] passed since the last write, everything (with `last_seen` of connected
    /// peers brought to `now`) every [`FLUSH_MS`] or when `force`d (shutdown).
    pub fn take_batch(&mut self, now: u64, force: bool) -> Option<PeerBatch> {
        let full = force || now.saturating_sub(self.last_full_flush_ms) >= FLUSH_MS;
        let urgent = self.urgent && now.saturating_sub(self.last_flush_ms) >= URGENT_FLUSH_MS;
        if !full && !urgent {
            return None;
        }
        if full {
            self.last_full_flush_ms = now;
            let connected: Vec<PeerId> = self.connected.keys().copied().collect();
            for p in connected {
                if let Some(e) = self.entries.get_mut(&p) {
                    e.rec.last_seen_ms = now;
                    self.dirty.insert(p);
                }
            }
            self.expire(now);
        }
        self.urgent = false;
        self.last_flush_ms = now;
        let mut batch = PeerBatch { put: Vec::new(), remove: std::mem::take(&mut self.removed).into_iter().collect() };
        for p in std::mem::take(&mut self.dirty) {
            if let Some(e) = self.entries.get(&p) {
                batch.put.push((p.to_base58(), e.rec.clone()));
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Forget disconnected peers not seen for `forget_after_ms`.
    fn expire(&mut self, now: u64) {
        let old: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(p, e)| {
                !self.connected.contains_key(*p) && now.saturating_sub(e.rec.last_seen_ms) > self.limits.forget_after_ms
            })
            .map(|(p, _)| *p)
            .collect();
        for p in old {
            self.forget(&p);
        }
    }
}

#[cfg(test)]
#[path = "peer_book_tests.rs"]
mod tests;
