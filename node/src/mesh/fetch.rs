//! Getting what a build needs from other nodes: the `.drv` closure and the NARs of input paths.
//!
//! Nothing fetched is trusted as it comes: every `.drv` must parse and hash to the store path it
//! is named by (its store path is a hash of its bytes), and every NAR is written with
//! [`Store::put_nar_expecting`], which refuses it unless it has the expected NarHash and NarSize.
//! The expected NarHash of an output is the one the trust policy accepts from the signed
//! attestations (quorum of trusted builders; [`crate::trust`]) and nothing else: an output
//! without an accepted NarHash is not fetched or built upon. The NarHash of an input source
//! comes from the closure's responder, which is the job's submitter (the node that signed the
//! job), and the fetched bytes must also hash to the source's store path
//! ([`crate::content_address`]), so neither the submitter nor a peer can substitute other contents
//! for a source. A path already registered here is checked the same way: a registration that
//! disagrees with the accepted NarHash is replaced by the accepted bytes and quarantined.
//!
//! A NAR is fetched as a pipeline of chunk requests over `/buildmesh/nar/1`
//! ([`NetHandle::fetch_chunked`], 4 in flight) into a temporary file, then stored. The requests
//! are paced to the path (from [`PACED_MIN_CHUNK`] up to [`NAR_CHUNK_SIZE`], the measured rate
//! times the path's base delay and 1 s in flight: see [`crate::net::ChunkPlan::min_chunk`]), so
//! that a peer behind a slow uplink (1 Mbit/s, ADSL, down to 64 kbit/s) answers each of them
//! within seconds instead of timing out on all of them, its other traffic to this node
//! (anti-entropy and log answers, gossip) waits behind about a second of NAR bytes, and a long
//! path still fills. When the connection fails
//! after some chunks arrived (a relay's circuit reached its byte or time limit), the fetch
//! resumes after the last chunk written, so a NAR larger than one relay circuit still arrives.
//! An attempt that fails before its first chunk (the connection closed under the first requests,
//! or every chunk outlived the request timeout on a slow path) is tried again with chunks half
//! the size, down to [`MIN_NAR_CHUNK`], a few times: a circuit with less than a chunk left, or a
//! link too slow to move a whole chunk within the timeout, still carries the NAR.
//!
//! Closure and NAR chunk answers are read as every answer from a peer is ([`super::answers`]):
//! against the node's configured `closure_limits` / `nar_limits`, and an answer that does not
//! decode (other than a newer build's variant) costs the peer one strike. Other refusals (a
//! `.drv` that does not hash to its name, a NAR that is not the expected NarHash) cost none:
//! the bytes are refused and the next peer is asked. A peer whose bytes were not the NAR asked
//! for (a hash or size mismatch, a chunk of the wrong length or garbage) is skipped for that
//! NarHash for [`super::skips::MISMATCH_SKIP`] ([`Fetcher::skips`]): the next build needing it
//! asks the other peers, not the same one again.

use std::collections::{BTreeSet, HashMap};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

use buildmesh_protocol::derivation::{Derivation, DrvSet};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use libp2p::PeerId;

use super::answers::{self, Unreadable};
use super::rpc::{self, ClosureRequest, ClosureResponse, NarRequest, NarResponse, SourceInfo};
use super::skips::SharedSkips;
use crate::net::{ChunkError, ChunkPlan, NAR_CHUNK_SIZE, NetHandle, RequestError, RequestProtocol};
use crate::store::{BlobInfo, PathInfo, Store, StoreError, unix_ms};

/// NAR chunk requests in flight per fetch.
const NAR_WINDOW: usize = 4;
/// Peers asked for one object at most.
const MAX_CANDIDATES: usize = 8;
/// Pause before a NAR fetch resumes after its connection failed (the closing connection settles,
/// the next request dials again).
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Attempts in a row that may fail before their first chunk once a NAR fetch has resumed
/// (pauses of 0.4, 0.8, 1.6, 3.2 and 6.4 s between them).
const MAX_STALLS: u32 = 5;
/// Attempts in a row that may fail before their first chunk while nothing of the NAR has arrived
/// yet and no connection to the peer closed under a request (each request timed out): fewer than
/// [`MAX_STALLS`], so a peer that answers nothing holds a fetch up for at most 3 request timeouts
/// before the next candidate is asked. A peer that could not be dialled at all is given up at once,
/// as before; one whose connection closed under a request (a relay circuit at its byte limit) gets
/// [`MAX_STALLS`], since the next connection takes a few tries.
const MAX_FIRST_STALLS: u32 = 2;
/// Smallest chunk an attempt that failed before its first chunk falls back to (the chunk size
/// halves at each such failure, from [`NAR_CHUNK_SIZE`]).
pub const MIN_NAR_CHUNK: u32 = 64 * 1024;
/// The first and smallest request of a paced NAR fetch ([`crate::net::ChunkPlan::min_chunk`]):
/// one takes 2 s at 64 kbit/s. Measured (docs/benchmarks.md, "A builder's other traffic while
/// it serves a NAR"): with 64 KiB ones and 3 s in flight, anti-entropy runs with a builder
/// serving a NAR over 512 kbit/s took 6.6 s (0.4 s with an idle one).
pub const PACED_MIN_CHUNK: u32 = 16 * 1024;

/// Whether a chunk request that failed this way is worth resuming from the same peer: the
/// connection went away (or timed out), as opposed to a refusal of the request itself.
fn resumable(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::ConnectionClosed { .. }
            | RequestError::DialFailure { .. }
            | RequestError::Io { .. }
            | RequestError::Timeout { .. }
    )
}

/// How many attempts in a row without a chunk a NAR fetch may make, after one more failed with
/// `source` (see [`MAX_STALLS`], [`MAX_FIRST_STALLS`]); `start` is the bytes written so far and
/// `dropped` whether a connection closed under a request of this fetch (updated here).
fn stall_limit(start: u64, dropped: &mut bool, source: &RequestError) -> u32 {
    *dropped |= matches!(source, RequestError::ConnectionClosed { .. } | RequestError::Io { .. });
    if start > 0 || *dropped {
        MAX_STALLS
    } else if matches!(source, RequestError::Timeout { .. }) {
        MAX_FIRST_STALLS
    } else {
        0
    }
}

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
    /// The trust policy accepts no NarHash for an input (its builders disagree, or not enough
    /// trusted builders attested it yet): it is not built upon.
    #[error("input {path} is not accepted by the trust policy: {reason}")]
    NotAccepted {
        /// The path.
        path: String,
        /// Why.
        reason: crate::trust::Refusal,
    },
    /// The trust rule could not be applied.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// Why one chunk response was refused.
#[derive(Debug, thiserror::Error)]
enum ChunkRefused {
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
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
    /// The realised-path directory (`DATA/store`): the copy of a quarantined registration is
    /// deleted from it.
    pub realised: PathBuf,
    /// The peers that served other bytes than a NarHash, skipped for that NarHash a while
    /// ([`crate::mesh::skips`]).
    pub skips: SharedSkips,
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
        let mut candidates: Vec<PeerId> = peers.iter().filter(|p| **p != me).copied().collect();
        let before = candidates.len();
        self.skips.retain_unskipped(&nar_hash, &mut candidates);
        if candidates.len() < before {
            last = format!("{} peer(s) skipped: they served other bytes for this NarHash", before - candidates.len());
        }
        let mut asked = 0;
        for peer in candidates.into_iter().take(MAX_CANDIDATES) {
            asked += 1;
            match self.fetch_nar_from(peer, nar_hash, nar_size).await {
                Ok(b) => {
                    tracing::debug!(%peer, nar_hash = %expected, nar_size, "fetched a NAR");
                    self.skips.forget(&nar_hash);
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
        // Bytes of the NAR written to `sink` so far (chunks arrive and are written in order).
        let mut start = 0u64;
        // Attempts in a row that failed before their first chunk, after an earlier one resumed.
        let mut stalls = 0u32;
        // Halved at each attempt that fails before its first chunk (see the module docs).
        let mut chunk_size = NAR_CHUNK_SIZE;
        // Whether a connection to the peer closed under a request of this fetch.
        let mut dropped = false;
        loop {
            let plan =
                ChunkPlan { total_len: nar_size - start, chunk_size, min_chunk: PACED_MIN_CHUNK, window: NAR_WINDOW };
            let result = self
                .net
                .fetch_chunked(
                    peer,
                    RequestProtocol::Nar,
                    plan,
                    |offset, len| rpc::encode(&NarRequest { nar_hash, offset: start + offset, len }),
                    |_, _, response| match answers::read_noted::<NarResponse>(&self.net, peer, &response)? {
                        NarResponse::Chunk(data) => Ok(data),
                        NarResponse::NotFound => Err(ChunkRefused::NotFound),
                        NarResponse::Error(e) => Err(ChunkRefused::Remote(e)),
                    },
                    &mut sink,
                )
                .await;
            match result {
                Ok(_) => break,
                // The connection failed after some chunks arrived: most often a relayed
                // connection whose circuit reached the relay's byte or time limit
                // (`relay_max_circuit_bytes`, `relay_max_circuit_duration_secs`), which closes
                // it. Starting over would hit the same limit again, so a NAR larger than one
                // circuit would never cross a relay: resume after the last chunk written, over
                // whatever connection the next request opens (a new circuit, or a direct one).
                // The new connection may take a few tries (the relay still counts the closed
                // circuit for a moment, or both sides redial at once): up to `MAX_STALLS`
                // attempts in a row without a chunk, each after a longer pause; a peer cannot
                // keep a fetch going without sending chunks. An attempt without a chunk halves
                // the chunk size (a circuit with less than a chunk left, a link too slow for a
                // whole chunk within the request timeout); before anything arrived, see
                // `MAX_FIRST_STALLS`.
                Err(ChunkError::Request { offset, source })
                    if resumable(&source) && (offset > 0 || stalls < stall_limit(start, &mut dropped, &source)) =>
                {
                    if offset > 0 {
                        stalls = 0;
                    } else {
                        stalls += 1;
                        chunk_size = (chunk_size / 2).max(MIN_NAR_CHUNK);
                    }
                    start += offset;
                    tracing::debug!(%peer, resume_at = start, nar_size, stalls, chunk_size, cause = %source, "NAR fetch resumes");
                    tokio::time::sleep(RESUME_PAUSE * 2u32.pow(stalls)).await;
                }
                Err(e) => {
                    let garbage = matches!(
                        &e,
                        ChunkError::Decode { source: ChunkRefused::Unreadable(Unreadable::Garbage(_)), .. }
                    );
                    if garbage {
                        self.net.malformed(peer, <NarResponse as answers::Answer>::WHAT).await;
                    }
                    if garbage || matches!(e, ChunkError::WrongLength { .. }) {
                        self.served_wrong_bytes(peer, nar_hash, &e);
                    }
                    return Err(FetchError::Unavailable { what: "NAR".into(), asked: 1, last: e.to_string() });
                }
            }
        }
        let mut file = sink.into_inner().map_err(|e| tmp_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(tmp_err)?;
        let store = self.store.clone();
        let stored =
            blocking(move || Ok(store.put_nar_expecting(&mut file, &NixHash::sha256(nar_hash), nar_size)?)).await;
        if let Err(e @ FetchError::Store(StoreError::NarHashMismatch { .. } | StoreError::NarSizeMismatch { .. })) =
            &stored
        {
            self.served_wrong_bytes(peer, nar_hash, e);
        }
        stored
    }

    /// `peer` served other bytes than the NAR `nar_hash` (`why`): it is not asked for it again
    /// for a while ([`crate::mesh::skips`]; no strike, see the module docs).
    fn served_wrong_bytes(&self, peer: PeerId, nar_hash: [u8; 32], why: &dyn std::fmt::Display) {
        tracing::info!(target: "buildmesh::_events::mesh", event = "nar_wrong_bytes", %peer,
            nar_hash = %NixHash::sha256(nar_hash), cause = %why,
            skip_secs = super::skips::MISMATCH_SKIP.as_secs(), "a peer served other bytes than a NAR; skipped for it a while");
        self.skips.add(nar_hash, peer);
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
        // Read like every answer (`answers`): the configured cap, a strike for garbage.
        let (drvs, sources) = match answers::read_from::<ClosureResponse>(&self.net, peer, &resp)
            .await
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

    /// Make sure every path in `paths` and its reference closure is registered with what the
    /// trust rule accepts for it (see [`crate::trust`]): an output with its quorum-accepted
    /// NarHash, fetched from its agreeing builders; a source with bytes that hash to its path,
    /// fetched by the NarHash in `hints`. A local registration that disagrees is never used: it is
    /// replaced by the accepted bytes and quarantined. An output with no accepted NarHash fails
    /// ([`FetchError::NotAccepted`]). Returns the number of paths fetched.
    pub async fn ensure_paths(
        &self,
        paths: Vec<StorePath>,
        hints: &HashMap<StorePath, PathSource>,
    ) -> Result<usize, FetchError> {
        use crate::trust::inputs::{InputProblem, InputState, input_state};
        let mut todo = paths;
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        let mut fetched = 0usize;
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let (store, sd, trust, q) = (self.store.clone(), self.store_dir.clone(), self.trust.clone(), p.clone());
            let state = blocking(move || Ok(input_state(&store, &sd, &trust, &q)?)).await?;
            let refs = match state {
                InputState::Ready(refs) => refs,
                InputState::Repairable(acc) => {
                    self.repair(&acc).await?;
                    acc.references()
                }
                InputState::Problem(InputProblem::Conflict { .. } | InputProblem::Missing { .. }) => {
                    let (store, sd, trust, q) =
                        (self.store.clone(), self.store_dir.clone(), self.trust.clone(), p.clone());
                    let (atts, systems) = blocking(move || {
                        let atts = crate::trust::verified_attestations(&store, &q)?;
                        let systems = crate::trust::drv_systems(&store, &sd, &atts, &trust)?;
                        Ok((atts, systems))
                    })
                    .await?;
                    let Some(acc) = crate::trust::accepted_of(&p, &atts, &systems, &self.trust) else {
                        return Err(FetchError::Unknown { path: self.store_dir.display(&p) });
                    };
                    let mut peers: Vec<PeerId> = acc.agreeing.keys().filter_map(peer_of).collect();
                    self.add_providers(&p, &mut peers).await;
                    self.fetch_nar(acc.nar_hash, acc.nar_size, &peers).await?;
                    self.repair(&acc).await?;
                    fetched += 1;
                    acc.references()
                }
                InputState::Problem(InputProblem::NotAccepted {
                    reason: crate::trust::Refusal::Unattested,
                    local,
                    ..
                }) => {
                    // No attestation names it: an input source, certified only by its bytes.
                    let Some(hint) = hints.get(&p) else {
                        return Err(match local {
                            Some(_) => FetchError::NotContentAddressed { path: self.store_dir.display(&p) },
                            None => FetchError::Unknown { path: self.store_dir.display(&p) },
                        });
                    };
                    let mut source = hint.clone();
                    self.add_providers(&p, &mut source.peers).await;
                    let blob = self.fetch_nar(source.nar_hash, source.nar_size, &source.peers).await?;
                    let ca = self.check_source(&p, &source, blob.blake3).await?;
                    let info = PathInfo {
                        path: p.clone(),
                        nar_hash: NixHash::sha256(source.nar_hash),
                        nar_size: source.nar_size,
                        references: source.references.clone(),
                        deriver: None,
                        ca: Some(ca),
                        blob: blob.blake3,
                        registered_at: unix_ms(),
                    };
                    let (store, realised) = (self.store.clone(), self.realised.clone());
                    let old = blocking(move || {
                        let old = store.replace_path(
                            &info,
                            "not a content-addressed path of its bytes; replaced by bytes that are",
                            unix_ms(),
                        )?;
                        if old.is_some() {
                            let _ = crate::build::realize::remove_tree(&realised.join(info.path.to_string()));
                        }
                        Ok(old)
                    })
                    .await?;
                    if let Some(old) = old {
                        tracing::warn!(path = %p, local = %old.nar_hash, "a local source registration did not match its path; quarantined");
                    }
                    self.announce(&p);
                    fetched += 1;
                    source.references
                }
                InputState::Problem(InputProblem::NotAccepted { reason, .. }) => {
                    return Err(FetchError::NotAccepted { path: self.store_dir.display(&p), reason });
                }
            };
            todo.extend(refs.into_iter().filter(|r| *r != p && !seen.contains(r)));
        }
        Ok(fetched)
    }

    /// Providers announced in the DHT for `p`, after `peers`.
    async fn add_providers(&self, p: &StorePath, peers: &mut Vec<PeerId>) {
        if let Ok(providers) = self.net.get_providers(p.hash_part().into_bytes()).await {
            for pr in providers {
                if !peers.contains(&pr) {
                    peers.push(pr);
                }
            }
        }
    }

    /// Register the accepted NAR of `acc` (stored here), quarantining a registration with other
    /// contents, and announce the path.
    async fn repair(&self, acc: &crate::trust::Accepted) -> Result<(), FetchError> {
        let (store, realised, a) = (self.store.clone(), self.realised.clone(), acc.clone());
        blocking(move || Ok(crate::trust::inputs::repair(&store, Some(&realised), &a)?)).await?;
        self.announce(&acc.path);
        Ok(())
    }

    /// Announce in the DHT that this node can serve `p` now.
    fn announce(&self, p: &StorePath) {
        let (net, key) = (self.net.clone(), p.hash_part().into_bytes());
        tokio::spawn(async move {
            let _ = net.start_providing(key).await;
        });
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

    #[test]
    fn a_fetch_without_a_chunk_retries_only_a_peer_it_reached() {
        let (protocol, peer) = (RequestProtocol::Nar, PeerId::random());
        let dial = RequestError::DialFailure { protocol, peer };
        let closed = RequestError::ConnectionClosed { protocol, peer };
        let timeout = RequestError::Timeout { protocol, peer };
        // Nothing arrived yet: a peer that cannot be dialled is given up at once, one that only
        // times out gets a few tries with smaller chunks ...
        assert_eq!(stall_limit(0, &mut false, &dial), 0);
        assert_eq!(stall_limit(0, &mut false, &timeout), MAX_FIRST_STALLS);
        // ... and one whose connection closed under a request (a relay circuit at its byte limit)
        // as many as a resumed fetch, dial failures after it included.
        let mut dropped = false;
        assert_eq!(stall_limit(0, &mut dropped, &closed), MAX_STALLS);
        assert_eq!(stall_limit(0, &mut dropped, &dial), MAX_STALLS);
        // A resumed fetch: always.
        assert_eq!(stall_limit(1, &mut false, &dial), MAX_STALLS);
    }

    #[test]
    fn peer_and_node_ids_convert() {
        let key = NodeKey::from_seed("k", [7; 32]).unwrap();
        let peer = peer_of(&key.node_id()).unwrap();
        assert_eq!(peer.to_base58(), key.peer_id());
        assert_eq!(node_of(&peer), Some(key.node_id()));
    }
}
