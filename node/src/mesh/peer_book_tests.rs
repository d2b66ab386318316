//! The peer book's bounds, address filters, expiry, dial order and batching, and a round trip
//! of its batches through a real redb file.

use super::*;
use crate::store::Store;

fn peer(i: u8) -> PeerId {
    crate::net::keypair_from_seed([i; 32]).public().to_peer_id()
}

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

fn limits() -> PeerBookLimits {
    PeerBookLimits { max_peers: 4, max_addrs_per_peer: 3, max_peers_per_ip: 2, ..PeerBookLimits::default() }
}

fn empty(l: PeerBookLimits) -> PeerBook {
    PeerBook::load(l, peer(0), PeerRows::default(), 0, |_| false)
}

/// Connect `p` from `from` (an IP) and identify it with one public address of its own.
fn meet(book: &mut PeerBook, p: PeerId, from: &str, trusted: bool, now: u64) -> bool {
    book.connected(p, &ma(&format!("/ip4/{from}/tcp/40000")), now);
    let own = ma(&format!("/ip4/203.0.113.{}/tcp/7801", p.to_bytes()[10] % 200 + 1));
    book.identified(p, &[own], trusted, now)
}

#[test]
fn address_filters() {
    let p = peer(1);
    let other = peer(2);
    let lo = Some(Scope::Loopback);
    let private = Some(Scope::Private);
    let public = Some(Scope::Public);
    let ok = |a: &str, from| dialable(&ma(a), &p, from, false).map(|a| a.to_string());
    // Public TCP and QUIC addresses, with or without the peer's own /p2p suffix.
    assert_eq!(ok("/ip4/8.8.8.8/tcp/7801", public).as_deref(), Some("/ip4/8.8.8.8/tcp/7801"));
    assert_eq!(
        ok(&format!("/ip4/8.8.8.8/udp/7801/quic-v1/p2p/{p}"), public).as_deref(),
        Some("/ip4/8.8.8.8/udp/7801/quic-v1")
    );
    assert_eq!(ok(&format!("/ip4/8.8.8.8/tcp/7801/p2p/{other}"), public), None, "names another peer");
    // Loopback only from a peer on this host; private ranges only from loopback or private.
    assert_eq!(ok("/ip4/127.0.0.1/tcp/7801", public), None);
    assert_eq!(ok("/ip4/127.0.0.1/tcp/7801", private), None);
    assert!(ok("/ip4/127.0.0.1/tcp/7801", lo).is_some());
    assert_eq!(ok("/ip6/::1/tcp/7801", None), None, "unknown source counts as public");
    assert_eq!(ok("/ip4/192.168.1.5/tcp/7801", public), None);
    assert_eq!(ok("/ip4/100.64.0.1/tcp/7801", public), None, "CGNAT is private");
    assert!(ok("/ip4/192.168.1.5/tcp/7801", private).is_some());
    assert!(ok("/ip4/10.1.2.3/tcp/7801", lo).is_some());
    assert!(dialable(&ma("/ip4/192.168.1.5/tcp/7801"), &p, public, true).is_some(), "private_as_public");
    assert_eq!(ok("/dns4/localhost/tcp/7801", public), None);
    assert!(ok("/dns4/builder.example.org/tcp/7801", public).is_some());
    // Never dialable: unspecified, multicast, port 0, other transports, trailing junk.
    for bad in [
        "/ip4/0.0.0.0/tcp/7801",
        "/ip4/224.0.0.1/tcp/7801",
        "/ip4/255.255.255.255/tcp/7801",
        "/ip6/::/tcp/7801",
        "/ip4/8.8.8.8/tcp/0",
        "/ip4/8.8.8.8/udp/7801",
        "/ip4/8.8.8.8/tcp/7801/ws",
        "/ip4/8.8.8.8/udp/7801/quic-v1/webtransport",
        "/unix/tmp%2Fsock",
    ] {
        assert_eq!(ok(bad, lo), None, "{bad}");
    }
    // A relayed address through a public relay.
    let relayed = format!("/ip4/8.8.8.8/tcp/7801/p2p/{other}/p2p-circuit");
    assert_eq!(ok(&format!("{relayed}/p2p/{p}"), public), Some(relayed));
    // Too long.
    let long = format!("/dns4/{}.example.org/tcp/7801", "a".repeat(150));
    assert_eq!(ok(&long, public), None);
    // Deduplicated and capped per peer.
    let many: Vec<Multiaddr> = (0..20).map(|i| ma(&format!("/ip4/8.8.8.{}/tcp/7801", i / 2))).collect();
    let kept = filter_addrs(&many, &p, public, false, 8);
    assert_eq!(kept.len(), 8);
    assert_eq!(kept.iter().collect::<BTreeSet<_>>().len(), 8);
}

#[test]
fn only_identified_peers_with_dialable_addresses_are_remembered() {
    let mut book = empty(limits());
    let p = peer(1);
    book.connected(p, &ma("/ip4/198.51.100.7/tcp/40000"), 10);
    assert!(!book.identified(p, &[ma("/ip4/127.0.0.1/tcp/7801")], false, 10), "loopback of another host");
    assert!(book.is_empty());
    assert!(!book.identified(peer(0), &[ma("/ip4/8.8.8.8/tcp/1")], false, 10), "never itself");
    assert!(book.identified(p, &[ma("/ip4/127.0.0.1/tcp/7801"), ma("/ip4/198.51.100.7/tcp/7801")], false, 10));
    assert_eq!(book.get(&p).unwrap().addrs, ["/ip4/198.51.100.7/tcp/7801"]);
    assert_eq!(book.get(&p).unwrap().seen_from, "198.51.100.7");
    assert_eq!(book.get(&p).unwrap().reachability, Reachability::Unknown);
    assert_eq!(book.last_seen(&p), Some(10));
    // Off: nothing is remembered.
    let mut off = empty(PeerBookLimits { max_peers: 0, ..limits() });
    assert!(!meet(&mut off, p, "198.51.100.7", true, 1));
}

#[test]
fn the_table_is_bounded_in_total_and_per_ip() {
    let mut book = empty(limits());
    // Per IP: two peers from one address, the third is refused; loopback is exempt.
    assert!(meet(&mut book, peer(1), "198.51.100.1", false, 1));
    assert!(meet(&mut book, peer(2), "198.51.100.1", false, 2));
    assert!(!meet(&mut book, peer(3), "198.51.100.1", false, 3));
    let mut lo = empty(PeerBookLimits { max_peers: 10, ..limits() });
    for i in 1..=5 {
        assert!(meet(&mut lo, peer(i), "127.0.0.1", false, u64::from(i)));
    }
    assert_eq!(lo.len(), 5);

    // In total: full with 4; connected entries are never evicted.
    assert!(meet(&mut book, peer(4), "198.51.100.4", true, 4));
    assert!(meet(&mut book, peer(5), "198.51.100.5", false, 5));
    assert_eq!(book.len(), 4);
    assert!(!meet(&mut book, peer(6), "198.51.100.6", false, 6), "all connected: no room");
    // Disconnected: the untrusted one seen longest ago goes first (peer 1), never a trusted one
    // for an untrusted newcomer.
    for i in [1, 2, 4, 5] {
        book.disconnected(&peer(i), 10 + u64::from(i));
    }
    assert!(meet(&mut book, peer(7), "198.51.100.7", false, 20));
    assert!(book.get(&peer(1)).is_none() && book.get(&peer(4)).is_some());
    assert!(meet(&mut book, peer(8), "198.51.100.8", false, 21));
    assert!(book.get(&peer(2)).is_none());
    assert!(meet(&mut book, peer(9), "198.51.100.9", false, 22), "peer 5 is untrusted and disconnected");
    assert!(book.get(&peer(5)).is_none());
    book.disconnected(&peer(7), 23);
    book.disconnected(&peer(8), 23);
    book.disconnected(&peer(9), 23);
    // Only peer 4 (trusted) and untrusted ones are left: an untrusted newcomer evicts an
    // untrusted entry, a trusted newcomer may evict anyone.
    assert!(meet(&mut book, peer(10), "198.51.100.10", false, 24));
    assert!(book.get(&peer(4)).is_some());
    assert_eq!(book.len(), 4);
    // Addresses per peer are capped.
    let mut book = empty(limits());
    let p = peer(9);
    book.connected(p, &ma("/ip4/198.51.100.9/tcp/1"), 30);
    let many: Vec<Multiaddr> = (1..=10).map(|i| ma(&format!("/ip4/198.51.100.9/tcp/{i}"))).collect();
    assert!(book.identified(p, &many, false, 30));
    assert_eq!(book.get(&p).unwrap().addrs.len(), 3);
}

#[test]
fn forgotten_after_the_expiry_and_on_load() {
    let day = 24 * 3600 * 1000;
    let l = PeerBookLimits { forget_after_ms: 2 * day, ..limits() };
    let mut book = empty(l.clone());
    assert!(meet(&mut book, peer(1), "198.51.100.1", false, 0));
    assert!(meet(&mut book, peer(2), "198.51.100.2", false, 0));
    book.disconnected(&peer(1), day);
    // Peer 2 stays connected: never expired while connected.
    let batch = book.take_batch(3 * day + 1, false).unwrap();
    assert_eq!(batch.remove, [peer(1).to_base58()]);
    assert!(book.get(&peer(1)).is_none() && book.get(&peer(2)).is_some());
    // Loading drops expired rows, rows of unparsable ids and our own id, and the surplus.
    let rec = |seen| PeerRecord {
        addrs: vec!["/ip4/198.51.100.1/tcp/1".into()],
        last_seen_ms: seen,
        first_seen_ms: 0,
        reachability: Reachability::Public,
        seen_from: String::new(),
    };
    let mut rows = PeerRows { corrupt: vec!["corrupt".into()], ..PeerRows::default() };
    rows.rows.push(("not-a-peer-id".into(), rec(10 * day)));
    rows.rows.push((peer(0).to_base58(), rec(10 * day)));
    rows.rows.push((peer(1).to_base58(), rec(day)));
    for i in 2..=7 {
        rows.rows.push((peer(i).to_base58(), rec(9 * day + u64::from(i))));
    }
    let mut book = PeerBook::load(l, peer(0), rows, 10 * day, |_| false);
    assert_eq!(book.len(), 4);
    for i in 4..=7 {
        assert!(book.get(&peer(i)).is_some(), "the most recent four are kept");
    }
    let batch = book.take_batch(10 * day, true).unwrap();
    let removed: BTreeSet<String> = batch.remove.into_iter().collect();
    let expect: BTreeSet<String> = [
        "corrupt".to_string(),
        "not-a-peer-id".into(),
        peer(0).to_base58(),
        peer(1).to_base58(),
        peer(2).to_base58(),
        peer(3).to_base58(),
    ]
    .into_iter()
    .collect();
    assert_eq!(removed, expect);
}

#[test]
fn dials_most_recent_first_bounded_with_backoff() {
    let l = PeerBookLimits { max_peers: 10, max_peers_per_ip: 10, target: 3, max_in_flight: 2, ..limits() };
    let mut book = empty(l);
    for i in 1..=5 {
        assert!(meet(&mut book, peer(i), "198.51.100.1", false, u64::from(i)));
        book.disconnected(&peer(i), 100 + u64::from(i));
    }
    assert!(book.due_dials(1000, 3).is_empty(), "enough peers connected");
    let first = book.due_dials(1000, 0);
    let got: Vec<PeerId> = first.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, [peer(5), peer(4)], "most recently seen first, max_in_flight at once");
    let addr = first[0].1[0].to_string();
    assert!(addr.ends_with(&format!("/p2p/{}", peer(5))), "{addr}");
    assert!(book.due_dials(1000, 0).is_empty(), "two in flight");
    book.dial_done(&peer(5), false);
    book.dial_done(&peer(4), false);
    // Both wait out their backoff; the next ones in order come now, one less with 1 connected.
    let next: Vec<PeerId> = book.due_dials(1001, 1).into_iter().map(|(p, _)| p).collect();
    assert_eq!(next, [peer(3), peer(2)]);
    book.dial_done(&peer(3), false);
    book.dial_done(&peer(2), false);
    let next: Vec<PeerId> = book.due_dials(1002, 2).into_iter().map(|(p, _)| p).collect();
    assert_eq!(next, [peer(1)]);
    book.dial_done(&peer(1), false);
    assert!(book.due_dials(1000 + BACKOFF_MIN_MS - 1, 0).is_empty());
    let again: Vec<PeerId> = book.due_dials(1000 + BACKOFF_MIN_MS, 0).into_iter().map(|(p, _)| p).collect();
    assert_eq!(again, [peer(5), peer(4)]);
    book.dial_done(&peer(5), false);
    book.dial_done(&peer(4), false);
    // The backoff doubled: not due after the first wait again.
    let t = 1000 + 2 * BACKOFF_MIN_MS;
    let due: Vec<PeerId> = book.due_dials(t, 0).into_iter().map(|(p, _)| p).collect();
    assert!(!due.contains(&peer(5)), "{due:?}");
    // A connection resets it; a connected peer is not dialled.
    book.connected(peer(5), &ma("/ip4/198.51.100.1/tcp/1"), t);
    book.disconnected(&peer(5), t + 1);
    for (p, _) in book.due_dials(t + 1, 0) {
        book.dial_done(&p, false);
    }
    assert!(book.get(&peer(5)).is_some());
}

#[test]
fn a_remembered_peer_behind_nat_is_dialled_through_its_relay_only() {
    let mut book = empty(limits());
    let (p, relay) = (peer(1), peer(2));
    book.connected(p, &ma("/ip4/198.51.100.7/tcp/40000"), 1);
    let nat = ma("/ip4/198.51.100.7/tcp/7801");
    let relayed = ma(&format!("/ip4/203.0.113.9/tcp/7801/p2p/{relay}/p2p-circuit"));
    assert!(book.identified(p, &[nat, relayed.clone()], true, 1));
    book.disconnected(&p, 2);
    let due = book.due_dials(1000, 0);
    assert_eq!(due, vec![(p, vec![relayed.with(Protocol::P2p(p))])], "only the relayed address is dialled");
}

#[test]
fn writes_are_batched() {
    let mut book = empty(limits());
    assert_eq!(book.take_batch(1, false), None, "nothing to write");
    assert!(meet(&mut book, peer(1), "198.51.100.1", false, 10));
    assert_eq!(book.take_batch(10, false), None, "within URGENT_FLUSH_MS of the last write");
    assert!(meet(&mut book, peer(2), "198.51.100.2", false, 20));
    let b = book.take_batch(URGENT_FLUSH_MS, false).unwrap();
    assert_eq!(b.put.len(), 2, "one batch for both new peers");
    // A re-identify with the same addresses is not urgent: it waits for the periodic write.
    assert!(meet(&mut book, peer(1), "198.51.100.1", false, URGENT_FLUSH_MS + 10));
    assert_eq!(book.take_batch(2 * URGENT_FLUSH_MS + 10, false), None);
    book.set_reachability(&peer(2), Reachability::Private);
    let b = book.take_batch(3 * URGENT_FLUSH_MS, false).unwrap();
    let names: Vec<&str> = b.put.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&peer(2).to_base58().as_str()));
    assert_eq!(b.put.iter().find(|(k, _)| *k == peer(2).to_base58()).unwrap().1.reachability, Reachability::Private);
    // The periodic write brings last_seen of connected peers to now.
    let b = book.take_batch(FLUSH_MS, false).unwrap();
    assert!(b.put.iter().all(|(_, r)| r.last_seen_ms == FLUSH_MS));
    assert_eq!(b.put.len(), 2);
}

#[test]
fn batches_round_trip_through_redb() {
    let tmp = tempfile::tempdir().unwrap();
    let l = PeerBookLimits { max_peers: 3, max_peers_per_ip: 10, ..limits() };
    {
        let store = Store::open(tmp.path()).unwrap();
        let mut book = PeerBook::load(l.clone(), peer(0), store.list_peers().unwrap(), 0, |_| false);
        for i in 1..=3 {
            assert!(meet(&mut book, peer(i), "198.51.100.1", false, u64::from(i)));
        }
        book.set_reachability(&peer(3), Reachability::Public);
        let b = book.take_batch(URGENT_FLUSH_MS, false).unwrap();
        assert_eq!(store.write_peers(&b.put, &b.remove).unwrap(), 3);
        // Peer 1 goes, peer 4 takes its place: one batch with a put and a remove.
        book.disconnected(&peer(1), 5);
        assert!(meet(&mut book, peer(4), "198.51.100.1", false, 6));
        let b = book.take_batch(2 * URGENT_FLUSH_MS, false).unwrap();
        assert_eq!(b.remove, [peer(1).to_base58()]);
        assert_eq!(store.write_peers(&b.put, &b.remove).unwrap(), 3);
    }
    let store = Store::open(tmp.path()).unwrap();
    let book = PeerBook::load(l, peer(0), store.list_peers().unwrap(), 10, |_| false);
    assert_eq!(book.len(), 3);
    assert!(book.get(&peer(1)).is_none());
    assert_eq!(book.get(&peer(3)).unwrap().reachability, Reachability::Public);
    assert_eq!(book.get(&peer(4)).unwrap().first_seen_ms, 6);
}
