//! How the rest of the node talks to the scheduler: its options, and the [`SchedulerHandle`] the
//! API, the submit endpoint and the mesh use to wake it, cancel and retry builds, and the
//! [`BuildEvent`]s it sends the mesh when a build ends.

use buildmesh_protocol::signed::Verified;
use buildmesh_protocol::wire::{Attestation, FailureReason};

use super::*;

/// The scheduler's knobs (from the node's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Builds that may run at once (at least 1).
    pub slots: usize,
    /// Attempts in all for a transiently failing build (at least 1).
    pub max_attempts: u32,
    /// Per-build timeout.
    pub build_timeout: Duration,
    /// Cap on the kept log of one build.
    pub max_log_bytes: u64,
    /// Backoff before the second attempt; doubled for each further one.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            slots: 1,
            max_attempts: 3,
            build_timeout: Duration::from_secs(4 * 3600),
            max_log_bytes: 4 << 20,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(600),
        }
    }
}

impl SchedulerOptions {
    /// The backoff after attempt `attempt` (1-based) failed transiently.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor).min(self.backoff_max)
    }
}

/// Why an API retry or cancel did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The node has no build of this derivation.
    #[error("no build of {drv} on this node")]
    UnknownBuild {
        /// The derivation.
        drv: StorePath,
    },
    /// The build is in a state that does not allow it (e.g. retrying a running build).
    #[error("build {drv} is {state}: {action} is not possible")]
    WrongState {
        /// The derivation.
        drv: StorePath,
        /// Its state.
        state: BuildState,
        /// `retry` or `cancel`.
        action: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the API and the submit endpoint use to talk to the scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) store: Store,
    pub(super) store_dir: StoreDir,
    pub(super) wake: Arc<Notify>,
    pub(super) running: Mutex<HashMap<StorePath, CancellationToken>>,
    /// Who submitted the queued builds ([`super::submitters`]).
    pub(super) submitters: SubmitterLedger,
}

impl SchedulerHandle {
    /// Make the scheduler look at the queue again (after enqueueing builds).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The [`Notify`] the scheduler waits on (what the submit endpoint notifies).
    pub fn wake_notify(&self) -> Arc<Notify> {
        self.shared.wake.clone()
    }

    /// The ledger of uploads by submitter (the submit endpoint records into it).
    pub fn submitters(&self) -> SubmitterLedger {
        self.shared.submitters.clone()
    }

    /// The derivations being built right now.
    pub fn running(&self) -> Vec<StorePath> {
        let mut v: Vec<StorePath> = self.lock_running().keys().cloned().collect();
        v.sort();
        v
    }

    pub(super) fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<StorePath, CancellationToken>> {
        self.shared.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancel a queued or running build (blocking: call from `spawn_blocking`). A running build's
    /// executor is stopped; builds that need it fail on the next pass. Cancelling a cancelled
    /// build is a no-op. Returns the state it had.
    pub fn cancel(&self, drv: &StorePath) -> Result<BuildState, ControlError> {
        let record =
            self.shared.store.get_build(drv)?.ok_or_else(|| ControlError::UnknownBuild { drv: drv.clone() })?;
        if matches!(record.state, BuildState::Done | BuildState::Failed) {
            return Err(ControlError::WrongState { drv: drv.clone(), state: record.state, action: "cancel" });
        }
        let before = match self.shared.store.cancel(drv, unix_ms()) {
            Ok(s) => s,
            Err(StoreError::InvalidTransition { from, .. }) => {
                return Err(ControlError::WrongState { drv: drv.clone(), state: from, action: "cancel" });
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(token) = self.lock_running().get(drv) {
            token.cancel();
        }
        tracing::info!(drv = %drv, was = %before, "build cancelled");
        self.wake();
        Ok(before)
    }

    /// Queue a failed or cancelled build again, together with every failed or cancelled build
    /// of its input derivations (transitively) whose outputs are not registered, so that the
    /// retried build does not fail again at once for the same reason (blocking: call from
    /// `spawn_blocking`). Returns the derivations queued again, the requested one first.
    pub fn retry(&self, drv: &StorePath) -> Result<Vec<StorePath>, ControlError> {
        let store = &self.shared.store;
        let record = store.get_build(drv)?.ok_or_else(|| ControlError::UnknownBuild { drv: drv.clone() })?;
        if !matches!(record.state, BuildState::Failed | BuildState::Cancelled) {
            return Err(ControlError::WrongState { drv: drv.clone(), state: record.state, action: "retry" });
        }
        let mut again = vec![drv.clone()];
        let mut seen: HashSet<StorePath> = HashSet::from([drv.clone()]);
        let mut todo = vec![drv.clone()];
        while let Some(d) = todo.pop() {
            let Some(parsed) = load_derivation(store, &self.shared.store_dir, &d).ok().flatten() else { continue };
            for (input, outputs) in &parsed.input_drvs {
                if !seen.insert(input.clone()) {
                    continue;
                }
                if outputs_available(store, &self.shared.store_dir, input, outputs)? {
                    continue;
                }
                todo.push(input.clone());
                if let Some(r) = store.get_build(input)?
                    && matches!(r.state, BuildState::Failed | BuildState::Cancelled)
                {
                    again.push(input.clone());
                }
            }
        }
        store.write(|w| {
            for d in &again {
                w.retry(d)?;
            }
            Ok(())
        })?;
        tracing::info!(drv = %drv, requeued = again.len(), "build queued again");
        self.wake();
        Ok(again)
    }
}

/// Capacity of the build-event channel from the scheduler.
pub const BUILD_EVENT_BUFFER: usize = 256;

/// What became of a local build (sent by the scheduler to the driver).
#[derive(Debug, Clone)]
pub struct BuildEvent {
    /// The derivation.
    pub drv: StorePath,
    /// Its end.
    pub outcome: BuildOutcome,
}

/// The end of one local build attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BuildOutcome {
    /// Built; the committed attestation (`None`: it was built and attested before, nothing was
    /// built again; the driver reads this node's attestation from the store).
    Built(Option<Box<Verified<Attestation>>>),
    /// Failed, for this reason (the scheduler committed its own signed failure already).
    Failed(FailureReason),
    /// Cancelled (by the API or the mesh) or interrupted by shutdown.
    Cancelled,
}
