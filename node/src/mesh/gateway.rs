//! The quorum gateway: a narinfo (and a NAR) is served only when the trust rule
//! ([`crate::trust`]) accepts the path.
//!
//! For `GET /<hash>.narinfo` the gateway finds the path by its hash part (an index of attested
//! outputs and of the paths they reference, kept by the driver, or a locally registered path)
//! and judges it:
//! - an output: every stored attestation is verified again and [`assess_output`] decides under
//!   the node's trust policy (its own key plus `trusted_keys`, `quorum` distinct trusted builders
//!   with the same NarHash). The narinfo lists every agreeing builder's `Sig` line (the Nix
//!   signatures they made when they built it) and points at the local zstd blob; a NAR the node
//!   does not hold yet is fetched from an agreeing builder first (verified against the accepted
//!   NarHash);
//! - a content-addressed path (an input source, e.g. `builtins.toFile`): served unsigned with its
//!   `CA:` line when its bytes match its path. When the node does not hold it, the gateway asks
//!   the builders of an accepted output that references it for the `.drv` closure of that
//!   output's deriver, whose sources arrive with their bytes checked against their paths; so the
//!   whole closure of an agreed output can be substituted.
//!
//! [`assess_output`]: buildmesh_protocol::mesh::assess_output

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::Attestation;

use super::fetch::{FetchError, Fetcher, peer_of};
use crate::store::{BlobInfo, PathInfo, StoreError, unix_ms};
pub use crate::trust::{Accepted, accepted_of};
use crate::trust::{Judgement, Refusal};

/// Output paths by hash part, for narinfo requests (which name only the hash part), and the
/// paths they reference (with one output that references each).
#[derive(Debug, Default)]
pub struct OutputIndex {
    map: RwLock<HashMap<String, StorePath>>,
    refs: RwLock<HashMap<String, (StorePath, StorePath)>>,
}

impl OutputIndex {
    /// Remember the outputs of an attestation and what they reference.
    pub fn add(&self, a: &Attestation) {
        {
            let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for o in a.outputs.values() {
                map.entry(o.path.hash_part()).or_insert_with(|| o.path.clone());
            }
        }
        let mut refs = self.refs.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for o in a.outputs.values() {
            for r in o.references.iter().filter(|r| **r != o.path) {
                refs.entry(r.hash_part()).or_insert_with(|| (r.clone(), o.path.clone()));
            }
        }
    }

    /// The output with this hash part, if an attestation named it.
    pub fn get(&self, hash_part: &str) -> Option<StorePath> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(hash_part).cloned()
    }

    /// A path with this hash part that an attested output references, and that output.
    pub fn referenced(&self, hash_part: &str) -> Option<(StorePath, StorePath)> {
        self.refs.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(hash_part).cloned()
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
    /// The trust rule could not be applied.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
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

    /// The fetcher (peers' NARs, verified).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// The output index.
    pub fn index(&self) -> &Arc<OutputIndex> {
        &self.index
    }

    /// The path with this hash part (attested output, path an attested output references, or
    /// registered here) and an attested output that references it (blocking).
    fn find(&self, hash_part: &str) -> Result<Option<(StorePath, Option<StorePath>)>, StoreError> {
        if let Some(p) = self.index.get(hash_part) {
            return Ok(Some((p, None)));
        }
        if let Some((p, referrer)) = self.index.referenced(hash_part) {
            return Ok(Some((p, Some(referrer))));
        }
        Ok(self.fetcher.store.path_by_hash_part(hash_part)?.map(|i| (i.path, None)))
    }

    /// What the trust rule says about the output with this hash part (blocking).
    pub fn accepted(&self, hash_part: &str) -> Result<Option<Accepted>, GatewayError> {
        let Some((path, _)) = self.find(hash_part)? else { return Ok(None) };
        Ok(match self.judge(&path)? {
            Judgement::Attested(acc) => Some(acc),
            _ => None,
        })
    }

    fn judge(&self, path: &StorePath) -> Result<Judgement, GatewayError> {
        Ok(crate::trust::judge(&self.fetcher.store, &self.fetcher.store_dir, &self.fetcher.trust, path)?)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Gateway) -> Result<T, GatewayError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this)).await.map_err(|e| GatewayError::Task(e.to_string()))?
    }

    /// The narinfo of the path with this hash part, if the trust rule accepts it (fetching what
    /// this node lacks from the builders first; see the module docs).
    pub async fn narinfo(&self, hash_part: &str) -> Result<Option<String>, GatewayError> {
        let hp = hash_part.to_string();
        let Some((path, referrer)) = self.blocking(move |g| Ok(g.find(&hp)?)).await? else { return Ok(None) };
        let p = path.clone();
        let mut judgement = self.blocking(move |g| g.judge(&p)).await?;
        if let (Judgement::Refused(Refusal::Unattested), Some(referrer)) = (&judgement, referrer) {
            // A path an agreed output references that no one attests: a source, which the
            // builders of that output hold; its bytes are checked against its path on arrival.
            if self.fetch_source(&path, &referrer).await? {
                let p = path.clone();
                judgement = self.blocking(move |g| g.judge(&p)).await?;
            }
        }
        if let Judgement::Refused(Refusal::EmulationExcluded { system: None, .. }) = &judgement {
            // Emulated results of a derivation whose `.drv` is not here: whether they count
            // (`no_emulation_for`) depends on its system, so fetch it from those builders.
            if self.fetch_emulated_drvs(&path).await? {
                let p = path.clone();
                judgement = self.blocking(move |g| g.judge(&p)).await?;
            }
        }
        let acc = match &judgement {
            Judgement::Attested(acc) => acc.clone(),
            Judgement::ContentAddressed(info, _) => {
                let (info, j) = (info.clone(), judgement.clone());
                return self
                    .blocking(move |g| {
                        let blob = g.fetcher.store.blob_info(&info.blob)?;
                        Ok(blob.and_then(|b| {
                            crate::trust::serve::render(
                                &g.fetcher.store_dir,
                                &g.fetcher.trust,
                                &info.path,
                                &j,
                                &b,
                                Some(&info),
                            )
                        }))
                    })
                    .await;
            }
            Judgement::Refused(r) => {
                tracing::debug!(path = %path, reason = %r, "narinfo refused by the trust rule");
                return Ok(None);
            }
        };
        let nar_hash = acc.nix_hash();
        let h = nar_hash.clone();
        let mut blob = self.blocking(move |g| Ok(g.fetcher.store.blob_by_nar_hash(&h)?)).await?;
        if blob.as_ref().is_none_or(|b| b.nar_size != acc.nar_size) {
            let peers: Vec<_> = acc.agreeing.keys().filter_map(peer_of).collect();
            tracing::info!(path = %acc.path, builders = peers.len(), "fetching an accepted NAR for the gateway");
            blob = Some(self.fetcher.fetch_nar(acc.nar_hash, acc.nar_size, &peers).await?);
        }
        let Some(blob) = blob else { return Ok(None) };
        // Register the path (a no-op when it is registered already, also with other contents:
        // the registration is only a local copy; what is served is the accepted NAR).
        let info = PathInfo {
            path: acc.path.clone(),
            nar_hash: nar_hash.clone(),
            nar_size: acc.nar_size,
            references: acc.references(),
            deriver: acc.deriver(),
            ca: None,
            blob: blob.blake3,
            registered_at: unix_ms(),
        };
        self.blocking(move |g| {
            let store = &g.fetcher.store;
            match store.register_path(&info) {
                Ok(_) | Err(StoreError::PathConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let local = store.path_info(&info.path)?;
            let (sd, trust) = (&g.fetcher.store_dir, &g.fetcher.trust);
            Ok(crate::trust::serve::render(sd, trust, &info.path, &judgement, &blob, local.as_ref()))
        })
        .await
    }

    /// Whether `/nar/<NarHash>` may be served: the NarHash is the accepted one of some path that
    /// carries it (quorum-accepted output, or content-addressed path whose bytes match).
    pub async fn nar_allowed(&self, nar_hash: [u8; 32]) -> Result<bool, GatewayError> {
        self.blocking(move |g| {
            let f = &g.fetcher;
            Ok(crate::trust::serve::nar_servable(&f.store, &f.store_dir, &f.trust, &nar_hash)?)
        })
        .await
    }

    /// The trust policy the gateway applies.
    pub fn trust(&self) -> &buildmesh_protocol::mesh::TrustConfig {
        &self.fetcher.trust
    }

    /// The NAR `builder` attested (NarHash `nar_hash`, NarSize `nar_size`), for a per-builder view
    /// (`/builder/<key id>/nar/…`): the stored blob, or else fetched from that builder and
    /// verified against the NarHash it signed. Only a builder of the node's trust policy is asked
    /// (a stranger's attestation cannot make this node download its NARs); `None` when the NAR is
    /// not here and the builder is not trusted.
    pub async fn builder_nar(
        &self,
        builder: NodeId,
        nar_hash: [u8; 32],
        nar_size: u64,
    ) -> Result<Option<BlobInfo>, GatewayError> {
        let h = NixHash::sha256(nar_hash);
        let held = self.blocking(move |g| Ok(g.fetcher.store.blob_by_nar_hash(&h)?)).await?;
        if let Some(b) = held.filter(|b| b.nar_size == nar_size) {
            return Ok(Some(b));
        }
        if !self.fetcher.trust.is_trusted(&builder) {
            return Ok(None);
        }
        let Some(peer) = peer_of(&builder) else { return Ok(None) };
        tracing::info!(%builder, "fetching a builder's NAR for its per-builder view");
        Ok(Some(self.fetcher.fetch_nar(nar_hash, nar_size, &[peer]).await?))
    }

    /// Fetch the `.drv` (closure) of every trusted emulated attestation of `path` whose `.drv`
    /// is not stored, from its builder (verified: each `.drv` must hash to its path). Returns
    /// whether one arrived.
    async fn fetch_emulated_drvs(&self, path: &StorePath) -> Result<bool, GatewayError> {
        let p = path.clone();
        let wanted = self
            .blocking(move |g| {
                let store = &g.fetcher.store;
                let mut wanted: Vec<(StorePath, NodeId)> = Vec::new();
                for a in crate::trust::verified_attestations(store, &p)? {
                    let emulated = a.mode == buildmesh_protocol::wire::BuildMode::Emulated;
                    if emulated && g.fetcher.trust.is_trusted(&a.builder) && !store.has_drv(&a.drv)? {
                        wanted.push((a.drv, a.builder));
                    }
                }
                Ok(wanted)
            })
            .await?;
        let mut fetched = false;
        for (drv, builder) in wanted {
            let Some(peer) = peer_of(&builder) else { continue };
            tracing::info!(path = %path, drv = %drv, "fetching the .drv of an emulated build to learn its system");
            match self.fetcher.ensure_closure(&drv, &[peer]).await {
                Ok(_) => fetched = true,
                Err(e) => tracing::warn!(drv = %drv, cause = %e, "could not fetch the .drv of an emulated build"),
            }
        }
        Ok(fetched)
    }

    /// Fetch the source `path`, referenced by the attested output `referrer`, through the `.drv`
    /// closure of `referrer`'s deriver from its agreeing builders. Returns whether it is
    /// registered now.
    async fn fetch_source(&self, path: &StorePath, referrer: &StorePath) -> Result<bool, GatewayError> {
        let r = referrer.clone();
        let Some(acc) = self
            .blocking(move |g| {
                Ok(match g.judge(&r)? {
                    Judgement::Attested(acc) => Some(acc),
                    _ => None,
                })
            })
            .await?
        else {
            return Ok(false);
        };
        let Some(deriver) = acc.deriver() else { return Ok(false) };
        let peers: Vec<_> = acc.agreeing.keys().filter_map(peer_of).collect();
        tracing::info!(path = %path, deriver = %deriver, "fetching a source of an accepted output for the gateway");
        match self.fetcher.ensure_closure(&deriver, &peers).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %path, cause = %e, "could not fetch the source");
                return Ok(false);
            }
        }
        let p = path.clone();
        self.blocking(move |g| Ok(g.fetcher.store.has_path(&p)?)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use buildmesh_protocol::identity::NodeKey;
    use buildmesh_protocol::mesh::TrustConfig;

    use super::*;

    use crate::mesh::test_util::att;

    #[test]
    fn quorum_of_trusted_builders_is_needed() {
        let path = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
        let k: Vec<NodeKey> = (1..=3).map(|i| NodeKey::from_seed("k", [i; 32]).unwrap()).collect();
        let trust = TrustConfig {
            trusted: Some(BTreeSet::from([k[0].node_id(), k[1].node_id()])),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        };
        let none = crate::trust::DrvSystems::new();
        // One trusted builder and one stranger: not enough.
        assert!(accepted_of(&path, &[att(&k[0], &path, 1), att(&k[2], &path, 1)], &none, &trust).is_none());
        // Two trusted builders agree: accepted, with both (and the agreeing stranger) listed.
        let atts = [att(&k[0], &path, 1), att(&k[1], &path, 1), att(&k[2], &path, 1)];
        let acc = accepted_of(&path, &atts, &none, &trust).unwrap();
        assert_eq!(acc.nar_hash, [1; 32]);
        assert_eq!(acc.agreeing.len(), 3);
        // They disagree: nothing is accepted.
        assert!(accepted_of(&path, &[att(&k[0], &path, 1), att(&k[1], &path, 2)], &none, &trust).is_none());
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
