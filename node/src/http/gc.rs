//! Garbage collection and pins over HTTP ([`crate::gc`]). Every route but the list of pins needs
//! the token (it changes the store).
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/gc[?dry_run=1]` | collect everything that is not pinned: `{"freed_bytes", "store_bytes", "pinned_bytes", "collected": [paths]}` |
//! | `GET /api/v1/pins` | the operator's pins: `{"pins": [paths]}` |
//! | `POST /api/v1/pins` | pin `{"path"}` (a full store path or a base name): `{"path", "changed"}` |
//! | `POST /api/v1/pins/remove` | unpin `{"path"}`: `{"path", "changed"}` |

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use serde::Deserialize;

use crate::gc::{Collector, Goal};

#[derive(Clone)]
struct GcState {
    collector: Collector,
    store_dir: StoreDir,
}

/// The routes, with their state.
pub fn router(collector: Collector, store_dir: StoreDir) -> Router {
    Router::new()
        .route("/api/v1/gc", post(gc))
        .route("/api/v1/pins", get(pins).post(pin))
        .route("/api/v1/pins/remove", post(unpin))
        .with_state(GcState { collector, store_dir })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcQuery {
    dry_run: Option<String>,
}

async fn gc(State(st): State<GcState>, q: Result<Query<GcQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query string: {}", e.body_text())),
    };
    let dry_run = q.dry_run.as_deref().is_some_and(|s| matches!(s, "" | "1" | "true" | "yes"));
    match st.collector.collect_async(Goal::Everything, dry_run).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn pins(State(st): State<GcState>) -> Response {
    let c = st.collector.clone();
    match tokio::task::spawn_blocking(move || c.pinned()).await {
        Ok(Ok(p)) => Json(serde_json::json!({ "pins": p })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    path: String,
}

fn parse(store_dir: &StoreDir, s: &str) -> Result<StorePath, String> {
    let parsed = if s.starts_with('/') { store_dir.parse_path(s) } else { StorePath::from_basename(s) };
    parsed.map_err(|e| format!("path {}: {e}", super::echo(s)))
}

async fn change(st: GcState, body: Result<Json<PinBody>, JsonRejection>, add: bool) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad body: {}", e.body_text())),
    };
    let path = match parse(&st.store_dir, &body.path) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let c = st.collector.clone();
    let p = path.clone();
    let r = tokio::task::spawn_blocking(move || if add { c.pin(&p) } else { c.unpin(&p) }).await;
    match r {
        Ok(Ok(changed)) => {
            Json(serde_json::json!({ "path": st.store_dir.display(&path), "changed": changed })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn pin(State(st): State<GcState>, body: Result<Json<PinBody>, JsonRejection>) -> Response {
    change(st, body, true).await
}

async fn unpin(State(st): State<GcState>, body: Result<Json<PinBody>, JsonRejection>) -> Response {
    change(st, body, false).await
}
