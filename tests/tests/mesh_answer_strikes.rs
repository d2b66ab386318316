//! Every reader of peers' answers strikes garbage and spares other builds (issue 18), replayed
//! against a real `buildmesh node` process: bare libp2p peers (`mesh_support::intruder`) answer
//! node 0's own `/buildmesh/sync/1` requests (anti-entropy of revision headers, manifest and log
//! fetches, a retry request) with chosen bytes, and node 0's `GET /api/v1/peers` must show a
//! strike (`conduct.malformed`) for each kind of garbage, and none for what an honest build of
//! another version sends. (Attestation and failure pages: `mesh_sync_attacks` parts 7 and 8.)
//!
//! Not struck (one peer, `newer`): an answer variant this build does not know (to the summary
//! and to a retry request), a revision header of another protocol version, a correctly signed
//! header whose payload this build cannot decode (a later build may read it), "not found" for a
//! manifest. Its valid header is still stored.
//!
//! Struck (one peer each): a revision page with a header whose signature does not verify; a
//! revision summary answered with another kind; a manifest request answered with a log chunk; a
//! log request answered with a manifest chunk; a retry request answered with bytes that do not
//! decode, and one answered with a manifest chunk; a `/buildmesh/closure/1` answer that does not decode (the submitter of a job node 0
//! builds); a `/buildmesh/nar/1` chunk answer that does not decode (the submitter of a job whose
//! closure names an input source it serves).
//!
//! What error answers, unreadable answers in a row and wrong manifests cost: `mesh_answer_costs`.

mod mesh_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, SyncRequest, SyncResponse};
use buildmesh::net::RequestProtocol;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Encode as _, Kind, LogDigest, Message, PROTOCOL_VERSION};
use mesh_support::answering::*;
use mesh_support::intruder::{Answer, Intruder, SyncAnswer, conduct, signed_attestation};
use mesh_support::*;

#[test]
fn garbage_answers_cost_a_strike_in_every_reader_and_newer_builds_none() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 1, &["--submitter", "any"]);
    let topics = ["buildmesh/announce/1".to_string()];
    let join = |name: &str, seed: u8, answer: SyncAnswer| {
        let key = NodeKey::from_seed(name, [seed; 32]).unwrap();
        Intruder::join_answering(&c, key, &topics, |_| {}, answer)
    };
    let drv = StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-retried.drv").unwrap();

    // A newer build: answers node 0's summary with a variant this build does not know (once),
    // serves a revision of the next protocol version and one whose signed payload this build
    // cannot decode beside a valid one, has no manifest, and answers a retry with an unknown
    // variant. Not struck; its valid revision is stored.
    let newer_key = NodeKey::from_seed("answers-newer", [101; 32]).unwrap();
    let mut next_version = revision(&newer_key, "next-version", 2);
    next_version[0] = PROTOCOL_VERSION + 1;
    let unreadable = Envelope::sign_raw_payload(&newer_key, Kind::Revision, vec![9; 48]).to_bytes();
    let revs = vec![next_version, unreadable, revision(&newer_key, "from-newer", 1)];
    let summaries = Arc::new(Mutex::new(0u32));
    let unknown = vec![SyncResponse::VARIANTS as u8, 1, 2, 3];
    let newer_asked = Asked::default();
    let newer = join(
        "answers-newer",
        101,
        peer(
            vec![],
            revs,
            newer_asked.clone(),
            Box::new(move |req| match req {
                SyncRequest::Summary => {
                    let mut n = summaries.lock().unwrap();
                    *n += 1;
                    (*n == 1).then(|| unknown.clone())
                }
                SyncRequest::Retry { .. } => Some(unknown.clone()),
                _ => None,
            }),
        ),
    );
    wait_for("node 0 to store the newer peer's valid revision", Duration::from_secs(30), || {
        has_revision(&c, "from-newer").then_some(())
    });
    wait_asked("node 0 to ask the newer peer for its manifest", &newer_asked, |r| {
        matches!(r, SyncRequest::Manifest { .. })
    });
    retry_on(&c, &drv, &newer.net.local_peer_id());
    wait_asked("the retry request", &newer_asked, |r| matches!(r, SyncRequest::Retry { .. }));
    let summaries_asked = newer_asked.lock().unwrap().iter().filter(|r| **r == SyncRequest::Summary).count();
    assert!(summaries_asked >= 2, "the unknown summary answer was asked once only: {summaries_asked}");
    assert!(!has_revision(&c, "next-version"), "a revision of another protocol version was stored");
    std::thread::sleep(Duration::from_millis(1500));
    let k = conduct(&c, &newer.net.local_peer_id());
    assert!(
        k["malformed"].as_u64().unwrap_or(0) == 0 && k["strikes"].as_f64().unwrap_or(0.0) == 0.0,
        "a newer build was struck: {k}"
    );

    // A revision page with a header whose signature does not verify.
    let forger_key = NodeKey::from_seed("answers-forger", [102; 32]).unwrap();
    let mut forged = revision(&forger_key, "forged", 3);
    *forged.last_mut().unwrap() ^= 1;
    let forger = join("answers-forger", 102, peer(vec![], vec![forged], Asked::default(), honest()));
    wait_struck(&c, &forger, "a revision page with a forged header");

    // A revision summary answered with a log chunk.
    let log_chunk = rpc::encode(&SyncResponse::LogChunk { total: 1, bytes: vec![1] });
    let dodger = join(
        "answers-dodger",
        103,
        peer(
            vec![],
            vec![],
            Asked::default(),
            Box::new(move |r| matches!(r, SyncRequest::RevisionSummary).then(|| log_chunk.clone())),
        ),
    );
    wait_struck(&c, &dodger, "a revision summary of another kind");

    // A valid revision whose manifest request is answered with a log chunk.
    let submitter = NodeKey::from_seed("answers-submitter", [104; 32]).unwrap();
    let log_chunk = rpc::encode(&SyncResponse::LogChunk { total: 1, bytes: vec![1] });
    let submitter_peer = join(
        "answers-submitter",
        104,
        peer(
            vec![],
            vec![revision(&submitter, "manifest-liar", 4)],
            Asked::default(),
            Box::new(move |r| matches!(r, SyncRequest::Manifest { .. }).then(|| log_chunk.clone())),
        ),
    );
    wait_struck(&c, &submitter_peer, "a manifest answer of another kind");

    // A builder whose signed attestation names a log, answering the log request with a
    // manifest chunk.
    let builder = NodeKey::from_seed("answers-builder", [105; 32]).unwrap();
    let built = StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-logged.drv").unwrap();
    let out = StorePath::from_basename("1123456789abcdfghijklmnpqrsvwxyz-logged").unwrap();
    let mut a = signed_attestation(&builder, builder.node_id(), built.clone(), out, [5; 32], [6; 32]);
    a.log = Some(LogDigest::of(b"a log\n"));
    let att = Envelope::sign(&builder, &Message::Attestation(a)).unwrap().to_bytes();
    let chunk = rpc::encode(&SyncResponse::ManifestChunk { total: 6, bytes: b"a log\n".to_vec() });
    let builder_asked = Asked::default();
    let builder_peer = join(
        "answers-builder",
        105,
        peer(
            vec![att],
            vec![],
            builder_asked.clone(),
            Box::new(move |r| matches!(r, SyncRequest::Log { .. }).then(|| chunk.clone())),
        ),
    );
    wait_asked("node 0 to page the builder's attestations", &builder_asked, |r| {
        matches!(r, SyncRequest::Attestations { .. } | SyncRequest::ShardAttestations { .. })
    });
    let log_url = format!("{}/api/v1/builds/{built}/log?builder={}", c.urls[0], builder_peer.net.local_peer_id());
    wait_for("node 0 to ask the builder for its log", Duration::from_secs(30), || {
        let (s, _) = get(&log_url);
        builder_asked.lock().unwrap().iter().any(|r| matches!(r, SyncRequest::Log { .. })).then_some(s)
    });
    wait_struck(&c, &builder_peer, "a log answer of another kind");

    // A retry request answered with bytes that do not decode.
    let mumbler = join(
        "answers-mumbler",
        106,
        peer(
            vec![],
            vec![],
            Asked::default(),
            Box::new(|r| matches!(r, SyncRequest::Retry { .. }).then(|| vec![0xff; 16])),
        ),
    );
    retry_on(&c, &drv, &mumbler.net.local_peer_id());
    wait_struck(&c, &mumbler, "an undecodable retry answer");

    // A retry request answered with an answer of another kind (a manifest chunk).
    let chunk = rpc::encode(&SyncResponse::ManifestChunk { total: 1, bytes: vec![1] });
    let sidestep = join(
        "answers-sidestep",
        109,
        peer(
            vec![],
            vec![],
            Asked::default(),
            Box::new(move |r| matches!(r, SyncRequest::Retry { .. }).then(|| chunk.clone())),
        ),
    );
    retry_on(&c, &drv, &sidestep.net.local_peer_id());
    wait_struck(&c, &sidestep, "a retry answer of another kind");

    // A submitter whose job node 0 builds, answering the closure request with bytes that do not
    // decode.
    let job_key = NodeKey::from_seed("answers-closure", [107; 32]).unwrap();
    let sync = peer(vec![], vec![], Asked::default(), honest());
    let closure_asked = Arc::new(Mutex::new(0u32));
    let counted = closure_asked.clone();
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Closure => {
            *counted.lock().unwrap() += 1;
            Some(vec![0xff; 16])
        }
        RequestProtocol::Sync => sync(body),
        RequestProtocol::Nar => None,
    });
    let job_topics = ["buildmesh/job/1".to_string()];
    let closure_peer = Intruder::join_answering_all(&c, job_key.clone(), &job_topics, |_| {}, answer);
    closure_peer.publish_as(&job_key, &job(&job_key, StorePath::new([107; 20], "closure-garbage.drv").unwrap()));
    wait_for("node 0 to ask the submitter for the closure", Duration::from_secs(30), || {
        (*closure_asked.lock().unwrap() >= 1).then_some(())
    });
    wait_struck(&c, &closure_peer, "an undecodable closure answer");

    // A submitter whose closure names an input source it serves, answering the NAR chunk request
    // with bytes that do not decode.
    let nar_key = NodeKey::from_seed("answers-nar", [108; 32]).unwrap();
    let src = StorePath::new([108; 20], "garbage-source").unwrap();
    let (nar_drv, closure) = closure_with_source(&tmp.path().join("drvs"), "nar-garbage", &src);
    let sync = peer(vec![], vec![], Asked::default(), honest());
    let nar_asked = Arc::new(Mutex::new(0u32));
    let counted = nar_asked.clone();
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Closure => Some(closure.clone()),
        RequestProtocol::Nar => {
            *counted.lock().unwrap() += 1;
            Some(vec![0xff; 16])
        }
        RequestProtocol::Sync => sync(body),
    });
    let nar_peer = Intruder::join_answering_all(&c, nar_key.clone(), &job_topics, |_| {}, answer);
    nar_peer.publish_as(&nar_key, &job(&nar_key, nar_drv));
    wait_for("node 0 to ask the submitter for the source's NAR", Duration::from_secs(30), || {
        (*nar_asked.lock().unwrap() >= 1).then_some(())
    });
    wait_struck(&c, &nar_peer, "an undecodable NAR chunk answer");

    // The newer build is still not struck.
    let k = conduct(&c, &newer.net.local_peer_id());
    assert!(k["malformed"].as_u64().unwrap_or(0) == 0, "a newer build was struck: {k}");
    for i in [newer, forger, dodger, submitter_peer, builder_peer, mumbler, sidestep, closure_peer, nar_peer] {
        i.shutdown();
    }
}
