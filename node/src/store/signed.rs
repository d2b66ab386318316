//! Signed results: attestations and build failures, merged by union (DESIGN invariant 4).
//!
//! The store keeps the signed envelope bytes opaque, next to the few fields it indexes them by
//! (given by the caller, who verified the message). Each record gets a local insertion sequence
//! number; `*_since(cursor)` pages through them in that order, which is what incremental
//! anti-entropy needs: a peer remembers the last sequence number it fetched from us.

use buildmesh_protocol::id::MessageId;
use buildmesh_protocol::store_path::StorePath;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::records::{AttestationRow, FailureRow, decode, encode};
use super::tables::*;
use super::{
    AttestationEntry, DbResultExt, FailureEntry, Inserted, SetSummary, Store, StoreError, StoreWriter,
    StoredAttestation, StoredFailure, meta_array32, meta_u64,
};

const LOW: [u8; 32] = [0; 32];
const HIGH: [u8; 32] = [0xff; 32];

fn to_attestation(id: MessageId, row: AttestationRow) -> StoredAttestation {
    StoredAttestation {
        seq: row.seq,
        entry: AttestationEntry {
            id,
            drv: row.drv,
            builder: row.builder,
            outputs: row.outputs,
            received_at: row.received_at,
            envelope: row.envelope,
        },
    }
}

fn to_failure(id: MessageId, row: FailureRow) -> StoredFailure {
    StoredFailure {
        seq: row.seq,
        entry: FailureEntry {
            id,
            drv: row.drv,
            builder: row.builder,
            attempt: row.attempt,
            received_at: row.received_at,
            envelope: row.envelope,
        },
    }
}

impl StoreWriter<'_> {
    /// Insert a verified attestation unless its id is already present (union merge). Returns
    /// whether it was new and its sequence number.
    pub fn insert_attestation(&mut self, entry: &AttestationEntry) -> Result<Inserted, StoreError> {
        let id = entry.id.as_bytes();
        {
            let table = self.txn.open_table(ATTESTATIONS).ctx("opening table attestations")?;
            if let Some(existing) = table.get(id).ctx("reading attestations")? {
                let row = decode::<AttestationRow>("attestations", &entry.id, existing.value())?;
                return Ok(Inserted { new: false, seq: row.seq });
            }
        }
        let seq = self.next_counter(META_NEXT_ATT_SEQ)?;
        let row = AttestationRow {
            seq,
            drv: entry.drv.clone(),
            builder: entry.builder,
            outputs: entry.outputs.clone(),
            received_at: entry.received_at,
            envelope: entry.envelope.clone(),
        };
        let bytes = encode("attestations", &entry.id, &row)?;
        self.txn
            .open_table(ATTESTATIONS)
            .ctx("opening table attestations")?
            .insert(id, bytes.as_slice())
            .ctx("writing attestations")?;
        {
            let mut by_output = self.txn.open_table(ATT_BY_OUTPUT).ctx("opening table attestations_by_output")?;
            for out in &entry.outputs {
                let path = out.path.to_string();
                by_output
                    .insert((path.as_str(), entry.builder.as_bytes(), id), ())
                    .ctx("writing attestations_by_output")?;
            }
        }
        for out in &entry.outputs {
            self.index_nar_hash(&out.nar_hash, &out.path)?;
        }
        let drv = entry.drv.to_string();
        self.txn
            .open_table(ATT_BY_DRV)
            .ctx("opening table attestations_by_drv")?
            .insert((drv.as_str(), id), ())
            .ctx("writing attestations_by_drv")?;
        self.txn
            .open_table(ATT_SEQ)
            .ctx("opening table attestation_seq")?
            .insert(seq, id)
            .ctx("writing attestation_seq")?;
        self.xor_into(META_ATT_XOR, id)?;
        self.charge_signer(&entry.builder, entry.envelope.len() as u64)?;
        Ok(Inserted { new: true, seq })
    }

    /// Insert a verified build failure unless its id is already present.
    pub fn insert_failure(&mut self, entry: &FailureEntry) -> Result<Inserted, StoreError> {
        let id = entry.id.as_bytes();
        {
            let table = self.txn.open_table(FAILURES).ctx("opening table failures")?;
            if let Some(existing) = table.get(id).ctx("reading failures")? {
                let row = decode::<FailureRow>("failures", &entry.id, existing.value())?;
                return Ok(Inserted { new: false, seq: row.seq });
            }
        }
        let seq = self.next_counter(META_NEXT_FAIL_SEQ)?;
        let row = FailureRow {
            seq,
            drv: entry.drv.clone(),
            builder: entry.builder,
            attempt: entry.attempt,
            received_at: entry.received_at,
            envelope: entry.envelope.clone(),
        };
        let bytes = encode("failures", &entry.id, &row)?;
        self.txn
            .open_table(FAILURES)
            .ctx("opening table failures")?
            .insert(id, bytes.as_slice())
            .ctx("writing failures")?;
        let drv = entry.drv.to_string();
        self.txn
            .open_table(FAIL_BY_DRV)
            .ctx("opening table failures_by_drv")?
            .insert((drv.as_str(), id), ())
            .ctx("writing failures_by_drv")?;
        self.txn.open_table(FAIL_SEQ).ctx("opening table failure_seq")?.insert(seq, id).ctx("writing failure_seq")?;
        self.xor_into(META_FAIL_XOR, id)?;
        self.charge_signer(&entry.builder, entry.envelope.len() as u64)?;
        Ok(Inserted { new: true, seq })
    }
}

fn ids_since(
    txn: &ReadTransaction,
    table: TableDefinition<u64, &[u8; 32]>,
    cursor: u64,
    limit: usize,
) -> Result<Vec<(u64, MessageId)>, StoreError> {
    let seq = txn.open_table(table).ctx("opening a sequence table")?;
    let mut out = Vec::new();
    for item in seq.range(cursor..).ctx("scanning a sequence table")? {
        let (k, v) = item.ctx("scanning a sequence table")?;
        out.push((k.value(), MessageId::from_bytes(*v.value())));
        if limit != 0 && out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

impl Store {
    /// Insert an attestation in its own transaction (see [`StoreWriter::insert_attestation`]).
    pub fn insert_attestation(&self, entry: &AttestationEntry) -> Result<Inserted, StoreError> {
        self.write(|w| w.insert_attestation(entry))
    }

    /// Insert many attestations in one transaction (a sync batch); returns how many were new.
    pub fn insert_attestations(&self, entries: &[AttestationEntry]) -> Result<usize, StoreError> {
        self.write(|w| {
            let mut new = 0;
            for e in entries {
                new += usize::from(w.insert_attestation(e)?.new);
            }
            Ok(new)
        })
    }

    fn load_attestation(txn: &ReadTransaction, id: &MessageId) -> Result<Option<StoredAttestation>, StoreError> {
        let table = txn.open_table(ATTESTATIONS).ctx("opening table attestations")?;
        let row = table.get(id.as_bytes()).ctx("reading attestations")?;
        row.map(|v| decode::<AttestationRow>("attestations", id, v.value()).map(|r| to_attestation(*id, r))).transpose()
    }

    fn require_attestation(
        txn: &ReadTransaction,
        id: &MessageId,
        index: &'static str,
    ) -> Result<StoredAttestation, StoreError> {
        Store::load_attestation(txn, id)?.ok_or_else(|| StoreError::Corrupt {
            table: index,
            key: id.to_string(),
            reason: "index entry points at a missing attestation".to_string(),
        })
    }

    /// One attestation by message id.
    pub fn get_attestation(&self, id: &MessageId) -> Result<Option<StoredAttestation>, StoreError> {
        Store::load_attestation(&self.read()?, id)
    }

    /// Every attestation naming `output` among its outputs, grouped by builder.
    pub fn attestations_for_output(&self, output: &StorePath) -> Result<Vec<StoredAttestation>, StoreError> {
        let key = output.to_string();
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(ATT_BY_OUTPUT).ctx("opening table attestations_by_output")?;
            let range = index
                .range((key.as_str(), &LOW, &LOW)..=(key.as_str(), &HIGH, &HIGH))
                .ctx("scanning attestations_by_output")?;
            let mut ids = Vec::new();
            for item in range {
                let (k, _) = item.ctx("scanning attestations_by_output")?;
                ids.push(MessageId::from_bytes(*k.value().2));
            }
            ids
        };
        ids.iter().map(|id| Store::require_attestation(&txn, id, "attestations_by_output")).collect()
    }

    /// Every attestation of derivation `drv`.
    pub fn attestations_for_drv(&self, drv: &StorePath) -> Result<Vec<StoredAttestation>, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(ATT_BY_DRV).ctx("opening table attestations_by_drv")?;
            let range =
                index.range((key.as_str(), &LOW)..=(key.as_str(), &HIGH)).ctx("scanning attestations_by_drv")?;
            let mut ids = Vec::new();
            for item in range {
                let (k, _) = item.ctx("scanning attestations_by_drv")?;
                ids.push(MessageId::from_bytes(*k.value().1));
            }
            ids
        };
        ids.iter().map(|id| Store::require_attestation(&txn, id, "attestations_by_drv")).collect()
    }

    /// Attestations in insertion order with sequence number `>= cursor`, at most `limit` (0 =
    /// all). To page: pass the last returned `seq + 1`.
    pub fn attestations_since(&self, cursor: u64, limit: usize) -> Result<Vec<StoredAttestation>, StoreError> {
        let txn = self.read()?;
        let ids = ids_since(&txn, ATT_SEQ, cursor, limit)?;
        ids.iter().map(|(_, id)| Store::require_attestation(&txn, id, "attestation_seq")).collect()
    }

    /// `(seq, id)` of attestations with sequence number `>= cursor`, at most `limit` (0 = all).
    pub fn attestation_ids_since(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, MessageId)>, StoreError> {
        ids_since(&self.read()?, ATT_SEQ, cursor, limit)
    }

    /// Whether an attestation with this id is stored.
    pub fn has_attestation(&self, id: &MessageId) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(ATTESTATIONS).ctx("opening table attestations")?;
        Ok(table.get(id.as_bytes()).ctx("reading attestations")?.is_some())
    }

    /// Count, XOR fingerprint and next sequence number of the attestation set.
    pub fn attestation_summary(&self) -> Result<SetSummary, StoreError> {
        let txn = self.read()?;
        let count = txn.open_table(ATTESTATIONS).ctx("opening table attestations")?.len().ctx("counting")?;
        Ok(SetSummary { count, xor: meta_array32(&txn, META_ATT_XOR)?, next_seq: meta_u64(&txn, META_NEXT_ATT_SEQ)? })
    }

    /// Insert a failure in its own transaction (see [`StoreWriter::insert_failure`]).
    pub fn insert_failure(&self, entry: &FailureEntry) -> Result<Inserted, StoreError> {
        self.write(|w| w.insert_failure(entry))
    }

    fn load_failure(txn: &ReadTransaction, id: &MessageId) -> Result<Option<StoredFailure>, StoreError> {
        let table = txn.open_table(FAILURES).ctx("opening table failures")?;
        let row = table.get(id.as_bytes()).ctx("reading failures")?;
        row.map(|v| decode::<FailureRow>("failures", id, v.value()).map(|r| to_failure(*id, r))).transpose()
    }

    fn require_failure(
        txn: &ReadTransaction,
        id: &MessageId,
        index: &'static str,
    ) -> Result<StoredFailure, StoreError> {
        Store::load_failure(txn, id)?.ok_or_else(|| StoreError::Corrupt {
            table: index,
            key: id.to_string(),
            reason: "index entry points at a missing failure".to_string(),
        })
    }

    /// One failure by message id.
    pub fn get_failure(&self, id: &MessageId) -> Result<Option<StoredFailure>, StoreError> {
        Store::load_failure(&self.read()?, id)
    }

    /// Every failure of derivation `drv`.
    pub fn failures_for_drv(&self, drv: &StorePath) -> Result<Vec<StoredFailure>, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(FAIL_BY_DRV).ctx("opening table failures_by_drv")?;
            let range = index.range((key.as_str(), &LOW)..=(key.as_str(), &HIGH)).ctx("scanning failures_by_drv")?;
            let mut ids = Vec::new();
            for item in range {
                let (k, _) = item.ctx("scanning failures_by_drv")?;
                ids.push(MessageId::from_bytes(*k.value().1));
            }
            ids
        };
        ids.iter().map(|id| Store::require_failure(&txn, id, "failures_by_drv")).collect()
    }

    /// Failures in insertion order with sequence number `>= cursor`, at most `limit` (0 = all).
    pub fn failures_since(&self, cursor: u64, limit: usize) -> Result<Vec<StoredFailure>, StoreError> {
        let txn = self.read()?;
        let ids = ids_since(&txn, FAIL_SEQ, cursor, limit)?;
        ids.iter().map(|(_, id)| Store::require_failure(&txn, id, "failure_seq")).collect()
    }

    /// `(seq, id)` of failures with sequence number `>= cursor`.
    pub fn failure_ids_since(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, MessageId)>, StoreError> {
        ids_since(&self.read()?, FAIL_SEQ, cursor, limit)
    }

    /// Count, XOR fingerprint and next sequence number of the failure set.
    pub fn failure_summary(&self) -> Result<SetSummary, StoreError> {
        let txn = self.read()?;
        let count = txn.open_table(FAILURES).ctx("opening table failures")?.len().ctx("counting")?;
        Ok(SetSummary { count, xor: meta_array32(&txn, META_FAIL_XOR)?, next_seq: meta_u64(&txn, META_NEXT_FAIL_SEQ)? })
    }
}
