//! What peers' answers that are not garbage cost (issue 18), replayed against a real
//! `buildmesh node` process with bare libp2p peers (`mesh_support::intruder`) answering its
//! requests with chosen bytes (the strikes for garbage: `mesh_answer_strikes`):
//!
//! - an error or "not found" answer costs nothing in any reader (revision summary and pages,
//!   manifest, log, retry, closure, NAR chunk), and the node goes on: it asks the next peer for
//!   the manifest and the closure, and asks for the revision page again later;
//! - answers whose variant this build does not know cost no strike, but 16 in a row bench the
//!   peer on that protocol (the node stops asking it there for a while, and `GET /api/v1/peers`
//!   shows it in `conduct.benched`); a readable answer between starts the count over;
//! - a peer whose bytes were not the signed manifest is not asked for that manifest again (the
//!   other peers still are, every retry round), and is not struck.

mod mesh_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, ClosureRequest, ClosureResponse, NarResponse, SyncRequest, SyncResponse};
use buildmesh::net::RequestProtocol;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Encode as _, LogDigest, Message};
use mesh_support::answering::*;
use mesh_support::intruder::{Answer, Intruder, conduct, signed_attestation};
use mesh_support::*;

/// Assert that node 0 holds nothing against `who` (no malformed answer, no strike).
fn assert_unstruck(c: &Cluster, who: &Intruder, what: &str) {
    let k = conduct(c, &who.net.local_peer_id());
    assert!(
        k["malformed"].as_u64().unwrap_or(0) == 0 && k["strikes"].as_f64().unwrap_or(0.0) == 0.0,
        "{what} was struck: {k}"
    );
}

/// How many requests of `asked` `is` picks.
fn count(asked: &Asked, is: impl Fn(&SyncRequest) -> bool) -> usize {
    asked.lock().unwrap().iter().filter(|r| is(r)).count()
}

/// The closure requests a peer received, by derivation base name.
type ClosuresAsked = Arc<Mutex<Vec<String>>>;

fn closure_asked(body: &[u8], asked: &ClosuresAsked) -> String {
    let drv = rpc::decode::<ClosureRequest>("r", body, 1 << 20).map(|r| r.drv).unwrap_or_default();
    asked.lock().unwrap().push(drv.clone());
    drv
}

#[test]
fn error_answers_cost_nothing_in_any_reader_and_the_node_asks_on() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 1, &["--submitter", "any"]);
    let topics = ["buildmesh/announce/1".to_string(), "buildmesh/job/1".to_string()];
    let error = || rpc::encode(&SyncResponse::Error("no".into()));

    // The refuser: a builder whose signed attestation names a log and the submitter of a
    // revision; it answers node 0's revision summary, manifest, log and retry requests with an
    // error, its closure request with an error (first job) and its NAR chunk request with an
    // error (second job, whose closure it serves).
    let refuser_key = NodeKey::from_seed("costs-refuser", [111; 32]).unwrap();
    let built = StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-refused.drv").unwrap();
    let out = StorePath::from_basename("1123456789abcdfghijklmnpqrsvwxyz-refused").unwrap();
    let mut a = signed_attestation(&refuser_key, refuser_key.node_id(), built.clone(), out, [5; 32], [6; 32]);
    a.log = Some(LogDigest::of(b"a log\n"));
    let att = Envelope::sign(&refuser_key, &Message::Attestation(a)).unwrap().to_bytes();
    let refuser_asked = Asked::default();
    let refuser_sync = peer(
        vec![att],
        vec![],
        refuser_asked.clone(),
        Box::new(move |r| match r {
            SyncRequest::RevisionSummary
            | SyncRequest::Revisions { .. }
            | SyncRequest::Manifest { .. }
            | SyncRequest::Log { .. }
            | SyncRequest::Retry { .. } => Some(error()),
            _ => None,
        }),
    );
    let src = StorePath::new([112; 20], "refused-source").unwrap();
    let (nar_drv, found) = closure_with_source(&tmp.path().join("drvs"), "nar-refused", &src);
    let closure_error = rpc::encode(&ClosureResponse::Error { message: "no".into() });
    let (refuser_closures, refuser_nars) = (ClosuresAsked::default(), Arc::new(Mutex::new(0u32)));
    let (closures, nars, nar_name) = (refuser_closures.clone(), refuser_nars.clone(), nar_drv.to_string());
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Sync => refuser_sync(body),
        RequestProtocol::Closure if closure_asked(body, &closures) == nar_name => Some(found.clone()),
        RequestProtocol::Closure => Some(closure_error.clone()),
        RequestProtocol::Nar => {
            *nars.lock().unwrap() += 1;
            Some(rpc::encode(&NarResponse::Error("no".into())))
        }
    });
    let refuser = Intruder::join_answering_all(&c, refuser_key.clone(), &topics, |_| {}, answer);

    // The carrier: relays the refuser's revision header, answers its first revision page
    // request with an error (then the page), has no manifest and no closure ("not found").
    let carrier_asked = Asked::default();
    let pages = Arc::new(Mutex::new(0u32));
    let carrier_sync = peer(
        vec![],
        vec![revision(&refuser_key, "refused", 11)],
        carrier_asked.clone(),
        Box::new(move |r| match r {
            SyncRequest::Revisions { .. } => {
                let mut n = pages.lock().unwrap();
                *n += 1;
                (*n == 1).then(error)
            }
            _ => None,
        }),
    );
    let carrier_closures = ClosuresAsked::default();
    let closures = carrier_closures.clone();
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Sync => carrier_sync(body),
        RequestProtocol::Closure => {
            let missing = closure_asked(body, &closures);
            Some(rpc::encode(&ClosureResponse::NotFound { missing }))
        }
        RequestProtocol::Nar => Some(rpc::encode(&NarResponse::NotFound)),
    });
    let carrier_key = NodeKey::from_seed("costs-carrier", [113; 32]).unwrap();
    let carrier = Intruder::join_answering_all(&c, carrier_key, &topics, |_| {}, answer);

    // Revision anti-entropy: the refuser's summary error, the carrier's page error then its page;
    // the manifest: the refuser (its submitter) errs, the carrier is asked next.
    wait_asked("node 0 to ask the refuser for its revision summary", &refuser_asked, |r| {
        matches!(r, SyncRequest::RevisionSummary)
    });
    wait_for("node 0 to store the revision after the carrier's page error", Duration::from_secs(30), || {
        has_revision(&c, "refused").then_some(())
    });
    assert!(count(&carrier_asked, |r| matches!(r, SyncRequest::Revisions { .. })) >= 2);
    wait_asked("node 0 to ask the refuser for the manifest", &refuser_asked, |r| {
        matches!(r, SyncRequest::Manifest { .. })
    });
    wait_asked("node 0 to ask the carrier for the manifest next", &carrier_asked, |r| {
        matches!(r, SyncRequest::Manifest { .. })
    });

    // The log, from the refuser (once its attestation is stored).
    wait_asked("node 0 to page the refuser's attestations", &refuser_asked, |r| {
        matches!(r, SyncRequest::Attestations { .. } | SyncRequest::ShardAttestations { .. })
    });
    let log_url = format!("{}/api/v1/builds/{built}/log?builder={}", c.urls[0], refuser.net.local_peer_id());
    wait_for("node 0 to ask the refuser for its log", Duration::from_secs(30), || {
        let (s, _) = get(&log_url);
        (count(&refuser_asked, |r| matches!(r, SyncRequest::Log { .. })) > 0).then_some(s)
    });

    // A retry.
    let retried = StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-retried.drv").unwrap();
    retry_on(&c, &retried, &refuser.net.local_peer_id());
    wait_asked("the retry request", &refuser_asked, |r| matches!(r, SyncRequest::Retry { .. }));

    // A job whose closure the refuser errs on: the carrier is asked next.
    let errs = StorePath::new([111; 20], "closure-refused.drv").unwrap();
    refuser.publish_as(&refuser_key, &job(&refuser_key, errs.clone()));
    wait_for("node 0 to ask the carrier for the closure after the refuser's error", Duration::from_secs(30), || {
        let name = errs.to_string();
        (refuser_closures.lock().unwrap().contains(&name) && carrier_closures.lock().unwrap().contains(&name))
            .then_some(())
    });

    // A job whose source's NAR the refuser errs on.
    refuser.publish_as(&refuser_key, &job(&refuser_key, nar_drv));
    wait_for("node 0 to ask the refuser for the source's NAR", Duration::from_secs(30), || {
        (*refuser_nars.lock().unwrap() >= 1).then_some(())
    });

    std::thread::sleep(Duration::from_millis(1500));
    assert_unstruck(&c, &refuser, "a peer answering errors");
    assert_unstruck(&c, &carrier, "a peer answering errors and \"not found\"");
    refuser.shutdown();
    carrier.shutdown();
}

#[test]
fn unreadable_answers_in_a_row_bench_a_peer_without_a_strike() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 1, &[]);
    let topics = ["buildmesh/announce/1".to_string()];
    let unknown = vec![SyncResponse::VARIANTS as u8, 1, 2, 3];
    let drv = StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-benched.drv").unwrap();

    // `mute` answers every sync request with a variant this build does not know; `chatty` too,
    // except every 8th request, which it answers readably.
    let (mute_asked, chatty_asked) = (Asked::default(), Asked::default());
    let u = unknown.clone();
    let mute = Intruder::join_answering(
        &c,
        NodeKey::from_seed("costs-mute", [121; 32]).unwrap(),
        &topics,
        |_| {},
        peer(vec![], vec![], mute_asked.clone(), Box::new(move |_| Some(u.clone()))),
    );
    let n = Arc::new(Mutex::new(0u32));
    let chatty = Intruder::join_answering(
        &c,
        NodeKey::from_seed("costs-chatty", [122; 32]).unwrap(),
        &topics,
        |_| {},
        peer(
            vec![],
            vec![],
            chatty_asked.clone(),
            Box::new(move |_| {
                let mut n = n.lock().unwrap();
                *n += 1;
                (!(*n).is_multiple_of(8)).then(|| unknown.clone())
            }),
        ),
    );

    // Ask each through retry requests (anti-entropy asks too) until it was asked `target` times;
    // `None` when a request is no longer sent.
    let drive = |who: &Intruder, asked: &Asked, target: usize| -> Option<usize> {
        loop {
            let before = asked.lock().unwrap().len();
            if before >= target {
                return Some(before);
            }
            retry_on(&c, &drv, &who.net.local_peer_id());
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while asked.lock().unwrap().len() == before {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let reached = drive(&chatty, &chatty_asked, 40);
    assert_eq!(reached.map(|n| n >= 40), Some(true), "a peer with a readable answer every 8th was benched");

    let benched_at = drive(&mute, &mute_asked, 40);
    assert!(benched_at.is_none(), "a peer answering only unknown variants was asked 40 times");
    let asked = mute_asked.lock().unwrap().len();
    // 16 in a row bench it; a few requests may have been in flight then.
    assert!((16..20).contains(&asked), "benched after {asked} requests");
    // Still benched: neither retries nor anti-entropy (every 2 s) ask it.
    for _ in 0..4 {
        retry_on(&c, &drv, &mute.net.local_peer_id());
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mute_asked.lock().unwrap().len(), asked, "a benched peer was asked again");
    // `GET /api/v1/peers` shows the bench (the peers' list is refreshed within a second or so).
    let benched = |who: &Intruder| conduct(&c, &who.net.local_peer_id())["benched"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while benched(&mute) != serde_json::json!(["/buildmesh/sync/1"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench is not shown: conduct {}",
            conduct(&c, &mute.net.local_peer_id())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(benched(&chatty), serde_json::json!([]), "a peer that is not benched shows an empty list");
    assert_unstruck(&c, &mute, "a peer answering unknown variants");
    assert_unstruck(&c, &chatty, "a peer answering unknown variants");
    mute.shutdown();
    chatty.shutdown();
}

#[test]
fn a_peer_serving_a_wrong_manifest_is_not_asked_for_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 1, &["--submitter", "any"]);
    let topics = ["buildmesh/announce/1".to_string()];

    // The submitter serves its revision header, and bytes that are not its manifest (they do
    // not decompress) for the manifest; the witness has no manifest ("not found").
    let liar_key = NodeKey::from_seed("costs-liar", [131; 32]).unwrap();
    let liar_asked = Asked::default();
    let wrong = rpc::encode(&SyncResponse::ManifestChunk { total: 64, bytes: vec![0xab; 64] });
    let liar = Intruder::join_answering(
        &c,
        liar_key.clone(),
        &topics,
        |_| {},
        peer(
            vec![],
            vec![revision(&liar_key, "wrong-manifest", 31)],
            liar_asked.clone(),
            Box::new(move |r| matches!(r, SyncRequest::Manifest { .. }).then(|| wrong.clone())),
        ),
    );
    let witness_asked = Asked::default();
    let witness = Intruder::join_answering(
        &c,
        NodeKey::from_seed("costs-witness", [132; 32]).unwrap(),
        &topics,
        |_| {},
        peer(vec![], vec![], witness_asked.clone(), honest()),
    );
    let manifest_asked = |r: &SyncRequest| matches!(r, SyncRequest::Manifest { .. });
    // Three retry rounds (every 2 s): the witness is asked in each, the liar only in the first.
    wait_for("three manifest retry rounds", Duration::from_secs(30), || {
        (count(&witness_asked, manifest_asked) >= 3).then_some(())
    });
    assert_eq!(count(&liar_asked, manifest_asked), 1, "the peer that served a wrong manifest was asked again");
    assert_unstruck(&c, &liar, "a peer serving bytes that are not the signed manifest");
    liar.shutdown();
    witness.shutdown();
}
