//! Getting what a build needs from other nodes: the `.drv` closure and the NARs of input paths.
//!
//! Nothing fetched is trusted as it comes: every `.drv` must parse and hash to the store path it
//! is named by (its store path is a hash of its bytes), and every NAR is written with
//! [`Store::put_nar_expecting`], which refuses it unless it has the expected NarHash and NarSize.
//! The expected NarHash of an output comes from signed attestations (the quorum-accepted one, or
//! else the one most trusted builders attested); the NarHash of an input source comes from the
//! closure's responder, which is the job's submitter (the node that signed the job), and the
//! fetched bytes must also hash to the source's store path ([`crate::content_address`]), so
//! neither the submitter nor a peer can substitute other contents for a source.
//!
//! A NAR is fetched as a pipeline of chunk requests over `/buildmesh/nar/1`
//! ([`NetHandle::fetch_chunked`]) into a temporary file, then stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

use buildmesh_protocol::derivation::{Derivation, DrvSet};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::{OutputClaim, TrustConfig, assess_output};
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::Attestation;
use libp2p::PeerId;

use super::rpc::{self, ClosureRequest, ClosureResponse, NarRequest, NarResponse, SourceInfo};
use crate::net::{ChunkPlan, NAR_CHUNK_SIZE, NetHandle, RequestProtocol};
use crate::store::{BlobInfo, PathInfo, Store, StoreError, unix_ms};

/// NAR chunk requests in flight per fetch.
const NAR_WINDOW: usize = 4;
/// Peers asked for one object at most.
const MAX_CANDIDATES: usize = 8;

/// Why something could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peer could provide it (each attempt's failure is logged).
    #[error("no peer could provide {what} (asked {asked} peer(s): {last})")]
    Unavailable {
        /// What was wanted.
        what: String,
        /// How many peers were asked.
        asked: usize,
        /// The failure (for a closure: every peer's answer, the informative ones first).
        last: String,
    },
    /// No signed record says what the path should contain, so it cannot be verified.
    #[error("no attestation or source record names {path}; its contents cannot be verified")]
    Unknown {
        /// The path.
        path: String,
    },
    /// A derivation in the store does not parse.
    #[error("stored derivation {drv} is unusable: {reason}")]
    BadDrv {
        /// The derivation.
        drv: String,
        /// Why.
        reason: String,
    },
    /// An input source's bytes do not hash to its store path (neither a `source` nor a `text`
    /// path of them): whoever described or served it gave other contents.
    #[error(
        "input source {path}: its contents do not match its store path (not a content-addressed path of these bytes)"
    )]
    NotContentAddressed {
        /// The path.
        path: String,
    },
    /// Reading a stored NAR back failed.
    #[error("reading the stored NAR of {path}: {source}")]
    ReadBack {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A temporary file could not be used.
    #[error("temporary file in {dir}: {source}")]
    Temp {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// Why one chunk response was refused.
#[derive(Debug, thiserror::Error)]
enum ChunkRefused {
    #[error(transparent)]
    Rpc(#[from] rpc::RpcError),
    #[error("the peer does not have this NAR")]
    NotFound,
    #[error("the peer failed: {0}")]
    Remote(String),
}

/// What is known about a path that must be fetched.
#[derive(Debug, Clone)]
pub struct PathSource {
    /// NarHash (sha256 digest).
    pub nar_hash: [u8; 32],
    /// NarSize.
    pub nar_size: u64,
    /// References.
    pub references: BTreeSet<StorePath>,
    /// Deriver.
    pub deriver: Option<StorePath>,
    /// Content address.
    pub ca: Option<String>,
    /// Peers likely to have it, best first.
    pub peers: Vec<PeerId>,
}

/// The libp2p peer id of a node.
pub fn peer_of(node: &NodeId) -> Option<PeerId> {
    PeerId::from_bytes(&node.to_peer_id_bytes()).ok()
}

/// The node id of a libp2p peer (ed25519 peers only).
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_peer_id_bytes(&peer.to_bytes()).ok()
}

/// Fetches objects from peers into the local store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// The network.
    pub net: NetHandle,
    /// The local store.
    pub store: Store,
    /// The store directory.
    pub store_dir: StoreDir,
    /// Where NARs wait while they arrive.
    pub tmp_dir: PathBuf,
    /// Whose attestations count.
    pub trust: TrustConfig,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| FetchError::Task(e.to_string()))?
}

fn sha256_of(h: &NixHash) -> Option<[u8; 32]> {
    (h.algo() == HashAlgo::Sha256).then(|| h.digest().try_into().ok()).flatten()
}

/// The `.drv` files of `drv`'s closure that are not stored, and the input sources of the stored
/// part that are not registered (empty: everything is here).
fn missing_in_closure(store: &Store, sd: &StoreDir, drv: &StorePath) -> Result<Vec<StorePath>, FetchError> {
    let mut missing = Vec::new();
    let mut seen = BTreeSet::from([drv.clone()]);
    let mut todo = vec![drv.clone()];
    while let Some(d) = todo.pop() {
        let Some(bytes) = store.get_drv(&d)? else {
            missing.push(d);
            continue;
        };
        let parsed = Derivation::parse(&bytes, sd)
            .map_err(|e| FetchError::BadDrv { drv: sd.display(&d), reason: e.to_string() })?;
        for src in &parsed.input_srcs {
            if seen.insert(src.clone()) && !store.has_path(src)? {
                missing.push(src.clone());
            }
        }
        for input in parsed.input_drvs.keys() {
            if seen.insert(input.clone()) {
                todo.push(input.clone());
            }
        }
    }
    Ok(missing)
}

/// Load and parse a stored derivation.
pub fn load_drv(store: &Store, sd: &StoreDir, drv: &StorePath) -> Result<Derivation, FetchError> {
    let bytes = store
        .get_drv(drv)?
        .ok_or_else(|| FetchError::BadDrv { drv: sd.display(drv), reason: "not stored on this node".to_string() })?;
    Derivation::parse(&bytes, sd).map_err(|e| FetchError::BadDrv { drv: sd.display(drv), reason: e.to_string() })
}

/// The NarHash to expect for an output path from the stored attestations naming it: the one the
/// trust policy accepts, else the one attested by the most trusted builders, then the most
/// builders, then the smallest hash. `None` if no valid attestation names the path.
pub fn attested_source(store: &Store, trust: &TrustConfig, path: &StorePath) -> Result<Option<PathSource>, FetchError> {
    let mut atts: Vec<Attestation> = Vec::new();
    for stored in store.attestations_for_output(path)? {
        let Ok(signed) = Signed::<Attestation>::decode(&stored.entry.envelope) else { continue };
        let Ok(v) = signed.verify() else { continue };
        atts.push(v.into_value());
    }
    Ok(choose_source(&atts, trust, path))
}

/// The choice of [`attested_source`] over already verified attestations.
pub fn choose_source(atts: &[Attestation], trust: &TrustConfig, path: &StorePath) -> Option<PathSource> {
    let outputs: Vec<(&NodeId, &buildmesh_protocol::wire::OutputAttestation)> = atts
        .iter()
        .flat_map(|a| a.outputs.values().filter(|o| o.path == *path).map(move |o| (&a.builder, o)))
        .collect();
    if outputs.is_empty() {
        return None;
    }
    let assessment = assess_output(
        outputs.iter().map(|(b, o)| OutputClaim { builder: b, nar_hash: &o.nar_hash, nar_size: o.nar_size }),
        trust,
    );
    // Group by (hash, size): distinct trusted builders, distinct builders.
    type Builders = (BTreeSet<NodeId>, BTreeSet<NodeId>);
    let mut groups: BTreeMap<([u8; 32], u64), Builders> = BTreeMap::new();
    for (b, o) in &outputs {
        let g = groups.entry((o.nar_hash, o.nar_size)).or_default();
        if trust.is_trusted(b) {
            g.0.insert(**b);
        }
        g.1.insert(**b);
    }
    let accepted = assessment.accepted.as_ref().and_then(|(hash, size)| {
        groups.keys().find(|(h, s)| s == size && NixHash::sha256(*h).to_string() == *hash).copied()
    });
    let key = accepted.or_else(|| {
        groups
            .iter()
            .max_by(|a, b| {
                (a.1.0.len(), a.1.1.len(), std::cmp::Reverse(a.0)).cmp(&(
                    b.1.0.len(),
                    b.1.1.len(),
                    std::cmp::Reverse(b.0),
                ))
            })
            .map(|(k, _)| *k)
    })?;
    let (_, builders) = groups.get(&key)?;
    let first = outputs.iter().find(|(_, o)| (o.nar_hash, o.nar_size) == key).map(|(_, o)| *o)?;
    Some(PathSource {
        nar_hash: key.0,
        nar_size: key.1,
        references: first.references.clone(),
        deriver: first.deriver.clone(),
        ca: None,
        peers: builders.iter().filter_map(peer_of).collect(),
    })
}

impl Fetcher {
    /// Fetch the NAR with NarHash `nar_hash` and NarSize `nar_size` from the first of `peers` that
    /// has it, verified, into the store (at once if it is stored already).
    pub async fn fetch_nar(&self, nar_hash: [u8; 32], nar_size: u64, peers: &[PeerId]) -> Result<BlobInfo, FetchError> {
        let expected = NixHash::sha256(nar_hash);
        {
            let store = self.store.clone();
            let h = expected.clone();
            if let Some(b) = blocking(move || Ok(store.blob_by_nar_hash(&h)?)).await?
                && b.nar_size == nar_size
            {
                return Ok(b);
            }
        }
        let mut last = "no candidate peers".to_string();
        let me = self.net.local_peer_id();
        let mut asked = 0;
        for peer in peers.iter().filter(|p| **p != me).take(MAX_CANDIDATES) {
            asked += 1;
            match self.fetch_nar_from(*peer, nar_hash, nar_size).await {
                Ok(b) => {
                    tracing::debug!(%peer, nar_hash = %expected, nar_size, "fetched a NAR");
                    return Ok(b);
                }
                Err(e) => {
                    tracing::debug!(%peer, nar_hash = %expected, cause = %e, "NAR fetch failed");
                    last = format!("{peer}: {e}");
                }
            }
        }
        Err(FetchError::Unavailable { what: format!("NAR {expected}"), asked, last })
    }

    async fn fetch_nar_from(&self, peer: PeerId, nar_hash: [u8; 32], nar_size: u64) -> Result<BlobInfo, FetchError> {
        let tmp_err = |source| FetchError::Temp { dir: self.tmp_dir.clone(), source };
        std::fs::create_dir_all(&self.tmp_dir).map_err(tmp_err)?;
        let file = tempfile::tempfile_in(&self.tmp_dir).map_err(tmp_err)?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, file);
        let plan = ChunkPlan { total_len: nar_size, chunk_size: NAR_CHUNK_SIZE, window: NAR_WINDOW };
        let max = self.net_max_nar_response();
        self.net
            .fetch_chunked(
                peer,
                RequestProtocol::Nar,
                plan,
                |offset, len| rpc::encode(&NarRequest { nar_hash, offset, len }),
                |_, _, response| match rpc::decode::<NarResponse>("NAR response", &response, max)? {
                    NarResponse::Chunk(data) => Ok(data),
                    NarResponse::NotFound => Err(ChunkRefused::NotFound),
                    NarResponse::Error(e) => Err(ChunkRefused::Remote(e)),
                },
                &mut sink,
            )
            .await
            .map_err(|e| FetchError::Unavailable { what: "NAR".into(), asked: 1, last: e.to_string() })?;
        let mut file = sink.into_inner().map_err(|e| tmp_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(tmp_err)?;
        let store = self.store.clone();
        blocking(move || Ok(store.put_nar_expecting(&mut file, &NixHash::sha256(nar_hash), nar_size)?)).await
    }

    fn net_max_nar_response(&self) -> usize {
        crate::net::NetConfig::default().nar_limits.max_response
    }

    /// Make sure `drv`'s `.drv` closure is stored and its input sources registered, asking
    /// `peers` in order. Returns the source records received (hints for [`Fetcher::ensure_paths`]).
    pub async fn ensure_closure(
        &self,
        drv: &StorePath,
        peers: &[PeerId],
    ) -> Result<HashMap<StorePath, PathSource>, FetchError> {
        let (store, sd, d) = (self.store.clone(), self.store_dir.clone(), drv.clone());
        let missing = blocking(move || missing_in_closure(&store, &sd, &d)).await?;
        if missing.is_empty() {
            return Ok(HashMap::new());
        }
        let me = self.net.local_peer_id();
        // Every peer's answer is kept: the one that says why (e.g. a source whose bytes do not
        // match its path) matters more than the peers that simply lack the closure, so answers
        // that are `Unavailable` sort after typed verification failures.
        let mut errors: Vec<(bool, String)> = Vec::new();
        for peer in peers.iter().filter(|p| **p != me).take(MAX_CANDIDATES) {
            match self.closure_from(*peer, drv).await {
                Ok(hints) => return Ok(hints),
                Err(e) => {
                    tracing::debug!(%peer, drv = %drv, cause = %e, "closure fetch failed");
                    errors.push((matches!(e, FetchError::Unavailable { .. }), format!("{peer}: {e}")));
                }
            }
        }
        let asked = errors.len();
        errors.sort_by_key(|(unavailable, _)| *unavailable);
        let last = if errors.is_empty() {
            format!("missing {}", self.store_dir.display(&missing[0]))
        } else {
            errors.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("; ")
        };
        Err(FetchError::Unavailable { what: format!("the closure of {}", self.store_dir.display(drv)), asked, last })
    }

    async fn closure_from(&self, peer: PeerId, drv: &StorePath) -> Result<HashMap<StorePath, PathSource>, FetchError> {
        let unavailable = |last: String| FetchError::Unavailable { what: "closure".into(), asked: 1, last };
        let req = rpc::encode(&ClosureRequest { drv: drv.to_string() });
        let resp =
            self.net.send_request(peer, RequestProtocol::Closure, req).await.map_err(|e| unavailable(e.to_string()))?;
        let max = crate::net::NetConfig::default().closure_limits.max_response;
        let (drvs, sources) = match rpc::decode::<ClosureResponse>("closure response", &resp, max)
            .map_err(|e| unavailable(e.to_string()))?
        {
            ClosureResponse::Found { drvs, sources } => (drvs, sources),
            ClosureResponse::NotFound { missing } => return Err(unavailable(format!("peer lacks {missing}"))),
            ClosureResponse::Error { message } => return Err(unavailable(format!("peer failed: {message}"))),
        };
        // Verify every .drv: it must hash to the path it is named by.
        let sd = self.store_dir.clone();
        let verified = {
            let sd = sd.clone();
            blocking(move || {
                let mut set = DrvSet::new(sd.clone());
                let mut out = Vec::with_capacity(drvs.len());
                for (name, bytes) in drvs {
                    let claimed = StorePath::from_basename(&name)
                        .map_err(|e| unavailable(format!("bad .drv name {name:?}: {e}")))?;
                    let parsed = Derivation::parse(&bytes, &sd)
                        .map_err(|e| unavailable(format!("{name} does not parse: {e}")))?;
                    let drv_name = parsed.name().map_err(|e| unavailable(format!("{name}: {e}")))?;
                    let computed = set.insert(drv_name, parsed).map_err(|e| unavailable(format!("{name}: {e}")))?;
                    if computed != claimed {
                        return Err(unavailable(format!("{name} hashes to {computed}: refusing the closure")));
                    }
                    out.push((claimed, bytes));
                }
                Ok(out)
            })
            .await?
        };
        let mut hints = HashMap::new();
        for s in sources {
            let Some((path, src)) = source_hint(&s, peer) else {
                return Err(unavailable(format!("malformed source record {:?}", s.path)));
            };
            hints.insert(path, src);
        }
        let store = self.store.clone();
        blocking(move || {
            store.write(|w| {
                for (p, bytes) in &verified {
                    w.put_drv(p, bytes)?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .await?;
        // Register the input sources of the closure.
        let (store, sd2, d) = (self.store.clone(), sd.clone(), drv.clone());
        let missing = blocking(move || missing_in_closure(&store, &sd2, &d)).await?;
        let (drvs_missing, srcs_missing): (Vec<_>, Vec<_>) = missing.into_iter().partition(|p| p.is_derivation());
        if let Some(d) = drvs_missing.first() {
            return Err(unavailable(format!("the closure lacks {}", sd.display(d))));
        }
        self.ensure_paths(srcs_missing, &hints).await?;
        Ok(hints)
    }

    /// Make sure every path in `paths` and its reference closure is registered: outputs are
    /// fetched by their attested NarHash from their builders, sources by the NarHash in `hints`.
    pub async fn ensure_paths(
        &self,
        paths: Vec<StorePath>,
        hints: &HashMap<StorePath, PathSource>,
    ) -> Result<usize, FetchError> {
        let mut todo = paths;
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        let mut fetched = 0usize;
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let (store, q) = (self.store.clone(), p.clone());
            if let Some(info) = blocking(move || Ok(store.path_info(&q)?)).await? {
                todo.extend(info.references.into_iter().filter(|r| *r != p));
                continue;
            }
            let (store, trust, q) = (self.store.clone(), self.trust.clone(), p.clone());
            let attested = blocking(move || attested_source(&store, &trust, &q)).await?;
            let is_source = attested.is_none();
            let mut source = match (attested, hints.get(&p)) {
                (Some(a), _) => a,
                (None, Some(h)) => h.clone(),
                (None, None) => return Err(FetchError::Unknown { path: self.store_dir.display(&p) }),
            };
            // Providers announced in the DHT come after the builders.
            if let Ok(providers) = self.net.get_providers(p.hash_part().into_bytes()).await {
                for pr in providers {
                    if !source.peers.contains(&pr) {
                        source.peers.push(pr);
                    }
                }
            }
            let blob = self.fetch_nar(source.nar_hash, source.nar_size, &source.peers).await?;
            let ca =
                if is_source { Some(self.check_source(&p, &source, blob.blake3).await?) } else { source.ca.clone() };
            let info = PathInfo {
                path: p.clone(),
                nar_hash: NixHash::sha256(source.nar_hash),
                nar_size: source.nar_size,
                references: source.references.clone(),
                deriver: source.deriver.clone(),
                ca,
                blob: blob.blake3,
                registered_at: unix_ms(),
            };
            let store = self.store.clone();
            match blocking(move || Ok(store.register_path(&info)?)).await {
                Ok(_) => {
                    // Announce that this node can serve it now.
                    let (net, key) = (self.net.clone(), p.hash_part().into_bytes());
                    tokio::spawn(async move {
                        let _ = net.start_providing(key).await;
                    });
                }
                // Registered meanwhile with other contents (a local build): keep that one.
                Err(FetchError::Store(StoreError::PathConflict { .. })) => {}
                Err(e) => return Err(e),
            }
            fetched += 1;
            todo.extend(source.references.into_iter().filter(|r| *r != p));
        }
        Ok(fetched)
    }

    /// The content address of the input source `path` from its stored NAR `blob` (already
    /// checked against `source`'s NarHash); an error when the bytes do not hash to the path.
    async fn check_source(
        &self,
        path: &StorePath,
        source: &PathSource,
        blob: buildmesh_protocol::id::ArtifactHash,
    ) -> Result<String, FetchError> {
        let (store, sd, p, s) = (self.store.clone(), self.store_dir.clone(), path.clone(), source.clone());
        let ca = blocking(move || {
            let nar = store.open_nar(&blob)?;
            crate::content_address::of_nar(&sd, &p, s.references, &s.nar_hash, s.nar_size, nar)
                .map_err(|source| FetchError::ReadBack { path: sd.display(&p), source })
        })
        .await?;
        ca.ok_or_else(|| FetchError::NotContentAddressed { path: self.store_dir.display(path) })
    }

    /// Everything a build of `drv` needs on this node: its `.drv` closure (from `closure_peers`),
    /// the outputs of its input derivations and their reference closures. Returns the number of
    /// paths fetched.
    pub async fn prepare_build(&self, drv: &StorePath, closure_peers: &[PeerId]) -> Result<usize, FetchError> {
        let hints = self.ensure_closure(drv, closure_peers).await?;
        let (store, sd, d) = (self.store.clone(), self.store_dir.clone(), drv.clone());
        let needed = blocking(move || input_paths(&store, &sd, &d)).await?;
        self.ensure_paths(needed, &hints).await
    }

    /// Fetch the outputs `wanted` (empty = all) of `drv` (whose `.drv` is stored).
    pub async fn fetch_outputs(&self, drv: &StorePath, wanted: &BTreeSet<String>) -> Result<usize, FetchError> {
        let (store, sd, d) = (self.store.clone(), self.store_dir.clone(), drv.clone());
        let parsed = blocking(move || load_drv(&store, &sd, &d)).await?;
        let paths: Vec<StorePath> = parsed
            .outputs
            .iter()
            .filter(|(name, _)| wanted.is_empty() || wanted.contains(*name))
            .filter_map(|(_, o)| o.path.clone())
            .collect();
        self.ensure_paths(paths, &HashMap::new()).await
    }
}

/// The store paths a build of `drv` reads: its input sources and the used outputs of its input
/// derivations (whose `.drv`s must be stored).
pub fn input_paths(store: &Store, sd: &StoreDir, drv: &StorePath) -> Result<Vec<StorePath>, FetchError> {
    let parsed = load_drv(store, sd, drv)?;
    let mut out: Vec<StorePath> = parsed.input_srcs.iter().cloned().collect();
    for (input, outputs) in &parsed.input_drvs {
        let d = load_drv(store, sd, input)?;
        for name in outputs {
            match d.outputs.get(name).and_then(|o| o.path.clone()) {
                Some(p) => out.push(p),
                None => {
                    return Err(FetchError::BadDrv {
                        drv: sd.display(input),
                        reason: format!(
                            "output `{name}` has no fixed path (content-addressed derivations are not supported)"
                        ),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn source_hint(s: &SourceInfo, peer: PeerId) -> Option<(StorePath, PathSource)> {
    let path = StorePath::from_basename(&s.path).ok()?;
    let nar_hash = sha256_of(&NixHash::parse(&s.nar_hash, None).ok()?)?;
    let references = s.references.iter().map(|r| StorePath::from_basename(r).ok()).collect::<Option<BTreeSet<_>>>()?;
    if s.nar_size == 0 {
        return None;
    }
    Some((
        path,
        PathSource { nar_hash, nar_size: s.nar_size, references, deriver: None, ca: s.ca.clone(), peers: vec![peer] },
    ))
}

#[cfg(test)]
mod tests {

    use buildmesh_protocol::identity::NodeKey;

    use super::*;

    use crate::mesh::test_util::att;

    #[test]
    fn source_choice_prefers_the_quorum_then_trusted_majority() {
        let path = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
        let keys: Vec<NodeKey> = (1..=4).map(|i| NodeKey::from_seed("k", [i; 32]).unwrap()).collect();
        let all = TrustConfig { trusted: None, quorum: 2 };
        let atts = vec![att(&keys[0], &path, 1), att(&keys[1], &path, 2), att(&keys[2], &path, 2)];
        let s = choose_source(&atts, &all, &path).unwrap();
        assert_eq!(s.nar_hash, [2; 32]);
        assert_eq!(s.peers.len(), 2);
        // Only key 0 trusted: its hash wins although fewer builders attested it.
        let only0 = TrustConfig { trusted: Some(BTreeSet::from([keys[0].node_id()])), quorum: 2 };
        assert_eq!(choose_source(&atts, &only0, &path).unwrap().nar_hash, [1; 32]);
        // A tie between single builders: the smaller hash, deterministically.
        let tie = vec![att(&keys[3], &path, 9), att(&keys[0], &path, 5)];
        assert_eq!(choose_source(&tie, &all, &path).unwrap().nar_hash, [5; 32]);
        let other = StorePath::from_basename("wm32icn8hzjm0kah51xh8nv14dn4crdz-y").unwrap();
        assert!(choose_source(&atts, &all, &other).is_none());
    }

    #[test]
    fn peer_and_node_ids_convert() {
        let key = NodeKey::from_seed("k", [7; 32]).unwrap();
        let peer = peer_of(&key.node_id()).unwrap();
        assert_eq!(peer.to_base58(), key.peer_id());
        assert_eq!(node_of(&peer), Some(key.node_id()));
    }
}
