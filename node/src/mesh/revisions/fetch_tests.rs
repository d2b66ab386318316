//! The fetch layer against scripted peers: the right bytes are taken, and a peer serving bytes
//! that are not the signed manifest (another manifest, a bomb, an oversized or inconsistent
//! stream) is refused with an error naming what is wrong, before anything is stored.

use std::cell::RefCell;

use buildmesh_protocol::identity::NodeKey;

use super::*;
use crate::mesh::test_util::header;

/// A peer that serves `compressed` in chunks as asked (and counts the requests).
fn serving(
    compressed: Vec<u8>,
    asked: &RefCell<u32>,
) -> impl FnMut(SyncRequest) -> std::future::Ready<Result<SyncResponse, String>> + '_ {
    move |req| {
        *asked.borrow_mut() += 1;
        let SyncRequest::Manifest { offset, len, .. } = req else { panic!("not a manifest request") };
        let start = (offset as usize).min(compressed.len());
        let end = (start + len as usize).min(compressed.len());
        std::future::ready(Ok(SyncResponse::ManifestChunk {
            total: compressed.len() as u64,
            bytes: compressed[start..end].to_vec(),
        }))
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn key() -> NodeKey {
    NodeKey::from_seed("a", [4; 32]).unwrap()
}

#[test]
fn the_signed_manifest_is_taken_in_chunks() {
    let (h, bytes) = header(&key(), "c1", 1, 40, 0);
    // Incompressible-ish padding is not possible in a canonical manifest; use a tiny chunk size
    // by serving a large manifest instead: 40 drvs compress to well under 1 MiB, so one chunk.
    let asked = RefCell::new(0);
    let compressed = zstd::bulk::compress(&bytes, 3).unwrap();
    let (raw, m) = run(fetch_from(&h, |_| Ok(()), serving(compressed, &asked))).unwrap();
    assert_eq!(raw, bytes);
    assert_eq!(m.drvs.len(), 40);
    assert_eq!(*asked.borrow(), 1);
}

#[test]
fn a_peer_serving_other_bytes_is_refused_naming_the_hash() {
    let k = key();
    let (h, _) = header(&k, "c1", 1, 3, 0);
    // Another valid manifest of the same size (same shape, other salt).
    let (_, other) = header(&k, "c1", 1, 3, 1);
    assert_eq!(other.len() as u64, h.manifest_size);
    let asked = RefCell::new(0);
    let err = run(fetch_from(&h, |_| Ok(()), serving(zstd::bulk::compress(&other, 3).unwrap(), &asked))).unwrap_err();
    let FetchFailure::Invalid(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains(&hex::encode(h.manifest_hash)), "names the signed hash: {msg}");
    // Bytes that decompress to more than the signed size (a bomb, or just another manifest).
    let (_, bigger) = header(&k, "c2", 1, 9, 0);
    let err = run(fetch_from(&h, |_| Ok(()), serving(zstd::bulk::compress(&bigger, 3).unwrap(), &asked))).unwrap_err();
    assert!(matches!(err, FetchFailure::Decompress { .. } | FetchFailure::Invalid(_)), "{err:?}");
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    let err = run(fetch_from(&h, |_| Ok(()), serving(bomb, &asked))).unwrap_err();
    assert!(matches!(err, FetchFailure::Decompress { .. }), "{err:?}");
}

#[test]
fn an_oversized_stream_is_refused_before_it_is_fetched() {
    let (h, _) = header(&key(), "c1", 1, 3, 0);
    let asked = RefCell::new(0);
    let huge = vec![7u8; (compressed_bound(h.manifest_size) + 1) as usize];
    let err = run(fetch_from(&h, |_| Ok(()), serving(huge, &asked))).unwrap_err();
    assert!(matches!(err, FetchFailure::TooLarge { .. }), "{err:?}");
    assert_eq!(*asked.borrow(), 1, "only the first chunk was asked for");
    // The quota is asked with the announced length before the rest is fetched.
    let (_, bytes) = header(&key(), "c1", 1, 3, 0);
    let compressed = zstd::bulk::compress(&bytes, 3).unwrap();
    let len = compressed.len() as u64;
    let err =
        run(fetch_from(&h, |n| if n == len { Err("over quota".into()) } else { Ok(()) }, serving(compressed, &asked)))
            .unwrap_err();
    assert_eq!(err, FetchFailure::Quota("over quota".into()));
}

#[test]
fn broken_chunk_streams_and_answers_are_errors() {
    let (h, bytes) = header(&key(), "c1", 1, 3, 0);
    let compressed = zstd::bulk::compress(&bytes, 3).unwrap();
    // A short chunk.
    let short = |_req: SyncRequest| {
        std::future::ready(Ok(SyncResponse::ManifestChunk { total: compressed.len() as u64, bytes: vec![1, 2] }))
    };
    assert!(matches!(run(fetch_from(&h, |_| Ok(()), short)), Err(FetchFailure::BadChunk { offset: 0, .. })));
    let not_found = |_req: SyncRequest| std::future::ready(Ok(SyncResponse::ManifestNotFound));
    assert_eq!(run(fetch_from(&h, |_| Ok(()), not_found)), Err(FetchFailure::NotFound));
    let older_peer = |_req: SyncRequest| std::future::ready(Ok(SyncResponse::Error("malformed sync request".into())));
    assert!(matches!(run(fetch_from(&h, |_| Ok(()), older_peer)), Err(FetchFailure::Peer(_))));
    let log_chunk = |_req: SyncRequest| std::future::ready(Ok(SyncResponse::LogChunk { total: 1, bytes: vec![1] }));
    assert_eq!(run(fetch_from(&h, |_| Ok(()), log_chunk)), Err(FetchFailure::WrongKind { offset: 0 }));
    let gone = |_req: SyncRequest| std::future::ready(Err::<SyncResponse, _>("connection closed".to_string()));
    assert!(matches!(run(fetch_from(&h, |_| Ok(()), gone)), Err(FetchFailure::Peer(_))));
}

#[test]
fn what_counts_as_wrong_bytes_for_a_manifest() {
    // What counts as wrong bytes.
    assert!(FetchFailure::Invalid("hash".into()).served_wrong_bytes());
    assert!(FetchFailure::Decompress { size: 1, reason: "x".into() }.served_wrong_bytes());
    assert!(FetchFailure::WrongKind { offset: 0 }.served_wrong_bytes());
    assert!(!FetchFailure::NotFound.served_wrong_bytes());
    assert!(!FetchFailure::Peer("error".into()).served_wrong_bytes());
    assert!(!FetchFailure::Quota("full".into()).served_wrong_bytes());
}

/// Every failed attempt counts in `attempts` (`want` used to overwrite the missing state with
/// "fetching", so `attempts` stayed 1 forever); while queued again it shows as fetching. A real
/// store and a real network task with no peer: every attempt fails with "no peer to ask".
#[tokio::test]
async fn every_failed_attempt_counts() {
    use buildmesh_protocol::mesh::TrustConfig;

    use crate::mesh::MeshSettings;
    use crate::net::{NetConfig, keypair_from_seed};

    let me = NodeKey::from_seed("me", [5; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let cfg = NetConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], mdns: false, ..NetConfig::default() };
    let (net, _events, _task) = crate::net::spawn(keypair_from_seed(me.seed()), cfg).unwrap();
    let quotas = Arc::new(Quotas::new(me.node_id(), TrustConfig::default(), &MeshSettings::default()));
    let fetcher = ManifestFetcher::new(store, net.clone(), quotas, 60_000);
    let (h, _) = header(&me, "c1", 1, 3, 0);
    for n in 1..=3 {
        fetcher.want(h.clone());
        assert_eq!(fetcher.state(&h.manifest_hash), ManifestState::Fetching);
        fetcher.want(h.clone()); // already queued: nothing changes
        fetcher.fetch(h.clone()).await;
        let ManifestState::Missing(m) = fetcher.state(&h.manifest_hash) else {
            panic!("not missing after attempt {n}")
        };
        assert_eq!(m.attempts, n, "attempts after {n} failed attempts: {m:?}");
        assert!(m.error.contains("no peer to ask"), "{}", m.error);
    }
    assert_eq!(fetcher.counts(), (0, 3));
    net.shutdown().await;
}
