//! The build scheduler: takes queued builds from the [`Store`], runs them on the [`Executor`] in
//! dependency order, at most `slots` at once, and records every result.
//!
//! ## One pass
//! On every wake-up (a submission, a finished build, an API retry/cancel, a backoff deadline) the
//! scheduler reads a snapshot of the pending builds and of each one's input derivations (is every
//! needed output registered? is the input's own build queued, running, failed, cancelled?),
//! hands it to the pure [`plan::plan`], and applies the result: fail builds whose input
//! failed permanently, enqueue input derivations that are stored but not queued, start the ready
//! builds by fair share across submitters ([`submitters`]), then highest effective priority,
//! then longest critical path.
//!
//! ## One build
//! `Queued -> Running` (one durable transaction), then [`Executor::build`] with a cancellation
//! token and a watchdog a little longer than the build timeout. Then:
//! - success: [`commit_attestation`] (signed, committed with the log) **before** `mark_done`, so
//!   nothing is reported that is not durable;
//! - failure: [`commit_failure_in_mode`] (signed, committed with the log); then, for a transient
//!   error ([`BuildError::is_transient`]) with attempts left, `mark_retry` with an exponential
//!   backoff, else `mark_failed`;
//! - cancelled through the API: the store already says `Cancelled`; nothing more;
//! - interrupted by the node's shutdown: left `Running`, so that the next start requeues it
//!   ([`Store::requeue_interrupted`]).
//!
//! A build whose outputs are all registered and already attested by this node (the node died
//! between the attestation and `mark_done`) is marked done without building again.

mod handle;
pub mod plan;
pub mod submitters;
#[cfg(test)]
mod tests;

use handle::Shared;
pub use handle::{BUILD_EVENT_BUFFER, BuildEvent, BuildOutcome, ControlError, SchedulerHandle, SchedulerOptions};
pub use submitters::{Submitter, SubmitterLedger};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::build::attest::{commit_attestation, commit_failure_in_mode};
use crate::build::{BuildError, BuildReport, BuildRequest, Executor};
use crate::store::{BuildFilter, BuildRecord, BuildState, EnqueueRequest, Store, StoreError, unix_ms};
use crate::systems::Systems;
use plan::{InputNeed, InputStatus, PendingBuild};

/// How many plan/apply rounds one wake-up may take (each round fails or enqueues something).
const MAX_ROUNDS: usize = 64;
/// Extra time the watchdog grants an executor beyond the build timeout before cancelling it.
const WATCHDOG_GRACE: Duration = Duration::from_secs(30);
/// How long shutdown waits for cancelled builds to return.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// Parse a stored derivation (`None` when it is not stored).
fn load_derivation(store: &Store, store_dir: &StoreDir, drv: &StorePath) -> Result<Option<Derivation>, String> {
    let Some(bytes) = store.get_drv(drv).map_err(|e| e.to_string())? else { return Ok(None) };
    Derivation::parse(&bytes, store_dir).map(Some).map_err(|e| e.to_string())
}

/// Whether every listed output of `drv` is registered (false when the drv is unknown).
fn outputs_available(
    store: &Store,
    store_dir: &StoreDir,
    drv: &StorePath,
    outputs: &BTreeSet<String>,
) -> Result<bool, StoreError> {
    let Ok(Some(parsed)) = load_derivation(store, store_dir, drv) else { return Ok(false) };
    for name in outputs {
        match parsed.outputs.get(name).and_then(|o| o.path.as_ref()) {
            Some(p) if store.has_path(p)? => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// The scheduler task (see the module docs). Create it with [`Scheduler::new`], keep a
/// [`Scheduler::handle`], then `run` it.
pub struct Scheduler {
    store: Store,
    store_dir: StoreDir,
    key: Arc<NodeKey>,
    systems: Systems,
    executor: Arc<dyn Executor>,
    options: SchedulerOptions,
    handle: SchedulerHandle,
    /// Parsed derivations of pending builds and their inputs (derivations never change).
    drvs: Arc<Mutex<HashMap<StorePath, Arc<Derivation>>>>,
    /// Where the end of every build is reported (the mesh driver), if anywhere.
    events: Option<tokio::sync::mpsc::Sender<BuildEvent>>,
    /// The trust policy every input is checked against before a build starts
    /// ([`crate::trust::inputs`]); default: this node's own builds.
    trust: TrustConfig,
    /// The realised-path directory (`DATA/store`), whose copy of a quarantined input is deleted.
    realised: Option<PathBuf>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("executor", &self.executor.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a pass decided to start.
struct Started {
    drv: StorePath,
    record: BuildRecord,
    derivation: Arc<Derivation>,
    token: CancellationToken,
}

impl Scheduler {
    /// A scheduler over `store`, signing with `key`, building with `executor`.
    pub fn new(
        store: Store,
        store_dir: StoreDir,
        key: Arc<NodeKey>,
        systems: Systems,
        executor: Arc<dyn Executor>,
        mut options: SchedulerOptions,
    ) -> Scheduler {
        options.slots = options.slots.max(1);
        options.max_attempts = options.max_attempts.max(1);
        let handle = SchedulerHandle {
            shared: Arc::new(Shared {
                store: store.clone(),
                store_dir: store_dir.clone(),
                wake: Arc::new(Notify::new()),
                running: Mutex::new(HashMap::new()),
                submitters: restore_ledger(&store),
            }),
        };
        let trust = crate::trust::standalone(key.node_id());
        Scheduler {
            store,
            store_dir,
            key,
            systems,
            executor,
            options,
            handle,
            drvs: Arc::default(),
            events: None,
            trust,
            realised: None,
        }
    }

    /// Check inputs against `trust` (the mesh's policy on a mesh node) and delete realised copies
    /// of quarantined inputs under `realised` (`DATA/store`).
    pub fn with_trust(mut self, trust: TrustConfig, realised: Option<PathBuf>) -> Scheduler {
        self.trust = trust;
        self.realised = realised;
        self
    }

    /// Report the end of every build on `events` (the mesh driver listens).
    pub fn with_build_events(mut self, events: tokio::sync::mpsc::Sender<BuildEvent>) -> Scheduler {
        self.events = Some(events);
        self
    }

    /// The handle for the API.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Run until `shutdown` fires; then cancel the running builds (they stay `Running` in the
    /// store and are requeued by the next start) and wait for them to return.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut tasks: JoinSet<StorePath> = JoinSet::new();
        tracing::info!(slots = this.options.slots, executor = this.executor.name(), "scheduler started");
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // One pass (blocking store work).
            let free = this.options.slots.saturating_sub(tasks.len());
            let wake_at: Option<u64>;
            let pass = {
                let this = this.clone();
                let shutdown = shutdown.clone();
                tokio::task::spawn_blocking(move || this.pass(free, &shutdown)).await
            };
            match pass {
                Ok(Ok((started, next))) => {
                    wake_at = next;
                    for s in started {
                        let this = this.clone();
                        let shutdown = shutdown.clone();
                        let span = tracing::info_span!("build", drv = %s.drv, attempt = s.record.attempts);
                        tasks.spawn(this.run_one(s, shutdown).instrument(span));
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(cause = %e, "scheduler pass failed; retrying in 5 s");
                    wake_at = Some(unix_ms() + 5_000);
                }
                Err(e) => {
                    tracing::error!(cause = %e, "scheduler pass panicked; retrying in 5 s");
                    wake_at = Some(unix_ms() + 5_000);
                }
            }
            let sleep = match wake_at {
                Some(t) => Duration::from_millis(t.saturating_sub(unix_ms()).max(1)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(cause = %e, "a build task panicked");
                    }
                }
                _ = this.handle.shared.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        let running = tasks.len();
        if running > 0 {
            tracing::info!(running, "shutting down: cancelling running builds");
        }
        // The per-build tokens are children of `shutdown`: every executor is being stopped.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_WAIT, drain).await.is_err() {
            tracing::warn!("builds did not stop in time; abandoning them");
            tasks.abort_all();
        }
        tracing::info!("scheduler stopped");
    }

    /// The derivation of `drv`, parsed once and cached. `Err` names why it is unusable.
    fn derivation(&self, drv: &StorePath) -> Result<Option<Arc<Derivation>>, String> {
        if let Some(d) = self.drvs.lock().unwrap_or_else(PoisonError::into_inner).get(drv) {
            return Ok(Some(d.clone()));
        }
        let Some(parsed) = load_derivation(&self.store, &self.store_dir, drv)? else { return Ok(None) };
        let parsed = Arc::new(parsed);
        self.drvs.lock().unwrap_or_else(PoisonError::into_inner).insert(drv.clone(), parsed.clone());
        Ok(Some(parsed))
    }

    /// The status of input `input` (needing `outputs`) of a pending build.
    fn input_status(&self, input: &StorePath, outputs: &BTreeSet<String>) -> Result<InputStatus, StoreError> {
        let parsed = match self.derivation(input) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Ok(InputStatus::Failed(format!("input derivation {input} is not on this node")));
            }
            Err(e) => return Ok(InputStatus::Failed(format!("input derivation {input} is unusable: {e}"))),
        };
        let mut missing: Option<(String, StorePath, Option<String>)> = None;
        for name in outputs {
            match parsed.outputs.get(name) {
                None => {
                    return Ok(InputStatus::Failed(format!("input derivation {input} has no output `{name}`")));
                }
                Some(o) => match &o.path {
                    None => {
                        return Ok(InputStatus::Failed(format!(
                            "output `{name}` of input derivation {input} has no fixed path (content-addressed \
                             derivations are not supported)"
                        )));
                    }
                    Some(p) => {
                        if missing.is_none()
                            && let Some(problem) = self.input_unusable(p)?
                        {
                            missing = Some((name.clone(), p.clone(), problem));
                        }
                    }
                },
            }
        }
        let Some((name, path, problem)) = missing else { return Ok(InputStatus::Available) };
        Ok(match self.store.get_build(input)? {
            None => InputStatus::NotQueued,
            Some(r) => match r.state {
                BuildState::Queued | BuildState::Running => InputStatus::Pending,
                BuildState::Failed => InputStatus::Failed(format!(
                    "input derivation {input} failed: {}",
                    r.last_error.as_deref().unwrap_or("unknown reason")
                )),
                BuildState::Cancelled => InputStatus::Failed(format!("input derivation {input} was cancelled")),
                BuildState::Done => InputStatus::Failed(match problem {
                    Some(p) => format!("input derivation {input} was built but its output `{name}` is not usable: {p}"),
                    None => {
                        format!("input derivation {input} was built but its output `{name}` ({path}) is not registered")
                    }
                }),
            },
        })
    }

    /// `None` when the output `path` of an input derivation can be used (the trust rule accepts
    /// its registration, or the accepted NAR is here to replace it); else `Some(why)` (`None`
    /// inside when it is simply not registered).
    fn input_unusable(&self, path: &StorePath) -> Result<Option<Option<String>>, StoreError> {
        crate::trust::inputs::unusable(&self.store, &self.store_dir, &self.trust, path)
    }

    /// Read the pending builds with the status of their inputs.
    fn snapshot(&self) -> Result<Vec<PendingBuild>, StoreError> {
        let ledger = &self.handle.shared.submitters;
        let mark = ledger.mark();
        let mut records =
            self.store.list_builds(&BuildFilter { states: vec![BuildState::Running], ..Default::default() })?;
        records.extend(self.store.queued_builds(0)?);
        let finished = ledger.retain_pending(mark, &records.iter().map(|r| &r.drv).collect::<HashSet<_>>());
        if let Err(e) = self.store.remove_uploads(&finished) {
            // Harmless: the rows are read back at the next start and found finished then.
            tracing::warn!(cause = %e, uploads = finished.len(), "could not forget finished uploads");
        }
        let mut submitter_of = ledger.attribute(records.iter().map(|r| &r.drv));
        let basenames: Vec<String> = records.iter().map(|r| r.drv.to_string()).collect();
        let revision_of = self.store.first_revision_of_drvs(basenames.iter().map(String::as_str)).unwrap_or_else(|e| {
            tracing::warn!(cause = %e, "could not read which revisions the pending builds belong to");
            HashMap::new()
        });
        let mut pending = Vec::with_capacity(records.len());
        let mut keep: HashSet<StorePath> = HashSet::new();
        for r in records {
            let mut inputs = Vec::new();
            match self.derivation(&r.drv) {
                Ok(Some(d)) => {
                    if r.state == BuildState::Queued {
                        for (input, outputs) in &d.input_drvs {
                            inputs.push(InputNeed { drv: input.clone(), status: self.input_status(input, outputs)? });
                            keep.insert(input.clone());
                        }
                    } else {
                        // A running build's inputs only matter for ranking.
                        for input in d.input_drvs.keys() {
                            inputs.push(InputNeed { drv: input.clone(), status: InputStatus::Available });
                        }
                    }
                }
                // An unusable build fails "because of itself" (plan ignores self-edges).
                Ok(None) => inputs.push(InputNeed {
                    drv: r.drv.clone(),
                    status: InputStatus::Failed(format!("derivation {} is not stored on this node", r.drv)),
                }),
                Err(e) => inputs.push(InputNeed {
                    drv: r.drv.clone(),
                    status: InputStatus::Failed(format!("stored derivation {} is unusable: {e}", r.drv)),
                }),
            }
            keep.insert(r.drv.clone());
            let submitter = submitter_of.remove(&r.drv).unwrap_or_else(Submitter::operator);
            let revision = revision_of.get(&r.drv.to_string()).copied();
            pending.push(PendingBuild {
                submitter,
                revision,
                drv: r.drv,
                priority: r.priority,
                queue_seq: r.queue_seq,
                running: r.state == BuildState::Running,
                not_before: r.not_before,
                inputs,
            });
        }
        // Forget parsed derivations nothing pending refers to any more.
        self.drvs.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep.contains(k));
        Ok(pending)
    }

    /// One scheduling pass: plan, fail, enqueue, and mark the builds to start as running.
    fn pass(&self, free_slots: usize, shutdown: &CancellationToken) -> Result<(Vec<Started>, Option<u64>), StoreError> {
        let mut started = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let now = unix_ms();
            let pending = self.snapshot()?;
            let ledger = &self.handle.shared.submitters;
            let p = plan::plan_fair(&pending, free_slots.saturating_sub(started.len()), now, &ledger.served());
            let changed = !p.fail.is_empty() || !p.enqueue.is_empty();
            for (drv, reason) in &p.fail {
                self.fail_unbuilt(drv, reason, now)?;
            }
            for (drv, priority) in &p.enqueue {
                let req = EnqueueRequest {
                    drv: drv.clone(),
                    priority: *priority,
                    wanted_outputs: BTreeSet::new(),
                    replicas: 1,
                };
                self.store.enqueue(&req, now)?;
                tracing::info!(drv = %drv, priority, "queued an input derivation that had no build");
            }
            if changed {
                // Failing or enqueueing changes what is ready: plan again before starting.
                continue;
            }
            if shutdown.is_cancelled() {
                return Ok((started, None));
            }
            if !p.start.is_empty() {
                ledger.set_served(p.served);
            }
            for s in &p.start {
                if self.handle.lock_running().contains_key(&s.drv) {
                    // The previous attempt (cancelled, then queued again) is still stopping: never
                    // two builders of one derivation at once. Its end wakes the scheduler.
                    tracing::debug!(drv = %s.drv, "previous attempt still stopping; starting it later");
                    continue;
                }
                let Ok(Some(derivation)) = self.derivation(&s.drv) else { continue };
                let token = shutdown.child_token();
                // Register the token first, so that a cancel racing with the start finds it.
                self.handle.lock_running().insert(s.drv.clone(), token.clone());
                match self.store.mark_running(&s.drv, unix_ms()) {
                    Ok(record) => {
                        tracing::info!(
                            drv = %s.drv, submitter = %s.submitter, priority = s.priority, critical_path = s.critical_path,
                            attempt = record.attempts, "starting build"
                        );
                        started.push(Started { drv: s.drv.clone(), record, derivation, token });
                    }
                    Err(StoreError::InvalidTransition { from, .. }) => {
                        tracing::debug!(drv = %s.drv, state = %from, "build changed state before it started");
                        self.handle.lock_running().remove(&s.drv);
                    }
                    Err(e) => {
                        self.handle.lock_running().remove(&s.drv);
                        return Err(e);
                    }
                }
            }
            return Ok((started, p.wake_at));
        }
        tracing::warn!(rounds = MAX_ROUNDS, "scheduler pass did not settle; continuing on the next wake-up");
        Ok((started, Some(unix_ms() + 1_000)))
    }

    /// Fail a queued build that cannot be built (an input failed): no signed failure, since this
    /// node did not try it, but the reason and a one-line log.
    fn fail_unbuilt(&self, drv: &StorePath, reason: &str, now: u64) -> Result<(), StoreError> {
        let result = self.store.write(|w| {
            w.mark_running(drv, now)?;
            w.mark_failed(drv, now, reason)?;
            w.put_log(drv, format!("[buildmesh: not built: {reason}]\n").as_bytes())
        });
        match result {
            Ok(()) => {
                tracing::warn!(drv = %drv, reason, "build failed without running");
                Ok(())
            }
            // Cancelled or started meanwhile: the next pass sees the new state.
            Err(StoreError::InvalidTransition { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run one started build to its recorded end.
    async fn run_one(self: Arc<Self>, s: Started, shutdown: CancellationToken) -> StorePath {
        let drv = s.drv.clone();
        let token = s.token.clone();
        let result = self.execute(&s).await;
        let this = self.clone();
        let finish = tokio::task::spawn_blocking(move || {
            let mut outcome = None;
            let r = this.finish(&s, result, &shutdown, &mut outcome);
            (r, outcome)
        })
        .await;
        let outcome = match finish {
            Ok((Ok(()), o)) => o,
            Ok((Err(e), o)) => {
                tracing::error!(drv = %drv, cause = %e, "recording the build result failed");
                o
            }
            Err(e) => {
                tracing::error!(drv = %drv, cause = %e, "recording the build result panicked");
                None
            }
        };
        if let (Some(events), Some(outcome)) = (&self.events, outcome) {
            let _ = events.send(BuildEvent { drv: drv.clone(), outcome }).await;
        }
        token.cancel();
        self.handle.lock_running().remove(&drv);
        self.handle.wake();
        drv
    }

    /// Build (or find already built), with a watchdog over the executor.
    async fn execute(&self, s: &Started) -> Result<Option<BuildReport>, BuildError> {
        let already = {
            let store = self.store.clone();
            let me = self.key.node_id();
            let drv = s.drv.clone();
            let derivation = s.derivation.clone();
            tokio::task::spawn_blocking(move || already_attested(&store, &me, &drv, &derivation)).await
        };
        if let Ok(Ok(true)) = already {
            tracing::info!("outputs already registered and attested by this node; not building again");
            return Ok(None);
        }
        self.check_inputs(s).await?;
        let req = BuildRequest {
            drv_path: s.drv.clone(),
            drv: (*s.derivation).clone(),
            attempt: s.record.attempts,
            timeout: Some(self.options.build_timeout),
            max_log_bytes: self.options.max_log_bytes,
        };
        let mut fut = self.executor.build(req, s.token.clone());
        let limit = self.options.build_timeout;
        tokio::select! {
            r = &mut fut => r.map(Some),
            _ = tokio::time::sleep(limit.saturating_add(WATCHDOG_GRACE)) => {
                tracing::warn!(limit = ?limit, "executor overran the build timeout; cancelling it");
                s.token.cancel();
                match fut.await {
                    Err(BuildError::Cancelled) => Err(BuildError::Timeout { limit, log: Vec::new() }),
                    other => other.map(Some),
                }
            }
        }
    }

    /// Verify every input of `s` against the trust rule before the build starts (DESIGN
    /// invariant 10; [`crate::trust::inputs::check_inputs`]): a local copy that disagrees with the
    /// accepted NarHash is replaced by the accepted bytes when they are here, else the build fails
    /// with [`BuildError::InputRejected`] naming the input.
    async fn check_inputs(&self, s: &Started) -> Result<(), BuildError> {
        let (store, sd, trust, realised, derivation) = (
            self.store.clone(),
            self.store_dir.clone(),
            self.trust.clone(),
            self.realised.clone(),
            s.derivation.clone(),
        );
        tokio::task::spawn_blocking(move || {
            crate::trust::inputs::check_build(&store, &sd, &trust, realised.as_deref(), &derivation).map(drop)
        })
        .await
        .map_err(|e| BuildError::Executor { message: format!("input check task failed: {e}"), log: Vec::new() })?
    }

    /// Record the result of a build (blocking).
    fn finish(
        &self,
        s: &Started,
        result: Result<Option<BuildReport>, BuildError>,
        shutdown: &CancellationToken,
        outcome: &mut Option<BuildOutcome>,
    ) -> Result<(), String> {
        let drv = &s.drv;
        let now = unix_ms();
        let attempt = s.record.attempts;
        match result {
            Ok(report) => {
                *outcome = Some(BuildOutcome::Built(None));
                if let Some(report) = &report {
                    // Durable before reported: the attestation commits before the build is done.
                    match commit_attestation(&self.store, &self.key, &self.store_dir, drv, report) {
                        Ok(c) => *outcome = Some(BuildOutcome::Built(Some(Box::new(c.message)))),
                        Err(e) => {
                            let reason = format!("committing the attestation failed: {e}");
                            tracing::error!(reason, "build succeeded but could not be attested");
                            *outcome = Some(BuildOutcome::Failed(buildmesh_protocol::wire::FailureReason::Executor {
                                message: reason.clone(),
                            }));
                            return self.after_failure(drv, attempt, true, &reason, now);
                        }
                    }
                }
                match self.store.mark_done(drv, now) {
                    Ok(_) => {
                        tracing::info!(outputs = report.map_or(0, |r| r.outputs.len()), "build done");
                        Ok(())
                    }
                    Err(StoreError::InvalidTransition { from, .. }) => {
                        tracing::info!(state = %from, "build finished but its state changed meanwhile; left as is");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(BuildError::Cancelled) if shutdown.is_cancelled() => {
                tracing::info!("build interrupted by shutdown; it is requeued at the next start");
                Ok(())
            }
            Err(BuildError::Cancelled) => {
                *outcome = Some(BuildOutcome::Cancelled);
                let state = self.store.get_build(drv).map_err(|e| e.to_string())?.map(|r| r.state);
                if state == Some(BuildState::Running) {
                    // Cancelled by something other than the API: record it as a failure.
                    return self.after_failure(drv, attempt, false, "build cancelled", now);
                }
                self.store.put_log(drv, b"[buildmesh: build cancelled]\n").map_err(|e| e.to_string())?;
                tracing::info!("build cancelled");
                Ok(())
            }
            Err(err) => {
                *outcome = Some(BuildOutcome::Failed(err.to_reason()));
                let emulated = self.systems.is_emulated(&String::from_utf8_lossy(&s.derivation.system));
                if let Err(e) =
                    commit_failure_in_mode(&self.store, &self.key, &self.store_dir, drv, attempt, &err, emulated, now)
                {
                    tracing::error!(cause = %e, "could not commit the signed failure");
                }
                self.after_failure(drv, attempt, err.is_transient(), &err.to_string(), now)
            }
        }
    }

    /// `mark_retry` with backoff when transient and attempts are left, else `mark_failed`.
    fn after_failure(
        &self,
        drv: &StorePath,
        attempt: u32,
        transient: bool,
        reason: &str,
        now: u64,
    ) -> Result<(), String> {
        let result = if transient && attempt < self.options.max_attempts {
            let delay = self.options.backoff(attempt);
            let not_before = now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            tracing::warn!(reason, attempt, retry_in = ?delay, "build failed transiently; will retry");
            self.store.mark_retry(drv, reason, Some(not_before)).map(|_| ())
        } else {
            tracing::warn!(reason, attempt, "build failed");
            self.store.mark_failed(drv, now, reason).map(|_| ())
        };
        match result {
            Ok(()) | Err(StoreError::InvalidTransition { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether every output of `derivation` is registered and an attestation by `me` of `drv` names
/// each with its registered NarHash.
pub(crate) fn already_attested(
    store: &Store,
    me: &buildmesh_protocol::id::NodeId,
    drv: &StorePath,
    derivation: &Derivation,
) -> Result<bool, StoreError> {
    let mut registered = Vec::new();
    for o in derivation.outputs.values() {
        let Some(p) = &o.path else { return Ok(false) };
        let Some(info) = store.path_info(p)? else { return Ok(false) };
        registered.push(info);
    }
    let ours: Vec<_> = store.attestations_for_drv(drv)?.into_iter().filter(|a| &a.entry.builder == me).collect();
    Ok(!registered.is_empty()
        && ours.iter().any(|a| {
            registered
                .iter()
                .all(|info| a.entry.outputs.iter().any(|o| o.path == info.path && o.nar_hash == info.nar_hash))
        }))
}

/// The submitter ledger of the unfinished uploads stored in `store` ([`submitters`]); an empty
/// one, with a warning, when they cannot be read (their builds then count as the operator's).
fn restore_ledger(store: &Store) -> SubmitterLedger {
    match store.list_uploads() {
        Ok(rows) => {
            if !rows.is_empty() {
                tracing::info!(uploads = rows.len(), "restored the unfinished uploads of the submitters");
            }
            SubmitterLedger::restore(rows)
        }
        Err(e) => {
            tracing::warn!(cause = %e, "could not read the unfinished uploads; the queue counts as the operator's");
            SubmitterLedger::default()
        }
    }
}
