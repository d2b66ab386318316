//! `/`: the mesh as this node sees it (members, systems native and emulated, queue and build rate
//! per system), the latest revision of every branch with its availability per system as bars,
//! and recent mismatches and failures. Updates live.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use buildmesh_protocol::qa::{JobState, JobStatus, OutputVerdict, Weather};
use maud::{Markup, html};
use serde::Serialize;

use super::builders::{agreement, members};
use super::layout::{Nav, badge, bar, frame, time};
use super::revisions::short_drv;
use super::{PageError, PagesContext, data, drv_link, link, link_segment, page_or_error, respond};
use crate::http::api::NodeInfo;
use crate::http::qa::ListItem;
use crate::mesh::{MeshStatus, PeerView};

/// Branches the overview shows (the most recently active).
pub const MAX_BRANCHES: usize = 8;
/// Recent problems it lists.
pub const MAX_PROBLEMS: usize = 15;

/// The latest revision of a branch with its weather.
#[derive(Debug, Serialize)]
pub struct BranchView<'a> {
    /// The revision (as `GET /api/v1/revisions` lists it).
    pub revision: &'a ListItem,
    /// Its weather (`GET /api/v1/weather?revision=`), absent when its manifest has not arrived.
    pub weather: Option<&'a Weather>,
}

/// A failed or not-matching job of a branch's latest revision.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// `C@ID`.
    pub revision: String,
    /// The job.
    pub job: JobStatus,
}

/// One system across the members and the latest revisions.
#[derive(Debug, Default, Serialize)]
pub struct SystemView {
    /// Members building it natively (this node included).
    pub native: u64,
    /// Members building it under emulation.
    pub emulated: u64,
    /// Queued outputs of the latest revisions.
    pub queued: u64,
    /// Building.
    pub building: u64,
    /// Builds per hour over the last 24 hours (the latest revisions' jobs).
    pub builds_per_hour: f64,
}

/// The JSON twin: `GET /api/v1/node`, `/api/v1/mesh`, `/api/v1/peers`, the branches' latest
/// revisions with their weather, the systems and the recent problems.
#[derive(Debug, Serialize)]
pub struct OverviewTwin<'a> {
    /// This node.
    pub node: &'a NodeInfo,
    /// The mesh's state (absent on a standalone node).
    pub mesh: Option<MeshStatus>,
    /// The peers.
    pub peers: Vec<PeerView>,
    /// Per system.
    pub systems: BTreeMap<String, SystemView>,
    /// The latest revision of every branch.
    pub branches: Vec<BranchView<'a>>,
    /// Recent failures and mismatches.
    pub problems: Vec<Problem>,
}

/// `GET /`.
pub async fn page(State(ctx): State<PagesContext>, headers: HeaderMap) -> Response {
    page_or_error(&headers, overview(&ctx, &headers).await)
}

fn systems(me: &NodeInfo, peers: &[PeerView], branches: &[BranchView<'_>]) -> BTreeMap<String, SystemView> {
    let mut out: BTreeMap<String, SystemView> = BTreeMap::new();
    let mine = (me.systems.native.iter().cloned().collect(), me.systems.emulated.iter().cloned().collect());
    let members: Vec<(Vec<String>, Vec<String>)> = std::iter::once(mine)
        .chain(peers.iter().filter(|p| p.member).map(|p| (p.systems.native.clone(), p.systems.emulated.clone())))
        .collect();
    for (native, emulated) in &members {
        for s in native {
            out.entry(s.clone()).or_default().native += 1;
        }
        for s in emulated {
            out.entry(s.clone()).or_default().emulated += 1;
        }
    }
    for b in branches {
        for (sys, w) in b.weather.iter().flat_map(|w| w.systems.iter()) {
            let v = out.entry(sys.clone()).or_default();
            v.queued += w.queued;
            v.building += w.building;
            v.builds_per_hour += w.builds_per_hour;
        }
    }
    out
}

async fn overview(ctx: &PagesContext, headers: &HeaderMap) -> Result<Response, PageError> {
    let list = data::revisions(ctx, None, None).await?;
    let latest: Vec<&ListItem> = data::latest_per_branch(&list).into_iter().take(MAX_BRANCHES).collect();
    let mut weathers: Vec<(&ListItem, Option<Arc<Weather>>)> = Vec::with_capacity(latest.len());
    let mut shows = Vec::new();
    for r in latest {
        let name = &r.summary.revision;
        if r.manifest != "present" {
            weathers.push((r, None));
            continue;
        }
        let (w, shown) = tokio::try_join!(data::weather(ctx, name, false), data::show(ctx, name))?;
        shows.push((name.as_str(), shown));
        weathers.push((r, Some(w)));
    }
    let branches: Vec<BranchView<'_>> =
        weathers.iter().map(|(r, w)| BranchView { revision: r, weather: w.as_deref() }).collect();
    let mut problems: Vec<(&str, &JobStatus)> = Vec::new();
    for (name, shown) in &shows {
        let bad = |j: &&JobStatus| j.status == JobState::Failed || j.verdict == Some(OutputVerdict::NotMatching);
        problems.extend(shown.status.jobs.iter().filter(bad).map(|j| (*name, j)));
    }
    // The newest first (a partial sort: a revision may have thousands).
    let newest = |a: &(&str, &JobStatus), b: &(&str, &JobStatus)| {
        b.1.built_at_ms.cmp(&a.1.built_at_ms).then_with(|| a.1.package.cmp(&b.1.package))
    };
    if problems.len() > MAX_PROBLEMS {
        problems.select_nth_unstable_by(MAX_PROBLEMS, newest);
        problems.truncate(MAX_PROBLEMS);
    }
    problems.sort_by(newest);
    let problems: Vec<Problem> =
        problems.into_iter().map(|(r, j)| Problem { revision: r.to_string(), job: j.clone() }).collect();
    let peers = ctx.mesh().map(|m| m.peers()).unwrap_or_default();
    let agreement = agreement(ctx).await?;
    let twin = OverviewTwin {
        node: ctx.info(),
        mesh: ctx.mesh().map(|m| m.status()),
        systems: systems(ctx.info(), &peers, &branches),
        peers,
        branches,
        problems,
    };
    Ok(respond(headers, &twin, || {
        let members_count = 1 + twin.peers.iter().filter(|p| p.member).count();
        let body = html! {
            h1 { "Overview" }
            p.mute { "Node " code { (twin.node.key_name) } " · " (twin.node.version) " · what this node knows from the signed data it holds." }
            div #live {
                div.cards {
                    div.card { div.v { (members_count) } "members" }
                    div.card { div.v { (list.len()) } "revisions" }
                    @if let Some(m) = &twin.mesh {
                        div.card { div.v { (m.drvs_active) } "derivations in progress" }
                        div.card { div.v { (m.building.len()) } "building here" }
                    }
                }
                h2 { "Branches" }
                @if twin.branches.is_empty() { p.mute { "No revision is known here yet." } }
                @else { (branches_table(&twin.branches)) }
                h2 { "Systems" }
                (systems_table(&twin.systems))
                h2 { "Recent failures and mismatches" }
                @if twin.problems.is_empty() { p.mute { "None in the latest revisions." } }
                @else { div.scroll { table {
                    thead { tr { th { "package" } th { "system" } th { "problem" } th { "revision" } th { "when" } th { "derivation" } } }
                    tbody { @for p in &twin.problems { tr {
                        td { a href=(link_segment("/package", &p.job.package)) { (p.job.package) } " " (p.job.version) }
                        td { (p.job.system) }
                        td { @if p.job.status == JobState::Failed { (badge("failed")) } @else { (badge("not-matching")) } }
                        td { a href=(link_segment("/revision", &p.revision)) { code { (p.revision) } } }
                        td { (time(p.job.built_at_ms.unwrap_or(0))) }
                        td { a href=(drv_link(&p.job.drv)) { code { (short_drv(&p.job.drv)) } } }
                    } } }
                } } }
                h2 { "Members" }
                (members(twin.node, &twin.peers, &agreement))
            }
        };
        frame("Overview", Nav::Overview, true, body)
    }))
}

fn branches_table(branches: &[BranchView<'_>]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "channel · branch" } th { "latest revision" } th { "created" } th.n { "jobs" } th { "availability per system" } } }
            tbody { @for b in branches { @let s = &b.revision.summary; tr {
                td { (s.channel) " · " strong { (s.branch) } }
                td { a href=(link_segment("/revision", &s.revision)) { code { (s.revision) } } br;
                    small { a href=(link("/weather", &[("revision", &s.revision)])) { "weather" } " · "
                        a href=(link("/reproducibility", &[("revision", &s.revision)])) { "reproducibility" } } }
                td { (time(s.created_at_ms)) }
                td.n { (b.revision.job_count) }
                td { @match &b.weather {
                    None => { span.mute { "manifest not arrived yet" } }
                    Some(w) => { table { @for (sys, sw) in &w.systems { tr {
                        td { small { (sys) } } td { (bar(sw.ratio)) }
                        td.n { small { (sw.available) "/" (sw.total) } }
                    } } } }
                } }
            } } }
        } }
    }
}

fn systems_table(systems: &BTreeMap<String, SystemView>) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "system" } th.n { "native members" } th.n { "emulated members" } th.n { "queued" } th.n { "building" } th.n { "builds/h" } } }
            tbody { @for (sys, v) in systems { tr {
                td { (sys) } td.n { (v.native) } td.n { (v.emulated) } td.n { (v.queued) } td.n { (v.building) }
                td.n { (format!("{:.1}", v.builds_per_hour)) }
            } } }
        } }
    }
}
