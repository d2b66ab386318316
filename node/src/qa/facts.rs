//! What this node knows about each derivation of a revision, as the QA engine's input
//! ([`DrvFacts`]): the mesh machine's state (claims, failures, designation) and the signed
//! attestations in the store, judged under the node's trust policy.
//!
//! The attestations are read from the store's indexed rows, which hold only fields of messages
//! that were verified before they were stored (DESIGN invariant 2); nothing is verified again here,
//! so a revision of 100,000 jobs is assessed in one pass over its rows.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::{DrvFacts, FactState, OutputFacts, OutputVerdict};
use buildmesh_protocol::revision::Manifest;
use buildmesh_protocol::store_path::StorePath;

use crate::mesh::{DrvInMesh, MAX_JOBS_PER_CALL, MeshHandle};
use crate::store::{Store, StoreError};

/// Per output: (NarHash digest, NarSize) -> the distinct builders that attested it.
type Groups = BTreeMap<(Vec<u8>, u64), BTreeSet<NodeId>>;

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

/// The facts of every derivation of `manifest` (in manifest order), from the store's
/// attestations and failures and the mesh states of [`mesh_states`] (blocking: run it on the
/// blocking pool).
pub fn gather(
    store: &Store,
    trust: &TrustConfig,
    manifest: &Manifest,
    states: &[DrvInMesh],
    now_ms: u64,
) -> Result<Vec<DrvFacts>, FactsError> {
    let mut out = Vec::with_capacity(manifest.drvs.len());
    for (i, d) in manifest.drvs.iter().enumerate() {
        let state = states.get(i).unwrap_or(&DrvInMesh::Unknown);
        let paths: Vec<&StorePath> = d.outputs.iter().map(|o| &o.path).collect();
        out.push(facts_of(store, trust, &d.drv, &paths, state, now_ms)?);
    }
    Ok(out)
}

/// The facts of one derivation whose outputs are `outputs` (from a manifest or its `.drv`).
pub fn facts_of(
    store: &Store,
    trust: &TrustConfig,
    drv: &StorePath,
    outputs: &[&StorePath],
    state: &DrvInMesh,
    now_ms: u64,
) -> Result<DrvFacts, FactsError> {
    let attestations = store.attestations_for_drv(drv)?;
    // Per output: (NarHash, NarSize) -> distinct builders.
    let mut groups: BTreeMap<&StorePath, Groups> = BTreeMap::new();
    let mut trusted_builders: BTreeSet<NodeId> = BTreeSet::new();
    let mut other_builders: BTreeSet<NodeId> = BTreeSet::new();
    let mut built_at_ms: Option<u64> = None;
    for a in &attestations {
        let e = &a.entry;
        if trust.is_trusted(&e.builder) {
            trusted_builders.insert(e.builder);
            built_at_ms = Some(built_at_ms.map_or(e.received_at, |t| t.min(e.received_at)));
        } else {
            other_builders.insert(e.builder);
        }
        for o in &e.outputs {
            if let Some(p) = outputs.iter().find(|p| ***p == o.path) {
                groups.entry(p).or_default().entry((o.nar_hash.digest().to_vec(), o.nar_size)).or_default().insert(e.builder);
            }
        }
    }
    let mut output_facts = Vec::with_capacity(outputs.len());
    let mut verdict: Option<OutputVerdict> = None;
    for p in outputs {
        let g = groups.get(p);
        let (available, nar_size) = g.map_or((false, 0), |g| accepted(g, trust));
        let nar_size_compressed = if available { compressed_size(store, g, trust)? } else { None };
        output_facts.push(OutputFacts { path: (*p).clone(), available, nar_size, nar_size_compressed });
        if let Some(g) = g {
            let builders: BTreeSet<&NodeId> = g.values().flatten().collect();
            let v = match (builders.len(), g.len()) {
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
    }
    let succeeded = !trusted_builders.is_empty();
    let mut failures = Vec::new();
    let failed_in_mesh = matches!(state, DrvInMesh::Tracked(v) if v.state == "failed");
    if !succeeded {
        let stored = crate::audit::failures_of(store, drv).unwrap_or_default();
        let counted: Vec<_> = stored
            .into_iter()
            .filter(|f| {
                f.public_key
                    .parse::<NodeId>()
                    .map(|n| trust.is_trusted(&n) || failed_in_mesh)
                    .unwrap_or(failed_in_mesh)
            })
            .collect();
        failures = counted.into_iter().map(|f| (f.public_key, f.reason)).collect();
    }
    let state = if succeeded {
        FactState::Succeeded
    } else {
        match state {
            DrvInMesh::Tracked(v) if v.state == "failed" => FactState::Failed,
            DrvInMesh::Tracked(v) if v.building || v.lease_expiries_ms.iter().any(|t| *t > now_ms) => {
                FactState::Building
            }
            DrvInMesh::Tracked(v) if v.state == "active" => FactState::Queued,
            DrvInMesh::Pending => FactState::Queued,
            // Not (or no longer) tracked by the machine: failures by trusted builders decide.
            _ if !failures.is_empty() => FactState::Failed,
            _ => FactState::Unknown,
        }
    };
    let builders = trusted_builders.iter().chain(other_builders.iter()).map(|n| n.to_string()).collect();
    Ok(DrvFacts {
        state,
        verdict: if succeeded { verdict } else { None },
        failures,
        builders,
        outputs: output_facts,
        built_at_ms,
    })
}

/// Whether one (NarHash, NarSize) has `quorum` distinct trusted builders and no other has (the
/// gateway's rule, [`buildmesh_protocol::mesh::assess_output`]), and its NarSize.
fn accepted(groups: &Groups, trust: &TrustConfig) -> (bool, u64) {
    let quorate: Vec<&(Vec<u8>, u64)> = groups
        .iter()
        .filter(|(_, b)| b.iter().filter(|n| trust.is_trusted(n)).count() >= trust.quorum.max(1))
        .map(|(k, _)| k)
        .collect();
    match quorate.as_slice() {
        [one] => (true, one.1),
        _ => (false, 0),
    }
}

/// The compressed size of the accepted NAR when this node holds its blob.
fn compressed_size(
    store: &Store,
    groups: Option<&Groups>,
    trust: &TrustConfig,
) -> Result<Option<u64>, StoreError> {
    let Some(groups) = groups else { return Ok(None) };
    let Some(((digest, _), _)) = groups
        .iter()
        .find(|(_, b)| b.iter().filter(|n| trust.is_trusted(n)).count() >= trust.quorum.max(1))
    else {
        return Ok(None);
    };
    let Ok(hash) = <[u8; 32]>::try_from(digest.as_slice()) else { return Ok(None) };
    let nix = buildmesh_protocol::hash::NixHash::sha256(hash);
    Ok(store.blob_by_nar_hash(&nix)?.map(|b| b.compressed_size))
}
