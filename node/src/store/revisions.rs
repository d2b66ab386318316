//! Revision headers (issue 13): signed mesh records naming an evaluation of a channel at a commit,
//! merged by union like attestations (see `signed.rs`), plus which one of them is visible.
//!
//! Every verified header is kept (table `revisions`) with a local insertion sequence number
//! (`revision_seq`), so anti-entropy carries all of them ([`Store::revisions_since`],
//! [`Store::revision_summary`]: count + XOR of ids). Headers are keyed by (channel, commit,
//! submitter); per key the one with the later `created_at_ms` (ties: the larger message id) is the
//! **visible** one (`revisions_by_name`), whatever order they arrive in. Listing and lookups by
//! name return visible headers only; choosing among the submitters of one `C@ID` (trusted ones
//! first) is the caller's policy.
//!
//! The store keeps the envelope opaque, next to the fields given by the caller, who verified the
//! signature and the field rules. Manifests are in `manifests.rs`.

use buildmesh_protocol::id::{MessageId, NodeId};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::records::{decode, encode};
use super::tables::*;
use super::{DbResultExt, SetSummary, SignerLimit, Store, StoreError, StoreWriter, meta_array32, meta_u64};

const TABLE: &str = "revisions";
const HIGH: [u8; 32] = [0xff; 32];
const LOW: [u8; 32] = [0; 32];

/// A verified revision header as the store keeps it: the opaque signed bytes plus the fields it is
/// indexed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEntry {
    /// The message id (`Envelope::id`); the union-merge key.
    pub id: MessageId,
    /// The channel (`guix`, `nixpkgs`).
    pub channel: String,
    /// The branch.
    pub branch: String,
    /// The commit id.
    pub commit: String,
    /// Who published and signed it.
    pub submitter: NodeId,
    /// When it was made (the submitter's clock, Unix ms).
    pub created_at_ms: u64,
    /// blake3 of the manifest's canonical encoding.
    pub manifest_hash: [u8; 32],
    /// Length of that encoding (signed; checked before a manifest is fetched).
    pub manifest_size: u64,
    /// When this node received (or made) it, Unix ms.
    pub received_at: u64,
    /// The signed, encoded envelope bytes.
    pub envelope: Vec<u8>,
}

/// A revision header read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRevision {
    /// Local insertion sequence number (anti-entropy cursor position).
    pub seq: u64,
    /// The entry as inserted.
    pub entry: RevisionEntry,
}

/// What [`StoreWriter::insert_revision`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionInserted {
    /// `false` when the id was already stored (nothing changed).
    pub new: bool,
    /// The record's sequence number (the existing one when not new).
    pub seq: u64,
    /// Whether it is now the visible header of its (channel, commit, submitter).
    pub visible: bool,
}

/// The `revisions` row (the key is the message id).
#[derive(Serialize, Deserialize)]
pub(crate) struct RevisionRow {
    pub(crate) seq: u64,
    pub(crate) channel: String,
    pub(crate) branch: String,
    pub(crate) commit: String,
    pub(crate) submitter: NodeId,
    pub(crate) created_at_ms: u64,
    pub(crate) manifest_hash: [u8; 32],
    pub(crate) manifest_size: u64,
    pub(crate) received_at: u64,
    pub(crate) envelope: Vec<u8>,
}

fn to_stored(id: MessageId, row: RevisionRow) -> StoredRevision {
    StoredRevision {
        seq: row.seq,
        entry: RevisionEntry {
            id,
            channel: row.channel,
            branch: row.branch,
            commit: row.commit,
            submitter: row.submitter,
            created_at_ms: row.created_at_ms,
            manifest_hash: row.manifest_hash,
            manifest_size: row.manifest_size,
            received_at: row.received_at,
            envelope: row.envelope,
        },
    }
}

/// Whether header `a` (created_at_ms, id) wins over `b` for the same name.
fn wins(a: (u64, &MessageId), b: (u64, &MessageId)) -> bool {
    (a.0, a.1.as_bytes()) > (b.0, b.1.as_bytes())
}

impl StoreWriter<'_> {
    /// Insert a verified revision header unless its id is already present (union merge), and make
    /// it the visible header of its (channel, commit, submitter) when it wins (later
    /// `created_at_ms`, then larger id). Charges its envelope to the submitter's usage.
    pub fn insert_revision(&mut self, entry: &RevisionEntry) -> Result<RevisionInserted, StoreError> {
        let id = entry.id.as_bytes();
        {
            let table = self.txn.open_table(REVISIONS).ctx("opening table revisions")?;
            if let Some(existing) = table.get(id).ctx("reading revisions")? {
                let row = decode::<RevisionRow>(TABLE, &entry.id, existing.value())?;
                let visible = self.visible_id(&entry.channel, &entry.commit, &entry.submitter)? == Some(entry.id);
                return Ok(RevisionInserted { new: false, seq: row.seq, visible });
            }
        }
        let seq = self.next_counter(META_NEXT_REV_SEQ)?;
        let row = RevisionRow {
            seq,
            channel: entry.channel.clone(),
            branch: entry.branch.clone(),
            commit: entry.commit.clone(),
            submitter: entry.submitter,
            created_at_ms: entry.created_at_ms,
            manifest_hash: entry.manifest_hash,
            manifest_size: entry.manifest_size,
            received_at: entry.received_at,
            envelope: entry.envelope.clone(),
        };
        let bytes = encode(TABLE, &entry.id, &row)?;
        self.txn
            .open_table(REVISIONS)
            .ctx("opening table revisions")?
            .insert(id, bytes.as_slice())
            .ctx("writing revisions")?;
        self.txn
            .open_table(REVISION_SEQ)
            .ctx("opening table revision_seq")?
            .insert(seq, id)
            .ctx("writing revision_seq")?;
        self.txn
            .open_table(REVISIONS_BY_MANIFEST)
            .ctx("opening table revisions_by_manifest")?
            .insert((&entry.manifest_hash, id), ())
            .ctx("writing revisions_by_manifest")?;
        self.revision_index_changed = true;
        let visible = match self.visible_id(&entry.channel, &entry.commit, &entry.submitter)? {
            None => true,
            Some(current) => {
                let current_at = self.created_at_of(&current)?;
                wins((entry.created_at_ms, &entry.id), (current_at, &current))
            }
        };
        if visible {
            self.txn
                .open_table(REVISIONS_BY_NAME)
                .ctx("opening table revisions_by_name")?
                .insert((entry.channel.as_str(), entry.commit.as_str(), entry.submitter.as_bytes()), id)
                .ctx("writing revisions_by_name")?;
        }
        self.xor_into(META_REV_XOR, id)?;
        self.charge_signer(&entry.submitter, entry.envelope.len() as u64)?;
        Ok(RevisionInserted { new: true, seq, visible })
    }

    /// [`StoreWriter::insert_revision`] unless its submitter (the signer) would exceed `limit`:
    /// `None` then, and nothing is written. A header already stored is never refused.
    pub fn insert_revision_within(
        &mut self,
        entry: &RevisionEntry,
        limit: Option<&SignerLimit>,
    ) -> Result<Option<RevisionInserted>, StoreError> {
        let known = self
            .txn
            .open_table(REVISIONS)
            .ctx("opening table revisions")?
            .get(entry.id.as_bytes())
            .ctx("reading revisions")?
            .is_some();
        if !known && !self.admits(&entry.submitter, entry.envelope.len(), limit)? {
            return Ok(None);
        }
        self.insert_revision(entry).map(Some)
    }

    fn visible_id(&self, channel: &str, commit: &str, submitter: &NodeId) -> Result<Option<MessageId>, StoreError> {
        let table = self.txn.open_table(REVISIONS_BY_NAME).ctx("opening table revisions_by_name")?;
        let row = table.get((channel, commit, submitter.as_bytes())).ctx("reading revisions_by_name")?;
        Ok(row.map(|v| MessageId::from_bytes(*v.value())))
    }

    fn created_at_of(&self, id: &MessageId) -> Result<u64, StoreError> {
        let table = self.txn.open_table(REVISIONS).ctx("opening table revisions")?;
        let row = table.get(id.as_bytes()).ctx("reading revisions")?.ok_or_else(|| StoreError::Corrupt {
            table: "revisions_by_name",
            key: id.to_string(),
            reason: "index entry points at a missing revision".to_string(),
        })?;
        Ok(decode::<RevisionRow>(TABLE, id, row.value())?.created_at_ms)
    }
}

/// Load the revision `id`, `None` when absent.
pub(crate) fn load(txn: &ReadTransaction, id: &MessageId) -> Result<Option<StoredRevision>, StoreError> {
    let table = txn.open_table(REVISIONS).ctx("opening table revisions")?;
    let row = table.get(id.as_bytes()).ctx("reading revisions")?;
    row.map(|v| decode::<RevisionRow>(TABLE, id, v.value()).map(|r| to_stored(*id, r))).transpose()
}

/// Load the revision `id`, which index `index` names: its absence is corruption.
pub(crate) fn require(
    txn: &ReadTransaction,
    id: &MessageId,
    index: &'static str,
) -> Result<StoredRevision, StoreError> {
    load(txn, id)?.ok_or_else(|| StoreError::Corrupt {
        table: index,
        key: id.to_string(),
        reason: "index entry points at a missing revision".to_string(),
    })
}

/// Whether `id` is the visible header of its name.
pub(crate) fn is_visible(txn: &ReadTransaction, r: &StoredRevision) -> Result<bool, StoreError> {
    let table = txn.open_table(REVISIONS_BY_NAME).ctx("opening table revisions_by_name")?;
    let e = &r.entry;
    let row =
        table.get((e.channel.as_str(), e.commit.as_str(), e.submitter.as_bytes())).ctx("reading revisions_by_name")?;
    Ok(row.is_some_and(|v| v.value() == e.id.as_bytes()))
}

/// Newest first (`created_at_ms` descending, then id descending): the order of every listing.
fn newest_first(v: &mut [StoredRevision]) {
    v.sort_by(|a, b| {
        (b.entry.created_at_ms, b.entry.id.as_bytes()).cmp(&(a.entry.created_at_ms, a.entry.id.as_bytes()))
    });
}

impl Store {
    /// Insert a revision header in its own durable transaction (see
    /// [`StoreWriter::insert_revision`]).
    pub fn insert_revision(&self, entry: &RevisionEntry) -> Result<RevisionInserted, StoreError> {
        self.write(|w| w.insert_revision(entry))
    }

    /// One revision header by message id (visible or superseded).
    pub fn get_revision(&self, id: &MessageId) -> Result<Option<StoredRevision>, StoreError> {
        load(&self.read()?, id)
    }

    /// Whether a revision header with this id is stored.
    pub fn has_revision(&self, id: &MessageId) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(REVISIONS).ctx("opening table revisions")?;
        Ok(table.get(id.as_bytes()).ctx("reading revisions")?.is_some())
    }

    /// Revision headers in insertion order with sequence number `>= cursor`, at most `limit`
    /// (0 = all), superseded ones included. To page: pass the last returned `seq + 1`.
    pub fn revisions_since(&self, cursor: u64, limit: usize) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let seq = txn.open_table(REVISION_SEQ).ctx("opening table revision_seq")?;
        let mut out = Vec::new();
        for item in seq.range(cursor..).ctx("scanning revision_seq")? {
            let (_, v) = item.ctx("scanning revision_seq")?;
            out.push(require(&txn, &MessageId::from_bytes(*v.value()), "revision_seq")?);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Count, XOR fingerprint and next sequence number of the revision header set.
    pub fn revision_summary(&self) -> Result<SetSummary, StoreError> {
        let txn = self.read()?;
        let count = txn.open_table(REVISIONS).ctx("opening table revisions")?.len().ctx("counting")?;
        Ok(SetSummary { count, xor: meta_array32(&txn, META_REV_XOR)?, next_seq: meta_u64(&txn, META_NEXT_REV_SEQ)? })
    }

    /// The visible headers, newest first, of `channel` (every channel when `None`) and, within
    /// them, of `branch` (every branch when `None`).
    pub fn list_revisions(
        &self,
        channel: Option<&str>,
        branch: Option<&str>,
    ) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(REVISIONS_BY_NAME).ctx("opening table revisions_by_name")?;
            let range = match channel {
                Some(c) => index.range((c, "", &LOW)..=(c, "\u{10ffff}", &HIGH)),
                None => index.range::<(&str, &str, &[u8; 32])>(..),
            }
            .ctx("scanning revisions_by_name")?;
            let mut ids = Vec::new();
            for item in range {
                let (_, v) = item.ctx("scanning revisions_by_name")?;
                ids.push(MessageId::from_bytes(*v.value()));
            }
            ids
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let r = require(&txn, id, "revisions_by_name")?;
            if branch.is_none_or(|b| r.entry.branch == b) {
                out.push(r);
            }
        }
        newest_first(&mut out);
        Ok(out)
    }

    /// The visible headers of `channel@commit`, one per submitter, newest first.
    pub fn revision_by_name(&self, channel: &str, commit: &str) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(REVISIONS_BY_NAME).ctx("opening table revisions_by_name")?;
            let mut ids = Vec::new();
            for item in
                index.range((channel, commit, &LOW)..=(channel, commit, &HIGH)).ctx("scanning revisions_by_name")?
            {
                let (_, v) = item.ctx("scanning revisions_by_name")?;
                ids.push(MessageId::from_bytes(*v.value()));
            }
            ids
        };
        let mut out = ids.iter().map(|id| require(&txn, id, "revisions_by_name")).collect::<Result<Vec<_>, _>>()?;
        newest_first(&mut out);
        Ok(out)
    }
}
