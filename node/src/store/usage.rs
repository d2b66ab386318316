//! Storage used by each signing key (table `signer_usage`): how many signed records (attestations
//! and failures) and how many envelope bytes each key has in the store, so that a caller can
//! refuse a record beyond a key's quota ([`StoreWriter::insert_attestation_within`],
//! [`StoreWriter::insert_failure_within`]). Every insert of a new record counts, limited or not,
//! in the same transaction as the record; a database written before the table existed is counted
//! once when opened ([`backfill`]).

use std::collections::BTreeMap;

use buildmesh_protocol::id::NodeId;
use redb::{ReadableTable, WriteTransaction};

use super::records::{AttestationRow, FailureRow, decode};
use super::tables::{ATTESTATIONS, FAILURES, META, META_SIGNER_USAGE_COMPLETE, SIGNER_USAGE};
use super::{AttestationEntry, DbResultExt, FailureEntry, Inserted, Store, StoreError, StoreWriter};

/// What one signing key has stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignerUsage {
    /// Signed records (attestations and failures).
    pub records: u64,
    /// Their envelope bytes.
    pub bytes: u64,
}

/// The most one signing key may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerLimit {
    /// Most records.
    pub records: u64,
    /// Most envelope bytes.
    pub bytes: u64,
}

impl SignerUsage {
    fn from_bytes(key: &NodeId, v: &[u8]) -> Result<SignerUsage, StoreError> {
        let corrupt = || StoreError::Corrupt {
            table: "signer_usage",
            key: key.to_string(),
            reason: format!("{} bytes, expected 16", v.len()),
        };
        let records: [u8; 8] = v.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(corrupt)?;
        let bytes: [u8; 8] = v.get(8..16).and_then(|s| s.try_into().ok()).ok_or_else(corrupt)?;
        Ok(SignerUsage { records: u64::from_le_bytes(records), bytes: u64::from_le_bytes(bytes) })
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.records.to_le_bytes());
        out[8..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    /// Whether one more record of `len` bytes stays within `limit`.
    pub fn admits(&self, len: u64, limit: &SignerLimit) -> bool {
        self.records < limit.records && self.bytes.saturating_add(len) <= limit.bytes
    }
}

fn usage_in(txn: &WriteTransaction, signer: &NodeId) -> Result<SignerUsage, StoreError> {
    let table = txn.open_table(SIGNER_USAGE).ctx("opening table signer_usage")?;
    let row = table.get(signer.as_bytes()).ctx("reading signer_usage")?;
    row.map(|v| SignerUsage::from_bytes(signer, v.value())).transpose().map(Option::unwrap_or_default)
}

impl StoreWriter<'_> {
    /// Count one more record of `bytes` envelope bytes for `signer`.
    pub(crate) fn charge_signer(&mut self, signer: &NodeId, bytes: u64) -> Result<(), StoreError> {
        let mut u = usage_in(self.txn, signer)?;
        u.records += 1;
        u.bytes = u.bytes.saturating_add(bytes);
        self.txn
            .open_table(SIGNER_USAGE)
            .ctx("opening table signer_usage")?
            .insert(signer.as_bytes(), u.to_bytes().as_slice())
            .ctx("writing signer_usage")?;
        Ok(())
    }

    /// Whether a new record of `signer` with `len` bytes fits `limit` (`None`: no limit).
    pub(crate) fn admits(&self, signer: &NodeId, len: usize, limit: Option<&SignerLimit>) -> Result<bool, StoreError> {
        match limit {
            None => Ok(true),
            Some(l) => Ok(usage_in(self.txn, signer)?.admits(len as u64, l)),
        }
    }

    /// [`StoreWriter::insert_attestation`] unless its builder (the signer) would exceed `limit`:
    /// `None` then, and nothing is written. A record already stored is never refused.
    pub fn insert_attestation_within(
        &mut self,
        entry: &AttestationEntry,
        limit: Option<&SignerLimit>,
    ) -> Result<Option<Inserted>, StoreError> {
        let known = self
            .txn
            .open_table(ATTESTATIONS)
            .ctx("opening table attestations")?
            .get(entry.id.as_bytes())
            .ctx("reading attestations")?
            .is_some();
        if !known && !self.admits(&entry.builder, entry.envelope.len(), limit)? {
            return Ok(None);
        }
        self.insert_attestation(entry).map(Some)
    }

    /// [`StoreWriter::insert_failure`] unless its builder would exceed `limit` (see
    /// [`StoreWriter::insert_attestation_within`]).
    pub fn insert_failure_within(
        &mut self,
        entry: &FailureEntry,
        limit: Option<&SignerLimit>,
    ) -> Result<Option<Inserted>, StoreError> {
        let known = self
            .txn
            .open_table(FAILURES)
            .ctx("opening table failures")?
            .get(entry.id.as_bytes())
            .ctx("reading failures")?
            .is_some();
        if !known && !self.admits(&entry.builder, entry.envelope.len(), limit)? {
            return Ok(None);
        }
        self.insert_failure(entry).map(Some)
    }
}

impl Store {
    /// What `signer` has stored.
    pub fn signer_usage(&self, signer: &NodeId) -> Result<SignerUsage, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SIGNER_USAGE).ctx("opening table signer_usage")?;
        let row = table.get(signer.as_bytes()).ctx("reading signer_usage")?;
        row.map(|v| SignerUsage::from_bytes(signer, v.value())).transpose().map(Option::unwrap_or_default)
    }
}

/// Count every stored record by signer, once: for a database written before `signer_usage`
/// existed (marked done in `meta`). A row that does not decode is left alone and not counted.
pub(crate) fn backfill(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).ctx("opening table meta")?;
    if meta.get(META_SIGNER_USAGE_COMPLETE).ctx("reading meta")?.is_some() {
        return Ok(());
    }
    let mut usage: BTreeMap<NodeId, SignerUsage> = BTreeMap::new();
    let mut count = |builder: NodeId, len: usize| {
        let u = usage.entry(builder).or_default();
        u.records += 1;
        u.bytes = u.bytes.saturating_add(len as u64);
    };
    for item in txn.open_table(ATTESTATIONS).ctx("opening table attestations")?.iter().ctx("scanning attestations")? {
        let (k, v) = item.ctx("scanning attestations")?;
        match decode::<AttestationRow>("attestations", &hex_key(k.value()), v.value()) {
            Ok(row) => count(row.builder, row.envelope.len()),
            Err(e) => tracing::warn!(cause = %e, "not counting an unreadable attestation row"),
        }
    }
    for item in txn.open_table(FAILURES).ctx("opening table failures")?.iter().ctx("scanning failures")? {
        let (k, v) = item.ctx("scanning failures")?;
        match decode::<FailureRow>("failures", &hex_key(k.value()), v.value()) {
            Ok(row) => count(row.builder, row.envelope.len()),
            Err(e) => tracing::warn!(cause = %e, "not counting an unreadable failure row"),
        }
    }
    let mut table = txn.open_table(SIGNER_USAGE).ctx("opening table signer_usage")?;
    for (signer, u) in &usage {
        table.insert(signer.as_bytes(), u.to_bytes().as_slice()).ctx("writing signer_usage")?;
    }
    meta.insert(META_SIGNER_USAGE_COMPLETE, [1u8].as_slice()).ctx("writing meta")?;
    if !usage.is_empty() {
        tracing::info!(signers = usage.len(), "counted the stored records of every signing key");
    }
    Ok(())
}

fn hex_key(k: &[u8; 32]) -> String {
    buildmesh_protocol::id::MessageId::from_bytes(*k).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{attestation, memory_store, node};

    #[test]
    fn records_are_counted_per_signer_and_refused_beyond_the_limit() {
        let (store, dir) = memory_store();
        let limit = SignerLimit { records: 2, bytes: 1000 };
        let insert = |id: u8, builder: u8| {
            store.write(|w| w.insert_attestation_within(&attestation(id, id, builder, &[1]), Some(&limit)))
        };
        assert!(insert(1, 7).unwrap().is_some_and(|i| i.new));
        assert!(insert(2, 7).unwrap().is_some_and(|i| i.new));
        assert_eq!(store.signer_usage(&node(7)).unwrap(), SignerUsage { records: 2, bytes: 80 });
        assert_eq!(insert(3, 7).unwrap(), None, "a third record is over the quota");
        assert!(store.get_attestation(&attestation(3, 3, 7, &[1]).id).unwrap().is_none(), "and not stored");
        assert!(insert(1, 7).unwrap().is_some_and(|i| !i.new), "a known record is not refused");
        assert!(insert(3, 8).unwrap().is_some(), "another signer has its own quota");
        // Bytes count too; no limit means no limit, but the record is still counted.
        let small = SignerLimit { records: 100, bytes: 100 };
        let r = store.write(|w| w.insert_attestation_within(&attestation(4, 4, 8, &[1]), Some(&small)));
        assert!(r.unwrap().is_some(), "40 + 40 bytes fit in 100");
        let r = store.write(|w| w.insert_attestation_within(&attestation(5, 5, 8, &[1]), Some(&small)));
        assert_eq!(r.unwrap(), None, "120 bytes do not");
        store.write(|w| w.insert_attestation_within(&attestation(6, 6, 8, &[1]), None)).unwrap();
        assert_eq!(store.signer_usage(&node(8)).unwrap().records, 3);
        drop(dir);
    }

    #[test]
    fn an_older_database_is_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert_attestation(&attestation(1, 1, 3, &[1])).unwrap();
            store.insert_attestation(&attestation(2, 2, 3, &[1])).unwrap();
            // Forget the counts, as a database written before the table existed.
            let txn = store.db().unwrap().begin_write().unwrap();
            txn.delete_table(SIGNER_USAGE).unwrap();
            txn.open_table(META).unwrap().remove(META_SIGNER_USAGE_COMPLETE).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.signer_usage(&node(3)).unwrap(), SignerUsage { records: 2, bytes: 80 });
    }
}
