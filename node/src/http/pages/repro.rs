//! `/reproducibility?revision=<rev>`: per system the jobs whose builders match, do not match, or
//! have a single builder; the trend across the branch's revisions as a chart (SVG drawn on the
//! server, [`super::chart`]); per-builder agreement; the not-matching outputs with every
//! builder's NarHash and a link to their diff (`/diff?path=`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::{JobState, OutputVerdict, RevisionShow};
use maud::{PreEscaped, html};
use serde::{Deserialize, Serialize};

use super::builders::{agreement, agreement_table};
use super::chart::{TrendPoint, trend_svg};
use super::layout::{Nav, frame, pager, short};
use super::revisions::short_drv;
use super::{
    PageError, PagesContext, Paging, bad_query, data, drv_link, link, link_segment, page_or_error, paginate, respond,
};
use crate::audit::OutputReport;
use crate::qa::agreement::BuilderAgreement;

/// Revisions of a branch the trend shows (the newest).
pub const TREND_REVISIONS: usize = 10;

/// Counts of one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReproCounts {
    /// Builders agree.
    pub matching: u64,
    /// Builders disagree.
    pub not_matching: u64,
    /// One builder.
    pub single: u64,
    /// Not built (failed, blocked, building, queued, unknown).
    pub not_built: u64,
}

/// One not-matching job with every builder's statement of its outputs.
#[derive(Debug, Clone, Serialize)]
pub struct NotMatching {
    /// Package.
    pub package: String,
    /// Version.
    pub version: String,
    /// System.
    pub system: String,
    /// The `.drv` path.
    pub drv: String,
    /// Its outputs with every attestation (`GET /api/v1/query?drv=`).
    pub outputs: Vec<OutputReport>,
}

/// The JSON twin. `not_matching` is the page of the list the HTML shows (`page=`, `size=`).
#[derive(Debug, Serialize)]
pub struct ReproTwin<'a> {
    /// `C@ID`.
    pub revision: &'a str,
    /// Counts per system.
    pub systems: &'a BTreeMap<String, ReproCounts>,
    /// The branch's newest revisions, oldest first.
    pub trend: &'a [TrendPoint],
    /// Every builder's agreement.
    pub builders: &'a [BuilderAgreement],
    /// How many jobs do not match.
    pub not_matching_total: usize,
    /// This page of them.
    pub not_matching: &'a [NotMatching],
}

/// The query.
#[derive(Debug, Default, Deserialize)]
pub struct ReproQuery {
    revision: Option<String>,
    /// The page (from 1).
    page: Option<usize>,
    /// Rows per page.
    size: Option<usize>,
}

/// `GET /reproducibility`.
pub async fn page(
    State(ctx): State<PagesContext>,
    headers: HeaderMap,
    q: Result<Query<ReproQuery>, QueryRejection>,
) -> Response {
    page_or_error(&headers, repro_page(&ctx, &headers, q).await)
}

/// Counts per system of a revision.
pub fn counts(shown: &RevisionShow) -> BTreeMap<String, ReproCounts> {
    let mut out: BTreeMap<String, ReproCounts> = BTreeMap::new();
    for j in &shown.status.jobs {
        // One allocation per system, not per job (this runs on every request of the page).
        if !out.contains_key(&j.system) {
            out.insert(j.system.clone(), ReproCounts::default());
        }
        let Some(c) = out.get_mut(&j.system) else { continue };
        match (j.status, j.verdict) {
            (JobState::Succeeded, Some(OutputVerdict::Matching)) => c.matching += 1,
            (JobState::Succeeded, Some(OutputVerdict::NotMatching)) => c.not_matching += 1,
            (JobState::Succeeded, _) => c.single += 1,
            _ => c.not_built += 1,
        }
    }
    out
}

fn point(shown: &RevisionShow) -> TrendPoint {
    let mut p = TrendPoint {
        revision: shown.summary.revision.clone(),
        commit: shown.summary.commit.clone(),
        created_at_ms: shown.summary.created_at_ms,
        matching: 0,
        not_matching: 0,
        single: 0,
    };
    for c in counts(shown).values() {
        p.matching += c.matching;
        p.not_matching += c.not_matching;
        p.single += c.single;
    }
    p
}

/// What the page derives from a revision's 100,000 jobs, computed once per answer of the
/// revision (not per request): the counts per system and where the not-matching jobs are.
#[derive(Debug)]
pub struct ReproSummary {
    /// The revision the counts are of (the page shows this very answer, so counts, total and
    /// rows always agree).
    pub shown: Arc<RevisionShow>,
    /// Counts per system.
    pub systems: BTreeMap<String, ReproCounts>,
    /// Indices into `shown.status.jobs` of the not-matching jobs, in job order.
    pub not_matching: Vec<usize>,
}

/// The [`ReproSummary`] of revision `name`, cached like the revision itself: kept for 20 times
/// what it took (at least [`super::cache::MIN_TTL`]), then refreshed in the background from the
/// revision's current answer, so new attestations and revisions show within seconds.
pub async fn summary(ctx: &PagesContext, name: &str) -> Result<Arc<ReproSummary>, PageError> {
    let (c, n) = (ctx.clone(), name.to_string());
    ctx.cache()
        .get(format!("repro:{name}"), move || async move {
            let shown = data::show(&c, &n).await?;
            crate::qa::blocking(move || {
                let systems = counts(&shown);
                let not_matching = shown
                    .status
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.verdict == Some(OutputVerdict::NotMatching))
                    .map(|(i, _)| i)
                    .collect();
                Ok(ReproSummary { shown, systems, not_matching })
            })
            .await
            .map_err(PageError::from)
        })
        .await
}

/// The trend of a branch with its chart, drawn once per refresh.
#[derive(Debug)]
pub struct Trend {
    /// The points, oldest first.
    pub points: Vec<TrendPoint>,
    /// The SVG chart, or why it could not be drawn.
    pub svg: Result<String, String>,
}

/// The trend of the branch of `shown` (cached; each revision evaluated once per refresh).
async fn trend(ctx: &PagesContext, shown: &RevisionShow) -> Result<Arc<Trend>, PageError> {
    let (channel, branch) = (shown.summary.channel.clone(), shown.summary.branch.clone());
    let c = ctx.clone();
    ctx.cache()
        .get(format!("trend:{channel}:{branch}"), move || async move {
            let list = data::revisions(&c, Some(channel), Some(branch)).await?;
            let mut points = Vec::new();
            for r in list.iter().take(TREND_REVISIONS) {
                if r.manifest != "present" {
                    continue;
                }
                let s = c.qa().show(&r.summary.revision, None, None).await?;
                points.push(point(&s));
            }
            points.reverse();
            let svg = trend_svg(&points);
            Ok(Trend { points, svg })
        })
        .await
}

/// A page of the not-matching jobs with their attestations (cached per page).
async fn not_matching(
    ctx: &PagesContext,
    sum: Arc<ReproSummary>,
    page: usize,
    size: usize,
) -> Result<Arc<Vec<NotMatching>>, PageError> {
    let key = format!("repro-page:{}:{page}:{size}", sum.shown.summary.revision);
    let c = ctx.clone();
    ctx.cache()
        .get(key, move || async move {
            crate::qa::blocking(move || {
                let (rows, _) = paginate(&sum.not_matching, page, size);
                let mut out = Vec::with_capacity(rows.len());
                for j in rows.iter().filter_map(|&i| sum.shown.status.jobs.get(i)) {
                    let drv = c
                        .store_dir()
                        .parse_path(&j.drv)
                        .map_err(|e| crate::qa::QaError::Internal(format!("{}: {e}", j.drv)))?;
                    let outputs = crate::audit::query_drv(c.store(), &drv)
                        .map_err(|e| crate::qa::QaError::Internal(e.to_string()))?;
                    out.push(NotMatching {
                        package: j.package.clone(),
                        version: j.version.clone(),
                        system: j.system.clone(),
                        drv: j.drv.clone(),
                        outputs,
                    });
                }
                Ok(out)
            })
            .await
            .map_err(PageError::from)
        })
        .await
}

async fn repro_page(
    ctx: &PagesContext,
    headers: &HeaderMap,
    q: Result<Query<ReproQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let name = match q.revision.clone().filter(|s| !s.is_empty()) {
        Some(n) => n,
        None => data::default_revision(ctx).await?.ok_or_else(|| PageError {
            status: axum::http::StatusCode::NOT_FOUND,
            message: "no revision is known here yet".into(),
        })?,
    };
    // Everything below comes from the cached summary and pages: no walk of the jobs per request.
    let sum = summary(ctx, &name).await?;
    let shown = &sum.shown;
    let total = sum.not_matching.len();
    let (page, size) = (Paging { page: q.page, size: q.size }.page(), Paging { page: q.page, size: q.size }.size());
    let (trend, builders, rows) =
        tokio::try_join!(trend(ctx, shown), agreement(ctx), not_matching(ctx, sum.clone(), page, size))?;
    let twin = ReproTwin {
        revision: &shown.summary.revision,
        systems: &sum.systems,
        trend: &trend.points,
        builders: &builders,
        not_matching_total: total,
        not_matching: &rows,
    };
    Ok(respond(headers, &twin, || {
        let pages = total.div_ceil(size).max(1);
        let body = html! {
            h1 { "Reproducibility of " code { (twin.revision) } }
            form.filters method="get" action="/reproducibility" {
                label { "revision (C@ID or C:branch)" input name="revision" value=(name); }
                button { "Show" }
            }
            div.scroll { table {
                thead { tr { th { "system" } th.n { "matching" } th.n { "not matching" } th.n { "single builder" } th.n { "not built" } } }
                tbody { @for (sys, c) in twin.systems.iter() { tr {
                    td { (sys) } td.n { (c.matching) } td.n { (c.not_matching) } td.n { (c.single) } td.n { (c.not_built) }
                } } }
            } }
            h2 { "Trend on " (shown.summary.channel) " · " (shown.summary.branch) }
            @match &trend.svg {
                Ok(svg) => { div.chart role="img" aria-label="reproducibility trend" { (PreEscaped(svg)) } }
                Err(e) => { p.error { "The chart could not be drawn: " (e) } }
            }
            h2 { "Not matching (" (total) ")" }
            (pager(page, pages, total, |p| link("/reproducibility", &[("revision", &name), ("page", &p.to_string())])))
            div.scroll { table {
                thead { tr { th { "package" } th { "output" } th { "builder" } th { "NarHash" } th { "" } } }
                tbody { @for j in rows.iter() { @for o in &j.outputs { @for (i, a) in o.attestations.iter().enumerate() { tr {
                    @if i == 0 {
                        td rowspan=(o.attestations.len()) { a href=(link_segment("/package", &j.package)) { (j.package) } " " (j.version)
                            br; small { a href=(drv_link(&j.drv)) { (short_drv(&j.drv)) } " · " (j.system) } }
                        td rowspan=(o.attestations.len()) { code { (o.path) } }
                    }
                    td { (short(&a.builder_key)) @if a.emulated { " " small.mute { "(emulated)" } } }
                    td { code { (a.nar_hash) } }
                    @if i == 0 { td rowspan=(o.attestations.len()) { a href=(link("/diff", &[("path", &o.path)])) { "diff" } } }
                } } } } }
            } }
            h2 { "Builders" }
            (agreement_table(&builders))
        };
        frame(&format!("Reproducibility of {}", twin.revision), Nav::Reproducibility, false, body)
    }))
}
