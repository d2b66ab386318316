//! `/weather?revision=<rev>`: per system availability (as bars), NAR sizes, queue and build rate,
//! and the root causes of missing outputs ranked by dependents (`buildmesh weather --coverage`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::Weather;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Nav, badge, bar, bytes, frame, pager};
use super::revisions::short_drv;
use super::{
    PageError, PagesContext, Paging, bad_query, data, drv_link, link, link_segment, page_or_error, paginate, respond,
};

/// The query.
#[derive(Debug, Default, Deserialize)]
pub struct WeatherQuery {
    revision: Option<String>,
    /// The page (from 1).
    page: Option<usize>,
    /// Rows per page.
    size: Option<usize>,
}

/// `GET /weather`.
pub async fn page(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    q: Result<Query<WeatherQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, weather_page(&ctx, &headers, q).await)
}

async fn weather_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    q: Result<Query<WeatherQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let name = match q.revision.clone().filter(|s| !s.is_empty()) {
        Some(n) => n,
        None => match data::default_revision(ctx).await? {
            Some(n) => n,
            None => {
                return Err(PageError {
                    status: axum::http::StatusCode::NOT_FOUND,
                    message: "no revision is known here yet".into(),
                });
            }
        },
    };
    let w = data::weather(ctx, &name, true).await?;
    Ok(respond(headers, w.as_ref(), || {
        let causes = w.coverage.as_deref().unwrap_or_default();
        let (rows, pages) = paginate(
            causes,
            Paging { page: q.page, size: q.size }.page(),
            Paging { page: q.page, size: q.size }.size(),
        );
        let body = html! {
            h1 { "Weather of " code { (name) } }
            form.filters method="get" action="/weather" {
                label { "revision (C@ID or C:branch)" input name="revision" value=(name); }
                button { "Show" }
            }
            (systems_table(&w))
            h2 { "Root causes" }
            p.mute { "Failed derivations, and missing outputs whose inputs are all available, ranked by how many of the revision's derivations depend on them." }
            (pager(Paging { page: q.page, size: q.size }.page(), pages, causes.len(), |p| link("/weather", &[("revision", &name), ("page", &p.to_string())])))
            div.scroll { table {
                thead { tr { th { "package" } th { "system" } th.n { "dependents" } th { "why" } th { "status" } th { "derivation" } } }
                tbody { @for c in rows { tr {
                    td { a href=(link_segment("/package", &c.package)) { (c.package) } }
                    td { (c.system) }
                    td.n { (c.dependents) }
                    td { (serde_json::to_value(c.reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                    td { (badge(c.status.as_str())) }
                    td { a href=(drv_link(&c.drv)) { code { (short_drv(&c.drv)) } } }
                } } }
            } }
        };
        frame(&format!("Weather of {name}"), Nav::Weather, false, body)
    }))
}

/// Availability per system with bars, sizes, queue and build rate.
pub fn systems_table(w: &Weather) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "system" } th { "available" } th.n { "outputs" } th.n { "NAR size" } th.n { "compressed" }
                th.n { "queued" } th.n { "building" } th.n { "failed" } th.n { "blocked" } th.n { "builds/h" } } }
            tbody { @for (sys, s) in &w.systems { tr {
                td { (sys) }
                td { (bar(s.ratio)) small { (format!("{:.1}", s.ratio * 100.0)) " %" } }
                td.n { (s.available) " / " (s.total) }
                td.n { (bytes(s.nar_bytes)) }
                td.n { (bytes(s.nar_bytes_compressed)) }
                td.n { (s.queued) } td.n { (s.building) } td.n { (s.failed) } td.n { (s.blocked) }
                td.n { (format!("{:.1}", s.builds_per_hour)) }
            } } }
        } }
    }
}
