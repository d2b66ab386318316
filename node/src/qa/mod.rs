//! QA across revisions on a node: which revisions it knows, the status of their jobs, compare,
//! weather, history, explain and the ready verdict, each answered from the signed data the node
//! holds (revision headers, manifests, attestations, failures) and its mesh state, with no central
//! server.
//!
//! The answers are computed by the pure engine [`buildmesh_protocol::qa`]; this module gathers its
//! input ([`facts`]), picks revisions by name ([`QaContext::resolve`]), builds and publishes the
//! manifests of revisions submitted here ([`submit`]), and explains single derivations
//! ([`explain`]). The HTTP routes (`http/qa.rs`) and the CLI (`cli/qa.rs`) are thin layers over it.
//!
//! Which header a name means: several submitters may publish `C@ID`; the node takes the newest
//! header of a **trusted** submitter (its own key or a `trusted_keys` key), and only when there is
//! none the newest of any submitter (its `submitter` says whose it is). `C:branch` is the newest
//! revision of the branch under the same preference.

pub mod agreement;
pub mod bench;
pub mod explain;
pub mod facts;
pub mod index;
pub mod submit;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::{
    self, CompareOptions, Comparison, HistoryRevision, PackageHistory, ReadyRule, ReadyVerdict, RevisionFacts,
    RevisionShow, RevisionStatus, RevisionSummary, Weather, WeatherOptions,
};
use buildmesh_protocol::revision::{Manifest, RevisionHeader, RevisionRef};
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use crate::bounded_cache::BoundedCache;
use crate::mesh::MeshHandle;
use crate::store::{Store, StoreError, StoredRevision, unix_ms};

/// Decoded manifests kept in memory (two generations of this many, so the two of a compare): a
/// 100,000-job manifest takes about 50 MiB decoded.
const MANIFEST_CACHE: usize = 1;

/// QA questions answered at once; more wait up to [`QA_WAIT`], then get a 503. Each takes up to
/// a second of CPU and tens of MiB on a 100,000-job revision, and anyone may ask (GET), so their
/// number is bounded like the NAR downloads.
const QA_CONCURRENCY: usize = 2;

/// How long a question waits for a free slot (shorter in unit tests, which check the 503).
const QA_WAIT: std::time::Duration =
    if cfg!(test) { std::time::Duration::from_millis(300) } else { std::time::Duration::from_secs(30) };

/// Why a QA question could not be answered. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QaError {
    /// The question is malformed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// No such revision, derivation or package here (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The revision is known but its manifest has not arrived (HTTP 503).
    #[error(
        "the manifest of {revision} (blake3 {hash}, {size} bytes) has not arrived from the mesh yet; \
         its header came from {submitter}"
    )]
    ManifestMissing {
        /// `C@ID`.
        revision: String,
        /// The manifest hash, hex.
        hash: String,
        /// Its size from the signed header.
        size: u64,
        /// Who published it.
        submitter: String,
    },
    /// Too many questions at once (HTTP 503).
    #[error("the node is answering {0} QA questions already; try again later")]
    Busy(usize),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The mesh failed (HTTP 503).
    #[error("mesh: {0}")]
    Mesh(String),
    /// Something else failed inside the node (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl From<facts::FactsError> for QaError {
    fn from(e: facts::FactsError) -> QaError {
        match e {
            facts::FactsError::Store(e) => QaError::Store(e),
            facts::FactsError::Mesh(m) => QaError::Mesh(m),
        }
    }
}

/// A revision header the node holds, verified, with its stored row.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The header.
    pub header: RevisionHeader,
    /// The stored row (message id, envelope, receive time).
    pub stored: StoredRevision,
}

/// Everything the QA answers need; cheap to clone.
#[derive(Clone)]
pub struct QaContext {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    store_dir: StoreDir,
    key: Arc<NodeKey>,
    mesh: Option<MeshHandle>,
    trust: TrustConfig,
    rule: ReadyRule,
    replicas: u8,
    local: explain::LocalCapabilities,
    index: index::AttestationIndex,
    manifests: Mutex<BoundedCache<[u8; 32], Arc<Manifest>, MANIFEST_CACHE>>,
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for QaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QaContext").field("store_dir", &self.inner.store_dir).finish()
    }
}

/// What [`QaContext::new`] needs.
#[derive(Debug)]
pub struct QaParams {
    /// The store.
    pub store: Store,
    /// The store directory.
    pub store_dir: StoreDir,
    /// The node key (signs revisions submitted here).
    pub key: Arc<NodeKey>,
    /// The mesh, on a mesh node.
    pub mesh: Option<MeshHandle>,
    /// The trust policy: whose attestations count, the quorum.
    pub trust: TrustConfig,
    /// The ready rule (`[qa.ready]`).
    pub rule: ReadyRule,
    /// The default replication factor of revisions submitted here.
    pub replicas: u8,
    /// What this node builds (for `explain`).
    pub local: explain::LocalCapabilities,
}

impl QaContext {
    /// A context over `params`.
    pub fn new(params: QaParams) -> QaContext {
        QaContext {
            inner: Arc::new(Inner {
                store: params.store,
                store_dir: params.store_dir,
                key: params.key,
                mesh: params.mesh,
                trust: params.trust,
                rule: params.rule,
                replicas: params.replicas,
                local: params.local,
                index: index::AttestationIndex::default(),
                manifests: Mutex::new(BoundedCache::default()),
                slots: tokio::sync::Semaphore::new(QA_CONCURRENCY),
            }),
        }
    }

    /// A slot to answer one question (see [`QA_CONCURRENCY`]).
    pub async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, QaError> {
        match tokio::time::timeout(QA_WAIT, self.inner.slots.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(QaError::Busy(QA_CONCURRENCY)),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.inner.store_dir
    }

    /// The mesh, on a mesh node.
    pub fn mesh(&self) -> Option<&MeshHandle> {
        self.inner.mesh.as_ref()
    }

    /// Bring the in-memory attestation index up to date with the store (blocking). The node calls
    /// it once at start, so the first question does not pay for reading every attestation.
    pub fn warm_up(&self) -> Result<(), QaError> {
        drop(self.inner.index.refreshed(&self.inner.store)?);
        Ok(())
    }

    /// The ready rule.
    pub fn rule(&self) -> &ReadyRule {
        &self.inner.rule
    }

    fn verify(stored: StoredRevision) -> Result<Revision, QaError> {
        let bad = |e: String| QaError::Internal(format!("stored revision header {}: {e}", stored.entry.id));
        let signed = Signed::<RevisionHeader>::decode(&stored.entry.envelope).map_err(|e| bad(e.to_string()))?;
        let header = signed.verify().map_err(|e| bad(e.to_string()))?.into_value();
        Ok(Revision { header, stored })
    }

    /// The preferred header among `candidates` (newest first): a trusted submitter's, else the
    /// newest.
    fn prefer(&self, candidates: Vec<StoredRevision>) -> Option<StoredRevision> {
        let trusted = candidates.iter().position(|r| self.inner.trust.is_trusted(&r.entry.submitter));
        let i = trusted.unwrap_or(0);
        candidates.into_iter().nth(i)
    }

    /// The revision a user names (`C@ID` or `C:branch`; blocking).
    pub fn resolve(&self, name: &str) -> Result<Revision, QaError> {
        let r: RevisionRef = name.parse().map_err(|e| QaError::BadRequest(format!("revision {name:?}: {e}")))?;
        let candidates = match &r {
            RevisionRef::Id(id) => self.inner.store.revision_by_name(&id.channel, &id.commit)?,
            RevisionRef::Branch { channel, branch } => self.inner.store.list_revisions(Some(channel), Some(branch))?,
        };
        let stored = self.prefer(candidates).ok_or_else(|| {
            QaError::NotFound(match &r {
                RevisionRef::Id(_) => format!("unknown revision {r}: this node has no header for it"),
                RevisionRef::Branch { channel, branch } => {
                    format!("no revision of branch {branch:?} of channel {channel:?} is known here")
                }
            })
        })?;
        QaContext::verify(stored)
    }

    /// Every revision (the preferred header of each `C@ID`), newest first (blocking).
    pub fn list(&self, channel: Option<&str>, branch: Option<&str>) -> Result<Vec<Revision>, QaError> {
        let all = self.inner.store.list_revisions(channel, branch)?;
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let mut by_name: Vec<Vec<StoredRevision>> = Vec::new();
        let mut index: std::collections::BTreeMap<(String, String), usize> = std::collections::BTreeMap::new();
        for r in all {
            let key = (r.entry.channel.clone(), r.entry.commit.clone());
            match index.get(&key) {
                Some(i) => by_name[*i].push(r),
                None => {
                    index.insert(key.clone(), by_name.len());
                    seen.insert(key);
                    by_name.push(vec![r]);
                }
            }
        }
        by_name.into_iter().filter_map(|c| self.prefer(c)).map(QaContext::verify).collect()
    }

    /// The manifest of `rev`, decoded (cached; blocking).
    pub fn manifest(&self, rev: &Revision) -> Result<Arc<Manifest>, QaError> {
        let hash = rev.header.manifest_hash;
        if let Some(m) = self.inner.manifests.lock().unwrap_or_else(PoisonError::into_inner).get(&hash) {
            return Ok(m.clone());
        }
        let Some(bytes) = self.inner.store.get_manifest(&hash)? else {
            return Err(QaError::ManifestMissing {
                revision: rev.header.id().to_string(),
                hash: hex::encode(hash),
                size: rev.header.manifest_size,
                submitter: rev.header.submitter.to_string(),
            });
        };
        let manifest = Arc::new(
            rev.header
                .check_manifest(&bytes)
                .map_err(|e| QaError::Internal(format!("stored manifest of {}: {e}", rev.header.id())))?,
        );
        self.inner.manifests.lock().unwrap_or_else(PoisonError::into_inner).insert(hash, manifest.clone());
        Ok(manifest)
    }

    /// The facts of every derivation of `manifest`.
    pub async fn facts(&self, manifest: Arc<Manifest>) -> Result<RevisionFacts, QaError> {
        let states = facts::mesh_states(self.inner.mesh.as_ref(), &manifest).await?;
        let this = self.clone();
        blocking(move || {
            let drvs =
                facts::gather(&this.inner.store, &this.inner.index, &this.inner.trust, &manifest, &states, unix_ms())?;
            Ok(RevisionFacts { drvs })
        })
        .await
    }

    /// A revision, its manifest, facts and status.
    pub async fn evaluate(&self, name: &str) -> Result<Evaluated, QaError> {
        let this = self.clone();
        let name = name.to_string();
        let (rev, manifest) = blocking(move || {
            let rev = this.resolve(&name)?;
            let m = this.manifest(&rev)?;
            Ok((rev, m))
        })
        .await?;
        let facts = self.facts(manifest.clone()).await?;
        let status = qa::revision_status(&manifest, &facts);
        Ok(Evaluated { rev, manifest, facts, status })
    }

    /// `revision show`: the header and every job's status, optionally filtered.
    pub async fn show(&self, name: &str, system: Option<&str>, state: Option<&str>) -> Result<RevisionShow, QaError> {
        let _slot = self.slot().await?;
        let e = self.evaluate(name).await?;
        let mut status = e.status;
        if system.is_some() || state.is_some() {
            status
                .jobs
                .retain(|j| system.is_none_or(|s| j.system == s) && state.is_none_or(|s| j.status.as_str() == s));
        }
        Ok(RevisionShow { summary: RevisionSummary::new(&e.rev.header), status })
    }

    /// `compare BASE TARGET` (every pair listed).
    pub async fn compare(&self, base: &str, target: &str, system: Option<String>) -> Result<Comparison, QaError> {
        self.compare_with(base, target, &CompareOptions { system, changed_only: false }).await
    }

    /// `compare BASE TARGET` with the options (`changed_only` lists only the pairs whose
    /// derivation changed or that are on one side only; the summary still counts every pair).
    pub async fn compare_with(
        &self,
        base: &str,
        target: &str,
        options: &CompareOptions,
    ) -> Result<Comparison, QaError> {
        let _slot = self.slot().await?;
        let (b, t) = tokio::try_join!(self.evaluate(base), self.evaluate(target))?;
        Ok(qa::compare(&b.rev.header.id().to_string(), &b.status, &t.rev.header.id().to_string(), &t.status, options))
    }

    /// `weather --revision R`.
    pub async fn weather(&self, name: &str, options: WeatherOptions) -> Result<Weather, QaError> {
        let _slot = self.slot().await?;
        let e = self.evaluate(name).await?;
        Ok(qa::weather(&e.manifest, &e.facts, unix_ms(), options))
    }

    /// `weather --manifest FILE`: store paths or `.drv` paths.
    pub async fn weather_of_paths(&self, paths: Vec<String>, options: WeatherOptions) -> Result<Weather, QaError> {
        let _slot = self.slot().await?;
        let items = explain::path_items(self, paths).await?;
        Ok(qa::weather_of_paths(&self.inner.store_dir, &items, unix_ms(), options))
    }

    /// `history PACKAGE`: the package over the revisions of `channel`/`branch`, oldest first.
    pub async fn history(
        &self,
        package: &str,
        channel: Option<&str>,
        branch: Option<&str>,
    ) -> Result<PackageHistory, QaError> {
        let _slot = self.slot().await?;
        let this = self.clone();
        let (c, b) = (channel.map(str::to_string), branch.map(str::to_string));
        let mut revs = blocking(move || this.list(c.as_deref(), b.as_deref())).await?;
        revs.sort_by_key(|r| r.header.created_at_ms);
        let mut evaluated = Vec::new();
        for r in revs {
            let this = self.clone();
            let rr = r.clone();
            let manifest = match blocking(move || this.manifest(&rr)).await {
                Ok(m) => m,
                Err(QaError::ManifestMissing { .. }) => continue,
                Err(e) => return Err(e),
            };
            if !manifest.jobs.iter().any(|j| j.package == package) {
                continue;
            }
            let facts = self.facts(manifest.clone()).await?;
            let status = qa::revision_status(&manifest, &facts);
            evaluated.push((r, manifest, status));
        }
        let views: Vec<HistoryRevision<'_>> =
            evaluated.iter().map(|(r, m, s)| HistoryRevision { header: &r.header, manifest: m, status: s }).collect();
        let h = qa::package_history(package, &views);
        if h.derivations.is_empty() {
            return Err(QaError::NotFound(format!("no revision known here has a package {package:?}")));
        }
        Ok(h)
    }

    /// `history DRV`: every revision the derivation belongs to.
    pub async fn drv_history(&self, drv: &StorePath) -> Result<qa::DrvHistory, QaError> {
        let _slot = self.slot().await?;
        let this = self.clone();
        let d = drv.clone();
        let pairs = blocking(move || {
            let stored = this.inner.store.revisions_of_drv(&d.to_string())?;
            let mut out = Vec::new();
            for s in stored {
                let r = QaContext::verify(s)?;
                let m = this.manifest(&r)?;
                out.push((r, m));
            }
            Ok(out)
        })
        .await?;
        let refs: Vec<(&RevisionHeader, &Manifest)> = pairs.iter().map(|(r, m)| (&r.header, m.as_ref())).collect();
        Ok(qa::drv_history(drv, &refs))
    }

    /// `ready TARGET --base BASE` under the node's rule.
    pub async fn ready(&self, target: &str, base: &str) -> Result<ReadyVerdict, QaError> {
        let _slot = self.slot().await?;
        let (b, t) = tokio::try_join!(self.evaluate(base), self.evaluate(target))?;
        let comparison = qa::compare(
            &b.rev.header.id().to_string(),
            &b.status,
            &t.rev.header.id().to_string(),
            &t.status,
            &CompareOptions::default(),
        );
        let now = unix_ms();
        let weather = qa::weather(&t.manifest, &t.facts, now, WeatherOptions::default());
        Ok(qa::ready(&t.rev.header, &t.status, &comparison, &weather, &self.inner.rule, now))
    }
}

/// A revision with everything the answers need.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The header.
    pub rev: Revision,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// The facts of its derivations.
    pub facts: RevisionFacts,
    /// Its jobs' status.
    pub status: RevisionStatus,
}

/// Run `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QaError> + Send + 'static,
) -> Result<T, QaError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| QaError::Internal(format!("task failed: {e}")))?
}

/// The `[qa]` table of the node's configuration.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSettings {
    /// The ready rule (`[qa.ready]`): `max_broken`, `max_newly_not_matching`,
    /// `min_availability`, `max_unknown_age_hours`.
    pub ready: ReadyRule,
}
