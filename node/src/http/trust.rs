//! `GET /api/v1/quarantine`: registrations this node replaced because they disagreed with the
//! NarHash its trust policy accepts for their path (a poisoned or non-reproducible local copy),
//! kept as evidence ([`crate::store::QuarantinedPath`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Most entries answered.
const MAX_ENTRIES: usize = 10_000;

/// `GET /api/v1/quarantine`: `[{"old": {path, nar_hash, …}, "replaced_by", "reason", "at"}]`.
pub(super) async fn quarantine(State(state): State<AppState>) -> Response {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.store().quarantined(MAX_ENTRIES)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}
