//! The quorum gateway: the narinfo of an output is served only when the trust policy accepts it.
//!
//! For `GET /<hash>.narinfo` the gateway finds the output path (an index of attested outputs by
//! hash part, kept by the driver, or a locally registered path), verifies every stored attestation
//! of it again, and asks [`assess_output`] under the node's trust policy (its own key plus
//! `trusted_keys`, `quorum` distinct trusted builders with the same NarHash). When a NarHash is
//! accepted, the narinfo lists every agreeing builder's `Sig` line (the Nix signatures they made
//! over the Nix fingerprint, so a client that trusts any of their keys accepts it) and points at
//! the local zstd blob. A NAR the node does not hold yet is fetched from an agreeing builder first
//! (verified against the accepted NarHash) and registered, so `/nar/…` then serves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::{OutputClaim, TrustConfig, assess_output};
use buildmesh_protocol::narinfo::{ContentAddress, Deriver, NarInfo};
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::nixkey::NixSignature;
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Attestation, OutputAttestation};

use super::fetch::{FetchError, Fetcher, peer_of};
use crate::store::{PathInfo, StoreError, unix_ms};

/// Output paths by hash part, for narinfo requests (which name only the hash part).
#[derive(Debug, Default)]
pub struct OutputIndex {
    map: RwLock<HashMap<String, StorePath>>,
}

impl OutputIndex {
    /// Remember the outputs of an attestation.
    pub fn add(&self, a: &Attestation) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for o in a.outputs.values() {
            map.entry(o.path.hash_part()).or_insert_with(|| o.path.clone());
        }
    }

    /// The output with this hash part, if an attestation named it.
    pub fn get(&self, hash_part: &str) -> Option<StorePath> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(hash_part).cloned()
    }

    /// Number of outputs indexed.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a narinfo could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The accepted NAR could not be fetched from any agreeing builder.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// What the quorum says about one output.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The output.
    pub path: StorePath,
    /// The accepted NarHash.
    pub nar_hash: [u8; 32],
    /// The accepted NarSize.
    pub nar_size: u64,
    /// The agreeing attestations' output records, one per builder.
    pub agreeing: BTreeMap<NodeId, OutputAttestation>,
}

/// The accepted NarHash of `path` from the verified `attestations`, with the agreeing builders.
pub fn accepted_of(path: &StorePath, attestations: &[Attestation], trust: &TrustConfig) -> Option<Accepted> {
    let outputs: Vec<(&NodeId, &OutputAttestation)> = attestations
        .iter()
        .flat_map(|a| a.outputs.values().filter(|o| o.path == *path).map(move |o| (&a.builder, o)))
        .collect();
    let assessment = assess_output(
        outputs.iter().map(|(b, o)| OutputClaim { builder: b, nar_hash: &o.nar_hash, nar_size: o.nar_size }),
        trust,
    );
    let (hash, size) = assessment.accepted?;
    let mut agreeing = BTreeMap::new();
    let mut digest = None;
    for (b, o) in outputs {
        if o.nar_size == size && NixHash::sha256(o.nar_hash).to_string() == hash {
            digest = Some(o.nar_hash);
            agreeing.entry(*b).or_insert_with(|| o.clone());
        }
    }
    Some(Accepted { path: path.clone(), nar_hash: digest?, nar_size: size, agreeing })
}

/// Serves quorum narinfos. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    fetcher: Fetcher,
    index: Arc<OutputIndex>,
}

impl Gateway {
    /// A gateway over the fetcher's store and trust policy.
    pub fn new(fetcher: Fetcher, index: Arc<OutputIndex>) -> Gateway {
        Gateway { fetcher, index }
    }

    /// The output index.
    pub fn index(&self) -> &Arc<OutputIndex> {
        &self.index
    }

    /// What the quorum accepts for the output with this hash part (blocking).
    pub fn accepted(&self, hash_part: &str) -> Result<Option<Accepted>, GatewayError> {
        let store = &self.fetcher.store;
        let path = match self.index.get(hash_part) {
            Some(p) => p,
            None => match store.path_by_hash_part(hash_part)? {
                Some(info) => info.path,
                None => return Ok(None),
            },
        };
        let mut atts = Vec::new();
        for stored in store.attestations_for_output(&path)? {
            let Ok(signed) = Signed::<Attestation>::decode(&stored.entry.envelope) else { continue };
            match signed.verify() {
                Ok(v) => atts.push(v.into_value()),
                Err(e) => tracing::warn!(path = %path, cause = %e, "stored attestation does not verify; ignored"),
            }
        }
        Ok(accepted_of(&path, &atts, &self.fetcher.trust))
    }

    /// The narinfo of the output with this hash part, if the quorum accepts it (fetching the NAR
    /// from an agreeing builder when this node lacks it).
    pub async fn narinfo(&self, hash_part: &str) -> Result<Option<String>, GatewayError> {
        let this = self.clone();
        let hp = hash_part.to_string();
        let accepted = tokio::task::spawn_blocking(move || this.accepted(&hp))
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))??;
        let Some(acc) = accepted else { return Ok(None) };
        let store = self.fetcher.store.clone();
        let nar_hash = NixHash::sha256(acc.nar_hash);
        let h = nar_hash.clone();
        let mut blob = tokio::task::spawn_blocking(move || store.blob_by_nar_hash(&h))
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))??;
        if blob.as_ref().is_none_or(|b| b.nar_size != acc.nar_size) {
            let peers: Vec<_> = acc.agreeing.keys().filter_map(peer_of).collect();
            tracing::info!(path = %acc.path, builders = peers.len(), "fetching an accepted NAR for the gateway");
            blob = Some(self.fetcher.fetch_nar(acc.nar_hash, acc.nar_size, &peers).await?);
        }
        let Some(blob) = blob else { return Ok(None) };
        let first = acc.agreeing.values().next();
        let references = first.map(|o| o.references.clone()).unwrap_or_default();
        let deriver = first.and_then(|o| o.deriver.clone());
        // Register the path (a no-op when it is registered already, also with other contents).
        let store = self.fetcher.store.clone();
        let info = PathInfo {
            path: acc.path.clone(),
            nar_hash: nar_hash.clone(),
            nar_size: acc.nar_size,
            references: references.clone(),
            deriver: deriver.clone(),
            ca: None,
            blob: blob.blake3,
            registered_at: unix_ms(),
        };
        let local = tokio::task::spawn_blocking(move || -> Result<Option<PathInfo>, StoreError> {
            match store.register_path(&info) {
                Ok(_) | Err(StoreError::PathConflict { .. }) => {}
                Err(e) => return Err(e),
            }
            store.path_info(&info.path)
        })
        .await
        .map_err(|e| GatewayError::Task(e.to_string()))??;
        let sd = &self.fetcher.store_dir;
        let mut ni =
            NarInfo::new(sd.clone(), acc.path.clone(), acc.nar_hash, acc.nar_size, references.into_iter().collect());
        ni.url = format!("nar/{}.nar.zst", nixbase32::encode(&acc.nar_hash));
        ni.compression = Some("zstd".to_string());
        ni.file_size = Some(blob.compressed_size);
        ni.deriver = deriver.map(Deriver::Path);
        ni.ca =
            local.filter(|l| l.nar_hash == nar_hash).and_then(|l| l.ca).and_then(|ca| ContentAddress::parse(&ca).ok());
        let mut sigs: Vec<NixSignature> = acc.agreeing.values().map(|o| o.nix_signature.clone()).collect();
        sigs.sort_by_key(|s| s.to_string());
        sigs.dedup();
        ni.sigs = sigs;
        Ok(Some(ni.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use buildmesh_protocol::identity::NodeKey;

    use super::*;

    use crate::mesh::test_util::att;

    #[test]
    fn quorum_of_trusted_builders_is_needed() {
        let path = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
        let k: Vec<NodeKey> = (1..=3).map(|i| NodeKey::from_seed("k", [i; 32]).unwrap()).collect();
        let trust = TrustConfig { trusted: Some(BTreeSet::from([k[0].node_id(), k[1].node_id()])), quorum: 2 };
        // One trusted builder and one stranger: not enough.
        assert!(accepted_of(&path, &[att(&k[0], &path, 1), att(&k[2], &path, 1)], &trust).is_none());
        // Two trusted builders agree: accepted, with both (and the agreeing stranger) listed.
        let atts = [att(&k[0], &path, 1), att(&k[1], &path, 1), att(&k[2], &path, 1)];
        let acc = accepted_of(&path, &atts, &trust).unwrap();
        assert_eq!(acc.nar_hash, [1; 32]);
        assert_eq!(acc.agreeing.len(), 3);
        // They disagree: nothing is accepted.
        assert!(accepted_of(&path, &[att(&k[0], &path, 1), att(&k[1], &path, 2)], &trust).is_none());
    }

    #[test]
    fn index_finds_outputs_by_hash_part() {
        let path = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
        let idx = OutputIndex::default();
        idx.add(&att(&NodeKey::from_seed("k", [1; 32]).unwrap(), &path, 1));
        assert_eq!(idx.get("an8vyn8v0lxs937kjy709ghv3zp4wms6"), Some(path));
        assert_eq!(idx.len(), 1);
    }
}
