//! What this node knows about each derivation of a revision, as the QA engine's input
//! ([`DrvFacts`]): the mesh machine's state (claims, failures, designation) and the signed
//! attestations in the store, judged under the node's trust policy.
//!
//! The attestations are read from the store's indexed rows, which hold only fields of messages
//! that were verified before they were stored (DESIGN invariant 2); nothing is verified again here,
//! so a revision of 100,000 jobs is assessed in one pass over its rows.

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::{DrvFacts, FactState, OutputFacts, OutputVerdict};
use buildmesh_protocol::revision::Manifest;
use buildmesh_protocol::store_path::StorePath;

use super::index::{AttestationIndex, IndexState, IndexedDrv};
use crate::mesh::{DrvInMesh, MAX_JOBS_PER_CALL, MeshHandle};
use crate::store::{Store, StoreError};

/// Why facts could not be gathered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The mesh driver did not answer.
    #[error("mesh: {0}")]
    Mesh(String),
}

/// The mesh machine's view of every derivation of `manifest` (in manifest order), or `Unknown`
/// for each on a node without a mesh.
pub async fn mesh_states(mesh: Option<&MeshHandle>, manifest: &Manifest) -> Result<Vec<DrvInMesh>, FactsError> {
    let Some(mesh) = mesh else {
        return Ok(vec![DrvInMesh::Unknown; manifest.drvs.len()]);
    };
    let mut out = Vec::with_capacity(manifest.drvs.len());
    for chunk in manifest.drvs.chunks(MAX_JOBS_PER_CALL) {
        let drvs = chunk.iter().map(|d| d.drv.clone()).collect();
        out.extend(mesh.jobs(drvs).await.map_err(|e| FactsError::Mesh(e.to_string()))?);
    }
    Ok(out)
}

/// The facts of every derivation of `manifest` (in manifest order), from the attestation index
/// and the mesh states of [`mesh_states`] (blocking: run it on the blocking pool).
pub fn gather(
    store: &Store,
    index: &AttestationIndex,
    trust: &TrustConfig,
    manifest: &Manifest,
    states: &[DrvInMesh],
    now_ms: u64,
) -> Result<Vec<DrvFacts>, FactsError> {
    let st = index.refreshed(store)?;
    let judge = Judge::new(store, &st, trust, now_ms);
    let mut out = Vec::with_capacity(manifest.drvs.len());
    let mut accepted: Vec<(usize, usize, [u8; 32])> = Vec::new();
    for (i, d) in manifest.drvs.iter().enumerate() {
        let state = states.get(i).unwrap_or(&DrvInMesh::Unknown);
        let paths: Vec<&StorePath> = d.outputs.iter().map(|o| &o.path).collect();
        let (f, acc) = judge.facts(&d.drv, &paths, state)?;
        accepted.extend(acc.into_iter().map(|(o, h)| (i, o, h)));
        out.push(f);
    }
    judge.fill_compressed(&mut out, &accepted)?;
    Ok(out)
}

/// The facts of one derivation whose outputs are `outputs` (from a manifest or its `.drv`).
pub fn facts_of(
    store: &Store,
    index: &AttestationIndex,
    trust: &TrustConfig,
    drv: &StorePath,
    outputs: &[&StorePath],
    state: &DrvInMesh,
    now_ms: u64,
) -> Result<DrvFacts, FactsError> {
    let st = index.refreshed(store)?;
    let judge = Judge::new(store, &st, trust, now_ms);
    let (f, acc) = judge.facts(drv, outputs, state)?;
    let mut v = vec![f];
    let acc: Vec<(usize, usize, [u8; 32])> = acc.into_iter().map(|(o, h)| (0, o, h)).collect();
    judge.fill_compressed(&mut v, &acc)?;
    Ok(v.pop().unwrap_or_default())
}

/// The trust rule applied to the index.
struct Judge<'a> {
    store: &'a Store,
    st: &'a IndexState,
    /// Per builder index: trusted.
    trusted: Vec<bool>,
    /// Per builder index: the node id as the answers print it.
    names: Vec<String>,
    quorum: usize,
    now_ms: u64,
}

/// One (NarHash, NarSize) of an output and the distinct builders (indices) that attested it.
type Group<'h> = ((&'h [u8; 32], u64), Vec<u32>);

/// (output index, accepted NarHash) of the available outputs of one derivation.
type AcceptedOutputs = Vec<(usize, [u8; 32])>;

impl<'a> Judge<'a> {
    fn new(store: &'a Store, st: &'a IndexState, trust: &TrustConfig, now_ms: u64) -> Judge<'a> {
        Judge {
            store,
            st,
            trusted: st.builders.iter().map(|b| trust.is_trusted(b)).collect(),
            names: st.builders.iter().map(|b| b.to_string()).collect(),
            quorum: trust.quorum.max(1),
            now_ms,
        }
    }

    fn is_trusted(&self, builder: u32) -> bool {
        self.trusted.get(builder as usize).copied().unwrap_or(false)
    }

    fn facts(
        &self,
        drv: &StorePath,
        outputs: &[&StorePath],
        state: &DrvInMesh,
    ) -> Result<(DrvFacts, AcceptedOutputs), FactsError> {
        let empty = IndexedDrv::default();
        let rec = self.st.drv(drv.digest()).unwrap_or(&empty);
        let mut trusted_builders: Vec<u32> = Vec::new();
        let mut other_builders: Vec<u32> = Vec::new();
        let mut built_at_ms: Option<u64> = None;
        for a in &rec.attestations {
            if self.is_trusted(a.builder) {
                if !trusted_builders.contains(&a.builder) {
                    trusted_builders.push(a.builder);
                }
                built_at_ms = Some(built_at_ms.map_or(a.received_at, |t| t.min(a.received_at)));
            } else if !other_builders.contains(&a.builder) {
                other_builders.push(a.builder);
            }
        }
        let mut output_facts = Vec::with_capacity(outputs.len());
        let mut accepted_outputs = Vec::new();
        let mut verdict: Option<OutputVerdict> = None;
        for (oi, p) in outputs.iter().enumerate() {
            // (NarHash, NarSize) -> distinct builders, for this output.
            let mut groups: Vec<Group<'_>> = Vec::new();
            for a in &rec.attestations {
                for o in a.outputs.iter().filter(|o| o.path == *p.digest()) {
                    let key = (&o.nar_hash, o.nar_size);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, b)) if !b.contains(&a.builder) => b.push(a.builder),
                        Some(_) => {}
                        None => groups.push((key, vec![a.builder])),
                    }
                }
            }
            let quorate: Vec<&Group<'_>> = groups
                .iter()
                .filter(|(_, b)| b.iter().filter(|n| self.is_trusted(**n)).count() >= self.quorum)
                .collect();
            let (available, nar_size) = match quorate.as_slice() {
                [one] => {
                    accepted_outputs.push((oi, *one.0.0));
                    (true, one.0.1)
                }
                _ => (false, 0),
            };
            output_facts.push(OutputFacts { path: (*p).clone(), available, nar_size, nar_size_compressed: None });
            let mut builders: Vec<u32> = groups.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            builders.sort_unstable();
            builders.dedup();
            let v = match (builders.len(), groups.len()) {
                (0, _) => continue,
                (_, n) if n > 1 => OutputVerdict::NotMatching,
                (1, _) => OutputVerdict::Single,
                _ => OutputVerdict::Matching,
            };
            verdict = Some(match (verdict, v) {
                (Some(OutputVerdict::NotMatching), _) | (_, OutputVerdict::NotMatching) => OutputVerdict::NotMatching,
                (Some(OutputVerdict::Single), _) | (_, OutputVerdict::Single) => OutputVerdict::Single,
                _ => OutputVerdict::Matching,
            });
        }
        let succeeded = !trusted_builders.is_empty();
        let failed_in_mesh = matches!(state, DrvInMesh::Tracked(v) if v.state == "failed");
        let counted_failure = rec.failed_by.iter().any(|b| self.is_trusted(*b)) || failed_in_mesh;
        let mut failures = Vec::new();
        if !succeeded && counted_failure {
            for f in crate::audit::failures_of(self.store, drv).unwrap_or_default() {
                let trusted = f.public_key.parse::<NodeId>().map(|n| self.trusted_node(&n)).unwrap_or(false);
                if trusted || failed_in_mesh {
                    failures.push((f.public_key, f.reason));
                }
            }
        }
        let state = if succeeded {
            FactState::Succeeded
        } else {
            match state {
                DrvInMesh::Tracked(v) if v.state == "failed" => FactState::Failed,
                DrvInMesh::Tracked(v) if v.building || v.lease_expiries_ms.iter().any(|t| *t > self.now_ms) => {
                    FactState::Building
                }
                // Signed failures of trusted builders and nobody building it: failed, also where
                // the machine still tracks it as active (a node that learnt the failures by
                // anti-entropy never saw the job's submission, so it does not decide).
                _ if counted_failure => FactState::Failed,
                DrvInMesh::Tracked(v) if v.state == "active" => FactState::Queued,
                DrvInMesh::Pending => FactState::Queued,
                _ => FactState::Unknown,
            }
        };
        let builders = trusted_builders
            .iter()
            .chain(other_builders.iter())
            .filter_map(|b| self.names.get(*b as usize).cloned())
            .collect();
        let facts = DrvFacts {
            state,
            verdict: if succeeded { verdict } else { None },
            failures,
            builders,
            outputs: output_facts,
            built_at_ms,
        };
        Ok((facts, accepted_outputs))
    }

    fn trusted_node(&self, n: &NodeId) -> bool {
        self.st.builders.iter().position(|b| b == n).is_some_and(|i| self.is_trusted(i as u32))
    }

    /// Fill in the compressed sizes of the accepted NARs this node holds (one store read).
    fn fill_compressed(&self, facts: &mut [DrvFacts], accepted: &[(usize, usize, [u8; 32])]) -> Result<(), StoreError> {
        let hashes: Vec<[u8; 32]> = accepted.iter().map(|(_, _, h)| *h).collect();
        let sizes = self.store.compressed_sizes(&hashes)?;
        for ((d, o, _), size) in accepted.iter().zip(sizes) {
            if let Some(out) = facts.get_mut(*d).and_then(|f| f.outputs.get_mut(*o)) {
                out.nar_size_compressed = size;
            }
        }
        Ok(())
    }
}
