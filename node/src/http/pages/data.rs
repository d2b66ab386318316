//! The answers the pages show, each fetched through the [`super::cache::PageCache`] from the same
//! code as its `/api/v1` route ([`crate::qa::QaContext`], the revisions list of `http/qa.rs`).

use std::sync::Arc;

use buildmesh_protocol::qa::{Comparison, PackageHistory, ReadyVerdict, RevisionShow, Weather, WeatherOptions};

use super::{PageError, PagesContext};
use crate::http::qa::{ListItem, list_items};

/// `GET /api/v1/revisions?channel=&branch=`.
pub async fn revisions(
    ctx: &PagesContext,
    channel: Option<String>,
    branch: Option<String>,
) -> Result<Arc<Vec<ListItem>>, PageError> {
    let key = format!("list:{}:{}", channel.as_deref().unwrap_or(""), branch.as_deref().unwrap_or(""));
    let qa = ctx.qa().clone();
    ctx.cache()
        .get(key, move || async move {
            Ok(crate::qa::blocking(move || list_items(&qa, channel.as_deref(), branch.as_deref())).await?)
        })
        .await
}

/// `GET /api/v1/revisions/{name}` (unfiltered; pages filter the cached answer).
pub async fn show(ctx: &PagesContext, name: &str) -> Result<Arc<RevisionShow>, PageError> {
    let qa = ctx.qa().clone();
    let n = name.to_string();
    ctx.cache().get(format!("show:{name}"), move || async move { Ok(qa.show(&n, None, None).await?) }).await
}

/// `GET /api/v1/weather?revision=&coverage=`.
pub async fn weather(ctx: &PagesContext, name: &str, coverage: bool) -> Result<Arc<Weather>, PageError> {
    let qa = ctx.qa().clone();
    let n = name.to_string();
    let options = WeatherOptions { coverage, display_missing: false };
    ctx.cache()
        .get(format!("weather:{coverage}:{name}"), move || async move { Ok(qa.weather(&n, options).await?) })
        .await
}

/// `GET /api/v1/compare?base=&target=&system=`.
pub async fn compare(ctx: &PagesContext, base: &str, target: &str) -> Result<Arc<Comparison>, PageError> {
    let qa = ctx.qa().clone();
    let (b, t) = (base.to_string(), target.to_string());
    ctx.cache()
        .get(format!("compare:{base}|{target}"), move || async move { Ok(qa.compare(&b, &t, None).await?) })
        .await
}

/// `GET /api/v1/ready?target=&base=`.
pub async fn ready(ctx: &PagesContext, base: &str, target: &str) -> Result<Arc<ReadyVerdict>, PageError> {
    let qa = ctx.qa().clone();
    let (b, t) = (base.to_string(), target.to_string());
    ctx.cache().get(format!("ready:{base}|{target}"), move || async move { Ok(qa.ready(&t, &b).await?) }).await
}

/// `GET /api/v1/history?package=&channel=&branch=`.
pub async fn history(
    ctx: &PagesContext,
    package: &str,
    channel: Option<String>,
    branch: Option<String>,
) -> Result<Arc<PackageHistory>, PageError> {
    let qa = ctx.qa().clone();
    let key = format!("history:{package}:{}:{}", channel.as_deref().unwrap_or(""), branch.as_deref().unwrap_or(""));
    let p = package.to_string();
    ctx.cache().get(key, move || async move { Ok(qa.history(&p, channel.as_deref(), branch.as_deref()).await?) }).await
}

/// The newest revision of every (channel, branch), newest first.
pub fn latest_per_branch(list: &[ListItem]) -> Vec<&ListItem> {
    let mut seen = std::collections::BTreeSet::new();
    list.iter().filter(|r| seen.insert((r.summary.channel.clone(), r.summary.branch.clone()))).collect()
}

/// The revision a page shows when none is named: the newest one known.
pub async fn default_revision(ctx: &PagesContext) -> Result<Option<String>, PageError> {
    let list = revisions(ctx, None, None).await?;
    Ok(list.first().map(|r| r.summary.revision.clone()))
}
