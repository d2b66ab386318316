//! Peers answering a real node's requests with chosen bytes (`mesh_answer_strikes`,
//! `mesh_answer_costs`): an honest sync peer with overrides, revisions and manifests to serve,
//! jobs to gossip, and waits on what the node asked and struck.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, Summary, SyncRequest, SyncResponse};
use buildmesh_protocol::id::JobId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput, RevisionHeader};
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Encode as _, JobSubmission, Message};
use libp2p::PeerId;

use super::intruder::{Intruder, SyncAnswer, conduct, now_ms};
use super::{Cluster, get_json, http, wait_for};

/// What a peer answers to one request instead of the honest answer (`None`: honest).
pub type Override = Box<dyn Fn(&SyncRequest) -> Option<Vec<u8>> + Send + Sync>;

/// Every sync request an intruder received.
pub type Asked = Arc<Mutex<Vec<SyncRequest>>>;

/// A peer holding the attestation envelopes `atts` and the revision envelopes `revs` (sequence
/// numbers 0, 1, ...), honest unless `over` answers first: no manifest and no log ("not found"),
/// retries refused, anything else an error. Every request it decodes is pushed to `asked`.
pub fn peer(atts: Vec<Vec<u8>>, revs: Vec<Vec<u8>>, asked: Asked, over: Override) -> SyncAnswer {
    Box::new(move |body| {
        let Ok(req) = rpc::decode::<SyncRequest>("r", body, 1 << 20) else {
            return Some(rpc::encode(&SyncResponse::Error("malformed sync request".into())));
        };
        asked.lock().unwrap().push(req.clone());
        if let Some(bytes) = over(&req) {
            return Some(bytes);
        }
        let summary = |items: &[Vec<u8>]| {
            let n = items.len() as u64;
            Summary { count: n, xor: [n as u8; 32], next_seq: n }
        };
        let page = |from: u64, items: &[Vec<u8>]| SyncResponse::Page {
            items: items.iter().cloned().enumerate().map(|(i, r)| (i as u64, r)).skip(from as usize).collect(),
            next: from.max(items.len() as u64),
            more: false,
        };
        let resp = match req {
            SyncRequest::Summary => SyncResponse::Summary { attestations: summary(&atts), failures: summary(&[]) },
            SyncRequest::Attestations { from, .. } | SyncRequest::ShardAttestations { from, .. } => page(from, &atts),
            SyncRequest::Failures { from, .. } | SyncRequest::ShardFailures { from, .. } => page(from, &[]),
            SyncRequest::RevisionSummary => SyncResponse::RevisionSummary(summary(&revs)),
            SyncRequest::Revisions { from, .. } => page(from, &revs),
            SyncRequest::Manifest { .. } => SyncResponse::ManifestNotFound,
            SyncRequest::Log { .. } => SyncResponse::LogNotFound,
            SyncRequest::Retry { .. } => SyncResponse::Retry(Err("not now".into())),
        };
        Some(rpc::encode(&resp))
    })
}

/// This host's Nix system (`x86_64-linux`, ...): what node 0 builds natively.
pub fn local_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

pub fn honest() -> Override {
    Box::new(|_| None)
}

/// A valid manifest of two derivations, salted by `salt`.
pub fn manifest(salt: u8) -> (Manifest, Vec<u8>) {
    let path = |i: u8, name: &str| {
        let h = blake3::hash(&[i, salt]);
        StorePath::new(h.as_bytes()[..20].try_into().unwrap(), name).unwrap()
    };
    let mut drvs = vec![
        ManifestDrv {
            drv: path(1, "a-1.drv"),
            system: 0,
            inputs: vec![],
            outputs: vec![ManifestOutput { name: "out".into(), path: path(2, "a-1") }],
        },
        ManifestDrv {
            drv: path(3, "b-1.drv"),
            system: 0,
            inputs: vec![],
            outputs: vec![ManifestOutput { name: "out".into(), path: path(4, "b-1") }],
        },
    ];
    drvs.sort_by(|a, b| a.drv.cmp(&b.drv));
    let mut jobs: Vec<ManifestJob> = drvs
        .iter()
        .enumerate()
        .map(|(i, d)| ManifestJob { drv: i as u32, package: d.drv.name()[..1].into(), version: "1".into() })
        .collect();
    jobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
    let m = Manifest { store_dir: StoreDir::nix(), systems: vec!["x86_64-linux".into()], drvs, jobs };
    let bytes = m.encode_to_vec();
    (Manifest::decode(&bytes).unwrap(), bytes)
}

/// The envelope of a revision header by `key` at commit `commit` (for `manifest(salt)`).
pub fn revision(key: &NodeKey, commit: &str, salt: u8) -> Vec<u8> {
    let (m, bytes) = manifest(salt);
    let h = RevisionHeader::for_manifest(key.node_id(), now_ms(), "guix", "master", commit, 2, &m, &bytes).unwrap();
    Signed::sign(key, &h).unwrap().to_bytes()
}

/// A job by `key` for `drv` on this host's system, one replica (node 0, the only member, builds
/// it and asks the submitter for the closure first).
pub fn job(key: &NodeKey, drv: StorePath) -> Message {
    let mut id = [0u8; 32];
    id.copy_from_slice(blake3::hash(drv.to_string().as_bytes()).as_bytes());
    Message::JobSubmission(JobSubmission {
        job: JobId::from_bytes(id),
        submitter: key.node_id(),
        submitted_at_ms: now_ms(),
        store_dir: StoreDir::nix(),
        drv,
        outputs: BTreeSet::new(),
        system: local_system(),
        required_features: BTreeSet::new(),
        priority: 0,
        replicas: 1,
    })
}

/// Whether node 0 holds the revision `guix@<commit>`.
pub fn has_revision(c: &Cluster, commit: &str) -> bool {
    let (_, j) = get_json(&format!("{}/api/v1/mesh/revisions", c.urls[0]));
    j["revisions"].as_array().is_some_and(|l| l.iter().any(|r| r["revision"] == format!("guix@{commit}")))
}

/// Ask node 0 to send a retry request for `drv` to `peer` (`POST /api/v1/mesh/retry`).
pub fn retry_on(c: &Cluster, drv: &StorePath, peer: &PeerId) {
    let body = serde_json::json!({ "drv": drv.to_string(), "on": peer.to_base58() });
    let r = http()
        .post(format!("{}/api/v1/mesh/retry", c.urls[0]))
        .bearer_auth(c.token(0))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
}

/// Wait until `asked` holds a request `is` picks.
pub fn wait_asked(what: &str, asked: &Asked, is: impl Fn(&SyncRequest) -> bool) {
    wait_for(what, Duration::from_secs(30), || asked.lock().unwrap().iter().any(&is).then_some(()));
}

/// Wait until node 0 counts at least one malformed answer of `who`.
pub fn wait_struck(c: &Cluster, who: &Intruder, what: &str) {
    let k = wait_for(&format!("a strike for {what}"), Duration::from_secs(30), || {
        let k = conduct(c, &who.net.local_peer_id());
        (k["malformed"].as_u64() >= Some(1)).then_some(k)
    });
    assert!(k["strikes"].as_f64().unwrap() >= 0.9, "{what}: {k}");
}

/// A `.drv` `name` (made in `dir`, reading the input source `src`) and the closure answer that
/// names it and `src` as a source (a made-up NAR hash of 112 bytes): what a submitter serves for
/// a job whose input it must also serve as a NAR.
pub fn closure_with_source(dir: &std::path::Path, name: &str, src: &StorePath) -> (StorePath, Vec<u8>) {
    let mut d = super::Drvs::new(dir);
    let (drv, _) = d.add_with_sources(name, "true", &[], std::slice::from_ref(src));
    let aterm = std::fs::read(d.dir.join(format!("{name}.drv"))).unwrap();
    let source = rpc::SourceInfo {
        path: src.to_string(),
        nar_hash: buildmesh_protocol::hash::NixHash::sha256([7; 32]).to_string(),
        nar_size: 112,
        references: vec![],
        ca: None,
    };
    let found =
        rpc::encode(&rpc::ClosureResponse::Found { drvs: vec![(drv.to_string(), aterm)], sources: vec![source] });
    (drv, found)
}
