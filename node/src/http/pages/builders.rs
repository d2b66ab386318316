//! `/builders`: every member with its key, owner, systems (native, emulated), features, slots,
//! load, when it was last seen, builds done and failed, and its agreement rate
//! with the other builders.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use serde::Serialize;

use super::layout::{Nav, ago, badge, frame, short, time};
use super::{PageError, PagesContext, page_or_error, respond};
use crate::http::api::NodeInfo;
use crate::mesh::{PeerView, StruckView};
use crate::qa::agreement::BuilderAgreement;

/// The JSON twin: `GET /api/v1/node`, `GET /api/v1/peers` and the agreement of every builder.
#[derive(Debug, Serialize)]
pub struct BuildersTwin<'a> {
    /// This node.
    pub node: &'a NodeInfo,
    /// Its peers (empty without a mesh); `last_seen_ms` is when this node last saw each
    /// (now while connected, else its last announcement heard or the remembered peers').
    pub peers: Vec<PeerView>,
    /// Every builder the store has statements of.
    pub agreement: &'a [BuilderAgreement],
    /// Every member struck by gossiped strike records, this node included (`me`); the same
    /// list as `GET /api/v1/mesh` `struck`.
    pub struck: Vec<StruckView>,
}

/// Every builder's agreement (cached).
pub async fn agreement(ctx: &PagesContext) -> Result<Arc<Vec<BuilderAgreement>>, PageError> {
    let qa = ctx.qa().clone();
    ctx.cache()
        .get(
            "agreement".to_string(),
            move || async move { Ok(crate::qa::blocking(move || qa.builder_agreement()).await?) },
        )
        .await
}

/// `GET /builders`.
pub async fn page(State(ctx): State<PagesContext>, headers: HeaderMap) -> Response {
    page_or_error(&headers, builders_page(&ctx, &headers).await)
}

async fn builders_page(ctx: &PagesContext, headers: &HeaderMap) -> Result<Response, PageError> {
    let agreement = agreement(ctx).await?;
    let peers = ctx.mesh().map(|m| m.peers()).unwrap_or_default();
    let struck = ctx.mesh().map(|m| m.status().struck).unwrap_or_default();
    let twin = BuildersTwin { node: ctx.info(), peers, agreement: &agreement, struck };
    Ok(respond(headers, &twin, || {
        let body = html! {
            h1 { "Builders" }
            (members(ctx.info(), &twin.peers, &agreement))
            @if let Some(s) = twin.struck.iter().find(|s| s.me && s.until_ms.is_some()) {
                p.mute { span.b.no { "this node is struck" } " by its peers' signed strike records on " (s.drvs)
                    " derivation(s) until " (time(s.until_ms.unwrap_or(0))) " UTC: its claims do not hold a place until then." }
            }
            h2 { "Agreement of every builder" }
            p.mute { "Outputs another builder attested too, and how often this builder's NarHash is the majority's." }
            (agreement_table(&agreement))
        };
        frame("Builders", Nav::Builders, false, body)
    }))
}

fn find<'a>(agreement: &'a [BuilderAgreement], peer_id: &str) -> Option<&'a BuilderAgreement> {
    agreement.iter().find(|a| a.peer_id == peer_id)
}

/// The members table: this node first, then its peers.
pub fn members(me: &NodeInfo, peers: &[PeerView], agreement: &[BuilderAgreement]) -> Markup {
    let rate = |a: Option<&BuilderAgreement>| match a.and_then(|a| a.agreement) {
        Some(r) => format!("{:.1} %", r * 100.0),
        None => "-".to_string(),
    };
    let mine = find(agreement, &me.peer_id);
    let now = crate::store::unix_ms();
    html! {
        div.scroll { table {
            thead { tr { th { "member" } th { "key" } th { "owner" } th { "native" } th { "emulated" } th { "features" }
                th.n { "slots" } th.n { "load" } th { "state" } th { "last seen" } th.n { "built" } th.n { "failed" } th.n { "agreement" } } }
            tbody {
                tr {
                    td { (short(&me.peer_id)) " " span.b { "this node" } }
                    td { (short(&me.public_key)) }
                    td { "-" }
                    td { (join(&me.systems.native)) }
                    td { (join(&me.systems.emulated)) }
                    td { "-" }
                    td.n { (me.slots) }
                    td.n { "-" }
                    td { (badge("yes")) }
                    td.seen { "now" }
                    td.n { (mine.map(|a| a.builds).unwrap_or(0)) }
                    td.n { (mine.map(|a| a.failed).unwrap_or(0)) }
                    td.n { (rate(mine)) }
                }
                @for p in peers { @let a = find(agreement, &p.peer_id); tr {
                    td { (short(&p.peer_id)) @if p.trusted { " " span.b.yes { "trusted" } } }
                    td { (short(p.public_key.as_deref().unwrap_or(&p.key))) }
                    td { (p.owner) }
                    td { (p.systems.native.join(", ")) }
                    td { (emulated_with_slowdown(p)) }
                    td { (p.features.join(", ")) }
                    td.n { (p.slots) }
                    td.n { (p.load) }
                    td { @if p.member { (badge("member")) } " " @if p.connected { (badge("connected")) } @else { (badge("no")) }
                        @if let Some(r) = &p.disk_pressure { " " span.b.no title=(r) { "disk pressure" } }
                        @if let Some(t) = p.struck_until_ms { " " span.b.no title=(format!("until {} UTC", time(t))) { "struck" } } }
                    @match p.last_seen_ms {
                        Some(ms) => { td.seen title=(format!("{} UTC", time(ms))) { (ago(ms, now)) } }
                        None => { td.seen { "-" } }
                    }
                    td.n { (a.map(|a| a.builds).unwrap_or(0)) }
                    td.n { (a.map(|a| a.failed).unwrap_or(0)) }
                    td.n { (rate(a)) }
                } }
            }
        } }
    }
}

/// A peer's emulated systems, each with the slowdown it measured (`aarch64-linux (8.5x)`), which
/// divides its placement weight for that system.
fn emulated_with_slowdown(p: &PeerView) -> String {
    let one = |s: &String| match p.slowdown.get(s) {
        Some(x) => format!("{s} ({x:.1}x)"),
        None => s.clone(),
    };
    p.systems.emulated.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// Names joined by commas.
fn join<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Agreement per builder.
pub fn agreement_table(agreement: &[BuilderAgreement]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "builder" } th { "trusted" } th.n { "builds" } th.n { "failed" } th.n { "outputs" } th.n { "compared" }
                th.n { "agreed" } th.n { "disagreed" } th.n { "agreement" } } }
            tbody { @for a in agreement { tr {
                td { (short(&a.peer_id)) }
                td { @if a.trusted { (badge("yes")) } @else { (badge("no")) } }
                td.n { (a.builds) } td.n { (a.failed) } td.n { (a.outputs) } td.n { (a.compared) }
                td.n { (a.agreed) } td.n { (a.disagreed) }
                td.n { @match a.agreement { Some(r) => (format!("{:.1} %", r * 100.0)), None => "-" } }
            } } }
        } }
    }
}
