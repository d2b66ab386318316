//! The driver task: owns the [`Mesh`] state machine and executes its outputs (see the module docs
//! of [`super`]).
//!
//! One task, one `select!` (biased: shutdown, build results, helper results, API commands, synced
//! records, network events, the machine's timer, periodic anti-entropy and snapshot refresh). It
//! never waits for a slow operation itself: fetching closures and NARs, anti-entropy runs,
//! serving requests and recording finished submissions run in helper tasks that report back on a
//! bounded channel. What it awaits inline is quick: network commands (answered by the network
//! task at once), signing, and redb commits of single records (durable before forwarded).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::id::{JobId, MessageId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::{
    BuildOrder, Disposition, Event, Input, LocalInfo, Mesh, MeshError, Output, TrustConfig,
};
use buildmesh_protocol::signed::{Envelope, Signed, Verified};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{
    Attestation, Batch, Encode as _, FailureReason, JobSubmission, Kind, MAX_REPLICAS, MAX_TEXT_LEN, Message,
    validate_feature, validate_system,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::fetch::{FetchError, Fetcher, node_of, peer_of};
use super::gateway::{Gateway, OutputIndex};
use super::jobs::{Submissions, SubmittedJob};
use super::quota::{self, Quotas, Stored};
use super::rpc::{self, SyncRequest, SyncResponse};
use super::serve::Server;
use super::sync::{Cursors, SyncReport};
use super::validate::{Checked, SeenCache, check_gossip, topic_of};
use super::{
    BuildEvent, BuildOutcome, Command, Counters, MachineCounts, MeshHandle, MeshParams, MeshStatus, PeerSystems,
    PeerView, Shared, StartError, SubmitRequest, net_config, trust_policy,
};
use crate::net::{
    InboundId, MessageAcceptance, NetEvent, NetHandle, PublishError, RequestProtocol, keypair_from_seed, short_peer_id,
};
use crate::runtime::SchedulerHandle;
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

/// Results of helper tasks.
enum Internal {
    Prepared { drv: StorePath, result: Result<Prepared, FailureReason> },
    SyncDone { peer: PeerId, result: Result<SyncReport, String> },
    Finished { drv: StorePath, ok: bool },
    OwnAttestation { drv: StorePath, attestation: Option<Attestation> },
}

enum Prepared {
    /// Queued for the local scheduler.
    Queued,
    /// This node attested it before: report that.
    AlreadyAttested(Attestation),
}

struct BuildSlot {
    token: CancellationToken,
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
}

/// The driver (see the module docs).
pub(crate) struct Driver {
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
    sync_turn: usize,
    index: Arc<OutputIndex>,
    helpers: CancellationToken,
    dirty: bool,
    last_snapshot: Instant,
}

fn local_info(params: &MeshParams) -> LocalInfo {
    let c = &params.config;
    let native = params.systems.native.clone();
    LocalInfo {
        version: format!("buildmesh {}", env!("CARGO_PKG_VERSION")),
        owner: c.owner.clone().unwrap_or_default(),
        emulated_systems: params.systems.emulated.difference(&native).cloned().collect(),
        native_systems: native,
        features: c.features.iter().cloned().collect(),
        mandatory_features: c.mandatory_features.iter().cloned().collect(),
        slots: u32::try_from(params.slots).unwrap_or(u32::MAX),
        load: 0,
    }
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
    let (trust, names) = trust_policy(&params.config, me, key.name())?;
    let netcfg = net_config(&params.config, &params.settings)?;
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
    let mcfg = params.settings.mesh_config(params.store_dir.clone(), trust.clone());
    let mesh = Mesh::new(mcfg, me, local, unix_ms())?;
    let (net, net_events, net_task) = crate::net::spawn(keypair_from_seed(key.seed()), netcfg)?;

    let index = Arc::new(OutputIndex::default());
    let fetcher = Fetcher {
        net: net.clone(),
        store: params.store.clone(),
        store_dir: params.store_dir.clone(),
        tmp_dir,
        trust: trust.clone(),
        realised: params.data_dir.join(crate::build::STORE_FS_DIR),
    };
    let gateway = Gateway::new(fetcher.clone(), index.clone());
    let shared = Arc::new(Shared::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (int_tx, int_rx) = mpsc::channel(1024);
    let (synced_tx, synced_rx) = mpsc::channel(64);
    let (nar_tx, nar_rx) = mpsc::channel(NAR_QUEUE);
    let server = Server::new(params.store.clone(), params.store_dir.clone());
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
        quotas: Arc::new(Quotas::new(me, trust.clone(), &params.settings)),
        server,
        serve_permits: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
    };
    let handle =
        MeshHandle { commands: cmd_tx, shared, gateway, store_dir: params.store_dir.clone(), net: net.clone() };
    let driver = Driver {
        mesh,
        trust,
        key_names: names.into_iter().collect(),
        default_replicas: u8::try_from(params.config.replicas.clamp(1, usize::from(MAX_REPLICAS))).unwrap_or(2),
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
        sync_turn: 0,
        index,
        helpers: CancellationToken::new(),
        dirty: true,
        last_snapshot: Instant::now(),
        ctx,
    };
    let span = tracing::info_span!("mesh", peer = %short_peer_id(&net.local_peer_id()));
    tokio::spawn(nar_worker(driver.ctx.clone(), nar_rx).instrument(span.clone()));
    let task = tokio::spawn(driver.run(shutdown, net_task).instrument(span));
    Ok((handle, task))
}

/// Serves NAR chunks one at a time, in arrival order (so readers can be continued).
async fn nar_worker(ctx: Ctx, mut rx: mpsc::Receiver<(PeerId, InboundId, Vec<u8>)>) {
    while let Some((peer, id, body)) = rx.recv().await {
        let server = ctx.server.clone();
        let resp = match tokio::task::spawn_blocking(move || server.nar(peer, &body)).await {
            Ok(r) => r,
            Err(e) => rpc::encode(&rpc::NarResponse::Error(format!("task failed: {e}"))),
        };
        if let Err(e) = ctx.net.respond(id, resp).await {
            tracing::debug!(%peer, cause = %e, "could not answer a NAR request");
        }
    }
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
                    self.refresh_load();
                    self.dirty = true;
                }
            }
            self.drain().await;
            if self.dirty && self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.snapshot();
            }
        }
        self.helpers.cancel();
        self.ctx.net.shutdown().await;
        if let Err(e) = net_task.await {
            tracing::error!(cause = %e, "network task failed");
        }
        tracing::info!("mesh driver stopped");
    }

    // ------------------------------------------------------------------ the machine

    /// Give `input` to the machine (draining first if it pushes back).
    async fn input(&mut self, input: Input) -> Result<Disposition, MeshError> {
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

    /// Publish job submissions and claims, as few messages as fit: one [`Batch`] per kind (more if
    /// one would exceed the size limit), or the message itself when it is alone.
    async fn publish_batched(&mut self, messages: Vec<Message>) {
        let (jobs, claims): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| m.kind() == Kind::JobSubmission);
        for group in [jobs, claims] {
            let batches = match Batch::pack(group) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(cause = %e, "cannot batch messages of the state machine");
                    continue;
                }
            };
            for batch in batches {
                if batch.items().len() == 1 {
                    if let Some(m) = batch.into_items().pop() {
                        self.publish(m).await;
                    }
                    continue;
                }
                let kind = batch.kind();
                if kind == Kind::Claim && self.alone() {
                    continue; // see `publish`
                }
                match Signed::sign(&self.ctx.key, &batch) {
                    Ok(signed) => {
                        Counters::bump(&self.ctx.shared.counters.batched_items, batch.items().len() as u64);
                        self.send(kind, signed.into_envelope()).await;
                    }
                    Err(e) => tracing::error!(%kind, cause = %e, "cannot sign a batch"),
                }
            }
        }
    }

    async fn publish(&mut self, m: Message) {
        let kind = m.kind();
        if matches!(m, Message::Announcement(_) | Message::Claim(_)) && self.alone() {
            // Alone: nobody to tell, and a peer that connects later gets the next announcement or
            // lease renewal (results and jobs still wait in the net layer's queue).
            return;
        }
        let envelope = match Envelope::sign(&self.ctx.key, &m) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(%kind, cause = %e, "cannot sign a message of the state machine");
                return;
            }
        };
        if matches!(m, Message::Attestation(_) | Message::BuildFailure(_)) {
            // Durable before announced (an own attestation is normally committed already).
            let verified = match envelope.verify() {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(%kind, cause = %e, "own message does not verify");
                    return;
                }
            };
            let store = self.ctx.store.clone();
            let v = verified.clone();
            match tokio::task::spawn_blocking(move || super::sync::commit(&store, &v)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(%kind, cause = %e, "cannot commit own message; not publishing it");
                    return;
                }
                Err(e) => {
                    tracing::error!(%kind, cause = %e, "commit task failed; not publishing");
                    return;
                }
            }
            if let Message::Attestation(a) = &m {
                self.index.add(a);
            }
        }
        self.send(kind, envelope).await;
    }

    /// Whether no peer is connected.
    fn alone(&self) -> bool {
        !self.known.values().any(|k| k.connected)
    }

    /// Gossip a signed envelope on the topic of `kind` (the items' kind for a batch).
    async fn send(&mut self, kind: Kind, envelope: Envelope) {
        self.seen.insert(envelope.id());
        let bytes = envelope.to_bytes();
        let len = bytes.len();
        match self.ctx.net.publish(topic_of(kind), bytes).await {
            Ok(p) => {
                Counters::bump(&self.ctx.shared.counters.published, 1);
                Counters::bump(&self.ctx.shared.counters.bytes_out, len as u64);
                tracing::debug!(target: EVENTS, event = "published", %kind, msg_id = %p.id(), len);
            }
            Err(PublishError::Duplicate(_)) => {}
            Err(e) => tracing::warn!(%kind, cause = %e, "publishing failed"),
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

    fn start_build(&mut self, order: BuildOrder) {
        let drv = order.drv.clone();
        if self.building.contains_key(&drv) {
            return;
        }
        tracing::info!(target: EVENTS, event = "start_build", drv = %drv, attempt = order.attempt, forced = order.forced);
        Counters::bump(&self.ctx.shared.counters.builds_started, 1);
        let token = self.helpers.child_token();
        self.building.insert(drv.clone(), BuildSlot { token: token.clone() });
        self.dirty = true;
        let mut peers: Vec<PeerId> = self.submitters.get(&drv).into_iter().flatten().filter_map(peer_of).collect();
        // Any connected peer may have the closure too (last resort).
        peers.extend(self.known.iter().filter(|(_, k)| k.connected).map(|(p, _)| *p));
        let ctx = self.ctx.clone();
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    _ = token.cancelled() => return,
                    r = prepare(&ctx, &order, peers) => r,
                };
                let _ = ctx.internal.send(Internal::Prepared { drv: order.drv, result }).await;
            }
            .in_current_span(),
        );
    }

    fn cancel_build(&mut self, drv: &StorePath) {
        let Some(slot) = self.building.remove(drv) else { return };
        slot.token.cancel();
        self.dirty = true;
        let (sched, d) = (self.ctx.scheduler.clone(), drv.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sched.cancel(&d) {
                tracing::debug!(drv = %d, cause = %e, "local build not cancelled");
            }
        });
    }

    async fn build_failed(&mut self, drv: StorePath, reason: FailureReason) {
        // Texts must fit the wire limit, or the failure could not be signed.
        let reason = match reason {
            FailureReason::Executor { message } => FailureReason::Executor { message: reason_text(message) },
            FailureReason::Other { message } => FailureReason::Other { message: reason_text(message) },
            other => other,
        };
        tracing::warn!(target: EVENTS, event = "build_failed", drv = %drv, ?reason);
        if let Err(e) = self.input(Input::BuildFailed { drv: drv.clone(), reason }).await {
            tracing::debug!(drv = %drv, cause = %e, "the machine did not take the failure");
        }
    }

    async fn build_finished(&mut self, a: Attestation) {
        tracing::info!(target: EVENTS, event = "build_finished", drv = %a.drv, outputs = a.outputs.len());
        self.index.add(&a);
        self.provide(a.outputs.values().map(|o| o.path.clone()).collect());
        let drv = a.drv.clone();
        if let Err(e) = self.input(Input::BuildFinished(a)).await {
            tracing::warn!(drv = %drv, cause = %e, "the machine did not take the attestation");
        }
    }

    async fn on_build_event(&mut self, ev: BuildEvent) {
        let Some(_slot) = self.building.remove(&ev.drv) else {
            // Not a build for the mesh (or cancelled by it): nothing to report.
            if let BuildOutcome::Built(Some(a)) = &ev.outcome {
                self.index.add(a.value());
            }
            return;
        };
        self.dirty = true;
        match ev.outcome {
            BuildOutcome::Built(Some(a)) => self.build_finished((*a).into_value()).await,
            BuildOutcome::Built(None) => {
                let ctx = self.ctx.clone();
                let drv = ev.drv.clone();
                // Re-insert the slot until the attestation is found.
                self.building.insert(ev.drv.clone(), BuildSlot { token: self.helpers.child_token() });
                tokio::spawn(async move {
                    let (store, me, d) = (ctx.store.clone(), ctx.me, drv.clone());
                    let attestation =
                        tokio::task::spawn_blocking(move || own_attestation(&store, &me, &d)).await.ok().flatten();
                    let _ = ctx.internal.send(Internal::OwnAttestation { drv, attestation }).await;
                });
            }
            BuildOutcome::Failed(reason) => {
                // The mesh retries elsewhere; stop local retries.
                let (sched, d) = (self.ctx.scheduler.clone(), ev.drv.clone());
                tokio::task::spawn_blocking(move || {
                    let _ = sched.cancel(&d);
                });
                self.build_failed(ev.drv, reason).await;
            }
            BuildOutcome::Cancelled => {
                self.build_failed(
                    ev.drv,
                    FailureReason::Other { message: "the build was cancelled on this node".into() },
                )
                .await;
            }
        }
    }

    fn request_retry(&mut self, node: NodeId, drv: StorePath) {
        let Some(peer) = peer_of(&node) else { return };
        let net = self.ctx.net.clone();
        tokio::spawn(
            async move {
                let body = rpc::encode(&SyncRequest::Retry { drv: drv.to_string() });
                let max = crate::net::NetConfig::default().sync_limits.max_response;
                match net.send_request(peer, RequestProtocol::Sync, body).await {
                    Ok(bytes) => match rpc::decode::<SyncResponse>("retry answer", &bytes, max) {
                        Ok(SyncResponse::Retry(Ok(()))) => tracing::info!(%peer, drv = %drv, "retry taken by the peer"),
                        Ok(SyncResponse::Retry(Err(e))) => {
                            tracing::warn!(%peer, drv = %drv, reason = %e, "retry refused")
                        }
                        Ok(_) => tracing::warn!(%peer, "unexpected answer to a retry request"),
                        Err(e) => tracing::warn!(%peer, cause = %e, "bad answer to a retry request"),
                    },
                    Err(e) => tracing::warn!(%peer, drv = %drv, cause = %e, "retry request failed"),
                }
            }
            .in_current_span(),
        );
    }

    /// Fetch the outputs of a completed submission and record it as done (or record a failed
    /// one as failed), in a helper task.
    fn finish_submission(&mut self, drv: StorePath, finish: Finish) {
        if !self.finishing.insert(drv.clone()) {
            return;
        }
        let Some(job) = self.submissions.get(&drv.to_string()).cloned() else { return };
        let ctx = self.ctx.clone();
        let token = self.helpers.child_token();
        tokio::spawn(
            async move {
                let outcome = match finish {
                    Finish::Done => Ok(()),
                    Finish::Failed(reason) => Err(reason),
                    Finish::NotAgreed => Err(unagreed_reason(&ctx, &drv, &job).await),
                };
                let mut ok = false;
                for attempt in 1..=FINISH_ATTEMPTS {
                    let r = tokio::select! {
                        _ = token.cancelled() => return,
                        r = record_submission(&ctx, &drv, &job, &outcome) => r,
                    };
                    match r {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(drv = %drv, attempt, cause = %e, "recording a finished submission failed");
                            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                        }
                    }
                }
                let _ = ctx.internal.send(Internal::Finished { drv, ok }).await;
            }
            .in_current_span(),
        );
    }

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

    fn refresh_load(&mut self) {
        let load = u32::try_from(self.ctx.scheduler.running().len()).unwrap_or(u32::MAX);
        if load != self.mesh.local().load {
            let mut info = self.mesh.local().clone();
            info.load = load;
            if let Err(e) = self.mesh.handle(Input::SetLocal(info), unix_ms()) {
                tracing::debug!(cause = %e, "load not updated");
            }
        }
    }

    // ------------------------------------------------------------------ helpers' results

    async fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Prepared { drv, result } => {
                if !self.building.contains_key(&drv) {
                    return; // cancelled meanwhile
                }
                match result {
                    Ok(Prepared::Queued) => {
                        tracing::debug!(drv = %drv, "build queued locally");
                    }
                    Ok(Prepared::AlreadyAttested(a)) => {
                        self.building.remove(&drv);
                        self.build_finished(a).await;
                    }
                    Err(reason) => {
                        self.building.remove(&drv);
                        self.build_failed(drv, reason).await;
                    }
                }
            }
            Internal::OwnAttestation { drv, attestation } => {
                if self.building.remove(&drv).is_none() {
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
                        Counters::bump(&self.ctx.shared.counters.over_quota, r.over_quota);
                        if r.attestations + r.failures > 0 {
                            tracing::info!(target: EVENTS, event = "synced", %peer, attestations = r.attestations, failures = r.failures, pages = r.pages);
                        }
                    }
                    Err(e) => tracing::debug!(%peer, cause = %e, "anti-entropy run failed"),
                }
            }
            Internal::Finished { drv, ok } => {
                self.finishing.remove(&drv);
                if ok && self.submissions.remove(&drv.to_string()) {
                    self.save_submissions();
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

    fn save_submissions(&self) {
        if let Err(e) = self.submissions.save() {
            tracing::error!(cause = %e, "cannot persist the submission list");
        }
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
        }
    }

    async fn submit(&mut self, req: SubmitRequest) -> Result<usize, String> {
        let replicas = match req.replicas {
            Some(r) if r > 0 => u8::try_from(r.min(u32::from(MAX_REPLICAS))).unwrap_or(MAX_REPLICAS),
            _ => self.default_replicas,
        };
        let (store, sd) = (self.ctx.store.clone(), self.ctx.store_dir.clone());
        let drvs: Vec<StorePath> = req.jobs.iter().map(|j| j.drv.clone()).collect();
        let infos = tokio::task::spawn_blocking(move || {
            drvs.iter().map(|d| placement_info(&store, &sd, d)).collect::<Result<Vec<_>, String>>()
        })
        .await
        .map_err(|e| e.to_string())??;
        let now = unix_ms();
        let sd = self.ctx.store_dir.clone();
        let mut taken = 0usize;
        let mut provided = Vec::new();
        for (job, (system, features)) in req.jobs.into_iter().zip(infos) {
            let basename = job.drv.to_string();
            provided.push(job.drv.clone());
            if self.submissions.get(&basename).is_some() {
                taken += 1;
                continue;
            }
            let id = JobId::derive(&self.ctx.me, &sd.display(&job.drv), now);
            let submission = JobSubmission {
                job: id,
                submitter: self.ctx.me,
                submitted_at_ms: now,
                store_dir: sd.clone(),
                drv: job.drv.clone(),
                outputs: job.outputs.clone(),
                system,
                required_features: features,
                priority: req.priority,
                replicas,
            };
            let inputs: BTreeSet<StorePath> = job.inputs.iter().cloned().collect();
            match self.input(Input::Submit { job: submission, inputs: inputs.clone() }).await {
                Ok(_) | Err(MeshError::DuplicateJob { .. }) => {}
                Err(e) => return Err(format!("{}: {e}", sd.display(&job.drv))),
            }
            self.submissions.insert(
                basename,
                SubmittedJob {
                    job: id,
                    submitted_at_ms: now,
                    priority: req.priority,
                    replicas,
                    outputs: job.outputs,
                    inputs: inputs.iter().map(|i| i.to_string()).collect(),
                },
            );
            taken += 1;
        }
        // One drain for the whole submission, so that its jobs (and this node's claims) go out
        // as one batch each.
        self.drain().await;
        self.save_submissions();
        self.provide(provided);
        self.dirty = true;
        tracing::info!(target: EVENTS, event = "submitted", jobs = taken, replicas, priority = req.priority);
        Ok(taken)
    }

    // ------------------------------------------------------------------ network

    async fn on_net(&mut self, ev: NetEvent) {
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

    fn remember(&mut self, peer: PeerId, addr: Option<Multiaddr>, connected: bool) {
        if !self.known.contains_key(&peer) && self.known.len() >= MAX_KNOWN_PEERS {
            let stale: Option<PeerId> = self.known.iter().find(|(_, k)| !k.connected).map(|(p, _)| *p);
            if let Some(s) = stale {
                self.known.remove(&s);
            }
        }
        let k = self.known.entry(peer).or_default();
        if connected {
            k.connected = true;
        }
        if let Some(a) = addr
            && !k.addrs.contains(&a)
            && k.addrs.len() < 16
        {
            k.addrs.push(a);
        }
        self.dirty = true;
    }

    /// Judge one gossip message (see the module docs of [`super::validate`]).
    async fn judge_gossip(&mut self, topic: &str, data: &[u8], source: PeerId) -> MessageAcceptance {
        let checked = match check_gossip(topic, data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(target: EVENTS, event = "gossip_rejected", topic, cause = %e);
                return MessageAcceptance::Reject;
            }
        };
        let id = checked.id();
        if !self.seen.insert(id) {
            return MessageAcceptance::Ignore;
        }
        match checked {
            Checked::One(verified) => self.judge_one(id, verified, source).await,
            Checked::Batch(verified) => self.judge_batch(id, verified.into_value()).await,
        }
    }

    /// Judge a single message whose envelope verified.
    async fn judge_one(&mut self, id: MessageId, verified: Verified<Message>, source: PeerId) -> MessageAcceptance {
        let stored_new = match quota::store_received(&self.ctx.store, &self.ctx.quotas, &verified).await {
            Some(Stored::OverQuota) => {
                Counters::bump(&self.ctx.shared.counters.over_quota, 1);
                return quota::over_quota_verdict(verified.signer(), &source);
            }
            Some(s) => s == Stored::New,
            None => {
                self.seen.remove(&id);
                return MessageAcceptance::Ignore;
            }
        };
        match verified.value() {
            Message::Attestation(a) => self.index.add(a),
            Message::JobSubmission(j) => self.note_submitter(j),
            Message::Announcement(_) => self.dirty = true,
            _ => {}
        }
        if let Message::Attestation(a) = verified.value()
            && a.builder != self.ctx.me
        {
            self.ctx.shared.record_delay(unix_ms().saturating_sub(a.finished_at_ms));
        }
        match self.mesh.handle_message(verified.value(), unix_ms()) {
            Ok(Disposition::Applied) => MessageAcceptance::Accept,
            Ok(_) if stored_new => MessageAcceptance::Accept,
            Ok(d) => {
                tracing::trace!(disposition = ?d, "gossip ignored");
                MessageAcceptance::Ignore
            }
            Err(e) => {
                tracing::warn!(cause = %e, "the machine refused a message");
                self.seen.remove(&id);
                MessageAcceptance::Ignore
            }
        }
    }

    /// Judge a batch whose envelope verified: each item goes to the machine as if it came alone.
    /// The batch is forwarded when at least one item was news; when the machine refused an item
    /// (a full table), a later copy is looked at again.
    async fn judge_batch(&mut self, id: MessageId, batch: Batch) -> MessageAcceptance {
        let (mut applied, mut refused) = (false, false);
        for m in batch.into_items() {
            if let Message::JobSubmission(j) = &m {
                self.note_submitter(j);
            }
            match self.input(Input::Message(m)).await {
                Ok(Disposition::Applied) => applied = true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "the machine refused an item of a batch");
                    refused = true;
                }
            }
        }
        if refused {
            self.seen.remove(&id);
        }
        if applied { MessageAcceptance::Accept } else { MessageAcceptance::Ignore }
    }

    /// Remember who submitted a derivation (they hold its closure).
    fn note_submitter(&mut self, j: &JobSubmission) {
        if self.submitters.len() >= MAX_SUBMITTER_ENTRIES
            && !self.submitters.contains_key(&j.drv)
            && let Some(k) = self.submitters.keys().next().cloned()
        {
            self.submitters.remove(&k);
        }
        self.submitters.entry(j.drv.clone()).or_default().insert(j.submitter);
    }

    async fn on_request(&mut self, peer: PeerId, protocol: RequestProtocol, id: InboundId, data: Vec<u8>) {
        match protocol {
            RequestProtocol::Nar => {
                if let Err(mpsc::error::TrySendError::Full((_, id, _))) = self.nar_tx.try_send((peer, id, data)) {
                    let net = self.ctx.net.clone();
                    tokio::spawn(async move {
                        let _ = net.respond(id, rpc::encode(&rpc::NarResponse::Error("busy; try later".into()))).await;
                    });
                }
            }
            RequestProtocol::Closure => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = ctx.serve_permits.clone().acquire_owned().await else { return };
                    let server = ctx.server.clone();
                    let resp = tokio::task::spawn_blocking(move || server.closure(&data))
                        .await
                        .unwrap_or_else(|e| rpc::encode(&rpc::ClosureResponse::Error { message: e.to_string() }));
                    if let Err(e) = ctx.net.respond(id, resp).await {
                        tracing::debug!(%peer, cause = %e, "could not answer a closure request");
                    }
                });
            }
            RequestProtocol::Sync => {
                let max = crate::net::NetConfig::default().sync_limits.max_request;
                let req = match rpc::decode::<SyncRequest>("sync request", &data, max) {
                    Ok(r) => r,
                    Err(e) => {
                        let net = self.ctx.net.clone();
                        tokio::spawn(async move {
                            let _ = net.respond(id, rpc::encode(&SyncResponse::Error(e.to_string()))).await;
                        });
                        return;
                    }
                };
                if let SyncRequest::Retry { drv } = req {
                    let answer = self.retry_request(peer, &drv).await;
                    let net = self.ctx.net.clone();
                    tokio::spawn(async move {
                        let _ = net.respond(id, rpc::encode(&SyncResponse::Retry(answer))).await;
                    });
                    return;
                }
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = ctx.serve_permits.clone().acquire_owned().await else { return };
                    let server = ctx.server.clone();
                    let resp = tokio::task::spawn_blocking(move || server.sync(&req))
                        .await
                        .unwrap_or_else(|e| SyncResponse::Error(e.to_string()));
                    if let Err(e) = ctx.net.respond(id, rpc::encode(&resp)).await {
                        tracing::debug!(%peer, cause = %e, "could not answer a sync request");
                    }
                });
            }
        }
    }

    /// A peer asks this node to build `drv` (`buildmesh retry DRV --on <this node>`): only
    /// trusted peers may.
    async fn retry_request(&mut self, peer: PeerId, drv: &str) -> Result<(), String> {
        let node = node_of(&peer).ok_or_else(|| format!("{peer} is not an ed25519 peer"))?;
        if !self.trust.is_trusted(&node) {
            return Err(format!("{peer} is not trusted by this node"));
        }
        let drv = StorePath::from_basename(drv).map_err(|e| format!("{drv:?}: {e}"))?;
        tracing::info!(target: EVENTS, event = "retry_requested", %peer, drv = %drv);
        self.input(Input::Retry { drv, on: self.ctx.me }).await.map(|_| ()).map_err(|e| e.to_string())
    }

    // ------------------------------------------------------------------ anti-entropy

    fn start_sync(&mut self, peer: PeerId) {
        if !self.syncing.insert(peer) {
            return;
        }
        let ctx = self.ctx.clone();
        let token = self.helpers.child_token();
        tokio::spawn(
            async move {
                let run = super::sync::sync_with(&ctx.net, &ctx.store, &ctx.cursors, &ctx.quotas, peer, &ctx.synced);
                let result = tokio::select! {
                    _ = token.cancelled() => return,
                    r = run => r.map_err(|e| e.to_string()),
                };
                let _ = ctx.internal.send(Internal::SyncDone { peer, result }).await;
            }
            .in_current_span(),
        );
    }

    fn periodic_sync(&mut self) {
        let mut connected: Vec<PeerId> = self.known.iter().filter(|(_, k)| k.connected).map(|(p, _)| *p).collect();
        if connected.is_empty() {
            return;
        }
        connected.sort();
        self.sync_turn = self.sync_turn.wrapping_add(1);
        let peer = connected[self.sync_turn % connected.len()];
        self.start_sync(peer);
    }

    // ------------------------------------------------------------------ restart

    async fn restore(&mut self) {
        let me = self.ctx.me;
        let mut cursor = 0u64;
        let mut restored = (0usize, 0usize);
        loop {
            let store = self.ctx.store.clone();
            let page = tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Verified<Attestation>)>, StoreError> {
                let list = store.attestations_since(cursor, RESTORE_PAGE)?;
                Ok(list
                    .into_iter()
                    .filter_map(|s| {
                        let v = Signed::<Attestation>::decode(&s.entry.envelope).ok()?.verify().ok()?;
                        Some((s.seq, v))
                    })
                    .collect())
            })
            .await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::error!(cause = %e, "cannot read stored attestations; the mesh starts without them");
                    break;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "restore task failed");
                    break;
                }
            };
            let Some(last) = page.last().map(|(s, _)| *s) else { break };
            for (_, v) in page {
                self.seen.insert(v.id());
                let a = v.into_value();
                self.index.add(&a);
                let r = if a.builder == me {
                    restored.0 += 1;
                    self.input(Input::RestoreAttestation(a)).await.map(|_| ())
                } else {
                    restored.1 += 1;
                    let m = Message::Attestation(a);
                    self.mesh.handle_message(&m, unix_ms()).map(|_| ())
                };
                if let Err(e) = r {
                    tracing::debug!(cause = %e, "stored attestation not taken by the machine");
                }
            }
            self.drain().await;
            cursor = last + 1;
        }
        let mut cursor = 0u64;
        let mut failures = 0usize;
        loop {
            let store = self.ctx.store.clone();
            let page = tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Verified<Message>)>, StoreError> {
                let list = store.failures_since(cursor, RESTORE_PAGE)?;
                Ok(list
                    .into_iter()
                    .filter_map(|s| Some((s.seq, Envelope::decode(&s.entry.envelope).ok()?.verify().ok()?)))
                    .collect())
            })
            .await;
            let Ok(Ok(page)) = page else { break };
            let Some(last) = page.last().map(|(s, _)| *s) else { break };
            for (_, v) in page {
                self.seen.insert(v.id());
                failures += 1;
                let _ = self.mesh.handle_message(v.value(), unix_ms());
            }
            self.drain().await;
            cursor = last + 1;
        }
        // Own unfinished submissions, again.
        let pending: Vec<(String, SubmittedJob)> =
            self.submissions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut resubmitted = 0usize;
        let sd = self.ctx.store_dir.clone();
        for (basename, job) in pending {
            let Ok(drv) = StorePath::from_basename(&basename) else { continue };
            let (store, sd2, d) = (self.ctx.store.clone(), sd.clone(), drv.clone());
            let Ok(Ok((system, features))) =
                tokio::task::spawn_blocking(move || placement_info(&store, &sd2, &d)).await
            else {
                continue;
            };
            let submission = JobSubmission {
                job: job.job,
                submitter: me,
                submitted_at_ms: job.submitted_at_ms,
                store_dir: sd.clone(),
                drv,
                outputs: job.outputs.clone(),
                system,
                required_features: features,
                priority: job.priority,
                replicas: job.replicas,
            };
            let inputs = job.inputs.iter().filter_map(|i| StorePath::from_basename(i).ok()).collect();
            if self.input(Input::Submit { job: submission, inputs }).await.is_ok() {
                resubmitted += 1;
            }
            self.drain().await;
        }
        tracing::info!(
            own_attestations = restored.0,
            attestations = restored.1,
            failures,
            resubmitted,
            "restored the mesh state from the store"
        );
        // Announce what this node can serve.
        let store = self.ctx.store.clone();
        let net = self.ctx.net.clone();
        let token = self.helpers.child_token();
        tokio::spawn(async move {
            let mut after: Option<StorePath> = None;
            loop {
                let (s, a) = (store.clone(), after.clone());
                let Ok(Ok(page)) = tokio::task::spawn_blocking(move || s.list_paths(a.as_ref(), 1024)).await else {
                    return;
                };
                let Some(last) = page.last().map(|p| p.path.clone()) else { return };
                for info in page {
                    if token.is_cancelled() {
                        return;
                    }
                    let _ = net.start_providing(info.path.hash_part().into_bytes()).await;
                }
                after = Some(last);
            }
        });
    }

    // ------------------------------------------------------------------ API snapshot

    fn snapshot(&mut self) {
        self.dirty = false;
        self.last_snapshot = Instant::now();
        let me = self.ctx.me;
        let mut peers: BTreeMap<PeerId, PeerView> = BTreeMap::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        let view_of = |peer: &PeerId, node: Option<NodeId>| PeerView {
            peer_id: peer.to_base58(),
            key: node.map(|n| b64.encode(n.as_bytes())).unwrap_or_default(),
            public_key: node.and_then(|n| {
                self.key_names.get(&n).and_then(|name| n.nix_public_key(name).ok()).map(|k| k.to_string())
            }),
            trusted: node.is_some_and(|n| self.trust.is_trusted(&n)),
            connected: false,
            member: false,
            systems: PeerSystems::default(),
            features: Vec::new(),
            slots: 0,
            load: 0,
            owner: String::new(),
            version: String::new(),
            addresses: Vec::new(),
        };
        for ann in self.mesh.members() {
            if ann.node == me {
                continue;
            }
            let Some(peer) = peer_of(&ann.node) else { continue };
            let mut v = view_of(&peer, Some(ann.node));
            v.member = true;
            v.systems = PeerSystems {
                native: ann.native_systems.iter().cloned().collect(),
                emulated: ann.emulated_systems.iter().cloned().collect(),
            };
            v.features = ann.features.iter().cloned().collect();
            v.slots = ann.slots;
            v.load = ann.load;
            v.owner = ann.owner.clone();
            v.version = ann.version.clone();
            peers.insert(peer, v);
        }
        for (peer, k) in &self.known {
            if !k.connected && !peers.contains_key(peer) {
                continue;
            }
            let v = peers.entry(*peer).or_insert_with(|| view_of(peer, node_of(peer)));
            v.connected = k.connected;
            v.addresses = k.addrs.iter().map(|a| a.to_string()).collect();
        }
        *self.ctx.shared.peers.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            peers.into_values().collect();
        let (tracked, active) = self.mesh.drv_counts();
        let st = self.mesh.stats();
        let mut building: Vec<String> = self.building.keys().map(|d| self.ctx.store_dir.display(d)).collect();
        building.sort();
        let status = MeshStatus {
            peer_id: self.ctx.net.local_peer_id().to_base58(),
            addresses: self.addresses.clone(),
            members: self.mesh.member_count(),
            connected: self.known.values().filter(|k| k.connected).count(),
            drvs_tracked: tracked,
            drvs_active: active,
            pending_submissions: self.mesh.pending_submissions(),
            own_submissions: self.submissions.len(),
            building,
            quorum: self.trust.quorum,
            trusted: self.trust.trusted.iter().flatten().map(|n| n.to_string()).collect(),
            machine: MachineCounts {
                applied: st.applied,
                duplicates: st.duplicates,
                stale: st.stale,
                ignored: st.ignored,
                claims_published: st.claims_published,
                builds_started: st.builds_started,
                builds_cancelled: st.builds_cancelled,
                republished: st.republished,
            },
            ..MeshStatus::default()
        };
        *self.ctx.shared.status.write().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}

/// The system and required features of a stored derivation, checked against the wire rules.
fn placement_info(store: &Store, sd: &StoreDir, drv: &StorePath) -> Result<(String, BTreeSet<String>), String> {
    let bytes = store
        .get_drv(drv)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not stored on this node", sd.display(drv)))?;
    let d = Derivation::parse(&bytes, sd).map_err(|e| format!("{}: {e}", sd.display(drv)))?;
    let system = String::from_utf8_lossy(&d.system).into_owned();
    validate_system(&system).map_err(|e| format!("{}: {e}", sd.display(drv)))?;
    let features = required_features(&d);
    for f in &features {
        validate_feature(f).map_err(|e| format!("{}: {e}", sd.display(drv)))?;
    }
    Ok((system, features))
}

/// `requiredSystemFeatures` of a derivation (space-separated env var, or the structured-attrs
/// JSON list).
pub fn required_features(d: &Derivation) -> BTreeSet<String> {
    if d.has_structured_attrs() {
        let Some(json) = d.env_var("__json") else { return BTreeSet::new() };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else { return BTreeSet::new() };
        return v
            .get("requiredSystemFeatures")
            .and_then(|f| f.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
    }
    d.env_var("requiredSystemFeatures")
        .map(|v| String::from_utf8_lossy(v).split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// This node's stored attestation of `drv`, if any (blocking).
fn own_attestation(store: &Store, me: &NodeId, drv: &StorePath) -> Option<Attestation> {
    let list = store.attestations_for_drv(drv).ok()?;
    list.iter()
        .filter(|s| &s.entry.builder == me)
        .filter_map(|s| Signed::<Attestation>::decode(&s.entry.envelope).ok()?.verify().ok())
        .max_by_key(|v| v.finished_at_ms)
        .map(Verified::into_value)
}

/// Fetch what a build needs and queue it locally (a helper task).
async fn prepare(ctx: &Ctx, order: &BuildOrder, mut peers: Vec<PeerId>) -> Result<Prepared, FailureReason> {
    let drv = order.drv.clone();
    let (store, me, d) = (ctx.store.clone(), ctx.me, drv.clone());
    if !order.forced
        && let Ok(Some(a)) = tokio::task::spawn_blocking(move || own_attestation(&store, &me, &d)).await
    {
        return Ok(Prepared::AlreadyAttested(a));
    }
    if let Ok(providers) = ctx.net.get_providers(drv.hash_part().into_bytes()).await {
        for p in providers {
            if !peers.contains(&p) {
                peers.insert(0, p);
            }
        }
    }
    let mut attempt = 0;
    let fetched = loop {
        attempt += 1;
        match ctx.fetcher.prepare_build(&drv, &peers).await {
            Ok(n) => break n,
            // Input attestations may still be on their way (gossip, anti-entropy).
            Err(FetchError::Unknown { path }) if attempt < PREPARE_ATTEMPTS => {
                tracing::debug!(drv = %drv, path, attempt, "input not attested here yet; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(FetchError::NotAccepted { path, reason }) if reason.may_resolve() && attempt < PREPARE_ATTEMPTS => {
                tracing::debug!(drv = %drv, path, %reason, attempt, "input not accepted here yet; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(drv = %drv, cause = %e, "cannot get what the build needs");
                return Err(FailureReason::Executor { message: reason_text(format!("preparing the build: {e}")) });
            }
        }
    };
    Counters::bump(&ctx.shared.counters.fetched_paths, fetched as u64);
    let (store, sched) = (ctx.store.clone(), ctx.scheduler.clone());
    let req = EnqueueRequest { drv: drv.clone(), priority: 0, wanted_outputs: order.outputs.clone(), replicas: 1 };
    let forced = order.forced;
    let queued = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
        let r = store.write(|w| {
            let outcome = w.enqueue(&req, unix_ms())?;
            match outcome.record().state {
                BuildState::Failed | BuildState::Cancelled => {
                    w.retry(&req.drv)?;
                    Ok(true)
                }
                // A forced build (`buildmesh retry` here) of a derivation this node recorded as
                // done with outputs fetched from peers (the submitter's record): build it here.
                BuildState::Done if forced => {
                    w.mark_rejected(&req.drv, unix_ms(), "rebuilt here on request (buildmesh retry)")?;
                    w.retry(&req.drv)?;
                    Ok(true)
                }
                BuildState::Done => Ok(false),
                BuildState::Queued | BuildState::Running => Ok(true),
            }
        })?;
        sched.wake();
        Ok(r)
    })
    .await
    .map_err(|e| FailureReason::Executor { message: format!("task failed: {e}") })?
    .map_err(|e| FailureReason::Executor { message: reason_text(format!("queueing the build: {e}")) })?;
    if !queued {
        return Err(FailureReason::Other {
            message: "this node recorded the derivation as done without attesting it (outputs fetched from peers)"
                .into(),
        });
    }
    Ok(Prepared::Queued)
}

/// How a submission of this node ended in the mesh.
#[derive(Debug, Clone)]
enum Finish {
    /// Built and every output accepted.
    Done,
    /// Given up, for this reason.
    Failed(String),
    /// Built, but some output has no accepted NarHash.
    NotAgreed,
}

/// Why a completed submission is not accepted: each output the trust policy does not accept,
/// with the reason (`output `out` (<path>): builders disagree …`).
async fn unagreed_reason(ctx: &Ctx, drv: &StorePath, job: &SubmittedJob) -> String {
    let (store, sd, trust, d, wanted) =
        (ctx.store.clone(), ctx.store_dir.clone(), ctx.fetcher.trust.clone(), drv.clone(), job.outputs.clone());
    let detail = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let parsed = super::fetch::load_drv(&store, &sd, &d).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (name, o) in &parsed.outputs {
            let Some(path) = &o.path else { continue };
            if !wanted.is_empty() && !wanted.contains(name) {
                continue;
            }
            if let crate::trust::Judgement::Refused(r) =
                crate::trust::judge(&store, &sd, &trust, path).map_err(|e| e.to_string())?
            {
                out.push(format!("output `{name}` ({}): {r}", sd.display(path)));
            }
        }
        Ok(out)
    })
    .await;
    let detail = match detail {
        Ok(Ok(v)) if !v.is_empty() => v.join("; "),
        Ok(Ok(_)) => "an output has no NarHash accepted by the trust policy".to_string(),
        Ok(Err(e)) => format!("an output has no accepted NarHash ({e})"),
        Err(e) => format!("an output has no accepted NarHash ({e})"),
    };
    reason_text(format!("built in the mesh, but not accepted by the trust policy: {detail}"))
}

/// Record a finished submission: fetch the outputs (done) and move the local build record to
/// `done` or `failed` in one transaction.
async fn record_submission(
    ctx: &Ctx,
    drv: &StorePath,
    job: &SubmittedJob,
    outcome: &Result<(), String>,
) -> Result<(), String> {
    if outcome.is_ok() {
        let n = ctx.fetcher.fetch_outputs(drv, &job.outputs).await.map_err(|e| e.to_string())?;
        Counters::bump(&ctx.shared.counters.fetched_paths, n as u64);
    }
    let (store, sched, d) = (ctx.store.clone(), ctx.scheduler.clone(), drv.clone());
    let (outcome, job) = (outcome.clone(), job.clone());
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        if let Some(r) = store.get_build(&d).map_err(|e| e.to_string())?
            && matches!(r.state, BuildState::Queued | BuildState::Running)
        {
            let _ = sched.cancel(&d);
        }
        let now = unix_ms();
        let req = EnqueueRequest {
            drv: d.clone(),
            priority: job.priority,
            wanted_outputs: job.outputs.clone(),
            replicas: u32::from(job.replicas),
        };
        store
            .write(|w| {
                let state = w.enqueue(&req, now)?.record().state;
                match state {
                    // Built here, but the mesh does not accept the outputs: a failure.
                    BuildState::Done if outcome.is_err() => {
                        if let Err(reason) = &outcome {
                            w.mark_rejected(&d, now, reason)?;
                        }
                        return Ok(());
                    }
                    BuildState::Done => return Ok(()),
                    BuildState::Failed if outcome.is_err() => return Ok(()),
                    BuildState::Failed | BuildState::Cancelled => {
                        w.retry(&d)?;
                        w.mark_running(&d, now)?;
                    }
                    BuildState::Queued => {
                        w.mark_running(&d, now)?;
                    }
                    BuildState::Running => {}
                }
                match &outcome {
                    Ok(()) => w.mark_done(&d, now).map(|_| ()),
                    Err(reason) => w.mark_failed(&d, now, reason).map(|_| ()),
                }
            })
            .map_err(|e| e.to_string())?;
        sched.wake();
        tracing::info!(target: EVENTS, event = "submission_recorded", drv = %d, done = outcome.is_ok());
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}
