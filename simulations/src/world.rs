//! The world: nodes running `protocol::mesh::Mesh`, a virtual clock, a virtual network, simulated
//! executors, and the fault injector, driven by one event queue.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result};
use buildmesh_protocol::id::{ArtifactHash, JobId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::{CancelReason, Event, Input, LocalInfo, Mesh, MeshConfig, Output, TrustConfig};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{
    Attestation, BuildMode, ENVELOPE_OVERHEAD, Encode, FailureReason, JobSubmission, Message, OutputAttestation, Sink,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::SimConfig;
use crate::checkers::Checker;
use crate::dag::{self, Dag};
use crate::draws::Draws;
use crate::report::Report;
use crate::rng::{between, chance, pick, unit};

/// The virtual clock starts here (unix ms), so timestamps look real.
pub const T0: u64 = 1_700_000_000_000;

mod debug;
mod events;
mod into_report;
mod sybil;
mod sybil_members;
mod topics;

use events::{Ev, Scheduled};
use topics::Topics;

#[derive(Debug, Clone, Copy)]
struct Build {
    id: u64,
    drv: u32,
    mode: BuildMode,
    started_ms: u64,
    /// Builds of this derivation started before this one, on any node (see `draws.rs`).
    nth: u32,
}

#[derive(Debug)]
struct SimNode {
    key: NodeKey,
    id: NodeId,
    info: LocalInfo,
    mesh: Option<Mesh>,
    inc: u32,
    timer_at: Option<u64>,
    running: Vec<Build>,
    queue: VecDeque<Build>,
    /// What the driver persisted: its attestations (survive crashes).
    persisted: Vec<Attestation>,
    /// Client: the derivations it submits, and those resolved (complete or failed), persisted.
    submits: Vec<u32>,
    resolved: BTreeSet<u32>,
    failed: BTreeSet<u32>,
    byzantine: bool,
    /// A Sybil member (`sybil_members.rs`) and the derivations it claimed once.
    sybil_member: bool,
    sybil_claimed: BTreeSet<StorePath>,
}

/// Hashes a message into the trace and counts its bytes.
struct HashSink<'a>(&'a mut blake3::Hasher, usize);

impl Sink for HashSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
        self.1 += bytes.len();
    }
}

/// The simulated world. Build it with [`World::new`], then [`World::run`].
#[derive(Debug)]
pub struct World {
    cfg: SimConfig,
    mesh_cfg: MeshConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    dag: Dag,
    by_drv: BTreeMap<StorePath, u32>,
    checker: Checker,
    groups: Option<(u32, Vec<bool>)>,
    last_disturbance: u64,
    stable_window_ms: u64,
    submitted: bool,
    unresolved: usize,
    done_at: Option<u64>,
    next_build: u64,
    trace: blake3::Hasher,
    steps: u64,
    messages: u64,
    by_kind: [u64; 5],
    deliveries: u64,
    builds_started: u64,
    cancelled: u64,
    cancelled_by: [u64; 3],
    cancelled_ms: u64,
    failures: u64,
    crashes: u64,
    partitions: u64,
    watch: Option<debug::Watch>,
    cancels: Vec<(u64, u32, u32, CancelReason)>,
    sybil: Option<sybil::Sybils>,
    /// Per-derivation and per-node draws shared with the central baseline.
    draws: Draws,
    /// Builds started per derivation (the `nth` of the next one).
    builds_of: Vec<u32>,
    /// Messages and bytes (payload plus envelope) sent to a node, all nodes: each published
    /// message counts once per node it goes to (not lost, not cut off), whether that node is up.
    transmissions: (u64, u64),
    /// Time builds spent queued at a builder whose slots were all busy, summed.
    queued_ms: u64,
    topics: Topics,
    /// `mesh_cfg`, shared by every node's machine.
    shared_cfg: Arc<MeshConfig>,
    /// Print a status line on stderr every 2^22 events ([`World::progress`]).
    progress: bool,
    /// A client's machine refused a submission: stop (the liveness check reports it).
    lost_submission: bool,
}

impl World {
    /// Create the world: workload, keys, nodes (each announces at once), and the fault schedule.
    pub fn new(cfg: SimConfig) -> Result<World> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let byzantine: Vec<bool> = (0..cfg.nodes).map(|_| chance(&mut rng, cfg.byzantine)).collect();
        let dag = dag::generate(&cfg, &byzantine, &mut rng);
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for (i, &liar) in byzantine.iter().enumerate() {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let key = NodeKey::from_seed(&format!("sim-{i}"), seed).context("node key")?;
            nodes.push(SimNode {
                id: key.node_id(),
                key,
                info: dag::node_info(i, cfg.nodes),
                mesh: None,
                inc: 0,
                timer_at: None,
                running: Vec::new(),
                queue: VecDeque::new(),
                persisted: Vec::new(),
                submits: Vec::new(),
                resolved: BTreeSet::new(),
                failed: BTreeSet::new(),
                byzantine: liar,
                sybil_member: false,
                sybil_claimed: BTreeSet::new(),
            });
        }
        let mut unresolved = 0;
        for (c, drvs) in &dag.clients {
            nodes[*c as usize].submits.extend(drvs.iter().copied());
            unresolved += drvs.len();
        }
        let trusted: Option<BTreeSet<NodeId>> =
            cfg.trust_honest_only.then(|| nodes.iter().filter(|n| !n.byzantine).map(|n| n.id).collect());
        let mut mesh_cfg = cfg.mesh.clone();
        mesh_cfg.trust = TrustConfig {
            trusted: trusted.clone(),
            quorum: cfg.quorum,
            needs_native: false,
            no_emulation_for: Default::default(),
        };
        sybil_members::add_members(&cfg, &mut nodes, &mut mesh_cfg)?;
        let checker = Checker::new(
            &dag,
            usize::from(cfg.replicas),
            cfg.quorum,
            trusted,
            cfg.loss == 0.0,
            2 * mesh_cfg.renew_interval_ms + 2 * cfg.latency_ms.1,
        );
        let by_drv = dag.drvs.iter().enumerate().map(|(i, d)| (d.path.clone(), i as u32)).collect();
        let stable_window_ms = mesh_cfg.lease_ms.max(mesh_cfg.member_ttl_ms) + mesh_cfg.claim_timeout_ms;
        if cfg.shard_size > 0 {
            mesh_cfg.shards = nodes.len().div_ceil(cfg.shard_size) as u32;
            topics::mix_capabilities(&mut nodes[..cfg.nodes], mesh_cfg.shards);
        }
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let topics = Topics::new(mesh_cfg.shards, &ids, &dag);
        let shared_cfg = Arc::new(mesh_cfg.clone());
        let mut w = World {
            mesh_cfg,
            rng,
            now: T0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            dag,
            by_drv,
            checker,
            groups: None,
            last_disturbance: T0,
            stable_window_ms,
            submitted: false,
            unresolved,
            done_at: None,
            next_build: 0,
            trace: blake3::Hasher::new(),
            steps: 0,
            messages: 0,
            by_kind: [0; 5],
            deliveries: 0,
            builds_started: 0,
            cancelled: 0,
            cancelled_by: [0; 3],
            cancelled_ms: 0,
            failures: 0,
            crashes: 0,
            partitions: 0,
            watch: None,
            cancels: Vec::new(),
            sybil: (cfg.sybils > 0).then(|| sybil::Sybils::new(cfg.sybils)).transpose()?,
            draws: Draws::new(&cfg),
            builds_of: vec![0; cfg.drvs],
            transmissions: (0, 0),
            queued_ms: 0,
            topics,
            shared_cfg,
            progress: false,
            lost_submission: false,
            cfg,
        };
        if w.sybil.is_some() {
            w.push(T0, Ev::SybilAnnounce);
        }
        for i in 0..w.nodes.len() as u32 {
            w.start_node(i)?;
            w.schedule_crash(i);
        }
        w.push(T0 + 1_000, Ev::Submit);
        for id in 0..w.cfg.partitions as u32 {
            let start = T0 + w.mesh_cfg.warmup_ms + pick(&mut w.rng, w.cfg.fault_window_ms.max(1) as usize) as u64;
            let len = between(&mut w.rng, w.cfg.partition_ms);
            w.push(start, Ev::PartitionStart { id });
            w.push(start + len, Ev::Heal { id });
        }
        Ok(w)
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled { time, seq: self.seq, ev });
    }

    fn trace(&mut self, node: u32, tag: u8, bytes: &[u8]) {
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(&node.to_le_bytes());
        self.trace.update(&[tag]);
        self.trace.update(bytes);
    }

    fn drv_index(&self, drv: &StorePath) -> Option<u32> {
        self.by_drv.get(drv).copied()
    }

    fn stable_since(&self) -> Option<u64> {
        let since = self.last_disturbance + self.stable_window_ms;
        (self.groups.is_none() && self.now >= since).then_some(since)
    }

    fn linked(&self, a: u32, b: u32) -> bool {
        self.groups.as_ref().is_none_or(|(_, g)| g[a as usize] == g[b as usize])
    }

    // ---- node lifecycle ----

    fn start_node(&mut self, i: u32) -> Result<()> {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        let mut mesh =
            Mesh::with_shared_config(Arc::clone(&self.shared_cfg), n.id, n.info.clone(), now).context("Mesh::new")?;
        for a in &n.persisted {
            mesh.handle(Input::RestoreAttestation(a.clone()), now).context("restore")?;
        }
        n.mesh = Some(mesh);
        self.drain(i);
        if self.submitted {
            self.submit_all(i);
        }
        self.schedule_timer(i);
        Ok(())
    }

    fn submit_all(&mut self, i: u32) {
        let now = self.now;
        let n = &self.nodes[i as usize];
        let todo: Vec<u32> = n.submits.iter().copied().filter(|d| !n.resolved.contains(d)).collect();
        let id = n.id;
        for d in todo {
            let spec = &self.dag.drvs[d as usize];
            let job = JobSubmission {
                job: JobId::derive(&id, &StoreDir::nix().display(&spec.path), now),
                submitter: id,
                submitted_at_ms: now,
                store_dir: StoreDir::nix(),
                drv: spec.path.clone(),
                outputs: BTreeSet::new(),
                system: spec.system.clone(),
                required_features: spec.features.clone(),
                priority: 0,
                replicas: self.cfg.replicas,
            };
            // Like a real driver, list only inputs not known (persisted) to be complete; an input
            // that failed fails the dependent at once.
            let n = &self.nodes[i as usize];
            if spec.deps.iter().any(|x| n.failed.contains(x)) {
                self.resolve(i, d, true);
                continue;
            }
            let inputs = spec
                .deps
                .iter()
                .filter(|x| !n.resolved.contains(x))
                .map(|x| self.dag.drvs[*x as usize].path.clone())
                .collect();
            self.input(i, Input::Submit { job, inputs });
        }
    }

    fn schedule_crash(&mut self, i: u32) {
        if let Some(t) = self.draws.uptime_ms(i, self.nodes[i as usize].inc) {
            self.push(self.now + t, Ev::Crash { node: i });
        }
    }

    // ---- talking to a machine ----

    fn input(&mut self, i: u32, input: Input) {
        let now = self.now;
        let Some(mesh) = self.nodes[i as usize].mesh.as_mut() else { return };
        let submission = matches!(input, Input::Submit { .. });
        if let Err(e) = mesh.handle(input, now) {
            self.checker.violation(now, format!("node {i}: the machine refused a driver input: {e}"));
            // A refused submission is never resolved: the run cannot end before its time limit.
            self.lost_submission |= submission;
        }
        self.drain(i);
        self.schedule_timer(i);
    }

    fn drain(&mut self, i: u32) {
        let Some(mesh) = self.nodes[i as usize].mesh.as_mut() else { return };
        let outs: Vec<Output> = std::iter::from_fn(|| mesh.poll_output()).collect();
        for o in outs {
            self.on_output(i, o);
        }
        self.note_view(i);
    }

    fn schedule_timer(&mut self, i: u32) {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        let Some(t) = n.mesh.as_ref().and_then(Mesh::poll_timeout) else { return };
        let t = t.max(now);
        if n.timer_at.is_none_or(|x| t < x) {
            n.timer_at = Some(t);
            let inc = n.inc;
            self.push(t, Ev::Timer { node: i, inc });
        }
    }

    fn on_output(&mut self, i: u32, o: Output) {
        self.note_output(i, &o);
        if self.nodes[i as usize].sybil_member {
            return self.sybil_member_output(i, o);
        }
        match o {
            Output::Publish(m) => self.publish(i, m),
            Output::StartBuild(order) => {
                self.trace(i, 10, order.drv.digest());
                let Some(d) = self.drv_index(&order.drv) else { return };
                let stable = self.stable_since().is_some();
                let deps = self.dag.drvs[d as usize].deps.clone();
                self.checker.on_start(self.now, i, d, &deps, order.forced, stable);
                self.builds_started += 1;
                self.next_build += 1;
                let nth = self.builds_of[d as usize];
                self.builds_of[d as usize] += 1;
                let b = Build { id: self.next_build, drv: d, mode: order.mode, started_ms: self.now, nth };
                self.nodes[i as usize].queue.push_back(b);
                self.try_start(i);
            }
            Output::CancelBuild { drv, reason } => {
                self.trace(i, 11, drv.digest());
                let Some(d) = self.drv_index(&drv) else { return };
                self.cancels.push((self.now - T0, i, d, reason));
                let now = self.now;
                let n = &mut self.nodes[i as usize];
                n.queue.retain(|b| b.drv != d);
                let lost: u64 = n.running.iter().filter(|b| b.drv == d).map(|b| now.saturating_sub(b.started_ms)).sum();
                n.running.retain(|b| b.drv != d);
                self.cancelled_ms += lost;
                self.cancelled_by[match reason {
                    CancelReason::Yielded => 0,
                    CancelReason::Complete => 1,
                    _ => 2,
                }] += 1;
                self.checker.on_stop(i, d);
                self.cancelled += 1;
                self.try_start(i);
            }
            Output::RequestRetry { drv, .. } => self.trace(i, 12, drv.digest()),
            Output::Event(e) => self.on_event(i, e),
        }
    }

    fn on_event(&mut self, i: u32, e: Event) {
        let now = self.now;
        match e {
            Event::JobPublished { drv, .. } => {
                self.trace(i, 20, drv.digest());
                if let Some(d) = self.drv_index(&drv) {
                    let deps = self.dag.drvs[d as usize].deps.clone();
                    self.checker.on_published(now, i, d, &deps);
                    self.sybil_fail(d);
                }
            }
            Event::OutputAccepted { drv, nar_hash, .. } => {
                self.trace(i, 21, drv.digest());
                if let Some(d) = self.drv_index(&drv) {
                    let spec = &self.dag.drvs[d as usize];
                    let (repro, truth) = (!spec.unreproducible, spec.true_hash);
                    self.checker.on_accepted(now, i, d, &nar_hash, repro, &truth);
                }
            }
            Event::JobComplete { drv, .. } => {
                self.trace(i, 22, drv.digest());
                if let Some(d) = self.drv_index(&drv) {
                    self.checker.on_complete(now, i, d);
                    self.resolve(i, d, false);
                }
            }
            Event::JobFailed { drv, .. } => {
                self.trace(i, 23, drv.digest());
                if let Some(d) = self.drv_index(&drv) {
                    self.resolve(i, d, true);
                }
            }
            Event::MemberJoined { node } => self.trace(i, 24, node.as_bytes()),
            Event::MemberLeft { node } => self.trace(i, 25, node.as_bytes()),
            _ => self.trace(i, 26, &[]),
        }
    }

    fn resolve(&mut self, i: u32, d: u32, failed: bool) {
        let n = &mut self.nodes[i as usize];
        if n.submits.binary_search(&d).is_ok() && n.resolved.insert(d) {
            if failed {
                n.failed.insert(d);
            }
            self.unresolved -= 1;
            if self.unresolved == 0 {
                self.done_at = Some(self.now);
            }
        }
    }

    fn publish(&mut self, from: u32, m: Message) {
        self.messages += 1;
        let kind = match &m {
            Message::Announcement(_) => 0,
            Message::JobSubmission(_) => 1,
            Message::Claim(_) => 2,
            Message::Attestation(_) => 3,
            // Strike records (a lease that ran out) count with failures: both say an attempt
            // ended without a result (kept at 5 kinds so the report's columns do not move).
            Message::BuildFailure(_) | Message::Strike(_) => 4,
        };
        self.by_kind[kind] += 1;
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(&from.to_le_bytes());
        self.trace.update(&[m.kind().tag()]);
        let mut sink = HashSink(&mut self.trace, 0);
        m.encode(&mut sink);
        let size = (sink.1 + ENVELOPE_OVERHEAD) as u64;
        match &m {
            Message::Attestation(a) => {
                if let (Some(d), Some(o)) = (self.drv_index(&a.drv), a.outputs.values().next()) {
                    self.checker.on_attestation(self.now, from, a.builder, d, o.nar_hash);
                }
            }
            Message::BuildFailure(f) => {
                if let Some(d) = self.drv_index(&f.drv) {
                    self.failures += 1;
                    self.checker.on_failure(from, f.builder, d);
                }
            }
            _ => {}
        }
        let subscribers = self.topics.subscribers(&m);
        let mut deliveries = Vec::with_capacity(subscribers.len());
        for &to in subscribers.iter() {
            if to == from || !self.linked(from, to) || chance(&mut self.rng, self.cfg.loss) {
                continue;
            }
            let latency = between(&mut self.rng, self.cfg.latency_ms);
            self.transmissions.0 += 1;
            self.transmissions.1 += size;
            self.seq += 1;
            deliveries.push((self.now + latency, self.seq, to));
        }
        self.fan_out(Rc::new(m), deliveries);
    }

    /// Queue the deliveries of one message, each numbered already (see [`Ev::Deliver`]).
    fn fan_out(&mut self, msg: Rc<Message>, mut deliveries: Vec<(u64, u64, u32)>) {
        let Some(&(time, seq, _)) = deliveries.iter().min() else { return };
        deliveries.sort_unstable();
        let fan = Rc::new(events::Fanout { msg, deliveries });
        self.queue.push(Scheduled { time, seq, ev: Ev::Deliver { fan, next: 0 } });
    }

    // ---- the simulated executor ----

    fn try_start(&mut self, i: u32) {
        let now = self.now;
        loop {
            let n = &mut self.nodes[i as usize];
            if n.running.len() >= n.info.slots as usize {
                return;
            }
            let Some(mut b) = n.queue.pop_front() else { return };
            self.queued_ms += now - b.started_ms;
            b.started_ms = now;
            n.running.push(b);
            let inc = n.inc;
            let spec = &self.dag.drvs[b.drv as usize];
            let t = self.draws.build_ms(spec.duration_ms, b.mode == BuildMode::Emulated, b.drv, b.nth);
            self.push(now + t, Ev::BuildDone { node: i, inc, build: b.id });
        }
    }

    fn build_done(&mut self, i: u32, inc: u32, build: u64) {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        if n.inc != inc || n.mesh.is_none() {
            return;
        }
        let Some(pos) = n.running.iter().position(|b| b.id == build) else { return };
        let b = n.running.remove(pos);
        let spec = &self.dag.drvs[b.drv as usize];
        let input = if spec.broken {
            Input::BuildFailed { drv: spec.path.clone(), reason: FailureReason::BuilderExit { code: 1 }, log: None }
        } else if self.draws.flaky(b.drv, b.nth) {
            Input::BuildFailed {
                drv: spec.path.clone(),
                reason: FailureReason::Timeout { limit_ms: spec.duration_ms },
                log: None,
            }
        } else {
            let n = &self.nodes[i as usize];
            let hash = if n.byzantine {
                blake3::derive_key("buildmesh-sim forged output", spec.path.digest())
            } else if spec.unreproducible {
                let mut h = blake3::Hasher::new_derive_key("buildmesh-sim unreproducible output");
                h.update(spec.path.digest());
                h.update(n.id.as_bytes());
                *h.finalize().as_bytes()
            } else {
                spec.true_hash
            };
            let out = OutputAttestation::new_signed(
                &n.key,
                &StoreDir::nix(),
                spec.out.clone(),
                hash,
                1 + u64::from(hash[0]) * 1000,
                BTreeSet::new(),
                ArtifactHash::from_bytes(hash),
                Some(spec.path.clone()),
            );
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    self.checker.violation(now, format!("node {i}: cannot sign output: {e}"));
                    return;
                }
            };
            let a = Attestation {
                builder: n.id,
                store_dir: StoreDir::nix(),
                drv: spec.path.clone(),
                mode: b.mode,
                started_at_ms: b.started_ms,
                finished_at_ms: now,
                outputs: [("out".to_string(), out)].into_iter().collect(),
                log: None,
                provenance: None,
            };
            // Durable before announced: the driver persists, then the machine publishes.
            self.nodes[i as usize].persisted.push(a.clone());
            Input::BuildFinished(a)
        };
        self.input(i, input);
        self.try_start(i);
    }

    // ---- the loop ----

    /// Process one event; `false` when nothing is left or the work is done.
    pub fn step(&mut self) -> bool {
        if self.done_at.is_some() || self.lost_submission {
            return false;
        }
        let Some(Scheduled { time, ev, .. }) = self.queue.pop() else { return false };
        self.now = self.now.max(time);
        self.steps += 1;
        match ev {
            Ev::Deliver { fan, next } => {
                let to = fan.deliveries[next as usize].2;
                if let Some(&(time, seq, _)) = fan.deliveries.get(next as usize + 1) {
                    let ev = Ev::Deliver { fan: Rc::clone(&fan), next: next + 1 };
                    self.queue.push(Scheduled { time, seq, ev });
                }
                let now = self.now;
                if let Some(mesh) = self.nodes[to as usize].mesh.as_mut() {
                    self.deliveries += 1;
                    if let Err(e) = mesh.handle_message(&fan.msg, now) {
                        self.checker.violation(now, format!("node {to}: message refused: {e}"));
                    }
                    self.drain(to);
                    self.schedule_timer(to);
                }
            }
            Ev::Timer { node, inc } => {
                let n = &mut self.nodes[node as usize];
                if n.inc == inc && n.timer_at == Some(time) {
                    n.timer_at = None;
                    if let Some(mesh) = n.mesh.as_mut() {
                        mesh.handle_timeout(self.now);
                    }
                    self.drain(node);
                    self.schedule_timer(node);
                }
            }
            Ev::BuildDone { node, inc, build } => self.build_done(node, inc, build),
            Ev::Crash { node } => self.crash(node),
            Ev::Restart { node } => {
                self.trace(node, 31, &[]);
                self.note(node, None, || "RESTART".to_string());
                self.last_disturbance = self.now;
                if let Err(e) = self.start_node(node) {
                    self.checker.violation(self.now, format!("node {node} cannot restart: {e:#}"));
                }
                self.schedule_crash(node);
            }
            Ev::PartitionStart { id } => {
                if self.groups.is_none() {
                    let frac = 0.1 + 0.3 * unit(&mut self.rng);
                    let g: Vec<bool> = (0..self.nodes.len()).map(|_| chance(&mut self.rng, frac)).collect();
                    self.trace(id, 32, &[]);
                    self.groups = Some((id, g));
                    self.partitions += 1;
                    self.last_disturbance = self.now;
                }
            }
            Ev::Heal { id } => {
                if self.groups.as_ref().is_some_and(|(g, _)| *g == id) {
                    self.trace(id, 33, &[]);
                    self.groups = None;
                    self.last_disturbance = self.now;
                }
            }
            Ev::SybilAnnounce => self.sybil_announce(),
            Ev::Submit => {
                self.submitted = true;
                for i in 0..self.nodes.len() as u32 {
                    if !self.nodes[i as usize].submits.is_empty() {
                        self.submit_all(i);
                    }
                }
            }
        }
        if self.steps.is_multiple_of(4096) {
            self.sample_gateway();
        }
        let stable = self.stable_since();
        self.checker.after_step(self.now, stable);
        true
    }

    fn crash(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        if n.mesh.is_none() {
            return;
        }
        let down = self.draws.downtime_ms(i, n.inc);
        n.mesh = None;
        n.inc += 1;
        n.timer_at = None;
        n.running.clear();
        n.queue.clear();
        self.note(i, None, || "CRASH".to_string());
        self.checker.on_crash(i);
        self.crashes += 1;
        self.last_disturbance = self.now;
        self.trace(i, 30, &[]);
        self.push(self.now + down, Ev::Restart { node: i });
    }

    /// What a gateway would serve: ask a random live node about a random output.
    fn sample_gateway(&mut self) {
        let i = pick(&mut self.rng, self.nodes.len());
        let d = pick(&mut self.rng, self.dag.drvs.len()) as u32;
        let spec = &self.dag.drvs[d as usize];
        let Some(mesh) = self.nodes[i].mesh.as_ref() else { return };
        if let Some((hash, _)) = mesh.accepted(&spec.out) {
            let (repro, truth) = (!spec.unreproducible, spec.true_hash);
            self.checker.on_accepted(self.now, i as u32, d, &hash, repro, &truth);
        }
    }

    /// Run until every submission is resolved at its client, or the time limit; then check
    /// liveness and report.
    pub fn run(mut self) -> Report {
        self.run_until(T0 + self.cfg.max_virtual_ms);
        self.into_report()
    }

    /// The time limit of the run (virtual unix ms).
    pub fn limit(&self) -> u64 {
        T0 + self.cfg.max_virtual_ms
    }

    /// Step until the virtual time passes `limit` or the work is done.
    pub fn run_until(&mut self, limit: u64) {
        while self.now <= limit && self.step() {
            if self.progress && self.steps.is_multiple_of(1 << 22) {
                self.print_progress();
            }
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }
}
