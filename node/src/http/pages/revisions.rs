//! `/revisions` (every revision by channel and branch) and `/revision/{C@ID or C:branch}` (one
//! revision: counts per system and status, and the filterable, paginated job table).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::{JobState, JobStatus, RevisionShow};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Nav, badge, frame, pager, time};
use super::{
    PageError, PagesContext, Paging, bad_query, data, drv_link, link, link_segment, page_or_error, paginate, respond,
};

/// `?channel=&branch=` of `/revisions`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    channel: Option<String>,
    branch: Option<String>,
}

/// `GET /revisions`.
pub async fn list(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, list_page(&ctx, &headers, q).await)
}

async fn list_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let items = data::revisions(ctx, q.channel.clone(), q.branch.clone()).await?;
    Ok(respond(headers, items.as_slice(), || {
        let mut groups: Vec<((&str, &str), Vec<&crate::http::qa::ListItem>)> = Vec::new();
        for r in items.iter() {
            let k = (r.summary.channel.as_str(), r.summary.branch.as_str());
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push(r),
                None => groups.push((k, vec![r])),
            }
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let body = html! {
            h1 { "Revisions" }
            form.filters method="get" action="/revisions" {
                label { "channel" input name="channel" value=[q.channel.as_deref()]; }
                label { "branch" input name="branch" value=[q.branch.as_deref()]; }
                button { "Filter" }
            }
            @if groups.is_empty() { p.mute { "No revision is known here yet (" code { "buildmesh revision submit" } ")." } }
            @for ((channel, branch), revs) in &groups {
                h2 { (channel) " · " (branch) " "
                    a.mute href=(link_segment("/revision", &format!("{channel}:{branch}"))) { small { "latest" } } }
                div.scroll { table {
                    thead { tr { th { "revision" } th { "created" } th.n { "jobs" } th { "systems" } th { "manifest" } th { "" } } }
                    tbody { @for r in revs { tr {
                        td { a href=(link_segment("/revision", &r.summary.revision)) { code { (r.summary.revision) } } }
                        td { (time(r.summary.created_at_ms)) }
                        td.n { (r.job_count) }
                        td { @for (s, n) in &r.summary.jobs_per_system { span.b { (s) " " (n) } " " } }
                        td { (badge(r.manifest)) }
                        td { a href=(link("/weather", &[("revision", &r.summary.revision)])) { "weather" } " "
                             a href=(link("/reproducibility", &[("revision", &r.summary.revision)])) { "reproducibility" } }
                    } } }
                } }
            }
        };
        frame("Revisions", Nav::Revisions, false, body)
    }))
}

/// `?system=&status=&q=&page=&size=` of a revision page.
#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    system: Option<String>,
    status: Option<String>,
    /// Package name contains this.
    q: Option<String>,
    /// The page (from 1).
    page: Option<usize>,
    /// Rows per page.
    size: Option<usize>,
}

/// `GET /revision/{name}`.
pub async fn show(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, show_page(&ctx, &headers, &name, q).await)
}

/// The filters of a job table (empty values mean no filter).
struct Filter<'a> {
    system: Option<&'a str>,
    status: Option<&'a str>,
    package: Option<&'a str>,
}

impl<'a> Filter<'a> {
    fn of(system: &'a Option<String>, status: &'a Option<String>, package: &'a Option<String>) -> Filter<'a> {
        let nonempty = |o: &'a Option<String>| o.as_deref().filter(|s| !s.is_empty());
        Filter { system: nonempty(system), status: nonempty(status), package: nonempty(package) }
    }

    fn matches(&self, j: &JobStatus) -> bool {
        self.system.is_none_or(|s| j.system == s)
            && self.status.is_none_or(|s| j.status.as_str() == s)
            && self.package.is_none_or(|s| j.package.contains(s))
    }
}

async fn show_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    name: &str,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let shown = data::show(ctx, name).await?;
    if super::wants_json(headers) {
        // The twin of `GET /api/v1/revisions/{name}?system=&status=`.
        let api = Filter::of(&q.system, &q.status, &None);
        let mut status = shown.status.clone();
        status.jobs.retain(|j| api.matches(j));
        return Ok(respond(headers, &RevisionShow { summary: shown.summary.clone(), status }, || html! {}));
    }
    let filter = Filter::of(&q.system, &q.status, &q.q);
    let jobs: Vec<&JobStatus> = shown.status.jobs.iter().filter(|j| filter.matches(j)).collect();
    let (rows, pages) =
        paginate(&jobs, Paging { page: q.page, size: q.size }.page(), Paging { page: q.page, size: q.size }.size());
    let href = |page: usize| {
        link(
            &link_segment("/revision", name),
            &[
                ("system", q.system.as_deref().unwrap_or("")),
                ("status", q.status.as_deref().unwrap_or("")),
                ("q", q.q.as_deref().unwrap_or("")),
                ("page", &page.to_string()),
            ],
        )
    };
    let s = &shown.summary;
    let body = html! {
        h1 { "Revision " code { (s.revision) } }
        p.mute { (s.channel) " · branch " (s.branch) " · commit " code { (s.commit) } " · created " (time(s.created_at_ms))
            " · submitter " (super::layout::short(&s.submitter)) }
        p { a href=(link("/weather", &[("revision", &s.revision)])) { "weather" } " · "
            a href=(link("/reproducibility", &[("revision", &s.revision)])) { "reproducibility" } " · "
            a href=(link("/compare", &[("target", &s.revision)])) { "compare with…" } }
        form.filters method="get" {
            label { "package" input name="q" value=[q.q.as_deref()] placeholder="name contains"; }
            label { "system" select name="system" {
                option value="" { "any" }
                @for sys in shown.status.counts.keys() { option value=(sys) selected[q.system.as_deref() == Some(sys.as_str())] { (sys) } }
            } }
            label { "status" select name="status" {
                option value="" { "any" }
                @for st in JobState::ALL { option value=(st.as_str()) selected[q.status.as_deref() == Some(st.as_str())] { (st.as_str()) } }
            } }
            button { "Filter" }
        }
        div #live {
            (counts_table(&shown, name))
            h2 { "Jobs" }
            (pager(Paging { page: q.page, size: q.size }.page(), pages, jobs.len(), href))
            (job_table(rows))
        }
    };
    Ok(respond(headers, &(), || frame(&format!("Revision {}", s.revision), Nav::Revisions, true, body)))
}

/// Counts per system and status, each a link to the filtered table.
fn counts_table(shown: &RevisionShow, name: &str) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "system" } @for st in JobState::ALL { th.n { (st.as_str()) } } th.n { "total" } } }
            tbody { @for (sys, c) in &shown.status.counts { tr {
                td { (sys) }
                @for st in JobState::ALL { td.n {
                    @let n = c.get(st);
                    @if n > 0 { a href=(link(&link_segment("/revision", name), &[("system", sys), ("status", st.as_str())])) { (n) } }
                    @else { span.mute { "0" } }
                } }
                td.n { (c.total()) }
            } } }
        } }
    }
}

/// The job table: package, version, system, status, verdict, builders.
pub fn job_table(rows: &[&JobStatus]) -> Markup {
    html! {
        div.scroll { table.jobs {
            thead { tr { th { "package" } th { "version" } th { "system" } th { "status" } th { "verdict" } th.n { "builders" } th { "derivation" } } }
            tbody { @for j in rows { tr {
                td { a href=(link_segment("/package", &j.package)) { (j.package) } }
                td { (j.version) }
                td { (j.system) }
                td { (badge(j.status.as_str()))
                    @if let Some(b) = &j.blocked_by { " " small.mute { "by " a href=(drv_link(b)) { (short_drv(b)) } } } }
                td { @if let Some(v) = j.verdict { (badge(v.as_str())) } }
                td.n { (j.builders.len()) }
                td { a href=(drv_link(&j.drv)) { code { (short_drv(&j.drv)) } } }
            } } }
        } }
    }
}

/// A `.drv` path as its base name without the hash (`hello-1.0.drv`).
pub fn short_drv(drv: &str) -> String {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    base.split_once('-').map(|(_, n)| n.to_string()).unwrap_or_else(|| base.to_string())
}
