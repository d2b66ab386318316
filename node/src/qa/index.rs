//! An in-memory index of the store's attestations and failures by derivation, for the QA answers.
//!
//! A revision of 100,000 jobs asks about 120,000 derivations and 360,000 attestations at once;
//! reading and decoding each stored row per question took seconds. The index keeps only what the
//! answers use (builder, output path digest, NarHash, NarSize, receive time; who failed) and
//! follows the store's insertion sequences ([`Store::attestations_since`], the anti-entropy
//! cursors' sequences), so each question first ingests what was stored since the last one and
//! then reads memory. Rows are stored only after their message verified (DESIGN invariant 2), so
//! nothing is verified again here. About 100 bytes per attestation.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use buildmesh_protocol::id::NodeId;

use crate::store::{Store, StoreError};

/// Rows ingested per store read.
const PAGE: usize = 10_000;

/// One output named by one attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedOutput {
    /// The output path's digest (the 32-character hash part, as bytes).
    pub path: [u8; 20],
    /// Its sha256 NarHash digest.
    pub nar_hash: [u8; 32],
    /// Its NarSize.
    pub nar_size: u64,
}

/// One attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedAttestation {
    /// Index into [`IndexState::builders`].
    pub builder: u32,
    /// When this node received it (unix ms).
    pub received_at: u64,
    /// Its outputs.
    pub outputs: Box<[IndexedOutput]>,
}

/// What the store holds about one derivation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexedDrv {
    /// Its attestations (one per message; a builder may appear twice).
    pub attestations: Vec<IndexedAttestation>,
    /// Builders (indices) that signed a failure of it.
    pub failed_by: Vec<u32>,
}

/// The index's content.
#[derive(Debug, Default)]
pub struct IndexState {
    next_attestation: u64,
    next_failure: u64,
    /// Every builder seen, by index.
    pub builders: Vec<NodeId>,
    builder_index: HashMap<NodeId, u32>,
    /// By `.drv` path digest.
    pub drvs: HashMap<[u8; 20], IndexedDrv>,
}

impl IndexState {
    fn builder(&mut self, node: NodeId) -> u32 {
        if let Some(i) = self.builder_index.get(&node) {
            return *i;
        }
        let i = u32::try_from(self.builders.len()).unwrap_or(u32::MAX);
        self.builders.push(node);
        self.builder_index.insert(node, i);
        i
    }

    /// The derivation whose path has this digest.
    pub fn drv(&self, digest: &[u8; 20]) -> Option<&IndexedDrv> {
        self.drvs.get(digest)
    }
}

/// The index, shared by every QA question of a node.
#[derive(Debug, Default)]
pub struct AttestationIndex {
    state: RwLock<IndexState>,
}

impl AttestationIndex {
    /// Ingest what the store gained since the last call, then hold the index for reading
    /// (blocking; several readers at once, e.g. the two revisions of a compare).
    pub fn refreshed(&self, store: &Store) -> Result<RwLockReadGuard<'_, IndexState>, StoreError> {
        self.ingest(store)?;
        Ok(self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn ingest(&self, store: &Store) -> Result<(), StoreError> {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        loop {
            let page = store.attestations_since(st.next_attestation, PAGE)?;
            let n = page.len();
            for a in page {
                st.next_attestation = st.next_attestation.max(a.seq + 1);
                let e = a.entry;
                let builder = st.builder(e.builder);
                let outputs = e
                    .outputs
                    .iter()
                    .filter_map(|o| {
                        let nar_hash: [u8; 32] = o.nar_hash.digest().try_into().ok()?;
                        Some(IndexedOutput { path: *o.path.digest(), nar_hash, nar_size: o.nar_size })
                    })
                    .collect();
                st.drvs.entry(*e.drv.digest()).or_default().attestations.push(IndexedAttestation {
                    builder,
                    received_at: e.received_at,
                    outputs,
                });
            }
            if n < PAGE {
                break;
            }
        }
        loop {
            let page = store.failures_since(st.next_failure, PAGE)?;
            let n = page.len();
            for f in page {
                st.next_failure = st.next_failure.max(f.seq + 1);
                let builder = st.builder(f.entry.builder);
                let d = st.drvs.entry(*f.entry.drv.digest()).or_default();
                if !d.failed_by.contains(&builder) {
                    d.failed_by.push(builder);
                }
            }
            if n < PAGE {
                break;
            }
        }
        Ok(())
    }
}
