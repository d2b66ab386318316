//! An attacker on the mesh: a bare libp2p peer (no buildmesh node behind it) bootstrapped to a
//! cluster's node 0, which publishes whatever gossip a test forges, signed by any key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use buildmesh::mesh::rpc::{self, SyncRequest, SyncResponse};
use buildmesh::mesh::validate::topic_of;
use buildmesh::net::{MessageAcceptance, NetConfig, NetEvent, NetHandle, RequestProtocol, keypair_from_seed};
use buildmesh_protocol::id::{ArtifactHash, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, OutputAttestation};
use buildmesh_protocol::wire::{Encode as _, Kind, Message};
use libp2p::PeerId;

use super::Cluster;

const TOPICS: [&str; 6] = [
    "buildmesh/announce/1",
    "buildmesh/claim/1",
    "buildmesh/attest/1",
    "buildmesh/failure/1",
    "buildmesh/job/1",
    "buildmesh/strike/1",
];

/// How an intruder answers the sync requests it receives: the raw answer to a raw request body,
/// or `None` to leave it unanswered (the asker's request then times out).
pub type SyncAnswer = Box<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Like [`SyncAnswer`], for requests on any of the three protocols.
pub type Answer = Box<dyn Fn(RequestProtocol, &[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// The attacker's peer.
pub struct Intruder {
    pub rt: tokio::runtime::Runtime,
    pub net: NetHandle,
    /// The key of its libp2p identity.
    pub key: NodeKey,
}

impl Intruder {
    /// Join `c` through node 0 with identity `key`, once node 0 subscribed to every topic.
    pub fn join(c: &Cluster, key: NodeKey) -> Intruder {
        Intruder::join_with(c, key, |_| {})
    }

    /// Like [`Intruder::join`], with its network configuration changed by `tweak` first (e.g.
    /// larger request caps than the nodes', to send them oversized requests).
    pub fn join_with(c: &Cluster, key: NodeKey, tweak: impl FnOnce(&mut NetConfig)) -> Intruder {
        Intruder::join_on(c, key, &TOPICS.map(String::from), tweak)
    }

    /// Like [`Intruder::join_with`], once node 0 subscribed to each of `topics` (a sharded
    /// mesh's topics have other names).
    pub fn join_on(c: &Cluster, key: NodeKey, topics: &[String], tweak: impl FnOnce(&mut NetConfig)) -> Intruder {
        Intruder::join_answering(c, key, topics, tweak, Box::new(|_| None))
    }

    /// Like [`Intruder::join_on`], answering the nodes' `/buildmesh/sync/1` requests with
    /// `answer` from the start (a node asks every peer that connects for its records).
    pub fn join_answering(
        c: &Cluster,
        key: NodeKey,
        topics: &[String],
        tweak: impl FnOnce(&mut NetConfig),
        answer: SyncAnswer,
    ) -> Intruder {
        let answer: Answer = Box::new(move |protocol, body| match protocol {
            RequestProtocol::Sync => answer(body),
            _ => None,
        });
        Intruder::join_answering_all(c, key, topics, tweak, answer)
    }

    /// Like [`Intruder::join_answering`], answering requests on every protocol (closures, NAR
    /// chunks, sync) with `answer`.
    pub fn join_answering_all(
        c: &Cluster,
        key: NodeKey,
        topics: &[String],
        tweak: impl FnOnce(&mut NetConfig),
        answer: Answer,
    ) -> Intruder {
        let node_peer: PeerId = c.peer_ids[0].parse().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut cfg = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![c.bootstrap.parse().unwrap()],
            mdns: false,
            gossip_heartbeat: Duration::from_millis(200),
            ..NetConfig::default()
        };
        tweak(&mut cfg);
        let net = rt.block_on(async {
            let (net, mut events, _task) = buildmesh::net::spawn(keypair_from_seed(key.seed()), cfg).unwrap();
            let mut subscribed = BTreeSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !topics.iter().all(|t| subscribed.contains(t)) {
                let ev = tokio::time::timeout_at(deadline, events.recv()).await.expect("node subscription").unwrap();
                if let NetEvent::PeerSubscribed { peer, topic } = ev
                    && peer == node_peer
                {
                    subscribed.insert(topic);
                }
            }
            let n = net.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    match ev {
                        NetEvent::Gossip(g) => {
                            let _ = n.report_validation(g.id, g.propagation_source, MessageAcceptance::Ignore).await;
                        }
                        NetEvent::InboundRequest { protocol, id, data, .. } => {
                            if let Some(bytes) = answer(protocol, &data) {
                                let _ = n.respond(id, bytes).await;
                            }
                        }
                        _ => {}
                    }
                }
            });
            net
        });
        Intruder { rt, net, key }
    }

    /// Publish `bytes` on `topic`.
    pub fn publish_raw(&self, topic: &str, bytes: Vec<u8>) {
        self.rt.block_on(self.net.publish(topic, bytes)).unwrap_or_else(|e| panic!("publish on {topic}: {e}"));
    }

    /// Publish `m` signed by `signer` (its author must be `signer`) on its topic.
    pub fn publish_as(&self, signer: &NodeKey, m: &Message) {
        let bytes = Envelope::sign(signer, m).expect("a valid message").to_bytes();
        self.publish_raw(topic_of(m.kind()), bytes);
    }

    /// Publish `payload` as a message of `kind` signed by `signer`, whatever it contains.
    pub fn publish_forged(&self, signer: &NodeKey, kind: Kind, payload: Vec<u8>) {
        let bytes = Envelope::sign_raw_payload(signer, kind, payload).to_bytes();
        self.publish_raw(topic_of(kind), bytes);
    }

    /// Publish `m` (signed by `signer`) every `every`, in the background, until dropped; `make`
    /// builds each one (fresh sequence number and timestamp).
    pub fn repeat(&self, signer: NodeKey, every: Duration, make: impl Fn() -> Message + Send + 'static) {
        let net = self.net.clone();
        self.rt.spawn(async move {
            loop {
                let m = make();
                if let Ok(env) = Envelope::sign(&signer, &m) {
                    let _ = net.publish(topic_of(m.kind()), env.to_bytes()).await;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Send the raw request body `body` on `/buildmesh/sync/1` to `to` (framed by the node's own
    /// length-prefixed codec, whatever the bytes are) and return the raw answer, or the error
    /// the requester saw (e.g. the stream closed on a refused request).
    pub fn sync_raw(&self, to: PeerId, body: Vec<u8>) -> Result<Vec<u8>, String> {
        self.rt.block_on(self.net.send_request(to, RequestProtocol::Sync, body)).map_err(|e| e.to_string())
    }

    /// Send `req` on `/buildmesh/sync/1` to `to` and decode the answer.
    pub fn sync(&self, to: PeerId, req: &SyncRequest) -> Result<SyncResponse, String> {
        let answer = self.sync_raw(to, rpc::encode(req))?;
        rpc::decode::<SyncResponse>("sync response", &answer, NetConfig::default().sync_limits.max_response)
            .map_err(|e| e.to_string())
    }

    pub fn shutdown(self) {
        self.rt.block_on(self.net.shutdown());
    }
}

/// A throwaway key numbered `i` (no node holds it).
pub fn throwaway(i: u32) -> NodeKey {
    let mut seed = [0xa5u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    NodeKey::from_seed(&format!("throwaway-{i}"), seed).unwrap()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An attestation that `builder` built `drv` with the one output `path` (NarHash bytes
/// `nar_hash`, artifact hash bytes `artifact`, 112 bytes), the output signed by `key`, finished
/// now, with no log and no provenance envelope: what an intruder forges (or floods) in the
/// attack tests. `builder` may differ from `key`'s id to forge a claim on someone else's name.
pub fn signed_attestation(
    key: &NodeKey,
    builder: NodeId,
    drv: StorePath,
    path: StorePath,
    nar_hash: [u8; 32],
    artifact: [u8; 32],
) -> Attestation {
    let sd = StoreDir::nix();
    let o = OutputAttestation::new_signed(
        key,
        &sd,
        path,
        nar_hash,
        112,
        BTreeSet::new(),
        ArtifactHash::from_bytes(artifact),
        Some(drv.clone()),
    )
    .unwrap();
    let now = now_ms();
    Attestation {
        builder,
        store_dir: sd,
        drv,
        mode: BuildMode::Native,
        started_at_ms: now - 10,
        finished_at_ms: now,
        outputs: BTreeMap::from([("out".to_string(), o)]),
        log: None,
        provenance: None,
    }
}

/// Node 0's view of `peer`'s conduct in `GET /api/v1/peers`.
pub fn conduct(c: &Cluster, peer: &PeerId) -> serde_json::Value {
    let (_, list) = super::get_json(&format!("{}/api/v1/peers", c.urls[0]));
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["peer_id"] == peer.to_base58()))
        .map(|p| p["conduct"].clone())
        .unwrap_or_default()
}
