//! Anti-entropy of revision headers: the same pull as attestations ([`crate::mesh::sync`]) over
//! `/buildmesh/sync/1`, with the revision set's own fingerprint ([`SyncRequest::RevisionSummary`])
//! and a per-peer cursor in table `revision_cursors`. Each page is verified
//! (`verify_as::<RevisionHeader>`) and committed within the submitters' quotas in one transaction
//! before the cursor moves. A peer that does not know these requests (an older node) answers
//! [`SyncResponse::Error`]: nothing to pull from it, and that is not an error.
//!
//! Answers and records are read as every answer from a peer is ([`crate::mesh::answers`]): the
//! node's configured cap, one strike for an answer that does not decode or is of another kind
//! than asked, and one per page with records that are not revision envelopes or whose signature
//! does not verify. A correctly signed header that fails this build's checks is skipped without
//! a strike, as is one of another protocol version.

use buildmesh_protocol::revision::RevisionHeader;
use buildmesh_protocol::signed::{Envelope, Verified};
use buildmesh_protocol::wire::Kind;
use libp2p::PeerId;

use super::insert;
use crate::mesh::answers;
use crate::mesh::quota::{Quotas, Stored};
use crate::mesh::rpc::{MAX_PAGE_ITEMS, Summary, SyncRequest, SyncResponse};
use crate::mesh::sync::SyncError;
use crate::net::NetHandle;
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
    /// Pages with records no build serves: each cost the peer a strike.
    pub garbage_pages: u64,
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
    let ask = |req: SyncRequest| async move {
        answers::ask_sync(net, peer, &req).await.map_err(|e| SyncError::Request { peer, reason: e.to_string() })
    };
    let unexpected = |got: &'static str| async move {
        answers::wrong_kind(net, peer, "revision sync answer of another kind").await;
        SyncError::Unexpected { peer, got }
    };
    let mut report = RevisionSyncReport::default();
    let theirs = match ask(SyncRequest::RevisionSummary).await? {
        SyncResponse::RevisionSummary(s) => s,
        SyncResponse::Error(e) => {
            tracing::debug!(%peer, cause = e, "peer does not serve revisions (an older node?)");
            return Ok(report);
        }
        _ => return Err(unexpected("something else than a revision summary").await),
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
            _ => return Err(unexpected("something else than a page").await),
        };
        let mut verified: Vec<Verified<RevisionHeader>> = Vec::with_capacity(items.len());
        let mut garbage = false;
        for (_, bytes) in &items {
            match answers::check_record(bytes, Kind::Revision, Envelope::verify_as::<RevisionHeader>) {
                Ok(v) => verified.push(v),
                Err(refused) => {
                    report.invalid += 1;
                    garbage |= refused.garbage;
                    tracing::warn!(%peer, reason = refused.reason, "peer served a revision header that does not verify; skipped");
                }
            }
        }
        if garbage {
            // One strike per page, however many of its records are garbage.
            report.garbage_pages += 1;
            net.malformed(peer, "revision sync page").await;
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
