//! The mesh on a real node: the coordination state machine ([`buildmesh_protocol::mesh::Mesh`])
//! driven over libp2p ([`crate::net`]), the store and the build scheduler.
//!
//! # Shape
//! [`start`] spawns the network task and one *driver* task ([`driver`]) that owns the `Mesh`.
//! The driver `select!`s over gossip and connection events, the scheduler's build results, requests
//! from the HTTP API (through a [`MeshHandle`]), results of its own helper tasks and the state
//! machine's next timer, and after every input executes what the machine asks for:
//!
//! | machine output | what the driver does |
//! |---|---|
//! | `Publish(m)` | signs `m` with the node key; an attestation or failure is committed to redb first; gossips it on `m`'s topic |
//! | `StartBuild(order)` | a helper task fetches the `.drv` closure (from the submitter, `/buildmesh/closure/1`) and the input paths (from their attested builders or DHT providers, `/buildmesh/nar/1`, verified against the attested NarHash), then queues the build for the local scheduler |
//! | `CancelBuild` | cancels the helper task and the local build |
//! | `RequestRetry` | sends `SyncRequest::Retry` to the peer |
//! | `Event(e)` | logs; for this node's own submissions, `JobComplete` fetches the outputs and records the build as done, `JobFailed` records it as failed |
//!
//! # Gossip validation ([`validate`])
//! Every received message is size-checked, decoded, checked against its topic and verified; a bad
//! one is rejected (gossipsub penalises the peer that forwarded it). Attestations and failures are
//! committed to redb **before** the message is accepted, so gossipsub forwards only what is durable
//! here, and only within its signer's storage quota ([`quota`]). Then the machine judges it: applied or newly stored → accept (forward); duplicate, stale,
//! own echo → ignore.
//!
//! # Other protocols
//! - [`serve`]: answers closure, NAR-chunk and anti-entropy requests from the store;
//! - [`sync`]: pulls missing attestations and failures from peers when they connect;
//! - [`fetch`]: gets closures and NARs from peers, verified;
//! - [`gateway`]: the quorum narinfo (served only when enough trusted builders agree);
//! - [`answers`]: how every answer from a peer is read: the node's configured caps, and a strike
//!   for bytes no honest build sends.
//!
//! # Restart
//! At start the driver verifies and feeds every stored attestation and failure to the machine
//! (its own attestations as `RestoreAttestation`), then resubmits its own unfinished submissions
//! ([`jobs`]). Registered outputs are announced as DHT provider records.

pub mod answers;
pub mod driver;
pub mod fetch;
pub mod gateway;
pub mod jobs;
pub mod log_cache;
pub mod logs;
pub mod peer_book;
pub mod policy;
pub mod quota;
pub mod revisions;
pub mod rpc;
pub mod serve;
pub mod settings;
pub mod skips;
pub mod sync;
#[cfg(test)]
mod test_util;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use settings::{MeshSettings, SettingsError, net_config, trust_policy};

use crate::scheduler::SchedulerHandle;
pub use crate::scheduler::{BUILD_EVENT_BUFFER, BuildEvent, BuildOutcome};
use crate::store::Store;
use crate::systems::Systems;

/// One derivation of a submission, in dependency order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitJob {
    /// The derivation (stored on this node).
    pub drv: StorePath,
    /// Outputs wanted (empty = all).
    pub outputs: BTreeSet<String>,
    /// Its input derivations that are part of the same submission (built first).
    pub inputs: Vec<StorePath>,
}

/// A submission to the mesh (`POST /api/v1/submit` on a mesh node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// The derivations to build, inputs before the derivations that need them.
    pub jobs: Vec<SubmitJob>,
    /// Priority.
    pub priority: i32,
    /// Replication factor; `None` = the node's configured default.
    pub replicas: Option<u32>,
}

/// A peer as `GET /api/v1/peers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// libp2p peer id.
    pub peer_id: String,
    /// The node's ed25519 public key, base64 (the same key signs its attestations and narinfos).
    pub key: String,
    /// `name:base64` when the key name is known (a configured trusted key).
    pub public_key: Option<String>,
    /// Whether its attestations count towards the quorum here.
    pub trusted: bool,
    /// Whether a connection to it is open.
    pub connected: bool,
    /// Whether it is in the mesh view (announced recently).
    pub member: bool,
    /// Native and emulated systems it announced.
    pub systems: PeerSystems,
    /// Features it announced.
    pub features: Vec<String>,
    /// Build slots it announced.
    pub slots: u32,
    /// Builds it was running at its last announcement.
    pub load: u32,
    /// Owner label.
    pub owner: String,
    /// Software version.
    pub version: String,
    /// Its addresses (as it reported them, or as seen on the connection).
    pub addresses: Vec<String>,
    /// How it is connected: `direct`, `relayed` (only through a relay) or `none`.
    #[serde(default)]
    pub connection: crate::net::ConnectionKind,
    /// The remote addresses of its direct (not relayed) connections: which transport a
    /// punched connection took (`/udp/…/quic-v1` or `/tcp/…`) and the peer's NAT address.
    #[serde(default)]
    pub direct_addresses: Vec<String>,
    /// What this node holds against it: gossip score, graylisting, refused requests, oversized
    /// frames (issue 15 item 7; all zero for a peer that behaved).
    #[serde(default)]
    pub conduct: crate::net::PeerConduct,
    /// Times it claimed here and let its lease run out without a result, in its
    /// current run of strikes (protocol `mesh/strikes.rs`).
    #[serde(default)]
    pub lapses: u32,
    /// Until when (unix ms) placement designates it last for not delivering; `null` if not.
    #[serde(default)]
    pub penalised_until_ms: Option<u64>,
    /// Derivations on which a quorum of observers' signed strike records struck it (gossiped,
    /// the same on every node; protocol `mesh/strike_book.rs`).
    #[serde(default)]
    pub struck_drvs: u32,
    /// Until when (unix ms) every node, itself included, counts it as penalised by those
    /// records (its live claims do not hold a place); `null` if not.
    #[serde(default)]
    pub struck_until_ms: Option<u64>,
    /// When this node last saw it (unix ms, this node's clock): now while connected, else the
    /// later of its last announcement heard and the remembered peers ([`peer_book`]); `null`
    /// if neither.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// The slowdown it measured for each emulated system (`8.5`: 8.5 times as long as native),
    /// which divides its placement weight for that system (issue 16); empty if it stated none.
    #[serde(default)]
    pub slowdown: BTreeMap<String, f64>,
    /// Why it takes no new builds (over its disk limits), as it announced; `null` if it is not.
    #[serde(default)]
    pub disk_pressure: Option<String>,
}

/// Systems of a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSystems {
    /// Built natively.
    pub native: Vec<String>,
    /// Built under emulation.
    pub emulated: Vec<String>,
}

/// Counters of the driver.
#[derive(Debug, Default)]
pub struct Counters {
    /// Gossip messages accepted (forwarded).
    pub accepted: AtomicU64,
    /// Gossip messages rejected (sender penalised).
    pub rejected: AtomicU64,
    /// Gossip messages ignored (duplicate, stale, echo).
    pub ignored: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
    /// Bytes of gossip payload received (every message handed to the driver).
    pub bytes_in: AtomicU64,
    /// Bytes of gossip payload published.
    pub bytes_out: AtomicU64,
    /// Job submissions and claims published inside batches (a batch is one published message).
    pub batched_items: AtomicU64,
    /// Anti-entropy runs finished.
    pub sync_runs: AtomicU64,
    /// Attestations received through anti-entropy.
    pub synced_attestations: AtomicU64,
    /// Failures received through anti-entropy.
    pub synced_failures: AtomicU64,
    /// Anti-entropy pages asked with a shard filter.
    pub synced_shard_pages: AtomicU64,
    /// Paths fetched from peers.
    pub fetched_paths: AtomicU64,
    /// Builds started for the mesh.
    pub builds_started: AtomicU64,
    /// Attestations and failures dropped because their signer is at its storage quota (gossip
    /// and anti-entropy; see [`quota`]).
    pub over_quota: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// `GET /api/v1/mesh`: the driver's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// Its listen addresses with `/p2p/<id>`.
    pub addresses: Vec<String>,
    /// Members in the view (this node included).
    pub members: usize,
    /// Peers connected.
    pub connected: usize,
    /// Derivations tracked by the state machine.
    pub drvs_tracked: usize,
    /// Of which active (not complete or failed).
    pub drvs_active: usize,
    /// Local submissions waiting for their inputs.
    pub pending_submissions: usize,
    /// This node's unfinished submissions.
    pub own_submissions: usize,
    /// Derivations this node is building for the mesh.
    pub building: Vec<String>,
    /// The quorum.
    pub quorum: usize,
    /// Trusted keys (node ids, hex).
    pub trusted: Vec<String>,
    /// Outputs named by stored attestations.
    pub attested_outputs: usize,
    /// Gossip accepted / rejected / ignored, messages published.
    pub gossip: GossipCounts,
    /// Anti-entropy.
    pub sync: SyncCounts,
    /// Paths fetched from peers.
    pub fetched_paths: u64,
    /// Builds started for the mesh.
    pub builds_started: u64,
    /// State machine counters.
    pub machine: MachineCounts,
    /// Peers remembered in the database (table `peers`) as of the last write ([`peer_book`]).
    #[serde(default)]
    pub remembered_peers: u64,
    /// Every member with gossiped strike records, this node included (`me`).
    #[serde(default)]
    pub struck: Vec<StruckView>,
    /// This node's shard (`mesh_shards`; 0 with one shard; see `driver/shards.rs`).
    #[serde(default)]
    pub shard: u32,
    /// The mesh's number of shards (`mesh_shards`, 1 = unsharded).
    #[serde(default)]
    pub shards: u32,
    /// Connected peers that are members of this node's shard (shard discovery keeps at least
    /// `shard_peers` of them when it can; `driver/discovery.rs`).
    #[serde(default)]
    pub shard_peers: usize,
    /// The shards whose topics the node hears: its own and those it observes for its
    /// submissions (`[0]` with one shard).
    #[serde(default)]
    pub heard_shards: Vec<u32>,
}

/// A member struck by gossiped, signed strike records (`GET /api/v1/mesh` `struck`, the
/// builders page's JSON twin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StruckView {
    /// Its key (base64, as in `GET /api/v1/peers`).
    pub key: String,
    /// Whether it is this node.
    pub me: bool,
    /// Derivations on which a quorum of observers struck it.
    pub drvs: u32,
    /// Until when (unix ms) it is penalised by them; `null` once that has passed.
    pub until_ms: Option<u64>,
}

/// Gossip counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCounts {
    /// Accepted.
    pub accepted: u64,
    /// Rejected.
    pub rejected: u64,
    /// Ignored.
    pub ignored: u64,
    /// Published.
    pub published: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes published.
    pub bytes_out: u64,
    /// Job submissions and claims published inside batches (each batch counts once in
    /// `published`).
    #[serde(default)]
    pub batched_items: u64,
    /// Attestations and failures dropped because their signer is at its storage quota (gossip
    /// and anti-entropy).
    #[serde(default)]
    pub over_quota: u64,
}

/// Anti-entropy counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounts {
    /// Runs finished.
    pub runs: u64,
    /// Attestations received.
    pub attestations: u64,
    /// Failures received.
    pub failures: u64,
    /// Pages asked with a shard filter (only the heard shards' records, docs/protocol.md
    /// *Shards*).
    #[serde(default)]
    pub shard_pages: u64,
}

/// The state machine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCounts {
    /// Messages that changed state.
    pub applied: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Stale messages.
    pub stale: u64,
    /// Ignored for another reason.
    pub ignored: u64,
    /// Claims published.
    pub claims_published: u64,
    /// Builds started.
    pub builds_started: u64,
    /// Builds cancelled.
    pub builds_cancelled: u64,
    /// Own results republished.
    pub republished: u64,
    /// Job submissions refused by the `submitters` policy ([`policy`]).
    #[serde(default)]
    pub refused_submissions: u64,
    /// Lapses of designated members that did not deliver (the no-delivery penalty).
    #[serde(default)]
    pub lapses: u64,
    /// Strike records this node signed and published.
    #[serde(default)]
    pub strikes_published: u64,
}

/// Gossip delays kept for `GET /api/v1/mesh/delays` (the most recent ones).
pub const MAX_DELAY_SAMPLES: usize = 4096;

/// What the driver shares with its handles.
#[derive(Debug, Default)]
pub struct Shared {
    peers: RwLock<Vec<PeerView>>,
    status: RwLock<MeshStatus>,
    counters: Counters,
    delays: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

impl Shared {
    fn record_delay(&self, ms: u64) {
        let mut d = self.delays.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if d.len() >= MAX_DELAY_SAMPLES {
            d.pop_front();
        }
        d.push_back(ms);
    }
}

/// Why a request to the mesh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshApiError {
    /// The driver has stopped.
    #[error("the mesh driver has stopped")]
    Stopped,
    /// The request was refused, for this reason.
    #[error("{0}")]
    Refused(String),
    /// The network layer failed.
    #[error("network: {0}")]
    Net(String),
}

/// A request from a handle to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Submit { req: SubmitRequest, reply: oneshot::Sender<Result<usize, String>> },
    Retry { drv: StorePath, on: NodeId, reply: oneshot::Sender<Result<(), String>> },
    RetryHere { drv: StorePath, reply: oneshot::Sender<Result<bool, String>> },
    Block { peer: PeerId, blocked: bool, reply: oneshot::Sender<Result<bool, String>> },
    Jobs { drvs: Vec<StorePath>, reply: oneshot::Sender<Result<Vec<DrvInMesh>, String>> },
}

/// What the mesh machine knows about one derivation (for the QA queries: status, explain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvInMesh {
    /// The machine has no job for it.
    Unknown,
    /// A submission of this node waits for its inputs before it is placed.
    Pending,
    /// The machine tracks it: its state, claims, attesters, failures and designated builders.
    Tracked(Box<buildmesh_protocol::mesh::JobView>),
    /// A submission of it was refused: its submitter is not among this node's `submitters`.
    Refused {
        /// The refused submitter.
        submitter: buildmesh_protocol::id::NodeId,
    },
}

/// Most derivations one [`MeshHandle::jobs`] call may ask about (a revision of 200,000 jobs
/// and its closure are asked about in several calls, so the driver is never held for long).
pub const MAX_JOBS_PER_CALL: usize = 50_000;

/// The API's side of the mesh driver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    gateway: gateway::Gateway,
    store_dir: StoreDir,
    net: crate::net::NetHandle,
    revisions: Arc<revisions::Revisions>,
    log_cache: Arc<log_cache::LogCache>,
    log_skips: skips::SharedSkips,
}

impl MeshHandle {
    /// Publish this node's revision (issue 13): `manifest` (canonical bytes) is checked against
    /// `header`, both are committed, then the header is gossiped ([`revisions::Revisions::publish`]).
    pub async fn publish_revision(
        &self,
        header: buildmesh_protocol::revision::RevisionHeader,
        manifest: Vec<u8>,
    ) -> Result<revisions::Published, MeshApiError> {
        self.revisions.publish(header, manifest).await
    }

    /// Where a revision's manifest is here: stored, being fetched, or missing with the peers
    /// tried (see [`revisions::fetch`]).
    pub fn manifest_state(&self, hash: &[u8; 32]) -> revisions::ManifestState {
        self.revisions.manifest_state(hash)
    }

    /// Revision traffic counters.
    pub fn revision_counts(&self) -> revisions::RevisionCounts {
        self.revisions.counts()
    }

    /// This node's id (the submitter of the revisions it publishes).
    pub fn node_id(&self) -> NodeId {
        self.revisions.me()
    }

    /// The network's counters in the Prometheus text format ([`crate::net::NetHandle::metrics_text`]).
    pub fn metrics_text(&self) -> String {
        self.net.metrics_text()
    }

    /// The build log of `drv` from a builder that signed one (only `builder`, when given),
    /// checked against the builder's signed [`buildmesh_protocol::wire::LogDigest`] ([`logs`]).
    pub async fn fetch_log(
        &self,
        store: &crate::store::Store,
        drv: &StorePath,
        builder: Option<NodeId>,
    ) -> Result<logs::VerifiedLog, logs::LogError> {
        logs::fetch(&self.net, store, (&self.log_cache, &self.log_skips), drv, builder, self.node_id()).await
    }

    /// Fetch the NAR with this NarHash and NarSize from `builders` (verified; stored as a blob,
    /// not registered as a path), unless it is stored already (`buildmesh diff`, issue 14).
    pub async fn fetch_nar(
        &self,
        nar_hash: [u8; 32],
        nar_size: u64,
        builders: &[NodeId],
    ) -> Result<crate::store::BlobInfo, fetch::FetchError> {
        let peers: Vec<PeerId> = builders.iter().filter_map(fetch::peer_of).collect();
        self.gateway.fetcher().fetch_nar(nar_hash, nar_size, &peers).await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, MeshApiError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| MeshApiError::Stopped)?;
        rx.await.map_err(|_| MeshApiError::Stopped)?.map_err(MeshApiError::Refused)
    }

    /// Submit derivations to the mesh (stored on this node already). Returns how many jobs the
    /// machine took.
    pub async fn submit(&self, req: SubmitRequest) -> Result<usize, MeshApiError> {
        self.call(|reply| Command::Submit { req, reply }).await
    }

    /// `buildmesh retry DRV --on NODE`.
    pub async fn retry(&self, drv: StorePath, on: NodeId) -> Result<(), MeshApiError> {
        self.call(|reply| Command::Retry { drv, on, reply }).await
    }

    /// `buildmesh retry DRV` (or `POST /api/v1/builds/<drv>/retry`) on a mesh node: when the
    /// mesh has a job for `drv`, this node claims and builds it for the mesh whatever the
    /// placement says, forgetting its own earlier failure, and its attestation is gossiped
    /// (`true`). `false` when the mesh has no job for `drv` (the node's own queue retries it).
    pub async fn retry_here(&self, drv: StorePath) -> Result<bool, MeshApiError> {
        self.call(|reply| Command::RetryHere { drv, reply }).await
    }

    /// Block (`true`) or unblock a peer: its connections are closed and refused while blocked;
    /// unblocking dials it again. Returns whether the block list changed.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<bool, MeshApiError> {
        self.call(|reply| Command::Block { peer, blocked, reply }).await
    }

    /// What the mesh machine knows about each of `drvs` (in order), at most
    /// [`MAX_JOBS_PER_CALL`] at a time: the caller splits longer lists.
    pub async fn jobs(&self, drvs: Vec<StorePath>) -> Result<Vec<DrvInMesh>, MeshApiError> {
        if drvs.len() > MAX_JOBS_PER_CALL {
            return Err(MeshApiError::Refused(format!(
                "{} derivations asked at once; the limit is {MAX_JOBS_PER_CALL}",
                drvs.len()
            )));
        }
        self.call(|reply| Command::Jobs { drvs, reply }).await
    }

    /// The known live peers.
    pub fn peers(&self) -> Vec<PeerView> {
        self.shared.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The driver's state and counters.
    pub fn status(&self) -> MeshStatus {
        let mut s = self.shared.status.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let c = &self.shared.counters;
        s.gossip = GossipCounts {
            accepted: Counters::get(&c.accepted),
            rejected: Counters::get(&c.rejected),
            ignored: Counters::get(&c.ignored),
            published: Counters::get(&c.published),
            bytes_in: Counters::get(&c.bytes_in),
            bytes_out: Counters::get(&c.bytes_out),
            batched_items: Counters::get(&c.batched_items),
            over_quota: Counters::get(&c.over_quota),
        };
        s.sync = SyncCounts {
            runs: Counters::get(&c.sync_runs),
            attestations: Counters::get(&c.synced_attestations),
            failures: Counters::get(&c.synced_failures),
            shard_pages: Counters::get(&c.synced_shard_pages),
        };
        s.fetched_paths = Counters::get(&c.fetched_paths);
        s.builds_started = Counters::get(&c.builds_started);
        s.attested_outputs = self.gateway.index().len();
        s
    }

    /// For the most recent attestations of other builders received by gossip: milliseconds
    /// from the end of the build (the builder's clock) to their acceptance here (this node's
    /// clock), oldest first.
    pub fn attestation_delays(&self) -> Vec<u64> {
        self.shared.delays.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect()
    }

    /// Whether this node is publicly reachable (AutoNAT).
    pub fn reachability(&self) -> crate::net::Reachability {
        self.net.reachability()
    }

    /// This node's libp2p addresses (`/…/p2p/<id>`).
    pub fn addresses(&self) -> Vec<String> {
        self.shared.status.read().unwrap_or_else(std::sync::PoisonError::into_inner).addresses.clone()
    }

    /// The quorum gateway.
    pub fn gateway(&self) -> &gateway::Gateway {
        &self.gateway
    }

    /// The store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }
}

/// Everything [`start`] needs.
#[derive(Debug)]
pub struct MeshParams {
    /// The node key (libp2p identity, mesh and Nix signatures).
    pub key: Arc<NodeKey>,
    /// The store.
    pub store: Store,
    /// The store directory.
    pub store_dir: StoreDir,
    /// The data dir (`DATA/mesh/` holds cursors, submissions and temp files).
    pub data_dir: PathBuf,
    /// libp2p listen addresses (the configuration's `listen`).
    pub listen: Vec<String>,
    /// Peers dialled at start (`bootstrap`).
    pub bootstrap: Vec<String>,
    /// NAT traversal (`[nat]`).
    pub nat: crate::net::NatSettings,
    /// Transport settings (`[net]`).
    pub net: crate::net::NetSettings,
    /// Whether to discover peers on the local network (`mdns`).
    pub mdns: bool,
    /// Nix public keys whose builds count (`trusted_keys`; this node's own key always does).
    pub trusted_keys: Vec<String>,
    /// Matching results of trusted builders needed to accept an output (`quorum`).
    pub quorum: usize,
    /// At least one of them must have built natively (`quorum_needs_native`).
    pub quorum_needs_native: bool,
    /// Systems whose emulated builds do not count towards the quorum (`no_emulation_for`).
    pub no_emulation_for: Vec<String>,
    /// Copies of each job this node submits (`replicas`).
    pub replicas: usize,
    /// Who runs this node, announced to peers (`owner`).
    pub owner: Option<String>,
    /// System features this node offers (`features`).
    pub features: Vec<String>,
    /// Features a job must require to be built here (`mandatory_features`).
    pub mandatory_features: Vec<String>,
    /// Whose jobs this node accepts (`submitters`; [`policy`]).
    pub submitters: policy::Submitters,
    /// Who may be designated to build (`builders`; empty: an open mesh; [`policy`]).
    pub builders: Vec<String>,
    /// The mesh timers.
    pub settings: MeshSettings,
    /// Shards of the mesh (`mesh_shards`; 1 = unsharded; the same on every node).
    pub shards: u32,
    /// Finished jobs kept in the state machine (`mesh_max_finished_drvs`; 0 = all).
    pub max_finished_drvs: u64,
    /// What this machine builds.
    pub systems: Systems,
    /// Build slots.
    pub slots: usize,
    /// The local scheduler.
    pub scheduler: SchedulerHandle,
    /// Build results from the scheduler.
    pub builds: mpsc::Receiver<BuildEvent>,
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The network layer could not start.
    #[error("network: {0}")]
    Net(#[from] crate::net::SpawnError),
    /// The state machine refused its configuration.
    #[error("mesh state machine: {0}")]
    Machine(#[from] buildmesh_protocol::mesh::MeshError),
    /// The data dir could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The mesh state kept in the store (sync cursors, own submissions) could not be loaded.
    #[error("mesh state in the store: {0}")]
    Store(#[from] Box<crate::store::StoreError>),
}

/// Start the network and the driver. The driver stops when `shutdown` fires (and stops the
/// network task); await the returned handle to know it has.
pub async fn start(
    params: MeshParams,
    shutdown: CancellationToken,
) -> Result<(MeshHandle, JoinHandle<()>), StartError> {
    driver::start(params, shutdown).await
}
