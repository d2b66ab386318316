//! The build queue: one [`BuildRecord`] per derivation, plus a priority index of queued builds.

use buildmesh_protocol::store_path::StorePath;
use redb::ReadableTable;

use super::records::{decode, encode};
use super::tables::*;
use super::{
    BuildCounts, BuildFilter, BuildRecord, BuildState, DbResultExt, EnqueueOutcome, EnqueueRequest, Store, StoreError,
    StoreWriter,
};

/// The first element of a `build_queue` key: sorts the highest priority first.
fn queue_rank(priority: i32) -> u32 {
    u32::MAX - ((priority as u32) ^ 0x8000_0000)
}

impl StoreWriter<'_> {
    fn load_build(&self, drv: &StorePath) -> Result<Option<BuildRecord>, StoreError> {
        let key = drv.to_string();
        let builds = self.txn.open_table(BUILDS).ctx("opening table builds")?;
        let row = builds.get(key.as_str()).ctx("reading builds")?;
        row.map(|v| decode::<BuildRecord>("builds", &key, v.value())).transpose()
    }

    fn require_build(&self, drv: &StorePath) -> Result<BuildRecord, StoreError> {
        self.load_build(drv)?.ok_or_else(|| StoreError::NotFound { table: "builds", key: drv.to_string() })
    }

    /// Write `new` and keep the queue index in step with the state change from `old`.
    fn save_build(&self, old: Option<&BuildRecord>, new: &BuildRecord) -> Result<(), StoreError> {
        let key = new.drv.to_string();
        {
            let mut queue = self.txn.open_table(BUILD_QUEUE).ctx("opening table build_queue")?;
            if let Some(old) = old.filter(|o| o.state == BuildState::Queued) {
                queue.remove((queue_rank(old.priority), old.queue_seq, key.as_str())).ctx("writing build_queue")?;
            }
            if new.state == BuildState::Queued {
                queue.insert((queue_rank(new.priority), new.queue_seq, key.as_str()), ()).ctx("writing build_queue")?;
            }
        }
        let bytes = encode("builds", &key, new)?;
        self.txn
            .open_table(BUILDS)
            .ctx("opening table builds")?
            .insert(key.as_str(), bytes.as_slice())
            .ctx("writing builds")?;
        Ok(())
    }

    fn transition(
        &mut self,
        drv: &StorePath,
        allowed: &[BuildState],
        to: BuildState,
        change: impl FnOnce(&mut BuildRecord) -> Result<(), StoreError>,
    ) -> Result<BuildRecord, StoreError> {
        let old = self.require_build(drv)?;
        if !allowed.contains(&old.state) {
            return Err(StoreError::InvalidTransition { drv: drv.clone(), from: old.state, to });
        }
        let mut new = old.clone();
        new.state = to;
        change(&mut new)?;
        self.save_build(Some(&old), &new)?;
        Ok(new)
    }

    /// Queue a build. Idempotent: for a derivation already known (in any state) the priority
    /// becomes the maximum, wanted outputs the union and replicas the maximum of both requests, and
    /// the state is left alone (use [`StoreWriter::retry`] to rebuild a failed or cancelled one).
    pub fn enqueue(&mut self, req: &EnqueueRequest, now: u64) -> Result<EnqueueOutcome, StoreError> {
        match self.load_build(&req.drv)? {
            Some(old) => {
                let mut new = old.clone();
                new.priority = old.priority.max(req.priority);
                new.wanted_outputs.extend(req.wanted_outputs.iter().cloned());
                new.replicas = old.replicas.max(req.replicas);
                if new != old {
                    self.save_build(Some(&old), &new)?;
                }
                Ok(EnqueueOutcome::Existing(new))
            }
            None => {
                let record = BuildRecord {
                    drv: req.drv.clone(),
                    state: BuildState::Queued,
                    priority: req.priority,
                    attempts: 0,
                    submitted_at: now,
                    started_at: None,
                    finished_at: None,
                    not_before: None,
                    last_error: None,
                    wanted_outputs: req.wanted_outputs.clone(),
                    replicas: req.replicas,
                    queue_seq: self.next_counter(META_NEXT_BUILD_SEQ)?,
                };
                self.save_build(None, &record)?;
                Ok(EnqueueOutcome::Created(record))
            }
        }
    }

    /// `Queued -> Running`: an executor starts it (counts an attempt).
    pub fn mark_running(&mut self, drv: &StorePath, now: u64) -> Result<BuildRecord, StoreError> {
        self.transition(drv, &[BuildState::Queued], BuildState::Running, |r| {
            r.attempts = r.attempts.saturating_add(1);
            r.started_at = Some(now);
            r.not_before = None;
            Ok(())
        })
    }

    /// `Running -> Done`.
    pub fn mark_done(&mut self, drv: &StorePath, now: u64) -> Result<BuildRecord, StoreError> {
        self.transition(drv, &[BuildState::Running], BuildState::Done, |r| {
            r.finished_at = Some(now);
            r.last_error = None;
            Ok(())
        })
    }

    /// `Running -> Failed` with the reason.
    pub fn mark_failed(&mut self, drv: &StorePath, now: u64, reason: &str) -> Result<BuildRecord, StoreError> {
        self.transition(drv, &[BuildState::Running], BuildState::Failed, |r| {
            r.finished_at = Some(now);
            r.last_error = Some(reason.to_string());
            Ok(())
        })
    }

    /// `Done -> Failed` with the reason: a mesh submission this node built (so its record went
    /// `done`) whose outputs the trust policy then did not accept (builders disagree, too few
    /// trusted builders): the submission failed, whatever the local build said.
    pub fn mark_rejected(&mut self, drv: &StorePath, now: u64, reason: &str) -> Result<BuildRecord, StoreError> {
        self.transition(drv, &[BuildState::Done], BuildState::Failed, |r| {
            r.finished_at = Some(now);
            r.last_error = Some(reason.to_string());
            Ok(())
        })
    }

    /// `Running -> Queued` after a transient failure: it runs again, not before `not_before`
    /// (backoff), behind the builds of its priority already queued.
    pub fn mark_retry(
        &mut self,
        drv: &StorePath,
        reason: &str,
        not_before: Option<u64>,
    ) -> Result<BuildRecord, StoreError> {
        let seq = self.next_counter(META_NEXT_BUILD_SEQ)?;
        self.transition(drv, &[BuildState::Running], BuildState::Queued, |r| {
            r.last_error = Some(reason.to_string());
            r.not_before = not_before;
            r.queue_seq = seq;
            Ok(())
        })
    }

    /// `Failed | Cancelled -> Queued` (`buildmesh retry`).
    pub fn retry(&mut self, drv: &StorePath) -> Result<BuildRecord, StoreError> {
        let seq = self.next_counter(META_NEXT_BUILD_SEQ)?;
        self.transition(drv, &[BuildState::Failed, BuildState::Cancelled], BuildState::Queued, |r| {
            r.finished_at = None;
            r.not_before = None;
            r.queue_seq = seq;
            Ok(())
        })
    }

    /// `Queued | Running -> Cancelled` (idempotent on `Cancelled`). Returns the state it had, so
    /// the caller knows whether an executor must be stopped.
    pub fn cancel(&mut self, drv: &StorePath, now: u64) -> Result<BuildState, StoreError> {
        let old = self.require_build(drv)?;
        if old.state == BuildState::Cancelled {
            return Ok(BuildState::Cancelled);
        }
        self.transition(drv, &[BuildState::Queued, BuildState::Running], BuildState::Cancelled, |r| {
            r.finished_at = Some(now);
            Ok(())
        })?;
        Ok(old.state)
    }

    /// Every `Running` build becomes `Queued` again, keeping its place in the queue (call once on
    /// startup: those builds were interrupted by a crash or shutdown). Returns them.
    pub fn requeue_interrupted(&mut self) -> Result<Vec<StorePath>, StoreError> {
        let running: Vec<BuildRecord> = {
            let builds = self.txn.open_table(BUILDS).ctx("opening table builds")?;
            let mut out = Vec::new();
            for item in builds.iter().ctx("scanning builds")? {
                let (k, v) = item.ctx("scanning builds")?;
                let r = decode::<BuildRecord>("builds", &k.value(), v.value())?;
                if r.state == BuildState::Running {
                    out.push(r);
                }
            }
            out
        };
        let mut requeued = Vec::with_capacity(running.len());
        for old in running {
            let mut new = old.clone();
            new.state = BuildState::Queued;
            new.started_at = None;
            self.save_build(Some(&old), &new)?;
            requeued.push(new.drv);
        }
        Ok(requeued)
    }
}

impl Store {
    /// Queue a build (see [`StoreWriter::enqueue`]).
    pub fn enqueue(&self, req: &EnqueueRequest, now: u64) -> Result<EnqueueOutcome, StoreError> {
        self.write(|w| w.enqueue(req, now))
    }

    /// `Queued -> Running` (see [`StoreWriter::mark_running`]).
    pub fn mark_running(&self, drv: &StorePath, now: u64) -> Result<BuildRecord, StoreError> {
        self.write(|w| w.mark_running(drv, now))
    }

    /// `Running -> Done`.
    pub fn mark_done(&self, drv: &StorePath, now: u64) -> Result<BuildRecord, StoreError> {
        self.write(|w| w.mark_done(drv, now))
    }

    /// `Running -> Failed`.
    pub fn mark_failed(&self, drv: &StorePath, now: u64, reason: &str) -> Result<BuildRecord, StoreError> {
        self.write(|w| w.mark_failed(drv, now, reason))
    }

    /// `Running -> Queued` with backoff (see [`StoreWriter::mark_retry`]).
    pub fn mark_retry(
        &self,
        drv: &StorePath,
        reason: &str,
        not_before: Option<u64>,
    ) -> Result<BuildRecord, StoreError> {
        self.write(|w| w.mark_retry(drv, reason, not_before))
    }

    /// `Failed | Cancelled -> Queued`.
    pub fn retry(&self, drv: &StorePath) -> Result<BuildRecord, StoreError> {
        self.write(|w| w.retry(drv))
    }

    /// Cancel (see [`StoreWriter::cancel`]).
    pub fn cancel(&self, drv: &StorePath, now: u64) -> Result<BuildState, StoreError> {
        self.write(|w| w.cancel(drv, now))
    }

    /// Requeue interrupted builds (see [`StoreWriter::requeue_interrupted`]).
    pub fn requeue_interrupted(&self) -> Result<Vec<StorePath>, StoreError> {
        self.write(|w| w.requeue_interrupted())
    }

    /// One build.
    pub fn get_build(&self, drv: &StorePath) -> Result<Option<BuildRecord>, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let builds = txn.open_table(BUILDS).ctx("opening table builds")?;
        let row = builds.get(key.as_str()).ctx("reading builds")?;
        row.map(|v| decode::<BuildRecord>("builds", &key, v.value())).transpose()
    }

    /// Builds in drv basename order, filtered.
    pub fn list_builds(&self, filter: &BuildFilter) -> Result<Vec<BuildRecord>, StoreError> {
        let after = filter.after.as_ref().map(|p| p.to_string());
        let txn = self.read()?;
        let builds = txn.open_table(BUILDS).ctx("opening table builds")?;
        let range = match &after {
            Some(a) => builds.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded)),
            None => builds.range::<&str>(..),
        }
        .ctx("scanning builds")?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.ctx("scanning builds")?;
            let r = decode::<BuildRecord>("builds", &k.value(), v.value())?;
            if filter.states.is_empty() || filter.states.contains(&r.state) {
                out.push(r);
                if filter.limit != 0 && out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Queued builds in run order: highest priority first, then first queued first; at most
    /// `limit` (0 = all). Includes builds whose `not_before` is still in the future.
    pub fn queued_builds(&self, limit: usize) -> Result<Vec<BuildRecord>, StoreError> {
        let txn = self.read()?;
        let queue = txn.open_table(BUILD_QUEUE).ctx("opening table build_queue")?;
        let builds = txn.open_table(BUILDS).ctx("opening table builds")?;
        let mut out = Vec::new();
        for item in queue.iter().ctx("scanning build_queue")? {
            let (k, _) = item.ctx("scanning build_queue")?;
            let (_, _, drv) = k.value();
            let row = builds.get(drv).ctx("reading builds")?.ok_or_else(|| StoreError::Corrupt {
                table: "build_queue",
                key: drv.to_string(),
                reason: "queued build has no row in builds".to_string(),
            })?;
            out.push(decode::<BuildRecord>("builds", &drv, row.value())?);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of builds per state.
    pub fn build_counts(&self) -> Result<BuildCounts, StoreError> {
        let txn = self.read()?;
        let builds = txn.open_table(BUILDS).ctx("opening table builds")?;
        let mut c = BuildCounts::default();
        for item in builds.iter().ctx("scanning builds")? {
            let (k, v) = item.ctx("scanning builds")?;
            let r = decode::<BuildRecord>("builds", &k.value(), v.value())?;
            match r.state {
                BuildState::Queued => c.queued += 1,
                BuildState::Running => c.running += 1,
                BuildState::Done => c.done += 1,
                BuildState::Failed => c.failed += 1,
                BuildState::Cancelled => c.cancelled += 1,
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::queue_rank;

    #[test]
    fn queue_rank_orders_high_priority_first() {
        let prios = [i32::MIN, -5, -1, 0, 1, 7, i32::MAX];
        for w in prios.windows(2) {
            assert!(queue_rank(w[1]) < queue_rank(w[0]), "{} should sort before {}", w[1], w[0]);
        }
    }
}
