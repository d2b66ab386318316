//! Revisions (issue 13) on a mesh node: signed headers by gossip and anti-entropy, manifests
//! fetched from peers.
//!
//! - **Gossip** (topic `buildmesh/revision/1`): a header is size-checked, decoded and verified
//!   (`Signed::<RevisionHeader>` rules: signature, author = submitter, field rules) by
//!   [`crate::mesh::validate::check_gossip`]; then committed to the store within its submitter's
//!   storage quota ([`super::quota`]) **before** it is accepted (forwarded). New → Accept and its
//!   manifest is queued for fetching; already stored → Ignore; over quota → Reject or Ignore as
//!   for attestations.
//! - **Publishing** ([`Revisions::publish`]): the manifest is checked against the header and the
//!   manifest and the signed header are committed in one transaction before the header is gossiped.
//! - **Anti-entropy** ([`sync`]): the revision header set is pulled like attestations, over
//!   `/buildmesh/sync/1` with its own fingerprint and per-peer cursor.
//! - **Manifests** ([`fetch`]): fetched in the background, from the submitter first, then the
//!   other connected peers, in chunks of at most 1 MiB of the zstd-compressed bytes; the size is
//!   bounded by the signed header before anything is fetched, the whole is verified against the
//!   header (size, blake3, strict decode, counts) before it is stored. A manifest that no peer
//!   served stays **missing** ([`ManifestState::Missing`]: the hash, the peers tried, the last
//!   error) and is tried again every retry interval.

pub mod fetch;
pub mod sync;

use std::sync::Arc;

use buildmesh_protocol::id::{MessageId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::revision::RevisionHeader;
use buildmesh_protocol::signed::{Signed, Verified};
use buildmesh_protocol::wire::{Encode as _, Kind};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::MeshApiError;
use super::quota::{Quotas, Stored, over_quota_verdict};
use super::validate::topic_of;
use crate::net::{MessageAcceptance, NetHandle, PublishError};
use crate::store::{CheckedManifest, RevisionEntry, Store, StoreError, StoreWriter, unix_ms};

pub use fetch::{ManifestFetcher, ManifestState, MissingManifest};

/// The store entry of a verified header.
pub fn entry_of(v: &Verified<RevisionHeader>) -> RevisionEntry {
    let h = v.value();
    RevisionEntry {
        id: v.id(),
        channel: h.channel.clone(),
        branch: h.branch.clone(),
        commit: h.commit.clone(),
        submitter: h.submitter,
        created_at_ms: h.created_at_ms,
        manifest_hash: h.manifest_hash,
        manifest_size: h.manifest_size,
        received_at: unix_ms(),
        envelope: v.envelope().to_bytes(),
    }
}

/// Store a received, verified header within its submitter's quota (inside a write transaction).
pub fn insert(w: &mut StoreWriter<'_>, v: &Verified<RevisionHeader>, quotas: &Quotas) -> Result<Stored, StoreError> {
    if !quotas.accepts_submitter(&v.value().submitter) {
        // Not one of `submitters`: nothing is stored (nor forwarded, nor its manifest fetched).
        return Ok(Stored::NotKept);
    }
    let e = entry_of(v);
    Ok(match w.insert_revision_within(&e, quotas.limit_for(&e.submitter))? {
        None => Stored::OverQuota,
        Some(i) if i.new => Stored::New,
        Some(_) => Stored::Known,
    })
}

/// Commit a received header (blocking); a header already stored costs a read.
pub fn commit(store: &Store, v: &Verified<RevisionHeader>, quotas: &Quotas) -> Result<Stored, StoreError> {
    if !quotas.accepts_submitter(&v.value().submitter) {
        return Ok(Stored::NotKept);
    }
    if store.has_revision(&v.id())? {
        return Ok(Stored::Known);
    }
    store.write(|w| insert(w, v, quotas))
}

/// What [`Revisions::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The header's message id.
    pub id: MessageId,
    /// `C@ID`.
    pub revision: String,
    /// Number of jobs.
    pub jobs: u64,
    /// blake3 of the manifest (hex).
    pub manifest_hash: String,
    /// Whether it was new here (publishing the same header again changes nothing).
    pub new: bool,
}

/// Counters of revision traffic (for the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionCounts {
    /// Headers received by gossip and stored.
    pub gossip_new: u64,
    /// Headers received by anti-entropy and stored.
    pub synced: u64,
    /// Manifests fetched and stored.
    pub manifests_fetched: u64,
    /// Manifest fetch attempts that failed (every peer tried).
    pub manifest_failures: u64,
}

/// The revision side of a mesh node. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Revisions {
    key: Arc<NodeKey>,
    store: Store,
    net: NetHandle,
    quotas: Arc<Quotas>,
    /// The manifest fetcher (queue, missing states).
    pub fetcher: ManifestFetcher,
    counts: std::sync::Mutex<RevisionCounts>,
}

impl Revisions {
    /// The service of node `key`. Call [`ManifestFetcher::spawn`] on `fetcher` to start fetching.
    pub fn new(key: Arc<NodeKey>, store: Store, net: NetHandle, quotas: Arc<Quotas>, retry_ms: u64) -> Revisions {
        let fetcher = ManifestFetcher::new(store.clone(), net.clone(), quotas.clone(), retry_ms);
        Revisions { key, store, net, quotas, fetcher, counts: Default::default() }
    }

    /// The counters.
    pub fn counts(&self) -> RevisionCounts {
        let mut c = *self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = self.fetcher.counts();
        c.manifests_fetched = f.0;
        c.manifest_failures = f.1;
        c
    }

    fn bump(&self, f: impl FnOnce(&mut RevisionCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Judge a verified header received by gossip from `source` (see the module docs).
    pub async fn judge(&self, v: Verified<RevisionHeader>, source: PeerId) -> MessageAcceptance {
        let (store, q, v2) = (self.store.clone(), self.quotas.clone(), v.clone());
        let stored = match tokio::task::spawn_blocking(move || commit(&store, &v2, &q)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(cause = %e, "cannot commit a received revision header; not forwarding it");
                return MessageAcceptance::Ignore;
            }
            Err(e) => {
                tracing::error!(cause = %e, "commit task failed");
                return MessageAcceptance::Ignore;
            }
        };
        match stored {
            Stored::New => {
                self.bump(|c| c.gossip_new += 1);
                tracing::info!(target: "buildmesh::_events::mesh", event = "revision_received",
                    revision = %v.value().id(), submitter = %v.value().submitter.fmt_short());
                self.fetcher.want(v.into_value());
                MessageAcceptance::Accept
            }
            Stored::OverQuota => over_quota_verdict(v.signer(), &source),
            Stored::Known | Stored::NotKept => MessageAcceptance::Ignore,
        }
    }

    /// Headers that arrived by anti-entropy (committed already): count them and fetch their
    /// manifests.
    pub fn synced(&self, headers: Vec<RevisionHeader>) {
        self.bump(|c| c.synced += headers.len() as u64);
        for h in headers {
            self.fetcher.want(h);
        }
    }

    /// Publish this node's revision: check `manifest` against `header` (size, hash, strict decode,
    /// counts; the submitter must be this node), commit the manifest and the signed header in one
    /// durable transaction, then gossip the header.
    pub async fn publish(&self, header: RevisionHeader, manifest: Vec<u8>) -> Result<Published, MeshApiError> {
        if header.submitter != self.key.node_id() {
            return Err(MeshApiError::Refused("the revision's submitter must be this node".into()));
        }
        let signed = Signed::sign(&self.key, &header)
            .map_err(|e| MeshApiError::Refused(format!("cannot sign the revision header: {e}")))?;
        let verified = signed.verify().map_err(|e| MeshApiError::Refused(format!("revision header: {e}")))?;
        let (store, v) = (self.store.clone(), verified.clone());
        let level = self.store.options().zstd_level;
        let new = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let parsed = v.value().check_manifest(&manifest).map_err(|e| e.to_string())?;
            let checked = CheckedManifest::new(v.value().manifest_hash, &manifest, level).map_err(|e| e.to_string())?;
            let drvs: Vec<String> = parsed.drvs.iter().map(|d| d.drv.to_string()).collect();
            let entry = entry_of(&v);
            store
                .write(|w| {
                    w.put_manifest(&checked, &drvs)?;
                    Ok(w.insert_revision(&entry)?.new)
                })
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| MeshApiError::Refused(format!("task failed: {e}")))?
        .map_err(MeshApiError::Refused)?;
        let bytes = verified.envelope().to_bytes();
        match self.net.publish(topic_of(Kind::Revision), bytes).await {
            Ok(_) | Err(PublishError::Duplicate(_)) => {}
            // Stored: anti-entropy carries it to peers that missed the gossip.
            Err(e) => tracing::warn!(cause = %e, "publishing a revision header failed; anti-entropy will carry it"),
        }
        tracing::info!(target: "buildmesh::_events::mesh", event = "revision_published", revision = %header.id(), new);
        Ok(Published {
            id: verified.id(),
            revision: header.id().to_string(),
            jobs: header.job_count(),
            manifest_hash: hex::encode(header.manifest_hash),
            new,
        })
    }

    /// The manifest's state here: stored, being fetched, or missing (with the peers tried).
    pub fn manifest_state(&self, hash: &[u8; 32]) -> ManifestState {
        match self.store.has_manifest(hash) {
            Ok(true) => ManifestState::Present,
            _ => self.fetcher.state(hash),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.key.node_id()
    }
}

#[cfg(test)]
mod policy_tests;
