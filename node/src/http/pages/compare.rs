//! `/compare?base=<rev>&target=<rev>`: the classes of the comparison (broken, fixed,
//! still-failing, still-working, blocked, unknown; repro changes) with counts and filterable,
//! paginated lists, and the ready verdict with its reasons. `<rev>` is `C@ID` or `C:branch`, as
//! in `buildmesh compare`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::{Comparison, DerivationChange, ReadyVerdict};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::layout::{Nav, badge, frame, pager};
use super::revisions::short_drv;
use super::{
    PageError, PagesContext, Paging, bad_query, data, drv_link, link, link_segment, page_or_error, paginate, respond,
};

/// The build classes in the order the page shows them.
pub const BUILD_CLASSES: [&str; 6] = ["broken", "fixed", "still-failing", "blocked", "unknown", "still-working"];
/// The reproducibility classes.
pub const REPRO_CLASSES: [&str; 5] =
    ["newly-not-matching", "newly-matching", "still-not-matching", "unchanged", "unknown"];

/// The query.
#[derive(Debug, Default, Deserialize)]
pub struct CompareQuery {
    base: Option<String>,
    target: Option<String>,
    /// Only this system.
    system: Option<String>,
    /// Only this build change.
    class: Option<String>,
    /// Only this repro change.
    repro: Option<String>,
    /// Package name contains this.
    q: Option<String>,
    /// The page (from 1).
    page: Option<usize>,
    /// Rows per page.
    size: Option<usize>,
}

/// The JSON twin: `GET /api/v1/compare` and `GET /api/v1/ready` of the same pair.
#[derive(Debug, Serialize)]
pub struct CompareTwin<'a> {
    /// The comparison.
    pub compare: &'a Comparison,
    /// The ready verdict.
    pub ready: &'a ReadyVerdict,
}

/// `GET /compare`.
pub async fn page(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    q: Result<Query<CompareQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, compare_page(&ctx, &headers, q).await)
}

fn nonempty(o: &Option<String>) -> Option<&str> {
    o.as_deref().filter(|s| !s.is_empty())
}

async fn compare_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    q: Result<Query<CompareQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let list = data::revisions(ctx, None, None).await?;
    let (Some(base), Some(target)) = (nonempty(&q.base), nonempty(&q.target)) else {
        if super::wants_json(headers) {
            return Err(PageError::bad_request("give base= and target= (C@ID or C:branch each)"));
        }
        // The form, with the two newest revisions as a suggestion.
        let names: Vec<&str> = list.iter().map(|r| r.summary.revision.as_str()).collect();
        let target = nonempty(&q.target).or(names.first().copied()).unwrap_or("");
        let base = nonempty(&q.base).or(names.get(1).copied()).unwrap_or("");
        let body = html! { h1 { "Compare" } (form(&names, base, target, &q)) };
        return Ok(respond(headers, &(), || frame("Compare", Nav::Compare, false, body)));
    };
    let (cmp, ready) = tokio::try_join!(data::compare(ctx, base, target), data::ready(ctx, base, target))?;
    let system = nonempty(&q.system);
    let rows: Vec<&DerivationChange> = cmp
        .derivation_changes
        .iter()
        .filter(|c| system.is_none_or(|s| c.system == s))
        .filter(|c| nonempty(&q.class).is_none_or(|k| c.build_change.as_str() == k))
        .filter(|c| nonempty(&q.repro).is_none_or(|k| c.repro_change.as_str() == k))
        .filter(|c| nonempty(&q.q).is_none_or(|k| c.package.contains(k)))
        .collect();
    Ok(respond(headers, &CompareTwin { compare: &cmp, ready: &ready }, || {
        let names: Vec<&str> = list.iter().map(|r| r.summary.revision.as_str()).collect();
        let (slice, pages) =
            paginate(&rows, Paging { page: q.page, size: q.size }.page(), Paging { page: q.page, size: q.size }.size());
        let here = |class: &str, repro: &str, page: usize| {
            let page = if page > 1 { page.to_string() } else { String::new() };
            link(
                "/compare",
                &[
                    ("base", base),
                    ("target", target),
                    ("system", system.unwrap_or("")),
                    ("class", class),
                    ("repro", repro),
                    ("q", nonempty(&q.q).unwrap_or("")),
                    ("page", &page),
                ],
            )
        };
        let class = nonempty(&q.class).unwrap_or("");
        let repro = nonempty(&q.repro).unwrap_or("");
        let body = html! {
            h1 { "Compare " code { (cmp.base) } " → " code { (cmp.target) } }
            (verdict(&ready))
            h2 { "Build changes" }
            div.cards { @for k in BUILD_CLASSES {
                a.card href=(here(k, "", 1)) { div.v { (cmp.summary.flat.get(k).copied().unwrap_or(0)) } (badge(k)) }
            } }
            h2 { "Reproducibility changes" }
            div.cards { @for k in REPRO_CLASSES {
                @let flat = if k == "unknown" { "repro-unknown" } else { k };
                a.card href=(here("", k, 1)) { div.v { (cmp.summary.flat.get(flat).copied().unwrap_or(0)) } (badge(k)) }
            } }
            @if !cmp.new_packages.is_empty() || !cmp.removed_packages.is_empty() {
                h2 { "Packages" }
                p { "new: " @for p in &cmp.new_packages { a href=(link_segment("/package", p)) { (p) } " " }
                    @if cmp.new_packages.is_empty() { span.mute { "none" } } }
                p { "removed: " @for p in &cmp.removed_packages { a href=(link_segment("/package", p)) { (p) } " " }
                    @if cmp.removed_packages.is_empty() { span.mute { "none" } } }
            }
            h2 { "Derivation changes" }
            (form(&names, base, target, &q))
            (pager(Paging { page: q.page, size: q.size }.page(), pages, rows.len(), |p| here(class, repro, p)))
            (table(slice))
        };
        frame(&format!("Compare {} → {}", cmp.base, cmp.target), Nav::Compare, false, body)
    }))
}

fn verdict(ready: &ReadyVerdict) -> Markup {
    html! {
        p.verdict { "Ready: " @if ready.ready { span.b.yes { "yes" } } @else { span.b.no { "no" } } }
        @if ready.reasons.is_empty() { p.mute { "No reason against it under the node's rule." } }
        ul { @for r in &ready.reasons { li { (r.message)
            @if !r.packages.is_empty() { " " span.mute { "(" (r.packages.join(", ")) ")" } } } } }
        p.mute { small { "Rule: at most " (ready.rule.max_broken) " broken, at most " (ready.rule.max_newly_not_matching)
            " newly not matching, availability at least " (ready.rule.min_availability * 100.0) " % on every system, nothing unknown after "
            (ready.rule.max_unknown_age_hours) " h." } }
    }
}

fn form(names: &[&str], base: &str, target: &str, q: &CompareQuery) -> Markup {
    html! {
        form.filters method="get" action="/compare" {
            label { "base (C@ID or C:branch)" input name="base" value=(base) list="revs"; }
            label { "target" input name="target" value=(target) list="revs"; }
            datalist #revs { @for n in names { option value=(n) {} } }
            label { "class" select name="class" { option value="" { "any" }
                @for k in BUILD_CLASSES { option value=(k) selected[nonempty(&q.class) == Some(k)] { (k) } } } }
            label { "repro" select name="repro" { option value="" { "any" }
                @for k in REPRO_CLASSES { option value=(k) selected[nonempty(&q.repro) == Some(k)] { (k) } } } }
            label { "system" input name="system" value=[nonempty(&q.system)] size="12"; }
            label { "package" input name="q" value=[nonempty(&q.q)] size="12"; }
            button { "Compare" }
        }
    }
}

fn table(rows: &[&DerivationChange]) -> Markup {
    let state = |s: Option<buildmesh_protocol::qa::JobState>| s.map(|s| s.as_str()).unwrap_or("-");
    html! {
        div.scroll { table {
            thead { tr { th { "package" } th { "system" } th { "build change" } th { "repro change" } th { "base" } th { "target" } } }
            tbody { @for c in rows { tr {
                td { a href=(link_segment("/package", &c.package)) { (c.package) } }
                td { (c.system) }
                td { (badge(c.build_change.as_str()))
                    @if let Some(b) = &c.blocked_by { " " small.mute { "by " a href=(drv_link(b)) { (short_drv(b)) } } } }
                td { (badge(c.repro_change.as_str())) }
                td { @if let Some(d) = &c.base_drv { a href=(drv_link(d)) { (c.base_version.as_deref().unwrap_or("")) } " " }
                    (badge(state(c.base_status))) }
                td { @if let Some(d) = &c.target_drv { a href=(drv_link(d)) { (c.target_version.as_deref().unwrap_or("")) } " " }
                    (badge(state(c.target_status))) }
            } } }
        } }
    }
}
