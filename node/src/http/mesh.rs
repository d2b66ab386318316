//! The mesh's part of the JSON API (merged into the node's router when the mesh runs).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/peers` | every known live peer ([`crate::mesh::PeerView`]) |
//! | `GET /api/v1/mesh` | the driver's state and counters ([`crate::mesh::MeshStatus`]) |
//! | `GET /api/v1/mesh/delays` | `{"attestation_delay_ms": [..]}`: build end to acceptance here, recent gossip |
//! | `POST /api/v1/mesh/retry` | `{"drv": "<drv>", "on": "<peer id>"}`: build `drv` on that node |
//! | `POST /api/v1/peers/<peer id>/block`, `…/unblock` | close and refuse (or allow again) a peer's connections |
//!
//! `GET /metrics` (the libp2p counters and buildmesh's own) is served by [`super::metrics`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::store_path::StorePath;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::mesh::{MeshApiError, MeshHandle};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn api_error(e: MeshApiError) -> Response {
    match e {
        MeshApiError::Refused(m) => error(StatusCode::CONFLICT, m),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// The router (state applied).
pub fn router(handle: MeshHandle) -> Router {
    Router::new()
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/mesh", get(status))
        .route("/api/v1/mesh/delays", get(delays))
        .route("/api/v1/mesh/retry", post(retry))
        .route("/api/v1/peers/{peer}/block", post(block))
        .route("/api/v1/peers/{peer}/unblock", post(unblock))
        .with_state(handle)
}

async fn peers(State(h): State<MeshHandle>) -> Response {
    Json(h.peers()).into_response()
}

async fn status(State(h): State<MeshHandle>) -> Response {
    Json(h.status()).into_response()
}

async fn delays(State(h): State<MeshHandle>) -> Response {
    Json(serde_json::json!({ "attestation_delay_ms": h.attestation_delays() })).into_response()
}

/// Body of `POST /api/v1/mesh/retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryBody {
    /// The derivation: base name or full path.
    pub drv: String,
    /// The node that should build it: peer id (`12D3Koo…`) or node id (64 hex digits).
    pub on: String,
}

/// Parse a node named by peer id or hex node id.
pub fn parse_node(s: &str) -> Result<NodeId, String> {
    NodeId::from_peer_id(s)
        .or_else(|_| s.parse::<NodeId>())
        .map_err(|e| format!("{} is not a peer id or node id: {e}", super::echo(s)))
}

async fn retry(
    State(h): State<MeshHandle>,
    body: Result<Json<RetryBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad body: {}", e.body_text())),
    };
    let drv = if body.drv.starts_with('/') {
        h.store_dir().parse_path(&body.drv)
    } else {
        StorePath::from_basename(&body.drv)
    };
    let drv = match drv {
        Ok(d) if d.is_derivation() => d,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("{} is not a .drv path", super::echo(&body.drv))),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{}: {e}", super::echo(&body.drv))),
    };
    let on = match parse_node(&body.on) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match h.retry(drv.clone(), on).await {
        Ok(()) => {
            Json(serde_json::json!({ "drv": h.store_dir().display(&drv), "on": on.to_peer_id(), "requested": true }))
                .into_response()
        }
        Err(e) => api_error(e),
    }
}

async fn set_block(h: MeshHandle, peer: String, blocked: bool) -> Response {
    let peer: PeerId = match peer.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{} is not a peer id: {e}", super::echo(&peer))),
    };
    match h.set_blocked(peer, blocked).await {
        Ok(changed) => Json(serde_json::json!({ "peer_id": peer.to_base58(), "blocked": blocked, "changed": changed }))
            .into_response(),
        Err(e) => api_error(e),
    }
}

async fn block(State(h): State<MeshHandle>, Path(peer): Path<String>) -> Response {
    set_block(h, peer, true).await
}

async fn unblock(State(h): State<MeshHandle>, Path(peer): Path<String>) -> Response {
    set_block(h, peer, false).await
}
