//! The QA routes: revisions, compare, weather, history, explain, ready ([`crate::qa`]). Every
//! answer is JSON; errors are `{"error": …}` with 400 (malformed question), 404 (unknown
//! revision, derivation or package), 503 (a manifest not arrived yet, the mesh not answering) or
//! 500. The CLI (`buildmesh revision|compare|weather|history|explain|ready --json`) prints exactly
//! these bodies.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/revisions?channel=&branch=` | the revisions, newest first |
//! | `POST /api/v1/revisions` (token) | submit one: `{"channel", "branch", "commit", "replicas"?, "jobs": [{"drv", "package"?, "version"?}]}` → `{"revision", "jobs"}` |
//! | `GET /api/v1/revisions/{C@ID or C:branch}?system=&status=` | the revision with every job's status and verdict, counts per system |
//! | `GET /api/v1/compare?base=&target=&system=` | the comparison |
//! | `GET /api/v1/weather?revision=&coverage=&display_missing=` | per-system availability, root causes |
//! | `POST /api/v1/weather` (token) | the same for `{"paths": [...], "coverage", "display_missing"}` |
//! | `GET /api/v1/history?package=&channel=&branch=` or `?drv=` | a package across revisions, or a derivation's revisions |
//! | `GET /api/v1/explain?drv=` | why a derivation is or is not building |
//! | `GET /api/v1/ready?target=&base=` | the ready verdict with its reasons and rule |
//! | `GET /reproducible.json?revision=&limit=` | the reproducibility feed ([`super::reproducible`]) |

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use buildmesh_protocol::qa::{CompareOptions, WeatherOptions};
use serde::{Deserialize, Serialize};

use crate::qa::submit::RevisionRequest;
use crate::qa::{QaContext, QaError};

/// The largest body of `POST /api/v1/revisions` and `POST /api/v1/weather` (a revision of
/// 200,000 jobs is ~30 MiB of JSON).
pub const MAX_QA_BODY: usize = 128 * 1024 * 1024;

/// The QA routes with their state applied.
pub fn router(ctx: QaContext) -> Router {
    Router::new()
        .route("/api/v1/revisions", get(list).post(submit))
        .route("/api/v1/revisions/{name}", get(show))
        .route("/api/v1/compare", get(compare))
        .route("/api/v1/weather", get(weather).post(weather_of_paths))
        .route("/api/v1/history", get(history))
        .route("/api/v1/explain", get(explain))
        .route("/api/v1/ready", get(ready))
        .route("/reproducible.json", get(super::reproducible::feed))
        .layer(DefaultBodyLimit::max(MAX_QA_BODY))
        .with_state(ctx)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for QaError {
    fn into_response(self) -> Response {
        let status = match &self {
            QaError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QaError::NotFound(_) => StatusCode::NOT_FOUND,
            QaError::ManifestMissing { .. } | QaError::Mesh(_) | QaError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self.to_string())
    }
}

fn answer<T: Serialize>(r: Result<T, QaError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn bad_query(e: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, format!("bad query string: {}", e.body_text()))
}

/// A boolean query flag: `true`/`1`/`yes` or empty (present) is on.
fn flag(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| matches!(s, "" | "1" | "true" | "yes"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    channel: Option<String>,
    branch: Option<String>,
}

/// One revision in the list.
#[derive(Debug, Serialize)]
pub struct ListItem {
    /// The header's fields.
    #[serde(flatten)]
    pub summary: buildmesh_protocol::qa::RevisionSummary,
    /// Jobs of its manifest.
    pub job_count: u64,
    /// Derivations of its manifest.
    pub drv_count: u32,
    /// `present` or `missing` (the header is here, its manifest has not arrived).
    pub manifest: &'static str,
}

/// The revisions list of `GET /api/v1/revisions` (blocking; the dashboard shows the same).
pub fn list_items(c: &QaContext, channel: Option<&str>, branch: Option<&str>) -> Result<Vec<ListItem>, QaError> {
    let revs = c.list(channel, branch)?;
    let mut out = Vec::with_capacity(revs.len());
    for r in revs {
        let present = c.store().has_manifest(&r.header.manifest_hash)?;
        out.push(ListItem {
            summary: buildmesh_protocol::qa::RevisionSummary::new(&r.header),
            job_count: r.header.job_count(),
            drv_count: r.header.drv_count,
            manifest: if present { "present" } else { "missing" },
        });
    }
    Ok(out)
}

async fn list(State(ctx): State<QaContext>, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let c = ctx.clone();
    answer(crate::qa::blocking(move || list_items(&c, q.channel.as_deref(), q.branch.as_deref())).await)
}

async fn submit(State(ctx): State<QaContext>, body: Result<Json<RevisionRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad revision: {}", e.body_text())),
    };
    answer(crate::qa::submit::submit(&ctx, req).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    system: Option<String>,
    status: Option<String>,
}

async fn show(
    State(ctx): State<QaContext>,
    Path(name): Path<String>,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    answer(ctx.show(&name, q.system.as_deref(), q.status.as_deref()).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareQuery {
    base: String,
    target: String,
    system: Option<String>,
    /// List only the pairs whose derivation changed (or that are on one side only).
    #[serde(default)]
    changed_only: bool,
}

async fn compare(State(ctx): State<QaContext>, q: Result<Query<CompareQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let options = CompareOptions { system: q.system, changed_only: q.changed_only };
    answer(ctx.compare_with(&q.base, &q.target, &options).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeatherQuery {
    revision: String,
    coverage: Option<String>,
    display_missing: Option<String>,
}

async fn weather(State(ctx): State<QaContext>, q: Result<Query<WeatherQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let options = WeatherOptions { coverage: flag(&q.coverage), display_missing: flag(&q.display_missing) };
    answer(ctx.weather(&q.revision, options).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeatherBody {
    paths: Vec<String>,
    #[serde(default)]
    coverage: bool,
    #[serde(default)]
    display_missing: bool,
}

async fn weather_of_paths(State(ctx): State<QaContext>, body: Result<Json<WeatherBody>, JsonRejection>) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad manifest: {}", e.body_text())),
    };
    let options = WeatherOptions { coverage: b.coverage, display_missing: b.display_missing };
    answer(ctx.weather_of_paths(b.paths, options).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    package: Option<String>,
    drv: Option<String>,
    channel: Option<String>,
    branch: Option<String>,
}

async fn history(State(ctx): State<QaContext>, q: Result<Query<HistoryQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    match (q.package, q.drv) {
        (Some(p), None) => answer(ctx.history(&p, q.channel.as_deref(), q.branch.as_deref()).await),
        (None, Some(d)) => match super::audit::parse_target(ctx.store_dir(), &d) {
            Ok(drv) => answer(ctx.drv_history(&drv).await),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        _ => error(StatusCode::BAD_REQUEST, "give exactly one of package= and drv="),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    drv: String,
}

async fn explain(State(ctx): State<QaContext>, q: Result<Query<ExplainQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let drv = match super::audit::parse_target(ctx.store_dir(), &q.drv) {
        Ok(d) if d.is_derivation() => d,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("{} is not a .drv path", super::echo(&q.drv))),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    answer(crate::qa::explain::explain(&ctx, &drv).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyQuery {
    target: String,
    base: String,
}

async fn ready(State(ctx): State<QaContext>, q: Result<Query<ReadyQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    answer(ctx.ready(&q.target, &q.base).await)
}

#[cfg(test)]
#[path = "qa_tests.rs"]
mod tests;
