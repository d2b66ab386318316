//! The NAR diff of a disputed output (issue 14): `GET /diff?path=<store path>[&a=KEY&b=KEY]` (an
//! HTML page, or the JSON by `Accept: application/json`) and `GET /api/v1/diff?path=…` (JSON,
//! [`crate::audit::diff::DiffReport`]); `buildmesh diff` uses the latter.
//!
//! The two builders are `a` and `b` when given (peer ids or node ids), else two whose signed
//! NarHashes differ. Each builder's NAR is the local blob with that NarHash, or is fetched from
//! that builder over the mesh and verified against its signed NarHash and NarSize (stored as a
//! blob, not registered as a path); then [`crate::audit::diff::diff_nars`] streams both. At most
//! [`MAX_CONCURRENT_DIFFS`] diffs run at once (503 beyond).

use std::io::BufReader;
use std::sync::LazyLock;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::store_path::StorePath;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::AppState;
use crate::audit::diff::{DiffLimits, DiffReport, Side, describe, diff_nars};

/// Diffs computed at once.
pub const MAX_CONCURRENT_DIFFS: usize = 2;
static DIFFS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| tokio::sync::Semaphore::new(MAX_CONCURRENT_DIFFS));

/// The query.
#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    /// The output store path (absolute or base name).
    pub path: String,
    /// The first builder (peer id or node id).
    pub a: Option<String>,
    /// The second builder.
    pub b: Option<String>,
}

struct Failure(StatusCode, String);

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

/// One builder's signed claim about the output.
#[derive(Debug, Clone)]
struct Claim {
    builder: NodeId,
    nar_hash: [u8; 32],
    nar_size: u64,
}

fn claims(state: &AppState, path: &StorePath) -> Result<Vec<Claim>, Failure> {
    let stored = state
        .store()
        .attestations_for_output(path)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut out: Vec<Claim> = Vec::new();
    for s in &stored {
        let v =
            crate::audit::verify_stored(s).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        for o in v.value().outputs.values().filter(|o| &o.path == path) {
            if !out.iter().any(|c| c.builder == v.builder && c.nar_hash == o.nar_hash) {
                out.push(Claim { builder: v.builder, nar_hash: o.nar_hash, nar_size: o.nar_size });
            }
        }
    }
    Ok(out)
}

fn pick(all: &[Claim], a: Option<NodeId>, b: Option<NodeId>, shown: &str) -> Result<(Claim, Claim), Failure> {
    let by = |n: NodeId| {
        all.iter().find(|c| c.builder == n).cloned().ok_or_else(|| {
            Failure(StatusCode::NOT_FOUND, format!("{} has no attestation of {shown} here", n.to_peer_id()))
        })
    };
    match (a, b) {
        (Some(a), Some(b)) => Ok((by(a)?, by(b)?)),
        (None, None) => {
            let first =
                all.first().ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no attestation of {shown} here")))?;
            let other = all.iter().find(|c| c.nar_hash != first.nar_hash).ok_or_else(|| {
                Failure(
                    StatusCode::CONFLICT,
                    format!(
                        "every builder of {shown} signed the same NarHash: there is nothing to diff (give a= and b=)"
                    ),
                )
            })?;
            Ok((first.clone(), other.clone()))
        }
        _ => Err(Failure(StatusCode::BAD_REQUEST, "give both builders (a= and b=) or neither".into())),
    }
}

async fn blob_of(state: &AppState, c: &Claim) -> Result<buildmesh_protocol::id::ArtifactHash, Failure> {
    let (store, h) = (state.store().clone(), NixHash::sha256(c.nar_hash));
    let local = tokio::task::spawn_blocking(move || store.blob_by_nar_hash(&h))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(b) = local.filter(|b| b.nar_size == c.nar_size) {
        return Ok(b.blake3);
    }
    let Some(mesh) = state.inner.mesh.clone() else {
        return Err(Failure(StatusCode::NOT_FOUND, "the NAR is not on this node, which is not in a mesh".into()));
    };
    let fetched = mesh.fetch_nar(c.nar_hash, c.nar_size, &[c.builder]).await.map_err(|e| {
        Failure(StatusCode::BAD_GATEWAY, format!("fetching the NAR of {} from it: {e}", c.builder.to_peer_id()))
    })?;
    Ok(fetched.blake3)
}

async fn report(state: &AppState, q: DiffQuery) -> Result<DiffReport, Failure> {
    let path =
        super::audit::parse_target(state.store_dir(), &q.path).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    let node = |s: Option<String>| -> Result<Option<NodeId>, Failure> {
        s.map(|s| super::mesh::parse_node(&s).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))).transpose()
    };
    let (a, b) = (node(q.a)?, node(q.b)?);
    let shown = state.store_dir().display(&path);
    let _permit = DIFFS.try_acquire().map_err(|_| {
        Failure(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_CONCURRENT_DIFFS} diffs are running; try again later"))
    })?;
    let (st, p) = (state.clone(), path.clone());
    let all = tokio::task::spawn_blocking(move || claims(&st, &p))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let (ca, cb) = pick(&all, a, b, &shown)?;
    let (ba, bb) = (blob_of(state, &ca).await?, blob_of(state, &cb).await?);
    let store = state.store().clone();
    let diff = tokio::task::spawn_blocking(move || {
        diff_nars(
            |side| {
                let id = if side == "a" { &ba } else { &bb };
                store.open_nar(id).map(|r| BufReader::with_capacity(1 << 16, r)).map_err(std::io::Error::other)
            },
            &DiffLimits::default(),
        )
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let side = |c: &Claim| Side {
        builder: c.builder.to_peer_id(),
        nar_hash: NixHash::sha256(c.nar_hash).to_string(),
        nar_size: c.nar_size,
    };
    Ok(DiffReport { path: shown, a: side(&ca), b: side(&cb), diff })
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `GET /api/v1/diff`.
pub(super) async fn api(State(state): State<AppState>, query: Result<Query<DiffQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return json_error(StatusCode::BAD_REQUEST, "want ?path=<store path>[&a=&b=]".into());
    };
    match report(&state, q).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(Failure(s, m)) => json_error(s, m),
    }
}

/// `GET /diff`: HTML, or JSON by `Accept: application/json`.
pub(super) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Response {
    let json = wants_json(&headers);
    let Ok(Query(q)) = query else {
        let m = "want ?path=<store path>[&a=&b=]".to_string();
        return if json {
            json_error(StatusCode::BAD_REQUEST, m)
        } else {
            (StatusCode::BAD_REQUEST, Html(frame("Diff", html! { p { (m) } }).into_string())).into_response()
        };
    };
    match (report(&state, q).await, json) {
        (Ok(r), true) => axum::Json(r).into_response(),
        (Ok(r), false) => Html(render(&r).into_string()).into_response(),
        (Err(Failure(s, m)), true) => json_error(s, m),
        (Err(Failure(s, m)), false) => {
            (s, Html(frame("Diff", html! { p.error { (m) } }).into_string())).into_response()
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem;line-height:1.4}\
code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top;word-break:break-all}\
.add{color:#064}.del{color:#900}.error{color:#900}";

fn frame(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · buildmesh" }
                style { (STYLE) }
            }
            body {
                nav { a href="/" { "buildmesh" } }
                (body)
            }
        }
    }
}

fn render(r: &DiffReport) -> Markup {
    let d = &r.diff;
    frame(
        "Diff",
        html! {
            h1 { "NAR diff" }
            p { code { (r.path) } }
            table {
                tr { th { "" } th { "builder" } th { "NarHash" } th { "NarSize" } }
                tr { td { "a" } td { code { (r.a.builder) } } td { code { (r.a.nar_hash) } } td { (r.a.nar_size) } }
                tr { td { "b" } td { code { (r.b.builder) } } td { code { (r.b.nar_hash) } } td { (r.b.nar_size) } }
            }
            p { (d.added.len()) " added, " (d.removed.len()) " removed, " (d.changed.len()) " changed, " (d.same) " identical" }
            @if !d.added.is_empty() || !d.removed.is_empty() {
                h2 { "Added and removed" }
                table {
                    @for e in &d.added { tr.add { td { "added" } td { code { (e.path) } } td { (describe(&e.entry)) } } }
                    @for e in &d.removed { tr.del { td { "removed" } td { code { (e.path) } } td { (describe(&e.entry)) } } }
                }
            }
            @if !d.changed.is_empty() {
                h2 { "Changed" }
                @for c in &d.changed {
                    h3 { code { (c.path) } }
                    p { (c.what.join(", ")) " — a: " (describe(&c.a)) "; b: " (describe(&c.b)) }
                    @if let Some(u) = &c.unified_diff { pre { (u) } }
                    @if let Some(o) = c.first_difference { p { "binary; first difference at byte " (o) } }
                    @if c.truncated { p { em { "comparison truncated" } } }
                }
            }
            @for n in &d.notes { p { em { (n) } } }
        },
    )
}
