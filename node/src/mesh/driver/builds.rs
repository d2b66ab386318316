//! The driver's side of local builds: start and cancel what the engine orders, report failures
//! and results, and ask a builder to retry.

#[allow(unused_imports)]
use super::*;

impl Driver {
    pub(super) fn start_build(&mut self, order: BuildOrder) {
        let drv = order.drv.clone();
        if self.building.contains_key(&drv) {
            return;
        }
        tracing::info!(target: EVENTS, event = "start_build", drv = %drv, attempt = order.attempt, forced = order.forced);
        Counters::bump(&self.ctx.shared.counters.builds_started, 1);
        let token = self.helpers.child_token();
        self.building.insert(drv.clone(), BuildSlot { token: token.clone(), inputs: Vec::new() });
        self.dirty = true;
        let mut peers: Vec<PeerId> = self.submitters.get(&drv).into_iter().flatten().filter_map(peer_of).collect();
        // Any connected peer may have the closure too (last resort), each asked once.
        for (p, _) in self.known.iter().filter(|(_, k)| k.connected) {
            if !peers.contains(p) {
                peers.push(*p);
            }
        }
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

    /// Forget the local build of `drv`; if it observed its inputs' shards, check them for release
    /// (after the current drain).
    pub(super) fn end_build(&mut self, drv: &StorePath) -> Option<BuildSlot> {
        let slot = self.building.remove(drv)?;
        self.release_due |= !slot.inputs.is_empty();
        Some(slot)
    }

    /// A build being prepared waits for the attestations of `inputs`: hear their shards while it
    /// is pending, and ask peers for those shards' records now (filtered, from sequence 0).
    pub(super) async fn observe_inputs(&mut self, drv: StorePath, inputs: Vec<StorePath>) {
        let Some(slot) = self.building.get_mut(&drv) else { return };
        slot.inputs = inputs.clone();
        let before = self.shards.generation();
        self.observe(&inputs).await;
        if self.shards.generation() == before {
            return;
        }
        let mut peers: Vec<PeerId> = self.known.iter().filter(|(_, k)| k.connected).map(|(p, _)| *p).collect();
        peers.sort();
        for peer in peers.into_iter().take(INPUT_SYNC_PEERS) {
            self.start_sync(peer);
        }
    }

    pub(super) fn cancel_build(&mut self, drv: &StorePath) {
        let Some(slot) = self.end_build(drv) else { return };
        slot.token.cancel();
        self.dirty = true;
        let (sched, d) = (self.ctx.scheduler.clone(), drv.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sched.cancel(&d) {
                tracing::debug!(drv = %d, cause = %e, "local build not cancelled");
            }
        });
    }

    pub(super) async fn build_failed(&mut self, drv: StorePath, reason: FailureReason) {
        // Texts must fit the wire limit, or the failure could not be signed.
        let reason = match reason {
            FailureReason::Executor { message } => FailureReason::Executor { message: reason_text(message) },
            FailureReason::Other { message } => FailureReason::Other { message: reason_text(message) },
            other => other,
        };
        tracing::warn!(target: EVENTS, event = "build_failed", drv = %drv, ?reason);
        // The signed failure names the log this node stored (and serves to peers, issue 14).
        let (store, d) = (self.ctx.store.clone(), drv.clone());
        let log = tokio::task::spawn_blocking(move || store.get_log(&d).ok().flatten().map(|l| LogDigest::of(&l)))
            .await
            .ok()
            .flatten();
        if let Err(e) = self.input(Input::BuildFailed { drv: drv.clone(), reason, log }).await {
            tracing::debug!(drv = %drv, cause = %e, "the machine did not take the failure");
        }
    }

    pub(super) async fn build_finished(&mut self, a: Attestation) {
        tracing::info!(target: EVENTS, event = "build_finished", drv = %a.drv, outputs = a.outputs.len());
        self.index.add(&a);
        self.provide(a.outputs.values().map(|o| o.path.clone()).collect());
        let drv = a.drv.clone();
        if let Err(e) = self.input(Input::BuildFinished(a)).await {
            tracing::warn!(drv = %drv, cause = %e, "the machine did not take the attestation");
        }
    }

    pub(super) async fn on_build_event(&mut self, ev: BuildEvent) {
        let Some(slot) = self.end_build(&ev.drv) else {
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
                let slot = BuildSlot { token: self.helpers.child_token(), inputs: slot.inputs };
                self.building.insert(ev.drv.clone(), slot);
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

    pub(super) fn request_retry(&mut self, node: NodeId, drv: StorePath) {
        let Some(peer) = peer_of(&node) else { return };
        let net = self.ctx.net.clone();
        tokio::spawn(
            async move {
                // Read like every answer (crate::mesh::answers): garbage costs the peer a strike,
                // and so does an answer of another kind than a retry verdict or an error.
                let req = SyncRequest::Retry { drv: drv.to_string() };
                match crate::mesh::answers::ask_sync(&net, peer, &req).await {
                    Ok(SyncResponse::Retry(Ok(()))) => tracing::info!(%peer, drv = %drv, "retry taken by the peer"),
                    Ok(SyncResponse::Retry(Err(e))) => {
                        tracing::warn!(%peer, drv = %drv, reason = %e, "retry refused")
                    }
                    Ok(SyncResponse::Error(e)) => tracing::warn!(%peer, drv = %drv, cause = %e, "retry request failed"),
                    Ok(_) => {
                        crate::mesh::answers::wrong_kind(&net, peer, "retry answer of another kind").await;
                        tracing::warn!(%peer, "unexpected answer to a retry request");
                    }
                    Err(e) => tracing::warn!(%peer, drv = %drv, cause = %e, "retry request failed"),
                }
            }
            .in_current_span(),
        );
    }
}
