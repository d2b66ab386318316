//! The driver's traffic with peers: publishing gossip (batched), judging what peers publish,
//! answering their requests and running anti-entropy sync with them.

use super::*;
use crate::mesh::validate::message_topic;
use buildmesh_protocol::mesh::shard;

impl Driver {
    /// Publish job submissions and claims, as few messages as fit: one [`Batch`] per kind (more if
    /// one would exceed the size limit), or the message itself when it is alone.
    pub(super) async fn publish_batched(&mut self, messages: Vec<Message>) {
        // One group per kind (job submissions first) and shard: a batch travels on its shard's
        // topic, so all its items must be of that shard.
        let shards = self.shards.count();
        let mut groups: BTreeMap<(bool, u32), Vec<Message>> = BTreeMap::new();
        for m in messages {
            let key = (m.kind() != Kind::JobSubmission, shard::message_shard(&m, shards));
            groups.entry(key).or_default().push(m);
        }
        for group in groups.into_values() {
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
                let Some(topic) = batch.items().first().map(|m| message_topic(m, shards)) else { continue };
                if kind == Kind::Claim && self.alone() {
                    continue; // see `publish`
                }
                match Signed::sign(&self.ctx.key, &batch) {
                    Ok(signed) => {
                        Counters::bump(&self.ctx.shared.counters.batched_items, batch.items().len() as u64);
                        self.send(topic, kind, signed.into_envelope()).await;
                    }
                    Err(e) => tracing::error!(%kind, cause = %e, "cannot sign a batch"),
                }
            }
        }
    }

    pub(super) async fn publish(&mut self, m: Message) {
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
            match tokio::task::spawn_blocking(move || crate::mesh::sync::commit(&store, &v)).await {
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
        self.send(message_topic(&m, self.shards.count()), kind, envelope).await;
    }

    /// Whether no peer is connected.
    pub(super) fn alone(&self) -> bool {
        !self.known.values().any(|k| k.connected)
    }

    /// Gossip a signed envelope of `kind` (the items' kind for a batch) on `topic` (its kind's
    /// topic in its shard, [`message_topic`]).
    pub(super) async fn send(&mut self, topic: String, kind: Kind, envelope: Envelope) {
        self.seen.insert(envelope.id());
        let bytes = envelope.to_bytes();
        let len = bytes.len();
        match self.ctx.net.publish(topic, bytes).await {
            Ok(p) => {
                Counters::bump(&self.ctx.shared.counters.published, 1);
                Counters::bump(&self.ctx.shared.counters.bytes_out, len as u64);
                tracing::debug!(target: EVENTS, event = "published", %kind, msg_id = %p.id(), len);
            }
            Err(PublishError::Duplicate(_)) => {}
            Err(e) => tracing::warn!(%kind, cause = %e, "publishing failed"),
        }
    }

    /// Judge one gossip message (see the module docs of [`crate::mesh::validate`]).
    pub(super) async fn judge_gossip(&mut self, topic: &str, data: &[u8], source: PeerId) -> MessageAcceptance {
        let checked = match check_gossip(topic, data, self.shards.count()) {
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
            Checked::Revision(verified) => self.ctx.revisions.judge(verified, source).await,
        }
    }

    /// Judge a single message whose envelope verified.
    pub(super) async fn judge_one(
        &mut self,
        id: MessageId,
        verified: Verified<Message>,
        source: PeerId,
    ) -> MessageAcceptance {
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
            Message::JobSubmission(j) if self.mesh.accepts_submitter(&j.submitter) => self.note_submitter(j),
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
            Ok(Disposition::Ignored(Ignored::NotAnObserver)) => {
                // A strike record signed by a key that may not strike: invalid, like a bad
                // signature (the peer that sent it is penalised).
                tracing::warn!(target: EVENTS, event = "gossip_rejected", signer = %verified.signer(),
                    "strike record of a key that may not strike");
                MessageAcceptance::Reject
            }
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
    pub(super) async fn judge_batch(&mut self, id: MessageId, batch: Batch) -> MessageAcceptance {
        let (mut applied, mut refused) = (false, false);
        for m in batch.into_items() {
            if let Message::JobSubmission(j) = &m
                && self.mesh.accepts_submitter(&j.submitter)
            {
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

    pub(super) async fn on_request(&mut self, peer: PeerId, protocol: RequestProtocol, id: InboundId, data: Vec<u8>) {
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
                let req = match rpc::decode::<SyncRequest>("sync request", &data, self.ctx.sync_limits.max_request) {
                    Ok(r) => r,
                    Err(e) => {
                        // A newer build's request is answered with an error (it falls back);
                        // garbage no build sends also costs the sender a strike.
                        let garbage = !rpc::is_unknown_variant(&data, SyncRequest::VARIANTS);
                        let net = self.ctx.net.clone();
                        tokio::spawn(async move {
                            if garbage {
                                net.malformed(peer, "sync request").await;
                            }
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
    pub(super) async fn retry_request(&mut self, peer: PeerId, drv: &str) -> Result<(), String> {
        let node = node_of(&peer).ok_or_else(|| format!("{peer} is not an ed25519 peer"))?;
        if !self.trust.is_trusted(&node) {
            return Err(format!("{peer} is not trusted by this node"));
        }
        let drv = StorePath::from_basename(drv).map_err(|e| format!("{drv:?}: {e}"))?;
        tracing::info!(target: EVENTS, event = "retry_requested", %peer, drv = %drv);
        self.input(Input::Retry { drv, on: self.ctx.me }).await.map(|_| ()).map_err(|e| e.to_string())
    }

    pub(super) fn start_sync(&mut self, peer: PeerId) {
        if !self.syncing.insert(peer) {
            return;
        }
        let generation = self.shards.generation();
        if self.synced_generation.len() >= MAX_KNOWN_PEERS && !self.synced_generation.contains_key(&peer) {
            // Forgetting costs the forgotten peers one run from sequence 0 at most.
            self.synced_generation.clear();
        }
        let last = self.synced_generation.insert(peer, generation).unwrap_or(0);
        // Only the heard shards' records (one shard: all). A build waiting for inputs of other
        // shards observes them first (`observe_inputs`), which bumps the generation.
        let scope = crate::mesh::sync::SyncScope { filter: self.shards.filter(), from_zero: last < generation };
        let ctx = self.ctx.clone();
        let token = self.helpers.child_token();
        tokio::spawn(
            async move {
                let run = async {
                    let report = crate::mesh::sync::sync_with(
                        &ctx.net,
                        &ctx.store,
                        &ctx.cursors,
                        &ctx.quotas,
                        peer,
                        &ctx.synced,
                        scope,
                    )
                    .await?;
                    // Revision headers (issue 13) after attestations and failures.
                    let revs =
                        crate::mesh::revisions::sync::sync_revisions(&ctx.net, &ctx.store, &ctx.quotas, peer).await?;
                    if !revs.new.is_empty() {
                        tracing::info!(%peer, headers = revs.new.len(), "revision headers pulled by anti-entropy");
                    }
                    ctx.revisions.synced(revs.new);
                    Ok::<_, crate::mesh::sync::SyncError>(report)
                };
                let started = std::time::Instant::now();
                let result = tokio::select! {
                    _ = token.cancelled() => return,
                    r = run => r.map_err(|e| e.to_string()),
                };
                // How long a run took (mesh_slow's bench reads it: sync with a peer whose uplink
                // a NAR saturates).
                tracing::debug!(%peer, secs = started.elapsed().as_secs_f64(), ok = result.is_ok(), "anti-entropy run done");
                let _ = ctx.internal.send(Internal::SyncDone { peer, result }).await;
            }
            .in_current_span(),
        );
    }

    pub(super) fn periodic_sync(&mut self) {
        let mut connected: Vec<PeerId> = self.known.iter().filter(|(_, k)| k.connected).map(|(p, _)| *p).collect();
        if connected.is_empty() {
            return;
        }
        connected.sort();
        self.sync_turn = self.sync_turn.wrapping_add(1);
        let peer = connected[self.sync_turn % connected.len()];
        self.start_sync(peer);
    }
}
