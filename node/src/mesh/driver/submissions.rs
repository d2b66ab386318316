//! This node's submissions to the mesh: publishing a job, and recording how it ended (outputs
//! fetched and the local build record moved to `done` or `failed`).

use super::*;

/// How a submission of this node ended in the mesh.
#[derive(Debug, Clone)]
pub(super) enum Finish {
    /// Built and every output accepted.
    Done,
    /// Given up, for this reason.
    Failed(String),
    /// Built, but some output has no accepted NarHash.
    NotAgreed,
}

/// Why a completed submission is not accepted: each output the trust policy does not accept,
/// with the reason (`output `out` (<path>): builders disagree …`).
pub(super) async fn unagreed_reason(ctx: &Ctx, drv: &StorePath, job: &SubmittedJob) -> String {
    let (store, sd, trust, d, wanted) =
        (ctx.store.clone(), ctx.store_dir.clone(), ctx.fetcher.trust.clone(), drv.clone(), job.outputs.clone());
    let detail = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let parsed = crate::mesh::fetch::load_drv(&store, &sd, &d).map_err(|e| e.to_string())?;
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
pub(super) async fn record_submission(
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

impl Driver {
    pub(super) async fn submit(&mut self, req: SubmitRequest) -> Result<usize, String> {
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

    /// Fetch the outputs of a completed submission and record it as done (or record a failed
    /// one as failed), in a helper task.
    pub(super) fn finish_submission(&mut self, drv: StorePath, finish: Finish) {
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

    pub(super) fn save_submissions(&self) {
        if let Err(e) = self.submissions.save() {
            tracing::error!(cause = %e, "cannot persist the submission list");
        }
    }

    /// Remember who submitted a derivation (they hold its closure).
    pub(super) fn note_submitter(&mut self, j: &JobSubmission) {
        if self.submitters.len() >= MAX_SUBMITTER_ENTRIES
            && !self.submitters.contains_key(&j.drv)
            && let Some(k) = self.submitters.keys().next().cloned()
        {
            self.submitters.remove(&k);
        }
        self.submitters.entry(j.drv.clone()).or_default().insert(j.submitter);
    }
}
