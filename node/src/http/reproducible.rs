//! `GET /reproducible.json[?revision=<rev>][&limit=N]` (issue 14): the reproducibility feed. Per
//! revision (the newest [`DEFAULT_REVISIONS`] known here, at most [`MAX_REVISIONS`], or the one
//! named) and per system: how many jobs' outputs are `matching` (two or more builders, one
//! NarHash), `not_matching` (builders disagree) and `single` (one builder), and every
//! not-matching job with each builder's NarHash of each output. The verdicts are the QA verdicts
//! ([`buildmesh_protocol::qa`], over the facts of [`crate::qa`]); NarHashes come from the signed
//! attestations ([`crate::audit::query_drv`]). Documented in docs/auditors.md.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::qa::{OutputVerdict, RevisionSummary};
use buildmesh_protocol::store_path::StorePath;
use serde::{Deserialize, Serialize};

use crate::qa::{QaContext, QaError};
use crate::store::unix_ms;

/// Revisions in the feed by default.
pub const DEFAULT_REVISIONS: usize = 10;
/// Most revisions in one answer.
pub const MAX_REVISIONS: usize = 100;

/// The query.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// One revision (`C@commit` or `C:branch`).
    pub revision: Option<String>,
    /// How many of the newest revisions.
    pub limit: Option<usize>,
}

/// Counts of one system in one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRepro {
    /// Jobs whose builders all agree (two or more).
    pub matching: u64,
    /// Jobs whose builders disagree.
    pub not_matching: u64,
    /// Jobs with one builder.
    pub single: u64,
}

/// One builder's NarHash of one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderHash {
    /// The builder's Nix public key.
    pub builder: String,
    /// `sha256:<nix32>`.
    pub nar_hash: String,
}

/// A not-matching job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotMatching {
    /// Package.
    pub package: String,
    /// System.
    pub system: String,
    /// The derivation.
    pub drv: String,
    /// Per output path, every builder's NarHash.
    pub outputs: BTreeMap<String, Vec<BuilderHash>>,
}

/// One revision in the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRepro {
    /// The revision (header fields).
    #[serde(flatten)]
    pub summary: RevisionSummary,
    /// Per system.
    pub systems: BTreeMap<String, SystemRepro>,
    /// The not-matching jobs.
    pub not_matching: Vec<NotMatching>,
}

/// The feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// When it was computed (unix ms).
    pub generated_at_ms: u64,
    /// Newest first.
    pub revisions: Vec<RevisionRepro>,
}

async fn one(qa: &QaContext, name: &str) -> Result<RevisionRepro, QaError> {
    let e = qa.evaluate(name).await?;
    let mut systems: BTreeMap<String, SystemRepro> = BTreeMap::new();
    let mut bad = Vec::new();
    for j in &e.status.jobs {
        let s = systems.entry(j.system.clone()).or_default();
        match j.verdict {
            Some(OutputVerdict::Matching) => s.matching += 1,
            Some(OutputVerdict::Single) => s.single += 1,
            Some(OutputVerdict::NotMatching) => {
                s.not_matching += 1;
                bad.push((j.package.clone(), j.system.clone(), j.drv.clone()));
            }
            None => {}
        }
    }
    let store = qa.store().clone();
    let sd = qa.store_dir().clone();
    let not_matching = crate::qa::blocking(move || {
        let mut out = Vec::new();
        for (package, system, drv) in bad {
            let path = if drv.starts_with('/') { sd.parse_path(&drv) } else { StorePath::from_basename(&drv) }
                .map_err(|e| QaError::Internal(format!("{drv}: {e}")))?;
            let reports = crate::audit::query_drv(&store, &path).map_err(|e| QaError::Internal(e.to_string()))?;
            let outputs = reports
                .into_iter()
                .map(|r| {
                    let hashes = r
                        .attestations
                        .into_iter()
                        .map(|a| BuilderHash { builder: a.builder_key, nar_hash: a.nar_hash })
                        .collect();
                    (r.path, hashes)
                })
                .collect();
            out.push(NotMatching { package, system, drv: sd.display(&path), outputs });
        }
        Ok(out)
    })
    .await?;
    Ok(RevisionRepro { summary: RevisionSummary::new(&e.rev.header), systems, not_matching })
}

/// The handler (mounted when the node answers QA questions).
pub(super) async fn feed(State(qa): State<QaContext>, query: Result<Query<FeedQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return QaError::BadRequest("want ?revision=<rev> and/or ?limit=<n>".into()).into_response();
    };
    let result = async {
        let _slot = qa.slot().await?;
        let explicit = q.revision.is_some();
        let names: Vec<String> = match q.revision {
            Some(r) => vec![r],
            None => {
                let this = qa.clone();
                let mut revs = crate::qa::blocking(move || this.list(None, None)).await?;
                revs.sort_by_key(|r| std::cmp::Reverse(r.header.created_at_ms));
                let limit = q.limit.unwrap_or(DEFAULT_REVISIONS).clamp(1, MAX_REVISIONS);
                revs.into_iter().take(limit).map(|r| RevisionSummary::new(&r.header).revision).collect()
            }
        };
        let mut revisions = Vec::new();
        for n in names {
            match one(&qa, &n).await {
                Ok(r) => revisions.push(r),
                // A revision whose manifest has not arrived yet is left out of the list.
                Err(QaError::ManifestMissing { .. }) if !explicit => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<_, QaError>(Feed { generated_at_ms: unix_ms(), revisions })
    }
    .await;
    match result {
        Ok(f) => (StatusCode::OK, Json(f)).into_response(),
        Err(e) => e.into_response(),
    }
}
