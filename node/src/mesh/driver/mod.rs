//! The driver task: owns the [`Mesh`] state machine and executes its outputs (see the module docs
//! of [`super`]).
//!
//! One task, one `select!` (biased: shutdown, build results, helper results, API commands, synced
//! records, network events, the machine's timer, periodic anti-entropy and snapshot refresh). It
//! never waits for a slow operation itself: fetching closures and NARs, anti-entropy runs,
//! serving requests and recording finished submissions run in helper tasks that report back on a
//! bounded channel. What it awaits inline is quick: network commands (answered by the network
//! task at once), signing, and redb commits of single records (durable before forwarded).
//!
//! This file holds the task, its event loop and the machine's outputs; the rest is split by job:
//! `gossip` (publishing, judging peers' messages, answering their requests, anti-entropy),
//! `prepare` (what a build order needs before the scheduler runs it), `submissions` (this
//! node's own jobs and how they ended) and `restore` (restart and the API snapshot).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::id::{JobId, MessageId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::{BuildOrder, Disposition, Event, Ignored, Input, Mesh, MeshError, Output, TrustConfig};
use buildmesh_protocol::signed::{Envelope, Signed, Verified};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{
    Attestation, Batch, Encode as _, FailureReason, JobSubmission, Kind, LogDigest, MAX_REPLICAS, MAX_TEXT_LEN,
    Message, validate_feature, validate_system,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

mod builds;
mod discovery;
mod gossip;
mod local_info;
mod nar_worker;
mod peers;
mod prepare;
mod restore;
mod shards;
mod submissions;

pub use prepare::required_features;

use local_info::local_info;
use nar_worker::nar_worker;
use prepare::{own_attestation, placement_info, prepare};
use submissions::Finish;

use super::fetch::{FetchError, Fetcher, node_of, peer_of};
use super::gateway::{Gateway, OutputIndex};
use super::jobs::{Submissions, SubmittedJob};
use super::quota::{self, Quotas, Stored};
use super::rpc::{self, SyncRequest, SyncResponse};
use super::serve::Server;
use super::sync::{Cursors, SyncReport};
use super::validate::{Checked, SeenCache, check_gossip};
use super::{
    BuildEvent, BuildOutcome, Command, Counters, DrvInMesh, MachineCounts, MeshHandle, MeshParams, MeshStatus,
    PeerSystems, PeerView, SettingsError, Shared, StartError, StruckView, SubmitRequest, net_config, trust_policy,
};
use crate::net::{
    InboundId, MessageAcceptance, NetEvent, NetHandle, PublishError, RequestProtocol, keypair_from_seed, short_peer_id,
};
use crate::scheduler::SchedulerHandle;
use crate::store::{BuildState, EnqueueRequest, Store, StoreError, unix_ms};

/// Tracing target of machine-readable events (tests and tools may assert on them).
const EVENTS: &str = "buildmesh::_events::mesh";
/// Message ids remembered for duplicate detection.
const SEEN_CAPACITY: usize = 65_536;
/// Requests served at once (closure, sync pages).
const SERVE_CONCURRENCY: usize = 8;
/// NAR chunk requests waiting for the (single, in-order) NAR server.
const NAR_QUEUE: usize = 256;
/// Peers remembered (connected ones and recent ones).
const MAX_KNOWN_PEERS: usize = 4096;
/// Submitters remembered per derivation.
const MAX_SUBMITTER_ENTRIES: usize = 65_536;
/// Attestations and failures read per page at start.
const RESTORE_PAGE: usize = 4096;
/// How often the API snapshot is refreshed at most.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);
/// Attempts to record a finished submission (fetching its outputs) before giving up.
const FINISH_ATTEMPTS: u32 = 10;
/// Attempts to prepare a build while input attestations may still be on their way.
const PREPARE_ATTEMPTS: u32 = 5;
/// How many connected peers a build waiting for inputs of newly observed shards syncs with.
const INPUT_SYNC_PEERS: usize = 2;

/// Results of helper tasks.
enum Internal {
    Prepared {
        drv: StorePath,
        result: Result<Prepared, FailureReason>,
    },
    SyncDone {
        peer: PeerId,
        result: Result<SyncReport, String>,
    },
    Finished {
        drv: StorePath,
        ok: bool,
    },
    OwnAttestation {
        drv: StorePath,
        attestation: Option<Attestation>,
    },
    /// A build being prepared waits for attestations of these inputs ([`shards`]).
    Inputs {
        drv: StorePath,
        inputs: Vec<StorePath>,
    },
    /// The measured slowdown of the emulated systems (`crate::slowdown`), to announce.
    Slowdown(BTreeMap<String, u32>),
}

enum Prepared {
    /// Queued for the local scheduler.
    Queued,
    /// This node attested it before: report that.
    AlreadyAttested(Box<Attestation>),
}

struct BuildSlot {
    token: CancellationToken,
    /// The input derivations it waits for, whose shards the node observes meanwhile.
    inputs: Vec<StorePath>,
}

#[derive(Default)]
struct KnownPeer {
    connected: bool,
    addrs: Vec<Multiaddr>,
}

/// What the helper tasks share (cheap clones).
#[derive(Clone)]
struct Ctx {
    me: NodeId,
    key: Arc<NodeKey>,
    store: Store,
    store_dir: StoreDir,
    net: NetHandle,
    scheduler: SchedulerHandle,
    fetcher: Fetcher,
    shared: Arc<Shared>,
    internal: mpsc::Sender<Internal>,
    synced: mpsc::Sender<Vec<Verified<Message>>>,
    cursors: Arc<Cursors>,
    quotas: Arc<Quotas>,
    server: Server,
    serve_permits: Arc<Semaphore>,
    revisions: Arc<super::revisions::Revisions>,
    /// The node's configured `/buildmesh/sync/1` caps (`NetConfig::sync_limits`): inbound
    /// requests are decoded and sync answers read against these, as the codec framed them.
    sync_limits: crate::net::RrLimits,
}

/// The driver (see the module docs).
pub(crate) struct Driver {
    /// The configured build slots: announced unless the store is over its disk limits
    /// ([`crate::store::Store::disk_pressure`]), then 0 (no new builds are placed here).
    configured_slots: u32,
    ctx: Ctx,
    mesh: Mesh,
    trust: TrustConfig,
    key_names: HashMap<NodeId, String>,
    default_replicas: u8,
    sync_interval: Duration,
    net_events: mpsc::Receiver<NetEvent>,
    builds: mpsc::Receiver<BuildEvent>,
    commands: mpsc::Receiver<Command>,
    internal_rx: mpsc::Receiver<Internal>,
    synced_rx: mpsc::Receiver<Vec<Verified<Message>>>,
    nar_tx: mpsc::Sender<(PeerId, InboundId, Vec<u8>)>,
    seen: SeenCache,
    known: HashMap<PeerId, KnownPeer>,
    addresses: Vec<String>,
    submitters: HashMap<StorePath, BTreeSet<NodeId>>,
    building: HashMap<StorePath, BuildSlot>,
    submissions: Submissions,
    finishing: HashSet<StorePath>,
    syncing: HashSet<PeerId>,
    /// A build that observed its inputs' shards ended: check which observed shards to release.
    release_due: bool,
    sync_turn: usize,
    index: Arc<OutputIndex>,
    helpers: CancellationToken,
    dirty: bool,
    last_snapshot: Instant,
    /// Remembered peers (table `peers`), dialled after a restart ([`peers`]).
    peers: peers::PeerStore,
    /// The mesh's shards (`MeshConfig::shards`) and the shards whose topics this node is
    /// subscribed to: its own and those it observes ([`shards`]).
    shards: shards::Subscribed,
    /// Looking for members of the heard shards ([`discovery`]).
    discovery: discovery::Discovery,
    /// The shard generation ([`shards::Subscribed::generation`]) of the last sync run started
    /// with each peer: a run after a shard was added pages from 0.
    synced_generation: HashMap<PeerId, u64>,
}

fn reason_text(s: String) -> String {
    let mut s = s;
    if s.len() > MAX_TEXT_LEN {
        let mut end = MAX_TEXT_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Build and spawn the driver (see [`super::start`]).
pub(crate) async fn start(
    params: MeshParams,
    shutdown: CancellationToken,
) -> Result<(MeshHandle, JoinHandle<()>), StartError> {
    params.settings.validate()?;
    let key = params.key.clone();
    let me = key.node_id();
    let (mut trust, names) = trust_policy(&params.trusted_keys, params.quorum, me, key.name())?;
    trust.needs_native = params.quorum_needs_native;
    trust.no_emulation_for = params.no_emulation_for.iter().cloned().collect();
    let mut netcfg = net_config(&params.listen, &params.bootstrap, params.mdns, &params.settings)?;
    netcfg.quic_congestion = params.net.quic_congestion;
    netcfg.nat = params.nat.to_config().map_err(|e| SettingsError::Multiaddr {
        field: "nat",
        addr: params.nat.relays.join(" "),
        reason: e.to_string(),
    })?;
    let mesh_dir = params.data_dir.join("mesh");
    let tmp_dir = mesh_dir.join("tmp");
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| StartError::Io { path, source }
    };
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    }
    std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    let local = local_info(&params);
    let configured_slots = local.slots;
    let local_emulated: Vec<String> = local.emulated_systems.iter().cloned().collect();
    let mut mcfg = params.settings.mesh_config(params.store_dir.clone(), trust.clone());
    let policy_err = |field: &'static str| move |reason: String| SettingsError::Policy { field, reason };
    mcfg.submitters = super::policy::resolve_submitters(&params.submitters, &params.trusted_keys, me)
        .map_err(policy_err("submitters"))?;
    mcfg.builders = super::policy::resolve_builders(&params.builders).map_err(policy_err("builders"))?;
    mcfg.shards = params.shards;
    mcfg.max_finished_drvs = shards::finished_limit(params.max_finished_drvs);
    shards::check(&mcfg)?;
    match &mcfg.submitters {
        None => tracing::warn!("submitters = \"any\": this node accepts and builds jobs of ANY key on the mesh"),
        Some(s) => tracing::info!(keys = s.len(), "accepting jobs of the configured submitters only"),
    }
    match &mcfg.builders {
        None => tracing::info!("builders not set: an open mesh, any member may be designated to build"),
        Some(b) => tracing::info!(keys = b.len(), "only the configured builders are designated"),
    }
    let accepted_submitters = mcfg.submitters.clone();
    let mesh = Mesh::new(mcfg, me, local, unix_ms())?;
    let shards = shards::Subscribed::new(mesh.shard(), params.shards);
    netcfg.topics = shards.start_topics();
    netcfg.scored_topics = super::validate::all_topics(params.shards);
    let (sync_limits, serve_limits) = (netcfg.sync_limits, netcfg.clone());
    let (net, net_events, net_task) = crate::net::spawn(keypair_from_seed(key.seed()), netcfg)?;

    let index = Arc::new(OutputIndex::default());
    let fetcher = Fetcher {
        net: net.clone(),
        store: params.store.clone(),
        store_dir: params.store_dir.clone(),
        tmp_dir,
        trust: trust.clone(),
        realised: params.data_dir.join(crate::build::STORE_FS_DIR),
        skips: Default::default(),
    };
    let gateway = Gateway::new(fetcher.clone(), index.clone());
    let shared = Arc::new(Shared::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (int_tx, int_rx) = mpsc::channel(1024);
    let (synced_tx, synced_rx) = mpsc::channel(64);
    let (nar_tx, nar_rx) = mpsc::channel(NAR_QUEUE);
    let server = Server::new(params.store.clone(), params.store_dir.clone(), serve_limits).with_shards(params.shards);
    let quotas = Arc::new(Quotas::new(me, trust.clone(), &params.settings).with_submitters(accepted_submitters));
    let revisions = Arc::new(super::revisions::Revisions::new(
        key.clone(),
        params.store.clone(),
        net.clone(),
        quotas.clone(),
        params.settings.sync_interval_ms,
    ));
    let ctx = Ctx {
        me,
        key: key.clone(),
        store: params.store.clone(),
        store_dir: params.store_dir.clone(),
        net: net.clone(),
        scheduler: params.scheduler.clone(),
        fetcher,
        shared: shared.clone(),
        internal: int_tx,
        synced: synced_tx,
        cursors: Arc::new(Cursors::load(params.store.clone(), &mesh_dir.join("sync-cursors.json")).map_err(Box::new)?),
        quotas,
        server,
        serve_permits: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
        revisions: revisions.clone(),
        sync_limits,
    };
    let is_trusted = |p: &PeerId| node_of(p).is_some_and(|n| trust.is_trusted(&n));
    let (remember, forget) = (params.settings.remember_peers, params.settings.forget_peers_after_days);
    let peers = peers::PeerStore::load(
        &params.store,
        net.local_peer_id(),
        remember,
        forget,
        params.settings.target_peers,
        is_trusted,
    )
    .map_err(Box::new)?;
    let store_dir = params.store_dir.clone();
    let log_cache =
        Arc::new(super::log_cache::LogCache::new(mesh_dir.join("logs"), super::log_cache::MAX_CACHED_LOG_BYTES));
    let handle = MeshHandle {
        commands: cmd_tx,
        shared,
        gateway,
        store_dir,
        net: net.clone(),
        revisions,
        log_cache,
        log_skips: Default::default(),
    };
    let driver = Driver {
        configured_slots,
        mesh,
        trust,
        key_names: names.into_iter().collect(),
        default_replicas: u8::try_from(params.replicas.clamp(1, usize::from(MAX_REPLICAS))).unwrap_or(2),
        sync_interval: Duration::from_millis(params.settings.sync_interval_ms.max(1)),
        net_events,
        builds: params.builds,
        commands: cmd_rx,
        internal_rx: int_rx,
        synced_rx,
        nar_tx,
        seen: SeenCache::new(SEEN_CAPACITY),
        known: HashMap::new(),
        addresses: Vec::new(),
        submitters: HashMap::new(),
        building: HashMap::new(),
        submissions: Submissions::load(params.store.clone(), &mesh_dir.join("submissions.json")).map_err(Box::new)?,
        finishing: HashSet::new(),
        syncing: HashSet::new(),
        release_due: false,
        sync_turn: 0,
        index,
        helpers: CancellationToken::new(),
        dirty: true,
        last_snapshot: Instant::now(),
        peers,
        shards,
        discovery: discovery::Discovery::new(
            params.settings.shard_peers,
            Duration::from_millis(params.settings.redial_interval_ms),
        ),
        synced_generation: HashMap::new(),
        ctx,
    };
    let span = tracing::info_span!("mesh", peer = %short_peer_id(&net.local_peer_id()));
    tokio::spawn(nar_worker(driver.ctx.clone(), nar_rx).instrument(span.clone()));
    span.in_scope(|| driver.ctx.revisions.fetcher.spawn(driver.helpers.child_token()));
    if !local_emulated.is_empty() {
        let int_tx = driver.ctx.internal.clone();
        let probe_dir = params.settings.emulation_probe_dir.clone();
        let data_dir = params.data_dir.clone();
        let native = crate::systems::nix_system_for_arch(std::env::consts::ARCH).unwrap_or("unknown").to_string();
        let binfmt = std::path::Path::new(crate::systems::BINFMT_MISC_DIR);
        tokio::spawn(
            async move {
                let x = crate::slowdown::slowdowns(&local_emulated, &native, &probe_dir, binfmt, &data_dir).await;
                if !x.is_empty() {
                    let _ = int_tx.send(Internal::Slowdown(x)).await;
                }
            }
            .instrument(span.clone()),
        );
    }
    let task = tokio::spawn(driver.run(shutdown, net_task).instrument(span));
    Ok((handle, task))
}

impl Driver {
    async fn run(mut self, shutdown: CancellationToken, net_task: JoinHandle<()>) {
        tracing::info!(node = %self.ctx.me.fmt_short(), peer = %self.ctx.net.local_peer_id(), "mesh driver started");
        self.restore().await;
        self.drain().await;
        let mut sync_tick = tokio::time::interval(self.sync_interval);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = unix_ms();
            if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
                // Due timers run even when other inputs keep the select busy.
                self.mesh.handle_timeout(now);
                self.drain().await;
            }
            let wait = self
                .mesh
                .poll_timeout()
                .map(|t| Duration::from_millis(t.saturating_sub(now)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(ev) = self.builds.recv() => self.on_build_event(ev).await,
                Some(i) = self.internal_rx.recv() => self.on_internal(i).await,
                Some(c) = self.commands.recv() => self.on_command(c).await,
                Some(batch) = self.synced_rx.recv() => self.on_synced(batch),
                ev = self.net_events.recv() => match ev {
                    Some(ev) => self.on_net(ev).await,
                    None => {
                        tracing::error!("the network task stopped; stopping the mesh driver");
                        break;
                    }
                },
                _ = tokio::time::sleep(wait) => self.mesh.handle_timeout(unix_ms()),
                _ = sync_tick.tick() => self.periodic_sync(),
                _ = refresh.tick() => {
                    self.peers_tick();
                    self.discover();
                    self.refresh_load();
                    self.dirty = true;
                }
            }
            self.drain().await;
            if std::mem::take(&mut self.release_due) {
                self.release_shards().await;
            }
            if self.dirty && self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.snapshot();
            }
        }
        self.helpers.cancel();
        self.peers.shutdown().await;
        self.ctx.net.shutdown().await;
        if let Err(e) = net_task.await {
            tracing::error!(cause = %e, "network task failed");
        }
        tracing::info!("mesh driver stopped");
    }

    // ------------------------------------------------------------------ the machine

    /// Give `input` to the machine (draining first if it pushes back).
    async fn input(&mut self, input: Input) -> Result<Disposition, MeshError> {
        if let Input::Submit { job, inputs } = &input {
            // Hear the shards of a submission and of the inputs it waits for before publishing.
            let drvs: Vec<StorePath> = std::iter::once(job.drv.clone()).chain(inputs.iter().cloned()).collect();
            self.observe(&drvs).await;
        }
        match self.mesh.handle(input.clone(), unix_ms()) {
            Err(MeshError::Backpressure { .. }) => {
                self.drain().await;
                self.mesh.handle(input, unix_ms())
            }
            other => other,
        }
    }

    /// Execute every output the machine has queued. Job submissions and claims queued together
    /// are published together, as [`Batch`]es (one signature and one gossip message each).
    async fn drain(&mut self) {
        let mut batchable: Vec<Message> = Vec::new();
        while let Some(out) = self.mesh.poll_output() {
            match out {
                Output::Publish(m) if Batch::is_batchable(m.kind()) => batchable.push(m),
                Output::Publish(m) => self.publish(m).await,
                Output::StartBuild(order) => self.start_build(order),
                Output::CancelBuild { drv, reason } => {
                    tracing::info!(target: EVENTS, event = "cancel_build", drv = %drv, ?reason);
                    self.cancel_build(&drv);
                }
                Output::RequestRetry { peer, drv } => self.request_retry(peer, drv),
                Output::Event(e) => self.on_event(e),
            }
        }
        if !batchable.is_empty() {
            self.publish_batched(batchable).await;
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::MemberJoined { node } => {
                tracing::info!(target: EVENTS, event = "member_joined", node = %node.fmt_short());
                self.dirty = true;
            }
            Event::MemberLeft { node } => {
                tracing::info!(target: EVENTS, event = "member_left", node = %node.fmt_short());
                self.dirty = true;
            }
            Event::JobPublished { job, drv } => {
                tracing::info!(target: EVENTS, event = "job_published", job = %job.fmt_short(), drv = %drv);
            }
            Event::JobComplete { drv, builders, agreed, .. } => {
                tracing::info!(target: EVENTS, event = "job_complete", drv = %drv, builders = builders.len(), agreed);
                if self.submissions.get(&drv.to_string()).is_some() {
                    // Built by k builders, but an output without an accepted NarHash (they
                    // disagree, or too few are trusted) is a failure of the submission: it is
                    // not served and must not look done.
                    self.finish_submission(drv, if agreed { Finish::Done } else { Finish::NotAgreed });
                }
            }
            Event::JobFailed { drv, failure, .. } => {
                tracing::warn!(target: EVENTS, event = "job_failed", drv = %drv, ?failure);
                if self.submissions.get(&drv.to_string()).is_some() {
                    self.finish_submission(
                        drv,
                        Finish::Failed(reason_text(format!("failed in the mesh: {failure:?}"))),
                    );
                }
            }
            Event::OutputAccepted { path, builders, .. } => {
                tracing::info!(target: EVENTS, event = "output_accepted", path = %path, builders = builders.len());
            }
            Event::OutputMismatch { drv, path } => {
                tracing::warn!(target: EVENTS, event = "output_mismatch", drv = %drv, path = %path);
            }
            other => tracing::debug!(event = ?other, "mesh event"),
        }
    }

    // ------------------------------------------------------------------ builds

    fn provide(&self, paths: Vec<StorePath>) {
        if paths.is_empty() {
            return;
        }
        let net = self.ctx.net.clone();
        tokio::spawn(async move {
            for p in paths {
                if let Err(e) = net.start_providing(p.hash_part().into_bytes()).await {
                    tracing::debug!(path = %p, cause = %e, "provider record not published");
                }
            }
        });
    }

    fn set_slowdown(&mut self, mut slowdown: BTreeMap<String, u32>) {
        let mut info = self.mesh.local().clone();
        slowdown.retain(|s, _| info.emulated_systems.contains(s));
        tracing::info!(?slowdown, "announcing the emulation slowdown (hundredths)");
        info.slowdown = slowdown;
        if let Err(e) = self.mesh.handle(Input::SetLocal(info), unix_ms()) {
            tracing::warn!(cause = %e, "emulation slowdown not announced");
        }
        self.dirty = true;
    }

    fn refresh_load(&mut self) {
        let load = u32::try_from(self.ctx.scheduler.running().len()).unwrap_or(u32::MAX);
        // Over the disk limits: announce no slots, so that placement gives this node no new
        // builds (its running builds finish) until the collector gets it under them again.
        let pressure = self.ctx.store.disk_pressure().map(|r| announced_reason(&r));
        let slots = if pressure.is_some() { 0 } else { self.configured_slots };
        let local = self.mesh.local();
        if load != local.load || slots != local.slots || pressure != local.disk_pressure {
            if slots != self.mesh.local().slots {
                tracing::info!(slots, "announcing build slots (disk limits)");
            }
            let mut info = self.mesh.local().clone();
            info.load = load;
            info.slots = slots;
            info.disk_pressure = pressure;
            if let Err(e) = self.mesh.handle(Input::SetLocal(info), unix_ms()) {
                tracing::debug!(cause = %e, "load not updated");
            }
        }
    }

    // ------------------------------------------------------------------ helpers' results

    async fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Slowdown(x) => self.set_slowdown(x),
            Internal::Prepared { drv, result } => {
                if !self.building.contains_key(&drv) {
                    return; // cancelled meanwhile
                }
                match result {
                    Ok(Prepared::Queued) => {
                        tracing::debug!(drv = %drv, "build queued locally");
                    }
                    Ok(Prepared::AlreadyAttested(a)) => {
                        self.end_build(&drv);
                        self.build_finished(*a).await;
                    }
                    Err(reason) => {
                        self.end_build(&drv);
                        self.build_failed(drv, reason).await;
                    }
                }
            }
            Internal::OwnAttestation { drv, attestation } => {
                if self.end_build(&drv).is_none() {
                    return;
                }
                match attestation {
                    Some(a) => self.build_finished(a).await,
                    None => {
                        self.build_failed(
                            drv,
                            FailureReason::Other {
                                message: "built locally but no attestation of this node found".into(),
                            },
                        )
                        .await
                    }
                }
            }
            Internal::SyncDone { peer, result } => {
                self.syncing.remove(&peer);
                Counters::bump(&self.ctx.shared.counters.sync_runs, 1);
                match result {
                    Ok(r) => {
                        Counters::bump(&self.ctx.shared.counters.synced_attestations, r.attestations);
                        Counters::bump(&self.ctx.shared.counters.synced_failures, r.failures);
                        Counters::bump(&self.ctx.shared.counters.synced_shard_pages, r.shard_pages);
                        Counters::bump(&self.ctx.shared.counters.over_quota, r.over_quota);
                        if r.attestations + r.failures > 0 {
                            tracing::info!(target: EVENTS, event = "synced", %peer, attestations = r.attestations, failures = r.failures, pages = r.pages);
                        }
                    }
                    Err(e) => tracing::debug!(%peer, cause = %e, "anti-entropy run failed"),
                }
            }
            Internal::Inputs { drv, inputs } => self.observe_inputs(drv, inputs).await,
            Internal::Finished { drv, ok } => {
                self.finishing.remove(&drv);
                if ok && self.submissions.remove(&drv.to_string()) {
                    self.save_submissions();
                    self.release_shards().await;
                }
                self.dirty = true;
            }
        }
    }

    fn on_synced(&mut self, batch: Vec<Verified<Message>>) {
        let now = unix_ms();
        for v in batch {
            if let Message::Attestation(a) = v.value() {
                self.index.add(a);
            }
            self.seen.insert(v.id());
            if let Err(e) = self.mesh.handle_message(v.value(), now) {
                tracing::debug!(cause = %e, "synced record not taken by the machine");
            }
        }
        self.dirty = true;
    }

    // ------------------------------------------------------------------ API commands

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Submit { req, reply } => {
                let r = self.submit(req).await;
                let _ = reply.send(r);
            }
            Command::Retry { drv, on, reply } => {
                let r = self.input(Input::Retry { drv, on }).await.map(|_| ()).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::RetryHere { drv, reply } => {
                let on = self.ctx.me;
                let r = match self.input(Input::Retry { drv, on }).await {
                    Ok(_) => Ok(true),
                    Err(MeshError::UnknownDrv { .. }) => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(r);
            }
            Command::Block { peer, blocked, reply } => {
                let r = self.ctx.net.set_blocked(peer, blocked).await.map_err(|e| e.to_string());
                if blocked {
                    self.peers.book.forget(&peer);
                }
                if !blocked && r.is_ok() {
                    let addrs = self.known.get(&peer).map(|k| k.addrs.clone()).unwrap_or_default();
                    let net = self.ctx.net.clone();
                    tokio::spawn(async move {
                        for a in addrs {
                            let full = if crate::net::peer_id_of(&a).is_some() {
                                a
                            } else {
                                a.with(libp2p::multiaddr::Protocol::P2p(peer))
                            };
                            if net.dial(full).await.is_ok() {
                                break;
                            }
                        }
                    });
                }
                tracing::info!(target: EVENTS, event = "block", %peer, blocked);
                let _ = reply.send(r);
            }
            Command::Jobs { drvs, reply } => {
                let views = drvs
                    .iter()
                    .map(|d| match (self.mesh.job(d), self.mesh.refusal(d)) {
                        // An entry that only claims or attestations opened (no accepted
                        // submission: `replicas` unknown) says less than a refusal of its job.
                        (Some(v), Some(submitter)) if v.replicas.is_none() => DrvInMesh::Refused { submitter },
                        (Some(v), _) => DrvInMesh::Tracked(Box::new(v)),
                        (None, _) if self.mesh.is_pending(d) => DrvInMesh::Pending,
                        (None, Some(submitter)) => DrvInMesh::Refused { submitter },
                        (None, None) => DrvInMesh::Unknown,
                    })
                    .collect();
                let _ = reply.send(Ok(views));
            }
        }
    }

    // ------------------------------------------------------------------ network

    async fn on_net(&mut self, ev: NetEvent) {
        self.peers_observe(&ev);
        match ev {
            NetEvent::Gossip(g) => {
                Counters::bump(&self.ctx.shared.counters.bytes_in, g.data.len() as u64);
                let acceptance = self.judge_gossip(&g.topic, &g.data, g.propagation_source).await;
                let c = &self.ctx.shared.counters;
                match acceptance {
                    MessageAcceptance::Accept => Counters::bump(&c.accepted, 1),
                    MessageAcceptance::Reject => Counters::bump(&c.rejected, 1),
                    MessageAcceptance::Ignore => Counters::bump(&c.ignored, 1),
                }
                if let Err(e) = self.ctx.net.report_validation(g.id, g.propagation_source, acceptance).await {
                    tracing::debug!(cause = %e, "validation result not delivered");
                }
            }
            NetEvent::InboundRequest { peer, protocol, id, data } => self.on_request(peer, protocol, id, data).await,
            NetEvent::PeerConnected { peer, address } => {
                self.remember(peer, Some(address), true);
                self.start_sync(peer);
            }
            NetEvent::PeerDisconnected { peer } => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.connected = false;
                }
                self.dirty = true;
            }
            NetEvent::PeerIdentified { peer, listen_addrs, .. } => {
                for a in listen_addrs {
                    self.remember(peer, Some(a), false);
                }
            }
            NetEvent::NewListenAddr { address } => {
                let a = address.to_string();
                if !self.addresses.contains(&a) {
                    self.addresses.push(a);
                }
                self.dirty = true;
            }
            _ => {}
        }
    }
}

/// The store's disk-pressure reason as announced: within the wire's length, without control
/// characters.
fn announced_reason(reason: &str) -> String {
    use buildmesh_protocol::wire::MAX_DISK_PRESSURE_LEN;
    let mut r: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if r.trim().is_empty() {
        r = "over the disk limits".to_string();
    }
    while r.len() > MAX_DISK_PRESSURE_LEN {
        r.pop();
    }
    r
}
