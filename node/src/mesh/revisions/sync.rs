//! Anti-entropy of revision headers: the same pull as attestations ([`crate::mesh::sync`]) over
//! `/buildmesh/sync/1`, with the revision set's own fingerprint ([`SyncRequest::RevisionSummary`])
//! and a per-peer cursor in table `revision_cursors`. Each page is verified
//! (`verify_as::<RevisionHeader>`) and committed within the submitters' quotas in one transaction
//! before the cursor moves. A peer that does not know these requests (an older node) answers
//! [`SyncResponse::Error`]: nothing to pull from it, and that is not an error.

use buildmesh_protocol::revision::RevisionHeader;
use buildmesh_protocol::signed::{Envelope, Verified};
use buildmesh_protocol::wire::Kind;
use libp2p::PeerId;

use super::insert;
use crate::mesh::quota::{Quotas, Stored};
use crate::mesh::rpc::{self, MAX_PAGE_ITEMS, Summary, SyncRequest, SyncResponse};
use crate::mesh::sync::SyncError;
use crate::net::{NetConfig, NetHandle, RequestProtocol};
use crate::store::{Store, StoreError};

/// Pages pulled from one peer in one run at most.
const MAX_PAGES_PER_RUN: usize = 1024;

/// What one run pulled.
#[derive(Debug, Default)]
pub struct RevisionSyncReport {
    /// The headers newly stored (their manifests still to fetch).
    pub new: Vec<RevisionHeader>,
    /// Records that did not verify (skipped).
    pub invalid: u64,
    /// Records skipped because their submitter is at its quota.
    pub over_quota: u64,
    /// Whether the peer answered the revision requests at all (`false`: an older node).
    pub supported: bool,
}

/// Pull the revision headers `peer` has and this node lacks.
pub async fn sync_revisions(
    net: &NetHandle,
    store: &Store,
    quotas: &std::sync::Arc<Quotas>,
    peer: PeerId,
) -> Result<RevisionSyncReport, SyncError> {
    let max = NetConfig::default().sync_limits.max_response;
    let ask = |req: SyncRequest| {
        let net = net.clone();
        async move {
            let bytes = net
                .send_request(peer, RequestProtocol::Sync, rpc::encode(&req))
                .await
                .map_err(|e| SyncError::Request { peer, reason: e.to_string() })?;
            rpc::decode::<SyncResponse>("sync response", &bytes, max)
                .map_err(|e| SyncError::Request { peer, reason: e.to_string() })
        }
    };
    let mut report = RevisionSyncReport::default();
    let theirs = match ask(SyncRequest::RevisionSummary).await? {
        SyncResponse::RevisionSummary(s) => s,
        SyncResponse::Error(e) => {
            tracing::debug!(%peer, cause = e, "peer does not serve revisions (an older node?)");
            return Ok(report);
        }
        _ => return Err(SyncError::Unexpected { peer, got: "something else than a revision summary" }),
    };
    report.supported = true;
    let key = peer.to_base58();
    let (ours, mut pos) = {
        let (store, key) = (store.clone(), key.clone());
        tokio::task::spawn_blocking(move || -> Result<(Summary, u64), StoreError> {
            Ok((store.revision_summary()?.into(), store.get_revision_cursor(&key)?.unwrap_or(0)))
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??
    };
    if theirs.same_set(&ours) {
        return Ok(report);
    }
    if pos > theirs.next_seq {
        tracing::info!(%peer, cursor = pos, their_next = theirs.next_seq, "peer's revision sequence went back; from 0");
        pos = 0;
    }
    for _ in 0..MAX_PAGES_PER_RUN {
        if pos >= theirs.next_seq {
            break;
        }
        let (items, next, more) = match ask(SyncRequest::Revisions { from: pos, limit: MAX_PAGE_ITEMS }).await? {
            SyncResponse::Page { items, next, more } => (items, next, more),
            SyncResponse::Error(e) => return Err(SyncError::Request { peer, reason: e }),
            _ => return Err(SyncError::Unexpected { peer, got: "something else than a page" }),
        };
        let mut verified: Vec<Verified<RevisionHeader>> = Vec::with_capacity(items.len());
        for (_, bytes) in &items {
            match Envelope::decode(bytes).map_err(|e| e.to_string()).and_then(|env| {
                if env.kind() != Kind::Revision {
                    return Err(format!("a {} record in the revision sequence", env.kind()));
                }
                env.verify_as::<RevisionHeader>().map_err(|e| e.to_string())
            }) {
                Ok(v) => verified.push(v),
                Err(reason) => {
                    report.invalid += 1;
                    tracing::warn!(%peer, reason, "peer served a revision header that does not verify; skipped");
                }
            }
        }
        let new_pos = next.max(pos);
        let (store2, q, key2) = (store.clone(), quotas.clone(), key.clone());
        let (new, over) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut outcome = Vec::with_capacity(verified.len());
            store2.write(|w| {
                for v in &verified {
                    outcome.push(insert(w, v, &q)?);
                }
                w.put_revision_cursor(&key2, new_pos)
            })?;
            let over = outcome.iter().filter(|o| **o == Stored::OverQuota).count() as u64;
            let new: Vec<RevisionHeader> = verified
                .into_iter()
                .zip(outcome)
                .filter(|(_, o)| *o == Stored::New)
                .map(|(v, _)| v.into_value())
                .collect();
            Ok((new, over))
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??;
        report.over_quota += over;
        report.new.extend(new);
        pos = new_pos;
        if !more || items.is_empty() {
            break;
        }
    }
    Ok(report)
}
