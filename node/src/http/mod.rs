//! The node's HTTP server (axum): the Nix binary-cache protocol, the JSON API and the submit
//! endpoint, on one address.
//!
//! | route | what |
//! |---|---|
//! | `GET`, `HEAD /health` | `{"status": "ok"|"failing", "version", "failures": […]}`; 503 when failing ([`health`]) |
//! | `GET`, `HEAD /nix-cache-info` | `StoreDir`, `WantMassQuery`, `Priority` (`[cache]`, [`cache::CacheSettings`]) |
//! | `GET`, `HEAD /<hash32>.narinfo` | the narinfo of a path the trust rule accepts ([`crate::trust`]) |
//! | `GET`, `HEAD /nar/<nix32 NarHash>.nar` | the NAR, decompressed, checked and streamed from its blob; `Range` ([`nar`]) |
//! | `GET`, `HEAD /nar/<nix32 NarHash>.nar.zst` | the blob's zstd file as stored; `Range` ([`nar`]) |
//! | `GET`, `HEAD /nar/zstd/<basename>`, `/nar/<basename>`, `/log/<basename>`, `/signing-key.pub` | what `guix publish` serves beyond narinfos ([`guix`]) |
//! | `GET`, `HEAD /builder/<key id>/…` | per-builder views: each output as one builder attested it ([`builder`]) |
//! | `GET /api/v1/node` | who this node is ([`api::NodeInfo`]) |
//! | `GET /api/v1/builds[?state=…]` | builds ([`api::BuildView`]) |
//! | `GET /api/v1/builds/<drv>` | one build; `<drv>` is a base name or a full path, URL-encoded |
//! | `GET /api/v1/builds/<drv>/log[?builder=]` | its log, `text/plain`; fetched from a builder when not here ([`logs`]) |
//! | `POST /api/v1/builds/<drv>/retry`, `…/cancel` | retry a failed/cancelled build, cancel one |
//! | `GET /api/v1/attestations?path=…` / `?drv=…` / `?format=jsonl` / `?format=in-toto` | attestations ([`crate::audit::intoto`]) |
//! | `GET /diff?path=…`, `GET /api/v1/diff?path=…` | the NAR diff of a disputed output ([`diff`]) |
//! | `GET /metrics` | OpenMetrics text: libp2p's counters and buildmesh's ([`metrics`]) |
//! | `GET /reproducible.json` | the reproducibility feed (QA nodes; [`reproducible`]) |
//! | `GET /api/v1/quarantine` | local registrations replaced by the accepted NarHash ([`crate::trust`]) |
//! | `POST /api/v1/submit` | upload a closure ([`crate::submit::server`]) |
//! | `POST /api/v1/auth/check` | 204 when the request carries the node's token (clients check before a big upload) |
//! | `GET /api/v1/query`, `/api/v1/audit`, `/api/v1/attestations/export` | auditors ([`audit`]) |
//! | `POST /api/v1/gc`, `GET`/`POST /api/v1/pins`, `POST /api/v1/pins/remove` | garbage collection and the operator's pins ([`gc`]) |
//! | `POST /api/v1/revisions`, `GET /api/v1/mesh/revisions` | publish a revision, the mesh's revision headers (mesh nodes; [`revisions`]) |
//! | `GET /`, `/revisions`, `/revision/…`, `/compare`, `/weather`, `/reproducibility`, `/builders`, `/drv/…`, `/package/…` | the dashboard, HTML or its JSON twin ([`pages`]) |
//!
//! Errors of the JSON API are `{"error": "…"}` with a 4xx/5xx status (all of them, see
//! [`errors`]); the binary cache answers
//! 404 for what it does not have and 400 for malformed names, with a plain-text body. An error
//! quotes what the client sent through [`echo`], cut to [`ECHO_MAX_CHARS`].
//!
//! Every request that is not `GET` or `HEAD` (every `POST` above, the mesh's and any route added
//! later) needs `Authorization: Bearer <token>` ([`auth`]: `DATA/api.token`); without it the
//! answer is 401 and nothing changes.
//!
//! With a separate admin listener (`admin_http`), the public listener serves
//! [`public_router`]: everything but the control routes, which answer 403 naming the admin
//! listener; the admin listener serves [`router`].
//!
//! The server itself (timeouts, connection and download limits, `TCP_NODELAY`) is [`server`].

pub mod api;
pub mod audit;
pub mod auth;
pub mod builder;
pub mod cache;
pub mod diff;
pub mod errors;
pub mod gc;
pub mod guix;
pub mod health;
pub mod limits;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod nar;
pub mod pages;
pub mod qa;
pub mod range;
pub mod reproducible;
pub mod revisions;
pub mod server;
pub mod stream;
pub mod timeouts;
mod trust;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StoreDir;

use crate::scheduler::SchedulerHandle;
use crate::store::Store;
use crate::submit::SubmitContext;
use api::NodeInfo;

/// `Priority` in `/nix-cache-info` (cache.nixos.org says 40; lower is preferred).
pub const CACHE_PRIORITY: u32 = 40;

/// Characters of client input an error message quotes (see [`echo`]).
pub const ECHO_MAX_CHARS: usize = 64;

/// Client input quoted for an error message: Rust string syntax (control characters escaped),
/// cut to [`ECHO_MAX_CHARS`] characters with `…` after it when longer, so an error never sends a
/// long request back.
pub fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_MAX_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}…", &input[..cut]),
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// The node key (signs this node's own DSSE envelopes, issue 14).
    key: Arc<NodeKey>,
    store_dir: StoreDir,
    /// This node's id (its Guix public key is served at `/signing-key.pub`).
    node_id: buildmesh_protocol::id::NodeId,
    info: Arc<NodeInfo>,
    scheduler: SchedulerHandle,
    submit: SubmitContext,
    cache_info: String,
    narinfos: cache::NarinfoCache,
    /// NarHashes the standalone trust rule allowed on the NAR route.
    nars_allowed: nar::NarAllowedCache,
    mesh: Option<crate::mesh::MeshHandle>,
    /// The trust policy of the standalone cache routes (this node's own builds).
    trust: buildmesh_protocol::mesh::TrustConfig,
    downloads: Arc<limits::DownloadLimiter>,
    /// The QA routes' context (revisions, compare, weather, …).
    qa: Option<crate::qa::QaContext>,
    /// The garbage collector's routes (`/api/v1/gc`, `/api/v1/pins`).
    gc: Option<crate::gc::Collector>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("store", &self.inner.store).field("info", &self.inner.info).finish()
    }
}

impl AppState {
    /// The state of one node's server.
    pub fn new(
        store: Store,
        store_dir: StoreDir,
        key: Arc<NodeKey>,
        info: Arc<NodeInfo>,
        scheduler: SchedulerHandle,
        submit: SubmitContext,
    ) -> AppState {
        let cache_info = cache::CacheSettings::default().nix_cache_info(&store_dir.to_string());
        let trust = crate::trust::standalone(key.node_id());
        AppState {
            inner: Arc::new(Inner {
                store,
                node_id: key.node_id(),
                key,
                store_dir,
                info,
                scheduler,
                submit,
                cache_info,
                narinfos: cache::NarinfoCache::default(),
                nars_allowed: nar::NarAllowedCache::default(),
                mesh: None,
                trust,
                downloads: server::ServerSettings::default().download_limiter(),
                qa: None,
                gc: None,
            }),
        }
    }

    /// Serve as a mesh node: quorum narinfos, the mesh API routes, submissions go to the mesh,
    /// `addresses` in `/api/v1/node` from the mesh.
    pub fn with_mesh(mut self, mesh: crate::mesh::MeshHandle) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.mesh = Some(mesh),
            None => tracing::error!("AppState::with_mesh on a shared state; the mesh is not wired in"),
        }
        self
    }

    /// Answer `/nix-cache-info` with the `Priority` and `WantMassQuery` of `settings`.
    pub fn with_cache_settings(mut self, settings: &cache::CacheSettings) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.cache_info = settings.nix_cache_info(&inner.store_dir.to_string()),
            None => tracing::error!("AppState::with_cache_settings on a shared state; default priority applies"),
        }
        self
    }

    /// Serve the QA routes (`/api/v1/revisions`, `compare`, `weather`, …) from `qa`.
    pub fn with_qa(mut self, qa: crate::qa::QaContext) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.qa = Some(qa),
            None => tracing::error!("AppState::with_qa on a shared state; the QA routes are not served"),
        }
        self
    }

    /// Serve the garbage collection routes (`POST /api/v1/gc`, `/api/v1/pins`) from `gc`.
    pub fn with_gc(mut self, gc: crate::gc::Collector) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.gc = Some(gc),
            None => tracing::error!("AppState::with_gc on a shared state; the gc routes are not served"),
        }
        self
    }

    /// Use the download limits of `settings` (instead of the defaults).
    pub fn with_server_settings(mut self, settings: &server::ServerSettings) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.downloads = settings.download_limiter(),
            None => tracing::error!("AppState::with_server_settings on a shared state; default limits apply"),
        }
        self
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn store_dir(&self) -> &StoreDir {
        &self.inner.store_dir
    }
}

/// The whole router of a node: binary cache, JSON API and the submit endpoint, every
/// state-changing request behind `token` ([`auth::require_token`]).
pub fn router(state: AppState, token: auth::ApiToken) -> Router {
    let submit = match &state.inner.mesh {
        Some(m) => crate::submit::server::mesh_router(state.inner.submit.clone(), m.clone()),
        None => crate::submit::router(state.inner.submit.clone()),
    };
    let mesh = state.inner.mesh.clone().map(mesh::router);
    let revisions = state.inner.mesh.clone().map(|m| revisions::router(state.inner.store.clone(), m));
    let qa = state.inner.qa.clone().map(qa::router);
    // The dashboard (`/`, `/revisions`, …; [`pages`]): static routes, so `/{file}` still serves
    // narinfos and an unknown page is its 404.
    let pages = state.inner.qa.clone().map(|q| {
        let ctx =
            pages::PagesContext::new(q, state.inner.store.clone(), state.inner.mesh.clone(), state.inner.info.clone());
        pages::router(ctx)
    });
    let gc = state.inner.gc.clone().map(|c| gc::router(c, state.inner.store_dir.clone()));
    let audit = audit::router(audit::AuditContext {
        store: state.inner.store.clone(),
        store_dir: state.inner.store_dir.clone(),
    });
    Router::new()
        .route("/health", get(health::health))
        .route("/nix-cache-info", get(cache::nix_cache_info))
        .route("/{file}", get(cache::narinfo))
        .route("/nar/{file}", get(nar::nar))
        .route("/nar/zstd/{file}", get(guix::nar_zstd))
        .route("/log/{file}", get(guix::log))
        .route("/signing-key.pub", get(guix::signing_key))
        .route("/builder/{key}/{file}", get(builder::file))
        .route("/builder/{key}/nar/{file}", get(builder::nar))
        .route("/builder/{key}/nar/zstd/{file}", get(builder::nar_zstd))
        .route("/api/v1/node", get(api::node))
        .route("/api/v1/builds", get(api::builds))
        .route("/api/v1/builds/{drv}", get(api::build))
        .route("/api/v1/builds/{drv}/log", get(logs::log))
        .route("/api/v1/builds/{drv}/retry", post(api::retry))
        .route("/api/v1/builds/{drv}/cancel", post(api::cancel))
        .route("/api/v1/attestations", get(api::attestations))
        .route("/api/v1/diff", get(diff::api))
        .route("/metrics", get(metrics::metrics))
        .route("/diff", get(diff::page))
        .route("/api/v1/quarantine", get(trust::quarantine))
        .route(auth::CHECK_PATH, post(auth::auth_check))
        .fallback(api::not_found)
        .with_state(state)
        .merge(submit)
        .merge(audit)
        .merge(mesh.unwrap_or_default())
        .merge(revisions.unwrap_or_default())
        .merge(qa.unwrap_or_default())
        .merge(pages.unwrap_or_default())
        .merge(gc.unwrap_or_default())
        .layer(axum::middleware::from_fn_with_state(token, auth::require_token))
        .layer(axum::middleware::from_fn(errors::json_errors))
}

/// The router of the public listener of a node with a separate admin listener: the same routes
/// as [`router`], but every request that is not `GET`/`HEAD` is refused with 403 naming
/// `admin` ([`auth::control_elsewhere`]). The admin listener serves [`router`] itself.
pub fn public_router(state: AppState, token: auth::ApiToken, admin: std::net::SocketAddr) -> Router {
    router(state, token).layer(axum::middleware::from_fn_with_state(
        auth::AdminAddress(admin.to_string().into()),
        auth::control_elsewhere,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn echo_cuts_long_input_and_escapes() {
        assert_eq!(super::echo("abc"), "\"abc\"");
        let long = "x".repeat(8192);
        let e = super::echo(&long);
        assert_eq!(e, format!("\"{}\"…", "x".repeat(super::ECHO_MAX_CHARS)));
        assert_eq!(super::echo("a\nb"), "\"a\\nb\"");
        // Never cuts inside a character.
        let wide = "é".repeat(100);
        assert!(super::echo(&wide).starts_with(&format!("\"{}", "é".repeat(64))));
    }
}
