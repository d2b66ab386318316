//! What a real `buildmesh node` process does with peers whose closure, NAR or log answers it must
//! refuse (issue 18), replayed with bare libp2p peers (`mesh_support::intruder`) answering its
//! requests with chosen bytes (the costs of sync answers: `mesh_answer_costs`):
//!
//! - a peer that answers closure and NAR chunk requests only with variants this build does not
//!   know is benched on each of those protocols after 16 in a row: no further request reaches it
//!   there, `GET /api/v1/peers` lists both in `conduct.benched`, the node asks the other peer
//!   instead, and the peer gets no strike;
//! - a peer that served bytes that are not the signed NAR, or not the signed log, is not asked
//!   for that NAR / that log again (the second request goes to the honest peer only, whose right
//!   bytes are taken), and gets no strike.
//!
//! The NARs are asked for through the quorum gateway (`GET /<hash>.narinfo`: node 0 fetches an
//! accepted NAR from its agreeing builders), the closures through jobs node 0 builds, the logs
//! through `GET /api/v1/builds/<drv>/log`.

mod mesh_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, ClosureRequest, ClosureResponse, NarRequest, NarResponse, SyncRequest, SyncResponse};
use buildmesh::net::RequestProtocol;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Encode as _, LogDigest, Message};
use mesh_support::answering::*;
use mesh_support::intruder::{Answer, Intruder, conduct, signed_attestation};
use mesh_support::*;

/// The NAR both builders attest (112 bytes, the size `signed_attestation` signs).
fn right_nar() -> Vec<u8> {
    (0..112u8).map(|i| i.wrapping_mul(7)).collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// An attestation envelope by `key` of `drv` with the output `out` (NarHash of [`right_nar`])
/// and, when given, the digest of `log`.
fn attestation(key: &NodeKey, drv: &StorePath, out: &StorePath, log: Option<&[u8]>) -> Vec<u8> {
    let mut a = signed_attestation(key, key.node_id(), drv.clone(), out.clone(), sha256(&right_nar()), [9; 32]);
    a.log = log.map(LogDigest::of);
    Envelope::sign(key, &Message::Attestation(a)).unwrap().to_bytes()
}

/// Answer a NAR chunk request with `nar`'s bytes.
fn chunk_of(body: &[u8], nar: &[u8]) -> Vec<u8> {
    let Ok(r) = rpc::decode::<NarRequest>("r", body, 1 << 20) else { return rpc::encode(&NarResponse::NotFound) };
    let start = (r.offset as usize).min(nar.len());
    let end = (start + r.len as usize).min(nar.len());
    rpc::encode(&NarResponse::Chunk(nar[start..end].to_vec()))
}

/// Answer a log request with `log`'s bytes.
fn log_chunk(r: &SyncRequest, log: &[u8]) -> Option<Vec<u8>> {
    let SyncRequest::Log { offset, len, .. } = r else { return None };
    let start = (*offset as usize).min(log.len());
    let end = (start + *len as usize).min(log.len());
    Some(rpc::encode(&SyncResponse::LogChunk { total: log.len() as u64, bytes: log[start..end].to_vec() }))
}

/// Node 0's answer to `GET /<hash part of out>.narinfo` (status, body).
fn narinfo(c: &Cluster, out: &StorePath) -> (u16, String) {
    let (s, body) = get(&format!("{}/{}.narinfo", c.urls[0], out.hash_part()));
    (s, String::from_utf8_lossy(&body).into_owned())
}

/// Assert that node 0 holds nothing against `who` (no malformed answer, no strike).
fn assert_unstruck(c: &Cluster, who: &Intruder, what: &str) {
    let k = conduct(c, &who.net.local_peer_id());
    assert!(
        k["malformed"].as_u64().unwrap_or(0) == 0 && k["strikes"].as_f64().unwrap_or(0.0) == 0.0,
        "{what} was struck: {k}"
    );
}

/// Start node 0 trusting `keys` (quorum 2: both must attest the same NarHash), accepting jobs
/// from any submitter.
fn start(tmp: &std::path::Path, keys: &[&NodeKey]) -> Cluster {
    let trusted: Vec<String> = keys.iter().map(|k| k.nix_public_key().to_string()).collect();
    let mut extra = vec!["--submitter", "any"];
    for t in &trusted {
        extra.extend(["--trusted-key", t.as_str()]);
    }
    Cluster::start(tmp, 1, &extra)
}

#[test]
fn unreadable_closure_and_nar_answers_bench_a_peer_and_the_other_is_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let (mute_key, carrier_key) = (
        NodeKey::from_seed("refusals-mute", [141; 32]).unwrap(),
        NodeKey::from_seed("refusals-carrier", [142; 32]).unwrap(),
    );
    let c = start(tmp.path(), &[&mute_key, &carrier_key]);
    let topics = ["buildmesh/announce/1".to_string(), "buildmesh/job/1".to_string()];
    let drv = StorePath::from_basename("2123456789abcdfghijklmnpqrsvwxyz-benched.drv").unwrap();
    let out = StorePath::from_basename("3123456789abcdfghijklmnpqrsvwxyz-benched").unwrap();

    // `mute` attests the output and answers every closure and NAR request with a variant this
    // build does not know; `carrier` attests it too, has no closure, and has no NAR until
    // `serving` is set.
    let (mute_closures, mute_nars) = (Arc::new(Mutex::new(Vec::<String>::new())), Arc::new(AtomicUsize::new(0)));
    let (closures, nars) = (mute_closures.clone(), mute_nars.clone());
    let mute_sync = peer(vec![attestation(&mute_key, &drv, &out, None)], vec![], Asked::default(), honest());
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Sync => mute_sync(body),
        RequestProtocol::Closure => {
            let drv = rpc::decode::<ClosureRequest>("r", body, 1 << 20).map(|r| r.drv).unwrap_or_default();
            closures.lock().unwrap().push(drv);
            Some(vec![ClosureResponse::VARIANTS as u8, 0])
        }
        RequestProtocol::Nar => {
            nars.fetch_add(1, Ordering::SeqCst);
            Some(vec![NarResponse::VARIANTS as u8, 0])
        }
    });
    let mute = Intruder::join_answering_all(&c, mute_key.clone(), &topics, |_| {}, answer);
    let (carrier_closures, carrier_nars) = (Arc::new(Mutex::new(Vec::<String>::new())), Arc::new(AtomicUsize::new(0)));
    let serving = Arc::new(AtomicBool::new(false));
    let (closures, nars, serves) = (carrier_closures.clone(), carrier_nars.clone(), serving.clone());
    let carrier_sync = peer(vec![attestation(&carrier_key, &drv, &out, None)], vec![], Asked::default(), honest());
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Sync => carrier_sync(body),
        RequestProtocol::Closure => {
            let missing = rpc::decode::<ClosureRequest>("r", body, 1 << 20).map(|r| r.drv).unwrap_or_default();
            closures.lock().unwrap().push(missing.clone());
            Some(rpc::encode(&ClosureResponse::NotFound { missing }))
        }
        RequestProtocol::Nar => {
            nars.fetch_add(1, Ordering::SeqCst);
            Some(if serves.load(Ordering::SeqCst) {
                chunk_of(body, &right_nar())
            } else {
                rpc::encode(&NarResponse::NotFound)
            })
        }
    });
    let carrier = Intruder::join_answering_all(&c, carrier_key, &topics, |_| {}, answer);

    // Closures: jobs by `mute`, which node 0 builds, asking the submitter first, then `carrier`.
    let job_drv = |i: u8| StorePath::new([i; 20], &format!("bench-closure-{i}.drv")).unwrap();
    let mut published = 0u8;
    while mute_closures.lock().unwrap().len() < 16 {
        assert!(published < 40, "40 jobs did not bring 16 closure requests to the mute peer");
        published += 1;
        mute.publish_as(&mute_key, &job(&mute_key, job_drv(published)));
        let name = job_drv(published).to_string();
        wait_for("node 0 to ask for the job's closure", Duration::from_secs(30), || {
            carrier_closures.lock().unwrap().contains(&name).then_some(())
        });
    }
    let benched_at = mute_closures.lock().unwrap().len();
    assert!((16..20).contains(&benched_at), "benched after {benched_at} closure requests");
    for _ in 0..3 {
        published += 1;
        mute.publish_as(&mute_key, &job(&mute_key, job_drv(published)));
        let name = job_drv(published).to_string();
        wait_for("node 0 to ask the other peer for a closure", Duration::from_secs(30), || {
            carrier_closures.lock().unwrap().contains(&name).then_some(())
        });
    }
    assert_eq!(mute_closures.lock().unwrap().len(), benched_at, "a peer benched on closures was asked again");

    // NARs: node 0 fetches the accepted NAR for the gateway from both builders.
    wait_for("node 0 to store both attestations", Duration::from_secs(30), || {
        (c.attesters(0, &format!("/nix/store/{out}")).values().map(|s| s.len()).sum::<usize>() == 2).then_some(())
    });
    for i in 0..16 {
        let (s, body) = narinfo(&c, &out);
        assert_ne!(s, 200, "no NAR yet: {body}");
        assert_eq!(mute_nars.load(Ordering::SeqCst), i + 1, "one NAR chunk request per narinfo request");
    }
    let carrier_asked = carrier_nars.load(Ordering::SeqCst);
    for _ in 0..3 {
        narinfo(&c, &out);
    }
    assert_eq!(mute_nars.load(Ordering::SeqCst), 16, "a peer benched on NARs was asked again");
    assert_eq!(carrier_nars.load(Ordering::SeqCst), carrier_asked + 3, "the other builder is asked instead");
    serving.store(true, Ordering::SeqCst);
    let (s, body) = narinfo(&c, &out);
    assert_eq!(s, 200, "the NAR from the other builder: {body}");
    assert_eq!(mute_nars.load(Ordering::SeqCst), 16);

    // Both benches are shown, no strike.
    let benched = || {
        let list = conduct(&c, &mute.net.local_peer_id())["benched"].clone();
        let mut names: Vec<String> =
            list.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
        names.sort();
        names
    };
    wait_for("both benches in GET /api/v1/peers", Duration::from_secs(10), || {
        (benched() == ["/buildmesh/closure/1", "/buildmesh/nar/1"]).then_some(())
    });
    assert!(conduct(&c, &carrier.net.local_peer_id())["benched"].as_array().is_some_and(|l| l.is_empty()));
    assert_unstruck(&c, &mute, "a peer answering unknown closure and NAR variants");
    assert_unstruck(&c, &carrier, "a peer answering \"not found\"");
    mute.shutdown();
    carrier.shutdown();
}

#[test]
fn a_peer_serving_a_wrong_nar_or_log_is_not_asked_for_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    // The liar is the builder node 0 asks first (builders are asked in node id order), so that
    // only its skip keeps the second request from reaching it.
    let (mut liar_key, mut honest_key) = (
        NodeKey::from_seed("refusals-liar", [151; 32]).unwrap(),
        NodeKey::from_seed("refusals-honest", [152; 32]).unwrap(),
    );
    if liar_key.node_id() > honest_key.node_id() {
        std::mem::swap(&mut liar_key, &mut honest_key);
    }
    let c = start(tmp.path(), &[&liar_key, &honest_key]);
    let drv = StorePath::from_basename("4123456789abcdfghijklmnpqrsvwxyz-wrong-bytes.drv").unwrap();
    let out = StorePath::from_basename("5123456789abcdfghijklmnpqrsvwxyz-wrong-bytes").unwrap();
    let (liar_log, honest_log) = (b"the liar's signed log\n".to_vec(), b"the honest builder's log\n".to_vec());

    // Both attest the output with the same NarHash, each with its own log. The liar serves other
    // bytes of the same length for both; the honest peer has no NAR until `serving` is set.
    let forged_log: Vec<u8> = liar_log.iter().map(|b| b ^ 1).collect();
    let forged_nar: Vec<u8> = right_nar().iter().map(|b| b ^ 0xff).collect();
    let (liar, liar_nars, liar_asked) =
        builder(&c, liar_key, (&drv, &out), (&liar_log, forged_log), move |body| chunk_of(body, &forged_nar));
    let serving = Arc::new(AtomicBool::new(false));
    let serves = serving.clone();
    let (honest, honest_nars, honest_asked) =
        builder(&c, honest_key, (&drv, &out), (&honest_log, honest_log.clone()), move |body| {
            if serves.load(Ordering::SeqCst) {
                chunk_of(body, &right_nar())
            } else {
                rpc::encode(&NarResponse::NotFound)
            }
        });
    wait_for("node 0 to store both attestations", Duration::from_secs(30), || {
        (c.attesters(0, &format!("/nix/store/{out}")).values().map(|s| s.len()).sum::<usize>() == 2).then_some(())
    });

    // The NAR: the first request asks both (wrong bytes, "not found"); the second only the honest
    // peer, whose bytes are taken.
    let (s, body) = narinfo(&c, &out);
    assert_ne!(s, 200, "{body}");
    assert_eq!((liar_nars.load(Ordering::SeqCst), honest_nars.load(Ordering::SeqCst)), (1, 1), "both asked");
    serving.store(true, Ordering::SeqCst);
    let (s, body) = narinfo(&c, &out);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("NarHash: sha256:"), "{body}");
    assert_eq!(liar_nars.load(Ordering::SeqCst), 1, "the peer that served a wrong NAR was asked for it again");
    assert_eq!(honest_nars.load(Ordering::SeqCst), 2);

    // The log: asked of the liar once; the second request does not reach it; the honest log is
    // served.
    let log_url = |q: &str| format!("{}/api/v1/builds/{drv}/log{q}", c.urls[0]);
    let logs_asked =
        |asked: &Asked| asked.lock().unwrap().iter().filter(|r| matches!(r, SyncRequest::Log { .. })).count();
    let by_liar = format!("?builder={}", liar.net.local_peer_id());
    let (s, body) = get(&log_url(&by_liar));
    assert_eq!(s, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(logs_asked(&liar_asked), 1);
    let (s, body) = get(&log_url(&by_liar));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(s, 502, "{msg}");
    assert!(msg.contains("skipped"), "{msg}");
    assert_eq!(logs_asked(&liar_asked), 1, "the peer that served a wrong log was asked for it again");
    let (s, body) = get(&log_url(""));
    assert_eq!((s, body), (200, honest_log), "the honest builder's log");
    assert_eq!(logs_asked(&liar_asked), 1, "the peer that served a wrong log was asked for it again");
    assert_eq!(logs_asked(&honest_asked), 1);

    assert_unstruck(&c, &liar, "a peer serving bytes that are not the signed NAR and log");
    assert_unstruck(&c, &honest, "an honest peer");
    liar.shutdown();
    honest.shutdown();
}

/// A builder peer joining `c` with `key`: it attests `out` of `drv` with the digest of
/// `signed_log`, answers log requests with `served_log` and NAR chunk requests with `nar`
/// (counted). Returns the peer, its NAR request count and its sync requests.
fn builder(
    c: &Cluster,
    key: NodeKey,
    (drv, out): (&StorePath, &StorePath),
    (signed_log, served_log): (&[u8], Vec<u8>),
    nar: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
) -> (Intruder, Arc<AtomicUsize>, Asked) {
    let (nars, asked) = (Arc::new(AtomicUsize::new(0)), Asked::default());
    let sync = peer(
        vec![attestation(&key, drv, out, Some(signed_log))],
        vec![],
        asked.clone(),
        Box::new(move |r| log_chunk(r, &served_log)),
    );
    let counted = nars.clone();
    let answer: Answer = Box::new(move |protocol, body| match protocol {
        RequestProtocol::Sync => sync(body),
        RequestProtocol::Nar => {
            counted.fetch_add(1, Ordering::SeqCst);
            Some(nar(body))
        }
        RequestProtocol::Closure => None,
    });
    let topics = ["buildmesh/announce/1".to_string()];
    (Intruder::join_answering_all(c, key, &topics, |_| {}, answer), nars, asked)
}
