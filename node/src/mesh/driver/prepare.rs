//! Build preparation: what a build order needs before the local scheduler can run it (the
//! derivation's placement data, its inputs fetched from peers, this node's earlier attestation).

use super::*;

/// The system and required features of a stored derivation, checked against the wire rules.
pub(super) fn placement_info(
    store: &Store,
    sd: &StoreDir,
    drv: &StorePath,
) -> Result<(String, BTreeSet<String>), String> {
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
pub(super) fn own_attestation(store: &Store, me: &NodeId, drv: &StorePath) -> Option<Attestation> {
    let list = store.attestations_for_drv(drv).ok()?;
    list.iter()
        .filter(|s| &s.entry.builder == me)
        .filter_map(|s| Signed::<Attestation>::decode(&s.entry.envelope).ok()?.verify().ok())
        .max_by_key(|v| v.finished_at_ms)
        .map(Verified::into_value)
}

/// Have the driver hear the shards of `drv`'s input derivations and sync them (their
/// attestations may lie in shards this node does not hear, docs/protocol.md *Shards*).
async fn observe_inputs(ctx: &Ctx, drv: &StorePath) {
    let (store, sd, d) = (ctx.store.clone(), ctx.store_dir.clone(), drv.clone());
    let inputs = tokio::task::spawn_blocking(move || crate::mesh::fetch::load_drv(&store, &sd, &d))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|parsed| parsed.input_drvs.keys().cloned().collect::<Vec<StorePath>>())
        .unwrap_or_default();
    if !inputs.is_empty() {
        let _ = ctx.internal.send(Internal::Inputs { drv: drv.clone(), inputs }).await;
    }
}

/// Fetch what a build needs and queue it locally (a helper task).
pub(super) async fn prepare(ctx: &Ctx, order: &BuildOrder, mut peers: Vec<PeerId>) -> Result<Prepared, FailureReason> {
    let drv = order.drv.clone();
    let (store, me, d) = (ctx.store.clone(), ctx.me, drv.clone());
    if !order.forced
        && let Ok(Some(a)) = tokio::task::spawn_blocking(move || own_attestation(&store, &me, &d)).await
    {
        return Ok(Prepared::AlreadyAttested(Box::new(a)));
    }
    if let Ok(providers) = ctx.net.get_providers(drv.hash_part().into_bytes()).await {
        for p in providers {
            if !peers.contains(&p) {
                peers.insert(0, p);
            }
        }
    }
    let mut attempt = 0;
    let mut observed = false;
    let fetched = loop {
        attempt += 1;
        match ctx.fetcher.prepare_build(&drv, &peers).await {
            Ok(n) => break n,
            // Input attestations may still be on their way (gossip, anti-entropy).
            Err(FetchError::Unknown { path }) if attempt < PREPARE_ATTEMPTS => {
                tracing::debug!(drv = %drv, path, attempt, "input not attested here yet; waiting");
                if !std::mem::replace(&mut observed, true) {
                    observe_inputs(ctx, &drv).await;
                }
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
