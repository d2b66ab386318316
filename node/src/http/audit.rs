//! The auditor's JSON API routes, mounted by the node's HTTP server:
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/query?target=<store path or .drv path>` | [`crate::audit::OutputReport`]s (a list: one per output of a `.drv`, one for an output path) |
//! | `GET /api/v1/audit` | [`crate::audit::AuditReport`] |
//! | `GET /api/v1/attestations/export` | every signed attestation as JSON lines ([`crate::audit::export_jsonl`]) |
//! | `GET /api/v1/failures?drv=<.drv path>` | every signed build failure of a derivation ([`crate::audit::FailureView`]s) |

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use serde::Deserialize;

use crate::store::Store;

/// What the audit routes need.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// The node's store.
    pub store: Store,
    /// Its store directory (to parse full paths).
    pub store_dir: StoreDir,
}

/// The audit routes with their state applied.
pub fn router(ctx: AuditContext) -> Router {
    Router::new()
        .route("/api/v1/query", get(query))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/attestations/export", get(export))
        .route("/api/v1/failures", get(failures))
        .with_state(ctx)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Parse a full store path (`/nix/store/…`) or a bare base name. The error quotes at most a
/// short prefix of `target` ([`super::echo`]).
pub fn parse_target(store_dir: &StoreDir, target: &str) -> Result<StorePath, String> {
    if target.starts_with('/') {
        store_dir.parse_path(target).map_err(|e| format!("{}: {e}", super::echo(target)))
    } else {
        StorePath::from_basename(target).map_err(|e| format!("{}: {e}", super::echo(target)))
    }
}

/// A query string that does not parse, as a JSON 400 (axum's own rejection is plain text).
fn bad_query(e: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, format!("bad query string: {}", e.body_text()))
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    target: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::audit::AuditError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("audit task failed: {e}"))),
    }
}

async fn query(State(ctx): State<AuditContext>, q: Result<Query<QueryParams>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let path = match parse_target(&ctx.store_dir, &q.target) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let store = ctx.store.clone();
    let r = blocking(move || {
        if path.is_derivation() {
            crate::audit::query_drv(&store, &path)
        } else {
            crate::audit::query_path(&store, &path).map(|r| vec![r])
        }
    })
    .await;
    match r {
        Ok(reports) => Json(reports).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Debug, Deserialize)]
struct FailuresParams {
    drv: String,
}

async fn failures(State(ctx): State<AuditContext>, q: Result<Query<FailuresParams>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let drv = match parse_target(&ctx.store_dir, &q.drv) {
        Ok(p) if p.is_derivation() => p,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("{} is not a .drv path", super::echo(&q.drv))),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let store = ctx.store.clone();
    match blocking(move || crate::audit::failures_of(&store, &drv)).await {
        Ok(list) => Json(list).into_response(),
        Err(resp) => resp,
    }
}

async fn audit(State(ctx): State<AuditContext>) -> Response {
    let store = ctx.store.clone();
    match blocking(move || crate::audit::audit(&store)).await {
        Ok(report) => Json(report).into_response(),
        Err(resp) => resp,
    }
}

async fn export(State(ctx): State<AuditContext>) -> Response {
    let store = ctx.store.clone();
    match blocking(move || {
        let mut out = Vec::new();
        crate::audit::export_jsonl(&store, &mut out)?;
        Ok(out)
    })
    .await
    {
        Ok(body) => ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response(),
        Err(resp) => resp,
    }
}
