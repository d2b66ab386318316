//! `POST /api/v1/revisions`: a revision submitted to this node.
//!
//! The client (`buildmesh revision submit`) first uploads the jobs' closure with the submit
//! endpoint, which stores every `.drv` and makes each derivation a mesh job (as `buildmesh submit`
//! does); then it posts the revision: channel, branch, commit and the jobs. The node reads the
//! closure **from its own store** (never a graph the client claims), builds the manifest
//! ([`ManifestBuilder`]), signs the header with its key as the submitter and publishes both:
//! durable in redb first, then gossiped (the manifest is fetched by peers on demand).

use std::collections::{BTreeSet, VecDeque};

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::revision::{MAX_MANIFEST_JOBS, Manifest, ManifestBuilder, RevisionHeader, RevisionId};
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::StorePath;
use serde::{Deserialize, Serialize};

use super::{QaContext, QaError, blocking};
use crate::store::{RevisionEntry, Store, unix_ms};

/// One job of a [`RevisionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The derivation: an absolute `.drv` store path or its basename.
    pub drv: String,
    /// The package name; from the derivation when absent.
    #[serde(default)]
    pub package: Option<String>,
    /// The version; from the derivation when absent.
    #[serde(default)]
    pub version: Option<String>,
}

/// The body of `POST /api/v1/revisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionRequest {
    /// The channel (`guix`, `nixpkgs`).
    pub channel: String,
    /// The branch.
    pub branch: String,
    /// The commit id.
    pub commit: String,
    /// The replication factor (default: the node's `replicas`).
    #[serde(default)]
    pub replicas: Option<u8>,
    /// The jobs.
    pub jobs: Vec<JobRequest>,
}

/// The answer: `{"revision": "C@ID", "jobs": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionAccepted {
    /// `C@ID`.
    pub revision: String,
    /// Number of jobs.
    pub jobs: usize,
}

fn drv_path(ctx: &QaContext, s: &str) -> Result<StorePath, QaError> {
    let sd = ctx.store_dir();
    let p = if s.starts_with('/') { sd.parse_path(s) } else { StorePath::from_basename(s) }
        .map_err(|e| QaError::BadRequest(format!("job drv {s:?}: {e}")))?;
    if !p.is_derivation() {
        return Err(QaError::BadRequest(format!("job drv {s:?} is not a .drv path")));
    }
    Ok(p)
}

/// Build, sign, store and publish the revision of `req`.
pub async fn submit(ctx: &QaContext, req: RevisionRequest) -> Result<RevisionAccepted, QaError> {
    let id = RevisionId::new(&req.channel, &req.commit).map_err(|e| QaError::BadRequest(e.to_string()))?;
    buildmesh_protocol::revision::validate_branch(&req.branch)
        .map_err(|e| QaError::BadRequest(format!("branch {:?}: {e}", req.branch)))?;
    if req.jobs.is_empty() {
        return Err(QaError::BadRequest("a revision needs at least one job".to_string()));
    }
    if req.jobs.len() > MAX_MANIFEST_JOBS {
        return Err(QaError::BadRequest(format!(
            "{} jobs; a revision holds at most {MAX_MANIFEST_JOBS}",
            req.jobs.len()
        )));
    }
    let replicas = req.replicas.unwrap_or(ctx.inner.replicas);
    if !(1..=buildmesh_protocol::wire::MAX_REPLICAS).contains(&replicas) {
        return Err(QaError::BadRequest(format!(
            "replicas {replicas} is outside 1..={}",
            buildmesh_protocol::wire::MAX_REPLICAS
        )));
    }
    let this = ctx.clone();
    let jobs = req.jobs.len();
    let (header, bytes, manifest) = blocking(move || {
        let store = this.store();
        let sd = this.store_dir().clone();
        let mut builder = ManifestBuilder::new(sd.clone());
        let mut queue: VecDeque<(StorePath, Option<StorePath>)> = VecDeque::new();
        for j in &req.jobs {
            let p = drv_path(&this, &j.drv)?;
            builder.add_job(p.clone(), j.package.clone(), j.version.clone());
            queue.push_back((p, None));
        }
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        while let Some((p, parent)) = queue.pop_front() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let Some(aterm) = store.get_drv(&p)? else {
                return Err(QaError::BadRequest(match parent {
                    Some(parent) => format!(
                        "derivation {} (an input of {}) is not stored on this node: upload the closure first \
                         (`buildmesh revision submit` does)",
                        sd.display(&p),
                        sd.display(&parent)
                    ),
                    None => format!(
                        "derivation {} is not stored on this node: upload the closure first \
                         (`buildmesh revision submit` does)",
                        sd.display(&p)
                    ),
                }));
            };
            let drv = Derivation::parse(&aterm, &sd)
                .map_err(|e| QaError::Internal(format!("stored derivation {}: {e}", sd.display(&p))))?;
            for input in drv.input_drvs.keys() {
                if !seen.contains(input) {
                    queue.push_back((input.clone(), Some(p.clone())));
                }
            }
            builder.add_drv(p, &drv).map_err(|e| QaError::BadRequest(e.to_string()))?;
        }
        let manifest = builder.build().map_err(|e| QaError::BadRequest(e.to_string()))?;
        let bytes = manifest.encode_to_vec();
        let header = RevisionHeader::for_manifest(
            this.inner.key.node_id(),
            unix_ms(),
            &req.channel,
            &req.branch,
            &req.commit,
            replicas,
            &manifest,
            &bytes,
        )
        .map_err(|e| QaError::BadRequest(e.to_string()))?;
        Ok((header, bytes, manifest))
    })
    .await?;
    publish(ctx, header, bytes, manifest).await?;
    Ok(RevisionAccepted { revision: id.to_string(), jobs })
}

/// Store the signed header and the manifest durably, then (on a mesh node) gossip the header.
async fn publish(ctx: &QaContext, header: RevisionHeader, bytes: Vec<u8>, manifest: Manifest) -> Result<(), QaError> {
    if let Some(mesh) = ctx.mesh() {
        // Stored with the manifest in one transaction, then gossiped.
        mesh.publish_revision(header, bytes).await.map_err(|e| QaError::Mesh(e.to_string()))?;
        return Ok(());
    }
    let this = ctx.clone();
    blocking(move || store_signed(this.store(), &this.inner.key, &header, &bytes, &manifest)).await
}

/// Sign `header` with `key` (its submitter) and store it with its manifest (`bytes`, the
/// canonical encoding of `manifest`) durably: the manifest first, so a stored header of this
/// node always has its manifest.
pub fn store_signed(
    store: &Store,
    key: &NodeKey,
    header: &RevisionHeader,
    bytes: &[u8],
    manifest: &Manifest,
) -> Result<(), QaError> {
    let signed = Signed::sign(key, header).map_err(|e| QaError::Internal(format!("signing the revision: {e}")))?;
    let drvs: Vec<String> = manifest.drvs.iter().map(|d| d.drv.to_string()).collect();
    store.put_manifest(header.manifest_hash, bytes, drvs.iter())?;
    store.insert_revision(&RevisionEntry {
        id: signed.id(),
        channel: header.channel.clone(),
        branch: header.branch.clone(),
        commit: header.commit.clone(),
        submitter: header.submitter,
        created_at_ms: header.created_at_ms,
        manifest_hash: header.manifest_hash,
        manifest_size: header.manifest_size,
        received_at: unix_ms(),
        envelope: buildmesh_protocol::wire::Encode::to_bytes(signed.envelope()),
    })?;
    Ok(())
}
