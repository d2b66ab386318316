//! Hostile shard-filtered anti-entropy requests (issue 18), replayed against real `buildmesh
//! node` processes: a sharded mesh (2 shards, 2 nodes each) holds attestations and failures of
//! both shards, and bare libp2p peers (`mesh_support::intruder`) ask node 0 on
//! `/buildmesh/sync/1`:
//!
//! 1. well-formed `ShardAttestations` / `ShardFailures` pages for one shard: only records of that
//!    shard (checked with the protocol's `drv_shard` on each verified envelope), pages of at most
//!    `limit` records whose `next`/`more` walk the whole set, and the two shards together are
//!    what an unfiltered walk serves; out-of-bounds page sizes and cursors are clamped or give an
//!    empty last page;
//! 2. every malformed filter (another shard count, no shard, more than `MAX_FILTER_SHARDS`, a
//!    shard out of range): an error answer naming what is wrong; the node then still serves good
//!    pages and its stored records are unchanged;
//! 3. oversized request frames (refused, the stream closed, counted as `oversized_frames` and
//!    strikes in `GET /api/v1/peers`);
//! 4. a flood of filtered requests beyond `peer_sync_requests_per_sec`: refused past the bucket
//!    (`requests_refused`), while the honest nodes keep syncing and a new job completes.
//!
//! `garbage_sync_traffic_costs_strikes_and_old_peers_are_asked_for_everything` (1 node per
//! shard, `sync_request_max_bytes` raised to 4 MiB) checks the rest of what a sync peer can send:
//!
//! 5. a request between the default cap and the configured one is decoded (the configured cap
//!    applies, not the default), one above it is refused as oversized;
//! 6. garbage request bodies are answered with an error and cost a strike each (three graylist
//!    the sender, whose next request is refused), a newer build's request (an unknown variant)
//!    costs nothing;
//! 7. a peer that answers shard-filtered requests with an error (an older build) is asked for
//!    everything and its records are stored, at no cost to it (nor for a record of another
//!    protocol version); a peer whose pages carry records that do not verify costs a strike per
//!    page, and its valid records are still stored.

mod mesh_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, MAX_FILTER_SHARDS, MAX_PAGE_ITEMS, ShardFilter, Summary, SyncRequest, SyncResponse};
use buildmesh::mesh::validate::shard_topic;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::shard::{drv_shard, node_shard};
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Encode as _, Kind, Message, PROTOCOL_VERSION};
use libp2p::PeerId;
use libp2p::futures::future::join_all;
use mesh_support::intruder::{Intruder, SyncAnswer, conduct, signed_attestation};
use mesh_support::*;

const SHARDS: u32 = 2;
/// Sync requests per second one peer may send node 0 here (a burst of twice as many).
const SYNC_PER_SEC: u32 = 20;
/// The pause before each request of a well-behaved asker (18 per second).
const PACE: Duration = Duration::from_millis(55);

/// Attestations or failures.
#[derive(Clone, Copy, Debug)]
enum Set {
    Attestations,
    Failures,
}

impl Set {
    fn request(self, from: u64, limit: u32, filter: Option<ShardFilter>) -> SyncRequest {
        match (self, filter) {
            (Set::Attestations, None) => SyncRequest::Attestations { from, limit },
            (Set::Failures, None) => SyncRequest::Failures { from, limit },
            (Set::Attestations, Some(filter)) => SyncRequest::ShardAttestations { from, limit, filter },
            (Set::Failures, Some(filter)) => SyncRequest::ShardFailures { from, limit, filter },
        }
    }
}

/// The `(items, next, more)` of a page answer.
fn page(r: SyncResponse) -> (Vec<(u64, Vec<u8>)>, u64, bool) {
    match r {
        SyncResponse::Page { items, next, more } => (items, next, more),
        other => panic!("not a page: {other:?}"),
    }
}

/// The derivation a stored envelope names (its signature checked).
fn drv_of(envelope: &[u8]) -> buildmesh_protocol::store_path::StorePath {
    let v = Envelope::decode(envelope).expect("an envelope").verify().expect("a valid signature");
    match v.into_value() {
        Message::Attestation(a) => a.drv,
        Message::BuildFailure(f) => f.drv,
        other => panic!("not an attestation or failure: {other:?}"),
    }
}

/// Walk `set` on `to` with pages of `limit`, following `next` until `more` is false; checks each
/// page's bounds and cursor and returns every record.
fn walk(i: &Intruder, to: PeerId, set: Set, limit: u32, filter: Option<ShardFilter>) -> Vec<(u64, Vec<u8>)> {
    let mut from = 0;
    let mut all = Vec::new();
    for _ in 0..1000 {
        let (items, next, more) = page(ask(i, to, &set.request(from, limit, filter.clone())).unwrap());
        assert!(items.len() <= limit.max(1) as usize, "{} records in a page of {limit}", items.len());
        let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {seqs:?}");
        assert!(seqs.iter().all(|s| *s >= from && *s < next), "page from {from}: {seqs:?}, next {next}");
        assert!(next >= from, "the cursor went back: {from} -> {next}");
        all.extend(items);
        if !more {
            return all;
        }
        assert!(next > from, "more records but the cursor did not move from {from}");
        from = next;
    }
    panic!("{set:?} did not end within 1000 pages");
}

/// `req` to `to`, paced under node 0's per-peer sync rate (this asker is not the flooder).
fn ask(i: &Intruder, to: PeerId, req: &SyncRequest) -> Result<SyncResponse, String> {
    std::thread::sleep(PACE);
    i.sync(to, req)
}

/// The raw body `body` to `to`, paced like [`ask`].
fn ask_raw(i: &Intruder, to: PeerId, body: Vec<u8>) -> Result<Vec<u8>, String> {
    std::thread::sleep(PACE);
    i.sync_raw(to, body)
}

/// Submit `names` (already added to `d`) to node 0 and wait until each is `state` there.
fn run(c: &Cluster, d: &Drvs, names: &[String], state: &str) {
    let drvs: Vec<String> = names.iter().map(|n| sd().display(&d.drv(n))).collect();
    c.submit(0, &d.dir, &drvs, 2);
    for n in names {
        wait_state(&c.urls[0], &d.drv(n), state, Duration::from_secs(120));
    }
}

#[test]
fn hostile_shard_filtered_sync_requests_are_refused_and_the_mesh_keeps_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = format!("{FAST_MESH}peer_sync_requests_per_sec = {SYNC_PER_SEC}\n");
    let c = Cluster::start_sharded_with_mesh(tmp.path(), 2, SHARDS, &["--submitter", "any"], &mesh);
    c.wait_members(2, Duration::from_secs(30));
    let node0: PeerId = c.peer_ids[0].parse().unwrap();
    let home = node_shard(&c.keys[0].node_id(), SHARDS);

    // Content in both shards: 6 derivations that build, 4 that fail (k = 2 each).
    let mut d = Drvs::new(&tmp.path().join("drvs"));
    let good: Vec<String> = (0..6).map(|i| format!("sync-good-{i}")).collect();
    let bad: Vec<String> = (0..4).map(|i| format!("sync-bad-{i}")).collect();
    for (i, n) in good.iter().enumerate() {
        d.add(n, &format!("echo {i} > $out"), &[]);
    }
    for n in &bad {
        d.add(n, "echo no >&2; exit 1", &[]);
    }
    for names in [&good, &bad] {
        let shards: BTreeSet<u32> = names.iter().map(|n| drv_shard(&d.drv(n), SHARDS)).collect();
        assert_eq!(shards.len(), 2, "{names:?} lie in both shards");
    }
    run(&c, &d, &good, "done");
    run(&c, &d, &bad, "failed");
    for n in &good {
        let out = sd().display(&d.out(n));
        wait_for(&format!("two attestations of {n} on node 0"), Duration::from_secs(30), || {
            (c.attesters(0, &out).values().map(BTreeSet::len).sum::<usize>() >= 2).then_some(())
        });
    }
    let stored = c.attestation_ids(0);

    let topics = vec![shard_topic(Kind::Announcement, home, SHARDS)];
    let asker = Intruder::join_on(&c, NodeKey::from_seed("sync-asker", [81; 32]).unwrap(), &topics, |_| {});

    // 1. Well-formed filtered pages. Failures of later attempts may still arrive: wait until
    //    both sets stay the same for 2 s, and compare with a walk before and one after.
    let seqs = |set| -> BTreeSet<u64> { walk(&asker, node0, set, 3, None).into_iter().map(|(s, _)| s).collect() };
    let mut last = (BTreeSet::new(), BTreeSet::new());
    wait_for("node 0's records to settle", Duration::from_secs(60), || {
        let now = (seqs(Set::Attestations), seqs(Set::Failures));
        std::thread::sleep(Duration::from_secs(2));
        (std::mem::replace(&mut last, now.clone()) == now).then_some(())
    });
    for set in [Set::Attestations, Set::Failures] {
        let unfiltered = seqs(set);
        let mut union = BTreeSet::new();
        for shard in 0..SHARDS {
            let filter = ShardFilter { shards: SHARDS, of: vec![shard] };
            let one_by_one = walk(&asker, node0, set, 1, Some(filter.clone()));
            assert!(!one_by_one.is_empty(), "{set:?}: nothing of shard {shard}");
            for (seq, env) in &one_by_one {
                let drv = drv_of(env);
                assert_eq!(drv_shard(&drv, SHARDS), shard, "{set:?} #{seq} ({drv}) served for shard {shard}");
            }
            let at_once = walk(&asker, node0, set, MAX_PAGE_ITEMS, Some(filter));
            // (Records that arrived since come after.)
            assert!(
                at_once.starts_with(&one_by_one),
                "{set:?} shard {shard}: pages of 1 and of {MAX_PAGE_ITEMS} differ"
            );
            union.extend(one_by_one.iter().map(|(s, _)| *s));
        }
        let later = seqs(set);
        assert!(
            unfiltered.is_subset(&union) && union.is_subset(&later),
            "{set:?}: both shards together ({union:?}) are not the whole set ({unfiltered:?} .. {later:?})"
        );
        // Out-of-bounds sizes and cursors: clamped, or an empty last page.
        let both = ShardFilter { shards: SHARDS, of: vec![1, 0, 1] };
        for limit in [0, u32::MAX] {
            assert!(!walk(&asker, node0, set, limit, Some(both.clone())).is_empty(), "{set:?} limit {limit}");
        }
        for from in [u64::MAX, u64::MAX - 1, 1 << 40] {
            let r = ask(&asker, node0, &set.request(from, 10, Some(both.clone()))).unwrap();
            assert_eq!(page(r), (vec![], from, false), "{set:?} from {from}");
        }
    }

    // 2. Malformed filters: an error naming the fault, and the node unharmed.
    let before = walk(&asker, node0, Set::Attestations, MAX_PAGE_ITEMS, None);
    let too_many = MAX_FILTER_SHARDS as u32 + 1;
    for set in [Set::Attestations, Set::Failures] {
        let many = format!("names {too_many} shards");
        for (shards, of, says) in [
            (3, vec![0], "filter for 3 shards"),
            (1, vec![0], "filter for 1 shards"),
            (0, vec![0], "filter for 0 shards"),
            (u32::MAX, vec![0], "filter for 4294967295 shards"),
            (SHARDS, vec![], "names 0 shards"),
            (SHARDS, vec![0; too_many as usize], many.as_str()),
            (SHARDS, (0..too_many).collect(), many.as_str()),
            (SHARDS, vec![2], "names shard 2 of 2"),
            (SHARDS, vec![0, u32::MAX], "names shard 4294967295 of 2"),
        ] {
            let r = ask(&asker, node0, &set.request(0, 10, Some(ShardFilter { shards, of }))).unwrap();
            match r {
                SyncResponse::Error(e) => assert!(e.contains(says), "{set:?}: {e:?} does not say {says:?}"),
                SyncResponse::Page { items, .. } => {
                    panic!("{set:?}: a filter that {says} was served {} records", items.len())
                }
                other => panic!("{set:?}: a filter that {says} was answered {other:?}"),
            }
        }
    }
    let after = walk(&asker, node0, Set::Attestations, MAX_PAGE_ITEMS, None);
    assert!(after.starts_with(&before), "records changed");
    assert!(c.attestation_ids(0).is_superset(&stored), "node 0 lost stored attestations");

    // 3. Oversized request bytes (garbage bodies: `garbage_sync_traffic_costs_strikes_...`).
    //    The malformed filters above cost the asker nothing: another build may send them.
    let k = conduct(&c, &asker.net.local_peer_id());
    assert!(k["oversized_frames"] == 0 && k["malformed"] == 0, "{k}");
    assert_eq!(k["graylisted"], false, "well-formed requests graylisted the asker: {k}");
    let max = buildmesh::net::NetConfig::default().sync_limits.max_request;
    let bloater = Intruder::join_on(&c, NodeKey::from_seed("sync-bloater", [82; 32]).unwrap(), &topics, |cfg| {
        cfg.sync_limits.max_request = 4 * max;
    });
    let huge = ShardFilter { shards: SHARDS, of: vec![1; max + 16] };
    let body = rpc::encode(&SyncRequest::ShardAttestations { from: 0, limit: 10, filter: huge });
    assert!(body.len() > max, "{} bytes", body.len());
    for _ in 0..2 {
        let r = bloater.sync_raw(node0, body.clone());
        assert!(r.is_err(), "an oversized sync request was answered: {:?}", r.map(|b| b.len()));
    }
    let k = wait_for("the oversized frames in node 0's peer list", Duration::from_secs(20), || {
        let k = conduct(&c, &bloater.net.local_peer_id());
        (k["oversized_frames"].as_u64() >= Some(2)).then_some(k)
    });
    assert!(k["strikes"].as_f64().unwrap() > 1.0, "no strikes: {k}");
    // The node is up and still serves good requests.
    assert!(walk(&asker, node0, Set::Attestations, MAX_PAGE_ITEMS, None).starts_with(&before));

    // 4. A flood of filtered requests beyond the per-peer rate.
    let flooder = Intruder::join_on(&c, NodeKey::from_seed("sync-flooder", [83; 32]).unwrap(), &topics, |_| {});
    let req = rpc::encode(&Set::Attestations.request(0, 1, Some(ShardFilter { shards: SHARDS, of: vec![home] })));
    let mut answered = 0;
    let mut sent = 0;
    for _ in 0..3 {
        let net = flooder.net.clone();
        let answers = flooder.rt.block_on(join_all(
            (0..200).map(|_| net.send_request(node0, buildmesh::net::RequestProtocol::Sync, req.clone())),
        ));
        sent += answers.len();
        answered += answers.iter().filter(|a| a.is_ok()).count();
    }
    eprintln!("flood: {answered} of {sent} filtered requests answered");
    // The bucket holds 2 × SYNC_PER_SEC and refills at SYNC_PER_SEC: 40 plus what the few
    // seconds of the waves refill (the pending cap of 96 alone would let some 300 through).
    let most = 3 * 2 * SYNC_PER_SEC as usize;
    assert!(answered <= most, "{answered} of {sent} flooded requests answered (at most {most} expected)");
    // (The peer list shows a snapshot the event loop refreshes.)
    let k = wait_for("the flooder's refusals in node 0's peer list", Duration::from_secs(20), || {
        let k = conduct(&c, &flooder.net.local_peer_id());
        (k["requests_refused"].as_u64() >= Some(100)).then_some(k)
    });
    assert!(k["requests_admitted"].as_u64().unwrap() >= u64::from(SYNC_PER_SEC), "{k}");
    // The honest nodes keep syncing: a new job in each shard completes and is attested twice.
    let after: Vec<String> = (0..4).map(|i| format!("sync-after-{i}")).collect();
    for (i, n) in after.iter().enumerate() {
        d.add(n, &format!("echo after {i} > $out"), &[]);
    }
    run(&c, &d, &after, "done");
    for n in &after {
        let out = sd().display(&d.out(n));
        wait_for(&format!("two attestations of {n} on node 0"), Duration::from_secs(30), || {
            (c.attesters(0, &out).values().map(BTreeSet::len).sum::<usize>() >= 2).then_some(())
        });
    }
    for i in 1..c.nodes.len() {
        let k = conduct(&c, &c.peer_ids[i].parse().unwrap());
        assert_ne!(k["graylisted"], true, "honest node {i} graylisted on node 0: {k}");
    }
    asker.shutdown();
    bloater.shutdown();
    flooder.shutdown();
}

/// An attestation signed by `key` for a derivation `name` nobody builds: its envelope bytes and
/// its output path (as `/api/v1/attestations?path=` takes it).
fn foreign_record(key: &NodeKey, name: &str) -> (Vec<u8>, String) {
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&blake3::hash(name.as_bytes()).as_bytes()[..20]);
    let drv = StorePath::new(digest, &format!("{name}.drv")).unwrap();
    digest[0] ^= 1;
    let path = StorePath::new(digest, name).unwrap();
    let a = signed_attestation(key, key.node_id(), drv, path.clone(), [5; 32], [6; 32]);
    (Envelope::sign(key, &Message::Attestation(a)).unwrap().to_bytes(), sd().display(&path))
}

/// A sync peer holding the attestation pages `records` (sequence numbers 0, 1, ...) and no
/// failure; every request it gets is pushed to `asked`. With `filters`, it serves
/// shard-filtered requests the records unfiltered; without, it answers them with an error like
/// a build older than shards (and so every request it does not know).
fn sync_peer(records: Vec<Vec<u8>>, filters: bool, asked: Arc<Mutex<Vec<SyncRequest>>>) -> SyncAnswer {
    Box::new(move |body| {
        let old = || SyncResponse::Error("malformed sync request: unknown variant".into());
        let Ok(req) = rpc::decode::<SyncRequest>("r", body, 1 << 20) else { return Some(rpc::encode(&old())) };
        asked.lock().unwrap().push(req.clone());
        let n = records.len() as u64;
        let page = |from: u64, items: &[Vec<u8>]| SyncResponse::Page {
            items: items.iter().cloned().enumerate().map(|(i, r)| (i as u64, r)).skip(from as usize).collect(),
            next: from.max(items.len() as u64),
            more: false,
        };
        let resp = match req {
            SyncRequest::Summary => SyncResponse::Summary {
                attestations: Summary { count: n, xor: [7; 32], next_seq: n },
                failures: Summary { count: 0, xor: [0; 32], next_seq: 0 },
            },
            SyncRequest::Attestations { from, .. } => page(from, &records),
            SyncRequest::ShardAttestations { from, .. } if filters => page(from, &records),
            SyncRequest::Failures { from, .. } => page(from, &[]),
            SyncRequest::ShardFailures { from, .. } if filters => page(from, &[]),
            _ => old(),
        };
        Some(rpc::encode(&resp))
    })
}

#[test]
fn garbage_sync_traffic_costs_strikes_and_old_peers_are_asked_for_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = 4 << 20;
    let mesh = format!("{FAST_MESH}peer_sync_requests_per_sec = {SYNC_PER_SEC}\nsync_request_max_bytes = {cap}\n");
    let c = Cluster::start_sharded_with_mesh(tmp.path(), 1, SHARDS, &["--submitter", "any"], &mesh);
    // (A node counts the members of its own shard.)
    c.wait_members(1, Duration::from_secs(30));
    let node0: PeerId = c.peer_ids[0].parse().unwrap();
    let topics = vec![shard_topic(Kind::Announcement, node_shard(&c.keys[0].node_id(), SHARDS), SHARDS)];
    let error_of = |answer: Result<Vec<u8>, String>| match answer.map(|b| rpc::decode::<SyncResponse>("r", &b, 1 << 20))
    {
        Ok(Ok(SyncResponse::Error(e))) => e,
        other => panic!("not an error answer: {other:?}"),
    };

    // 5. The configured request cap (4 MiB), not the default (1 MiB).
    let default_cap = buildmesh::net::NetConfig::default().sync_limits.max_request;
    let bloater = Intruder::join_on(&c, NodeKey::from_seed("cap-bloater", [84; 32]).unwrap(), &topics, |cfg| {
        cfg.sync_limits.max_request = 4 * cap;
    });
    let filtered = |n: usize| {
        rpc::encode(&SyncRequest::ShardAttestations {
            from: 0,
            limit: 1,
            filter: ShardFilter { shards: SHARDS, of: vec![1; n] },
        })
    };
    let (big, bigger) = (filtered(2 * default_cap), filtered(cap + 16));
    assert!(big.len() > default_cap && big.len() < cap && bigger.len() > cap);
    let e = error_of(ask_raw(&bloater, node0, big));
    assert!(e.contains(&format!("names {} shards", 2 * default_cap)), "a request under the configured cap: {e}");
    let r = ask_raw(&bloater, node0, bigger);
    assert!(r.is_err(), "a request above the configured cap was answered: {:?}", r.map(|b| b.len()));
    let k = wait_for("the oversized frame in node 0's peer list", Duration::from_secs(20), || {
        let k = conduct(&c, &bloater.net.local_peer_id());
        (k["oversized_frames"] == 1).then_some(k)
    });
    assert_eq!(k["malformed"], 0, "a well-formed request with a bad filter was struck: {k}");

    // 6. A newer build's requests cost nothing, garbage a strike each.
    let garbler = Intruder::join_on(&c, NodeKey::from_seed("sync-garbler", [85; 32]).unwrap(), &topics, |_| {});
    let me = garbler.net.local_peer_id();
    for newer in [vec![SyncRequest::VARIANTS as u8], vec![SyncRequest::VARIANTS as u8 + 1, 1, 2]] {
        let e = error_of(ask_raw(&garbler, node0, newer.clone()));
        assert!(e.contains("malformed sync request"), "{newer:?}: {e}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let k = conduct(&c, &me);
    assert!(k["malformed"] == 0 && k["strikes"] == 0.0, "a newer build's request was struck: {k}");
    let garbage: [Vec<u8>; 5] = [
        vec![],
        vec![0xff; 64],
        // A filter claiming 2^32 - 1 shards in a 9-byte body.
        vec![8, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![8, 0],
        rpc::encode(&SyncRequest::Summary).repeat(2),
    ];
    for g in &garbage[..3] {
        let e = error_of(ask_raw(&garbler, node0, g.clone()));
        assert!(e.contains("malformed sync request"), "{g:?}: {e}");
    }
    let k = wait_for("three malformed requests in node 0's peer list", Duration::from_secs(20), || {
        let k = conduct(&c, &me);
        (k["malformed"] == 3).then_some(k)
    });
    assert!(k["strikes"].as_f64().unwrap() > 2.9, "{k}");
    assert_eq!(k["graylisted"], true, "three malformed requests did not graylist: {k}");
    for g in &garbage[3..] {
        let r = ask_raw(&garbler, node0, g.clone());
        assert!(r.is_err(), "a graylisted peer's request {g:?} was answered: {r:?}");
    }

    // 7. An older build (errors for filtered requests) is asked for everything, at no cost to
    //    it, even for a record of another protocol version; a peer serving records that do not
    //    verify costs a strike per page, and its valid records are stored.
    let signer = NodeKey::from_seed("sync-signer", [86; 32]).unwrap();
    let (good, good_path) = foreign_record(&signer, "from-an-old-peer");
    let (mut newer, _) = foreign_record(&signer, "of-another-version");
    newer[0] = PROTOCOL_VERSION + 1;
    let asked_old = Arc::new(Mutex::new(Vec::new()));
    let answer = sync_peer(vec![good, newer], false, asked_old.clone());
    let old = Intruder::join_answering(&c, NodeKey::from_seed("sync-old", [87; 32]).unwrap(), &topics, |_| {}, answer);
    wait_for("node 0 to store the old peer's record", Duration::from_secs(30), || {
        (!c.attesters(0, &good_path).is_empty()).then_some(())
    });
    let asked = asked_old.lock().unwrap().clone();
    let first_filtered = asked.iter().position(|r| matches!(r, SyncRequest::ShardAttestations { .. }));
    let first_plain = asked.iter().position(|r| matches!(r, SyncRequest::Attestations { .. }));
    assert!(
        matches!((first_filtered, first_plain), (Some(f), Some(p)) if f < p),
        "node 0 did not ask by shard first, then for everything: {asked:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let k = conduct(&c, &old.net.local_peer_id());
    assert!(
        k["malformed"].as_u64().unwrap_or(0) == 0 && k["strikes"].as_f64().unwrap_or(0.0) == 0.0,
        "old peer struck: {k}"
    );

    let (valid, valid_path) = foreign_record(&signer, "among-garbage");
    let (mut forged, _) = foreign_record(&signer, "badly-signed");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let answer = sync_peer(vec![vec![1, 2, 3], valid, forged], true, Arc::default());
    let liar =
        Intruder::join_answering(&c, NodeKey::from_seed("sync-liar", [88; 32]).unwrap(), &topics, |_| {}, answer);
    wait_for("node 0 to store the valid record among garbage", Duration::from_secs(30), || {
        (!c.attesters(0, &valid_path).is_empty()).then_some(())
    });
    let k = wait_for("the garbage page in node 0's peer list", Duration::from_secs(20), || {
        let k = conduct(&c, &liar.net.local_peer_id());
        (k["malformed"].as_u64() >= Some(1)).then_some(k)
    });
    assert!(k["strikes"].as_f64().unwrap() >= 0.9, "{k}");

    // 8. A peer answering node 0's sync with bytes that do not decode, and one answering the
    //    summary with a page (another kind than asked): a strike each.
    let undecodable: SyncAnswer = Box::new(|_| Some(vec![0xff; 32]));
    let mumbler = Intruder::join_answering(
        &c,
        NodeKey::from_seed("sync-mumbler", [89; 32]).unwrap(),
        &topics,
        |_| {},
        undecodable,
    );
    let wrong_kind: SyncAnswer =
        Box::new(|_| Some(rpc::encode(&SyncResponse::Page { items: Vec::new(), next: 0, more: false })));
    let dodger =
        Intruder::join_answering(&c, NodeKey::from_seed("sync-dodger", [90; 32]).unwrap(), &topics, |_| {}, wrong_kind);
    for (who, name) in [(&mumbler, "undecodable answers"), (&dodger, "answers of another kind")] {
        let k = wait_for(&format!("the {name} in node 0's peer list"), Duration::from_secs(30), || {
            let k = conduct(&c, &who.net.local_peer_id());
            (k["malformed"].as_u64() >= Some(1)).then_some(k)
        });
        assert!(k["strikes"].as_f64().unwrap() >= 0.9, "{name}: {k}");
    }
    for i in 1..c.nodes.len() {
        let k = conduct(&c, &c.peer_ids[i].parse().unwrap());
        assert!(k["malformed"].as_u64().unwrap_or(0) == 0 && k["graylisted"] != true, "honest node {i}: {k}");
    }
    for i in [bloater, garbler, old, liar, mumbler, dodger] {
        i.shutdown();
    }
}
