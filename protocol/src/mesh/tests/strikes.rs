//! Gossiped strike records (`strike_book.rs`, `struck.rs`): who may strike, the quorum, the
//! struck member's own view, sticky claims of penalised members, restarts, forged records.

use super::*;
use crate::wire::Strike;

/// A record by `observer` against `struck` on `d`, for a lease that ended at `end`.
fn record(observer: NodeId, struck: NodeId, d: u8, end: u64) -> Strike {
    Strike {
        observer,
        struck,
        job: JobId::derive(&struck, "x", u64::from(d)),
        store_dir: StoreDir::nix(),
        drv: drv(d),
        attempt: 1,
        claimed_at_ms: end - 120_000,
        lease_expires_at_ms: end,
        observed_at_ms: end + 1,
    }
}

fn deliver(net: &mut Net, s: &Strike) -> Vec<Disposition> {
    let now = net.now;
    let m = Message::Strike(s.clone());
    let d = net.nodes.iter_mut().map(|n| n.handle_message(&m, now).unwrap()).collect();
    net.drain();
    d
}

#[test]
fn only_allowed_observers_may_strike_and_one_is_not_enough() {
    let keys: Vec<NodeId> = (0..5).map(|i| key(i).node_id()).collect();
    // Builders 0..4; node 4 is a member of nobody's view and may not strike.
    let cfg = MeshConfig { builders: Some(keys[..4].iter().copied().collect()), ..MeshConfig::default() };
    let mut net = Net::new(5, cfg.clone());
    net.advance(cfg.warmup_ms);
    let end = net.now - 1;
    let forged = record(keys[4], keys[1], 1, end);
    let d = deliver(&mut net, &forged);
    assert!(d.iter().enumerate().all(|(i, d)| i == 4 || *d == Disposition::Ignored(Ignored::NotAnObserver)), "{d:?}");
    assert!(!net.nodes[0].struck(&keys[1]));
    // One allowed observer is not a quorum of 2.
    deliver(&mut net, &record(keys[0], keys[1], 1, end));
    assert!(net.nodes.iter().all(|n| !n.struck(&keys[1])));
    // A second one is; every node, the struck one included, agrees.
    deliver(&mut net, &record(keys[2], keys[1], 1, end));
    assert!(net.nodes.iter().all(|n| n.struck(&keys[1])));
    assert_eq!(net.nodes[1].struck_members()[0].until_ms, end + cfg.no_delivery_penalty_ms);
    // Replayed: a duplicate, nothing changes.
    assert!(deliver(&mut net, &record(keys[2], keys[1], 1, end))[3] == Disposition::Duplicate);
    // Bounds of the quorum: with builders {0, 1} only one observer exists for each.
    let two = MeshConfig { builders: Some(keys[..2].iter().copied().collect()), ..MeshConfig::default() };
    let m = Mesh::new(two, keys[0], LocalInfo::new("t", [SYS], 1), T0).unwrap();
    assert_eq!((m.strike_quorum_for(&keys[1]), m.strike_quorum_for(&keys[3])), (1, 2));
}

#[test]
fn stale_and_future_records_are_refused() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    let (a, b) = (net.id(0), net.id(1));
    let old = record(a, b, 1, net.now - 16 * cfg.no_delivery_penalty_ms);
    assert_eq!(net.nodes[2].handle_message(&Message::Strike(old), net.now).unwrap(), Disposition::Stale);
    let mut future = record(a, b, 1, net.now);
    future.observed_at_ms = net.now + cfg.max_clock_skew_ms + 1;
    assert_eq!(
        net.nodes[2].handle_message(&Message::Strike(future), net.now).unwrap(),
        Disposition::Ignored(Ignored::FromTheFuture)
    );
    let own = record(a, b, 1, net.now);
    assert_eq!(net.nodes[0].handle_message(&Message::Strike(own), net.now).unwrap(), Disposition::Own);
}

#[test]
fn a_struck_member_drops_its_live_claim_itself_and_the_place_passes_on_once() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(4);
    let (first, second) = (rank[0], rank[1]);
    let sub = net.id(rank[3]);
    net.input(rank[3], Input::Submit { job: job(sub, 4, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![first]);
    // Its lease runs out everywhere else (renewals lost); every other node publishes a record
    // until the quorum is reached, and every node applies the same records.
    net.mute_claims.insert(first);
    net.advance(cfg.lease_ms + 1);
    let published: u64 = net.nodes.iter().map(|n| n.stats().strikes_published).sum();
    assert!((2..=3).contains(&published), "{published} records published");
    let log = net.take_log();
    assert_eq!(Net::started(&log), vec![second], "the place passes on once");
    assert_eq!(Net::cancelled(&log), vec![(first, CancelReason::Yielded)], "the struck member yields itself");
}

#[test]
fn a_penalised_member_keeps_its_other_claims_until_struck_on_them_too() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(6);
    let (bad, next) = (rank[0], rank[1]);
    let (o1, o2) = (net.id(rank[2]), net.id(rank[3]));
    let end = net.now - 1;
    let b = net.id(bad);
    deliver(&mut net, &record(o1, b, 1, end));
    deliver(&mut net, &record(o2, b, 1, end));
    assert!(net.nodes.iter().all(|n| n.struck(&b)));
    // Struck on drv 1 only: its claim on drv 6 holds (a spurious strike, e.g. lost renewals,
    // must not cancel an honest member's other builds).
    let sub = net.id(rank[3]);
    net.input(rank[3], Input::Submit { job: job(sub, 6, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![bad]);
    // It stops delivering there too: struck on drv 6, it yields itself and the next builds once.
    net.mute_claims.insert(bad);
    net.advance(cfg.lease_ms + 1);
    let log = net.take_log();
    assert_eq!(Net::started(&log), vec![next]);
    assert_eq!(Net::cancelled(&log), vec![(bad, CancelReason::Yielded)]);
    for i in 0..4 {
        assert_eq!(net.nodes[i].struck_members()[0].drvs, 2, "node {i}");
    }
}

#[test]
fn a_restarted_struck_member_learns_its_strike_from_the_republished_records() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(4);
    let first = rank[0];
    let sub = net.id(rank[3]);
    net.input(rank[3], Input::Submit { job: job(sub, 4, 1), inputs: BTreeSet::new() });
    net.mute_claims.insert(first);
    net.advance(cfg.lease_ms + 1);
    assert!(net.nodes[first].struck(&net.id(first)));
    // Restart: a new machine knows nothing.
    let me = net.id(first);
    net.nodes[first] = Mesh::new(cfg.clone(), me, LocalInfo::new("buildmesh test", [SYS], 2), net.now).unwrap();
    net.drain();
    assert!(!net.nodes[first].struck(&me));
    net.advance(cfg.resubmit_interval_ms + 1);
    assert!(net.nodes[first].struck(&me), "learnt from the observers' republished records");
    let mine = net.nodes[first].struck_members();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].node, mine[0].drvs), (me, 1));
}

#[test]
fn one_lapse_costs_a_few_records_not_one_per_member() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(9, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(4);
    let first = rank[0];
    let sub = net.id(rank[8]);
    net.input(rank[8], Input::Submit { job: job(sub, 4, 1), inputs: BTreeSet::new() });
    net.mute_claims.insert(first);
    net.advance(cfg.lease_ms + 1);
    let published: u64 = net.nodes.iter().map(|n| n.stats().strikes_published).sum();
    assert!((2..=3).contains(&published), "{published} records for one lapse among 8 observers");
    assert!(net.nodes.iter().all(|n| n.struck(&net.id(first))));
}
