//! The dashboard every node serves at `/` (issue 14): server-rendered HTML (maud) from the same
//! data as the JSON API, read-only, no outside assets, readable on a phone and a wide screen.
//! Every page answers `Accept: application/json` with its JSON twin (the data of the matching
//! `/api/v1` route, computed by the same code: [`crate::qa::QaContext`], the mesh handle,
//! [`crate::audit`]).
//!
//! | route | page | JSON twin |
//! |---|---|---|
//! | `GET /` | [`overview`]: members, systems, the latest revision of every branch, recent problems | `{node, mesh, peers, branches, problems}` |
//! | `GET /revisions?channel=&branch=` | [`revisions`]: every revision by channel and branch | `GET /api/v1/revisions` |
//! | `GET /revision/{C@ID or C:branch}?system=&status=&q=&page=` | one revision, counts and the job table | `GET /api/v1/revisions/{name}?system=&status=` |
//! | `GET /compare?base=&target=&system=&class=&repro=&q=&page=` | [`compare`] with the ready verdict | `{compare, ready}` |
//! | `GET /weather?revision=` | [`weather`] with root causes | `GET /api/v1/weather?revision=&coverage=1` |
//! | `GET /reproducibility?revision=&page=` | [`repro`]: counts, trend chart (SVG), builders, not-matching outputs | `{revision, systems, trend, builders, not_matching}` |
//! | `GET /builders` | [`builders`]: every member with its agreement statistics | `{node, peers, agreement}` |
//! | `GET /drv/{base name}` | [`drv`]: explanation, attestations, failures, revisions, log link | `{explain, outputs, failures, history}` |
//! | `GET /package/{name}?channel=&branch=` | [`package`]: history across revisions | `GET /api/v1/history?package=` |
//!
//! The QA answers take up to a second of CPU on a 100,000-job revision, so the pages read them
//! through [`cache::PageCache`]: one computation per question at a time, answers kept for 20 times
//! what they took (at least 2 s), served stale while one refresh runs in the background. Pages
//! that change while builds run (overview, revision, derivation) poll themselves every few
//! seconds with a small inline script and swap the `#live` part ([`layout::LIVE_SCRIPT`]).

pub mod bench;
pub mod builders;
pub mod cache;
pub mod chart;
pub mod compare;
pub mod data;
pub mod drv;
pub mod layout;
pub mod overview;
pub mod package;
pub mod repro;
pub mod revisions;
pub mod weather;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use buildmesh_protocol::store_path::StoreDir;
use serde::Serialize;

use super::api::NodeInfo;
use crate::mesh::MeshHandle;
use crate::qa::{QaContext, QaError};
use crate::store::Store;

/// Rows of a table page unless `size=` says otherwise.
pub const PAGE_SIZE: usize = 100;
/// Most rows a page shows at once (`size=` is capped to it).
pub const MAX_PAGE_SIZE: usize = 500;

/// What the pages need; cheap to clone.
#[derive(Clone)]
pub struct PagesContext {
    inner: Arc<Inner>,
}

struct Inner {
    qa: QaContext,
    store: Store,
    store_dir: StoreDir,
    mesh: Option<MeshHandle>,
    info: Arc<NodeInfo>,
    cache: cache::PageCache,
}

impl std::fmt::Debug for PagesContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagesContext").field("store_dir", &self.inner.store_dir).finish()
    }
}

impl PagesContext {
    /// The pages of a node: its QA context, store, mesh (when it runs one) and who it is.
    pub fn new(qa: QaContext, store: Store, mesh: Option<MeshHandle>, info: Arc<NodeInfo>) -> PagesContext {
        let store_dir = qa.store_dir().clone();
        PagesContext { inner: Arc::new(Inner { qa, store, store_dir, mesh, info, cache: cache::PageCache::default() }) }
    }

    /// The QA context.
    pub fn qa(&self) -> &QaContext {
        &self.inner.qa
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.inner.store_dir
    }

    /// The mesh, on a mesh node.
    pub fn mesh(&self) -> Option<&MeshHandle> {
        self.inner.mesh.as_ref()
    }

    /// Who this node is.
    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    /// The answers' cache.
    pub fn cache(&self) -> &cache::PageCache {
        &self.inner.cache
    }
}

/// The dashboard's routes with their state applied (merged into the node's router).
pub fn router(ctx: PagesContext) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/revisions", get(revisions::list))
        .route("/revision/{name}", get(revisions::show))
        .route("/compare", get(compare::page))
        .route("/weather", get(weather::page))
        .route("/reproducibility", get(repro::page))
        .route("/builders", get(builders::page))
        .route("/drv/{name}", get(drv::page))
        .route("/package/{name}", get(package::page))
        .with_state(ctx)
}

/// Why a page could not be shown: an HTTP status and a message naming what is wrong.
#[derive(Debug, Clone)]
pub struct PageError {
    /// The status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl PageError {
    /// A 400 naming the malformed input.
    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> PageError {
        PageError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl From<QaError> for PageError {
    fn from(e: QaError) -> PageError {
        let message = e.to_string();
        // The status the QA API answers for this error (one mapping, in http/qa.rs).
        PageError { status: e.into_response().status(), message }
    }
}

impl From<crate::audit::AuditError> for PageError {
    fn from(e: crate::audit::AuditError) -> PageError {
        PageError::internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> PageError {
        PageError::internal(format!("store error: {e}"))
    }
}

/// Whether the client asked for the JSON twin (`Accept: application/json`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("application/json")))
}

/// The page as HTML, or its JSON twin `data` when the client asked for JSON.
pub fn respond<T: Serialize + ?Sized>(headers: &HeaderMap, data: &T, html: impl FnOnce() -> maud::Markup) -> Response {
    if wants_json(headers) {
        return json(StatusCode::OK, data);
    }
    html_response(StatusCode::OK, html())
}

fn json<T: Serialize + ?Sized>(status: StatusCode, data: &T) -> Response {
    match serde_json::to_vec(data) {
        Ok(body) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), vary()], body)
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({ "error": e.to_string() })))
            .into_response(),
    }
}

fn vary() -> (header::HeaderName, HeaderValue) {
    (header::VARY, HeaderValue::from_static("Accept"))
}

fn html_response(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            vary(),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// The error as a page (or `{"error": …}` for a JSON client), with its status.
pub fn error_page(headers: &HeaderMap, e: PageError) -> Response {
    if wants_json(headers) {
        return json(e.status, &serde_json::json!({ "error": e.message }));
    }
    let title = e.status.canonical_reason().unwrap_or("error").to_string();
    let body = maud::html! {
        h1 { (e.status.as_u16()) " " (title) }
        p.error { (e.message) }
        p { a href="/" { "Back to the overview" } }
    };
    html_response(e.status, layout::frame(&title, layout::Nav::None, false, body))
}

/// Answer with the page `f` builds, or the error page.
pub fn page_or_error(headers: &HeaderMap, r: Result<Response, PageError>) -> Response {
    r.unwrap_or_else(|e| error_page(headers, e))
}

/// A link `path?k=v&…` with the query values percent-encoded (empty values left out).
pub fn link(path: &str, query: &[(&str, &str)]) -> String {
    let pairs: Vec<(&str, &str)> = query.iter().filter(|(_, v)| !v.is_empty()).copied().collect();
    if pairs.is_empty() {
        return path.to_string();
    }
    let mut s = reqwest::Url::parse("http://x/").expect("static URL");
    s.query_pairs_mut().extend_pairs(pairs);
    format!("{path}?{}", s.query().unwrap_or_default())
}

/// A link `/prefix/<segment>` with the segment percent-encoded.
pub fn link_segment(prefix: &str, segment: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/").expect("static URL");
    if let Ok(mut p) = u.path_segments_mut() {
        p.extend(prefix.trim_matches('/').split('/'));
        p.push(segment);
    }
    u.path().to_string()
}

/// The link of a derivation's page (`/drv/<base name>`) for an absolute `.drv` path.
pub fn drv_link(drv: &str) -> String {
    link_segment("/drv", drv.rsplit('/').next().unwrap_or(drv))
}

/// The page `page` (from 1) of `items`, `size` each: the slice and the number of pages.
pub fn paginate<T>(items: &[T], page: usize, size: usize) -> (&[T], usize) {
    let size = size.clamp(1, MAX_PAGE_SIZE);
    let pages = items.len().div_ceil(size).max(1);
    let page = page.clamp(1, pages);
    let start = (page - 1) * size;
    (&items[start.min(items.len())..(start + size).min(items.len())], pages)
}

/// `page=` and `size=` of a table page.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paging {
    /// The page, from 1.
    pub page: Option<usize>,
    /// Rows per page.
    pub size: Option<usize>,
}

impl Paging {
    /// The page number (from 1).
    pub fn page(&self) -> usize {
        self.page.unwrap_or(1).max(1)
    }

    /// Rows per page.
    pub fn size(&self) -> usize {
        self.size.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE)
    }
}

/// A query string that did not parse, as a page error.
pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> PageError {
    PageError::bad_request(format!("bad query string: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_their_values() {
        assert_eq!(
            link("/compare", &[("base", "qa@r1"), ("target", "qa:main")]),
            "/compare?base=qa%40r1&target=qa%3Amain"
        );
        assert_eq!(link("/revisions", &[("channel", "")]), "/revisions");
        assert_eq!(link_segment("/package", "a b"), "/package/a%20b");
        assert_eq!(drv_link("/nix/store/abc-x.drv"), "/drv/abc-x.drv");
    }

    #[test]
    fn pages_cover_every_row_once() {
        let v: Vec<u32> = (0..250).collect();
        assert_eq!(paginate(&v, 1, 100).0.len(), 100);
        assert_eq!(paginate(&v, 3, 100), (&v[200..], 3));
        assert_eq!(paginate(&v, 9, 100).0, &v[200..]);
        assert_eq!(paginate::<u32>(&[], 1, 100), (&[][..], 1));
    }

    #[test]
    fn json_only_when_asked() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&h));
    }
}
