//! `GET /health`: whether the node works, for supervisors, load balancers and monitoring.
//!
//! `200 {"status": "ok", "version": "…", "failures": []}` when it does;
//! `503 {"status": "failing", "version": "…", "failures": [{"component": "store", "error": "…",
//! …}]}` when a part is broken (today: the database, e.g. after the disk filled up; the node
//! reopens it by itself, or exits after `store_failure_exit_secs`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;

/// How long the health check waits for a read of the database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `failing`.
    pub status: String,
    /// buildmesh version.
    pub version: String,
    /// What is broken (empty when `ok`).
    pub failures: Vec<Failure>,
}

/// One broken part of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Which part: `store`.
    pub component: String,
    /// What failed.
    pub error: String,
    /// Since when (Unix ms), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
    /// Recovery attempts so far.
    #[serde(default)]
    pub recovery_attempts: u32,
    /// Why the last recovery attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
}

pub(super) async fn health(State(state): State<AppState>) -> Response {
    let store = state.store().clone();
    let checked = tokio::time::timeout(CHECK_TIMEOUT, tokio::task::spawn_blocking(move || store.check())).await;
    let mut failures = Vec::new();
    if let Some(f) = state.store().failure() {
        failures.push(Failure {
            component: "store".into(),
            error: f.error,
            since_unix_ms: Some(f.since_unix_ms),
            recovery_attempts: f.attempts,
            last_attempt: f.last_attempt,
        });
    } else {
        let error = match checked {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(format!("check task failed: {e}")),
            Err(_) => Some(format!("no answer from the database within {} s", CHECK_TIMEOUT.as_secs())),
        };
        if let Some(error) = error {
            failures.push(Failure {
                component: "store".into(),
                error,
                since_unix_ms: None,
                recovery_attempts: 0,
                last_attempt: None,
            });
        }
    }
    let ok = failures.is_empty();
    let body = Health {
        status: if ok { "ok" } else { "failing" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        failures,
    };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
