//! The driver's restart and API snapshot: [`Driver::restore`] feeds the machine what the store
//! recorded before a restart; [`Driver::snapshot`] refreshes the state the HTTP API reads.

use super::*;

impl Driver {
    pub(super) async fn restore(&mut self) {
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

    pub(super) fn snapshot(&mut self) {
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
            connection: Default::default(),
            direct_addresses: Vec::new(),
            conduct: Default::default(),
            lapses: 0,
            penalised_until_ms: None,
            struck_drvs: 0,
            struck_until_ms: None,
            last_seen_ms: None,
            slowdown: BTreeMap::new(),
            disk_pressure: None,
        };
        for (ann, heard_ms) in self.mesh.members_heard() {
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
            v.slowdown = ann.slowdown.iter().map(|(s, x)| (s.clone(), f64::from(*x) / 100.0)).collect();
            v.disk_pressure = ann.disk_pressure.clone();
            v.last_seen_ms = Some(heard_ms);
            peers.insert(peer, v);
        }
        let now = unix_ms();
        for (node, strike) in self.mesh.strikes() {
            if let Some(v) = peer_of(node).and_then(|p| peers.get_mut(&p)) {
                v.lapses = strike.count;
                v.penalised_until_ms = (strike.until_ms > now).then_some(strike.until_ms);
            }
        }
        for (peer, k) in &self.known {
            if !k.connected && !peers.contains_key(peer) {
                continue;
            }
            let v = peers.entry(*peer).or_insert_with(|| view_of(peer, node_of(peer)));
            v.connected = k.connected;
            v.addresses = k.addrs.iter().map(|a| a.to_string()).collect();
        }
        for (peer, kind) in self.ctx.net.connection_kinds() {
            if let Some(v) = peers.get_mut(&peer) {
                v.connection = kind;
            }
        }
        for (peer, addrs) in self.ctx.net.direct_addresses() {
            if let Some(v) = peers.get_mut(&peer) {
                v.direct_addresses = addrs.iter().map(|a| a.to_string()).collect();
            }
        }
        // What the net layer holds against peers: shown on their entries, and a graylisted,
        // struck or benched peer that is neither a member nor connected still gets one.
        for (peer, conduct) in self.ctx.net.peer_conduct() {
            if conduct.graylisted || conduct.strikes > 0.0 || !conduct.benched.is_empty() || peers.contains_key(&peer) {
                peers.entry(peer).or_insert_with(|| view_of(&peer, node_of(&peer))).conduct = conduct;
            }
        }
        // Gossiped strike records: on whatever entry the peer has (a struck member has often left
        // the view), and every struck member, this node included, in the status.
        let mut struck = Vec::new();
        for s in self.mesh.struck_members() {
            let until_ms = (s.until_ms > now).then_some(s.until_ms);
            if let Some(v) = peer_of(&s.node).and_then(|p| peers.get_mut(&p)) {
                v.struck_drvs = s.drvs;
                v.struck_until_ms = until_ms;
            }
            struck.push(StruckView { key: b64.encode(s.node.as_bytes()), me: s.node == me, drvs: s.drvs, until_ms });
        }
        for (peer, v) in peers.iter_mut() {
            // Now while connected; else the later of its last announcement heard and the
            // remembered peers' record.
            v.last_seen_ms = if v.connected { Some(now) } else { v.last_seen_ms.max(self.peers.book.last_seen(peer)) };
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
                refused_submissions: st.refused_submissions,
                lapses: st.lapses,
                strikes_published: st.strikes_published,
            },
            remembered_peers: self.peers.stored(),
            struck,
            shard: self.shards.own(),
            shards: self.shards.count(),
            shard_peers: self.shard_peers().get(&self.shards.own()).copied().unwrap_or(0),
            heard_shards: self.shards.heard().iter().copied().collect(),
            ..MeshStatus::default()
        };
        *self.ctx.shared.status.write().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}
