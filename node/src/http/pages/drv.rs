//! `/drv/<drv base name>`: a derivation's outputs with every attestation (builder, NarHash,
//! signature, native or emulated, times), every signed failure, why it is or is not building
//! (`buildmesh explain`), the revisions it belongs to, and its build log. Updates live.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::DrvHistory;
use buildmesh_protocol::store_path::StorePath;
use maud::html;
use serde::Serialize;

use super::layout::{Nav, badge, frame, short, time};
use super::{PageError, PagesContext, link, link_segment, page_or_error, respond};
use crate::audit::{FailureView, OutputReport};
use crate::qa::explain::Explanation;
use buildmesh_protocol::verdict::Verdict;

/// The JSON twin: `GET /api/v1/explain?drv=`, `GET /api/v1/query?drv=` (outputs),
/// `GET /api/v1/failures?drv=` and `GET /api/v1/history?drv=`.
#[derive(Debug, Serialize)]
pub struct DrvTwin {
    /// Why it is or is not building.
    pub explain: Explanation,
    /// Every output with its attestations and verdict.
    pub outputs: Vec<OutputReport>,
    /// Signed failures.
    pub failures: Vec<FailureView>,
    /// The revisions it belongs to.
    pub history: DrvHistory,
    /// Where its log is (on this node, when it built it).
    pub log: String,
}

/// `GET /drv/{name}`.
pub async fn page(State(ctx): State<PagesContext>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    page_or_error(&headers, drv_page(&ctx, &headers, &name).await)
}

async fn gather(ctx: &PagesContext, drv: StorePath) -> Result<DrvTwin, PageError> {
    let explain = crate::qa::explain::explain(ctx.qa(), &drv).await?;
    let history = ctx.qa().drv_history(&drv).await?;
    let c = ctx.clone();
    let d = drv.clone();
    let (outputs, failures) = crate::qa::blocking(move || {
        let outputs =
            crate::audit::query_drv(c.store(), &d).map_err(|e| crate::qa::QaError::Internal(e.to_string()))?;
        let failures =
            crate::audit::failures_of(c.store(), &d).map_err(|e| crate::qa::QaError::Internal(e.to_string()))?;
        Ok((outputs, failures))
    })
    .await?;
    let unknown = explain.system.is_none()
        && explain.mesh_state == "unknown"
        && outputs.is_empty()
        && failures.is_empty()
        && history.revisions.is_empty();
    if unknown {
        return Err(PageError {
            status: axum::http::StatusCode::NOT_FOUND,
            message: format!("this node knows nothing of {drv}: no .drv, attestation, failure, job or revision"),
        });
    }
    let log = link_segment("/api/v1/builds", &drv.to_string()) + "/log";
    Ok(DrvTwin { explain, outputs, failures, history, log })
}

async fn drv_page(ctx: &PagesContext, headers: &HeaderMap, name: &str) -> Result<Response, PageError> {
    let drv = StorePath::from_basename(name).ok().filter(StorePath::is_derivation).ok_or_else(|| {
        PageError::bad_request(format!("{} is not a .drv base name (<hash>-<name>.drv)", crate::http::echo(name)))
    })?;
    let c = ctx.clone();
    let d = drv.clone();
    let t = ctx.cache().get(format!("drv:{drv}"), move || async move { gather(&c, d).await }).await?;
    Ok(respond(headers, t.as_ref(), || {
        let e = &t.explain;
        let body = html! {
            h1 { "Derivation " code { (drv.name()) } }
            p.mono { (e.drv) }
            div #live {
                p { (badge(&e.status)) " mesh: " (e.mesh_state) @if let Some(s) = &e.system { " · " (s) } }
                h2 { "Why" }
                ul { @for r in &e.reasons { li { (r) } } }
                @if let Some(u) = &e.unblock { p { "To unblock: " (u) } }
                p.mute { "Members able to build it: " (e.eligible.native) " native, " (e.eligible.emulated) " emulated; live claims: " (e.claims.len()) "." }
                h2 { "Outputs and attestations" }
                @if t.outputs.is_empty() { p.mute { "No attestation of it here yet." } }
                @for o in &t.outputs {
                    h3 { code { (o.path) } " " (badge(verdict_class(o.verdict)))
                        @if o.verdict == Verdict::Mismatch { " " a href=(link("/diff", &[("path", &o.path)])) { "diff" } } }
                    div.scroll { table {
                        thead { tr { th { "builder" } th { "NarHash" } th.n { "NarSize" } th { "mode" } th { "started" } th { "finished" } th { "signature" } } }
                        tbody { @for a in &o.attestations { tr {
                            td { (short(&a.builder_key)) }
                            td { code { (a.nar_hash) } }
                            td.n { (a.nar_size) }
                            td { @if a.emulated { "emulated" } @else { "native" } }
                            td { (time(a.started_at)) }
                            td { (time(a.finished_at)) }
                            td { (short(&a.signature)) }
                        } } }
                    } }
                }
                h2 { "Signed failures" }
                @if t.failures.is_empty() { p.mute { "None." } }
                @else { div.scroll { table {
                    thead { tr { th { "builder" } th.n { "attempt" } th { "when" } th { "reason" } th { "mode" } } }
                    tbody { @for f in &t.failures { tr {
                        td { (short(&f.peer_id)) } td.n { (f.attempt) } td { (time(f.at)) } td { (f.reason) }
                        td { @if f.emulated { "emulated" } @else { "native" } }
                    } } }
                } } }
                h2 { "Build log" }
                p { a href=(t.log) { "The build log" } " (held by this node when it built or failed it)." }
                h2 { "Revisions" }
                @if t.history.revisions.is_empty() { p.mute { "It belongs to no revision known here." } }
                ul { @for r in &t.history.revisions { li {
                    a href=(link_segment("/revision", &r.revision)) { code { (r.revision) } } " " (r.branch) " · " (time(r.created_at_ms))
                    @for j in &r.jobs { " · " a href=(link_segment("/package", &j.package)) { (j.package) } " " (j.version) }
                } } }
            }
        };
        frame(&format!("Derivation {}", drv.name()), Nav::None, true, body)
    }))
}

/// The dashboard's class of an audit verdict (the revision pages' words).
fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Match => "matching",
        Verdict::Mismatch => "not-matching",
        Verdict::Single => "single",
        Verdict::None => "none",
    }
}
