//! `/package/<name>?channel=&branch=`: a package's derivations across a branch's revisions
//! (`buildmesh history PACKAGE`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{Nav, badge, frame, time};
use super::revisions::short_drv;
use super::{PageError, PagesContext, bad_query, data, drv_link, link_segment, page_or_error, respond};

/// The query.
#[derive(Debug, Default, Deserialize)]
pub struct PackageQuery {
    channel: Option<String>,
    branch: Option<String>,
}

/// `GET /package/{name}`.
pub async fn page(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PackageQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, package_page(&ctx, &headers, &name, q).await)
}

async fn package_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    name: &str,
    q: Result<Query<PackageQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let nonempty = |o: Option<String>| o.filter(|s| !s.is_empty());
    let h = data::history(ctx, name, nonempty(q.channel.clone()), nonempty(q.branch.clone())).await?;
    Ok(respond(headers, h.as_ref(), || {
        let body = html! {
            h1 { "Package " (h.package) }
            form.filters method="get" {
                label { "channel" input name="channel" value=[q.channel.as_deref()]; }
                label { "branch" input name="branch" value=[q.branch.as_deref()]; }
                button { "Filter" }
            }
            div.scroll { table {
                thead { tr { th { "version" } th { "system" } th { "status" } th { "verdict" } th { "first seen" } th { "last seen" } th.n { "revisions" } th { "derivation" } } }
                tbody { @for d in &h.derivations { tr {
                    td { (d.version) }
                    td { (d.system) }
                    td { (badge(d.status.as_str())) }
                    td { @if let Some(v) = d.verdict { (badge(v.as_str())) } }
                    td { a href=(link_segment("/revision", &d.first_revision)) { code { (d.first_revision) } } br; small.mute { (time(d.first_seen_ms)) } }
                    td { a href=(link_segment("/revision", &d.last_revision)) { code { (d.last_revision) } } br; small.mute { (time(d.last_seen_ms)) } }
                    td.n { (d.revisions) }
                    td { a href=(drv_link(&d.drv)) { code { (short_drv(&d.drv)) } } }
                } } }
            } }
        };
        frame(&format!("Package {}", h.package), Nav::None, false, body)
    }))
}
