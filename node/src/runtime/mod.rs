//! A running node: store, key, scheduler and HTTP server, started together and stopped together.
//!
//! [`Node::start`] does, in order:
//! 1. validate the [`Config`];
//! 2. load the node key, or create it on first start (`DATA/node.key`, see [`key`]), and the API
//!    token likewise (`DATA/api.token`, see [`crate::http::auth`]);
//! 3. open the [`Store`] (`DATA/state.redb`, `DATA/blobs`; the database is locked, so a second
//!    node on the same data dir fails here);
//! 4. requeue the builds a crash or shutdown interrupted ([`Store::requeue_interrupted`]) and
//!    empty `DATA/builds` (work dirs of interrupted builds);
//! 5. create the executor (`local` or `nix`, or the one given in [`NodeOptions`]);
//! 6. bind the HTTP server ([`crate::http`]: binary cache, JSON API, submit endpoint);
//! 7. start the [`crate::scheduler`], which resumes the queue.
//!
//! Every task runs inside one `node` tracing span carrying the node's short id and key name, so
//! several nodes in one process (tests, `buildmesh demo`) keep readable logs.
//!
//! While the node runs, `health::watch_store` reopens the database after a failure (a full disk)
//! and stops the node with an error when it stays broken (`store_failure_exit_secs`).
//!
//! [`Node::shutdown`] stops accepting connections, cancels running builds (they stay `Running`
//! in the store and step 4 of the next start requeues them), waits for the tasks and closes the
//! store. Dropping a [`Node`] without `shutdown` signals the tasks to stop but does not wait.

mod health;
pub mod key;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StoreDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::build::{self, Executor, ExecutorConfig};
use crate::config::{Config, ConfigError};
use crate::store::{Store, StoreError, StoreOptions};
use crate::systems::Systems;

pub use crate::http::api::NodeInfo;
pub use crate::scheduler::{ControlError, Scheduler, SchedulerHandle, SchedulerOptions};
pub use key::{KeyError, KeyOrigin};

/// Name of the spool directory for uploads inside the data dir (emptied at start).
pub const SPOOL_DIR: &str = "spool";
/// How long shutdown waits for open HTTP connections (e.g. a NAR download) to finish.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The API token could not be loaded or created (or its file is readable by others).
    #[error(transparent)]
    Token(#[from] crate::http::auth::TokenError),
    /// The store could not be opened or recovered.
    #[error("data dir {}: {source}", data_dir.display())]
    Store {
        /// The data dir.
        data_dir: PathBuf,
        /// What failed.
        source: Box<StoreError>,
    },
    /// The executor could not be created.
    #[error("cannot set up the `{executor}` executor: {message}")]
    Executor {
        /// Which executor.
        executor: String,
        /// What failed.
        message: String,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on http {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A filesystem operation in the data dir failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A startup task panicked.
    #[error("startup task failed: {0}")]
    Task(String),
    /// The garbage collector could not be set up.
    #[error("cannot set up the garbage collector: {0}")]
    Gc(String),
    /// The mesh (libp2p, driver) could not start.
    #[error("cannot start the mesh: {0}")]
    Mesh(#[from] crate::mesh::StartError),
}

/// Ways to start a node other than from its [`Config`] alone (tests, the demo).
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Use this executor instead of the configured one.
    pub executor: Option<Arc<dyn Executor>>,
    /// Scheduler knobs not in the config (backoff); `slots`, `max_attempts`, `build_timeout` and
    /// `max_log_bytes` are always taken from the config.
    pub scheduler: Option<SchedulerOptions>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("executor", &self.executor.as_ref().map(|e| e.name()))
            .field("scheduler", &self.scheduler)
            .finish()
    }
}

/// A running node (see the module docs).
#[derive(Debug)]
pub struct Node {
    info: Arc<NodeInfo>,
    key: Arc<NodeKey>,
    store: Store,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    scheduler: SchedulerHandle,
    shutdown: CancellationToken,
    http_task: Option<JoinHandle<()>>,
    /// The admin listener's server, when it is separate (`admin_http`).
    admin_task: Option<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
    scheduler_task: Option<JoinHandle<()>>,
    store_task: Option<JoinHandle<()>>,
    gc_task: Option<JoinHandle<()>>,
    /// Why the node stopped by itself (see [`Node::failure`]).
    failure: Arc<std::sync::Mutex<Option<String>>>,
    mesh: Option<crate::mesh::MeshHandle>,
    mesh_task: Option<JoinHandle<()>>,
    span: tracing::Span,
}

impl Node {
    /// Start a node from its configuration (see the module docs).
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Node::start_with(config, NodeOptions::default()).await
    }

    /// Start a node with extra options.
    pub async fn start_with(config: Config, options: NodeOptions) -> Result<Node, StartError> {
        config.validate()?;
        let store_dir = config.store_dir()?;
        let data_dir = config.data_dir.clone();
        let prepared = {
            let config = config.clone();
            let store_dir = store_dir.clone();
            let custom = options.executor.clone();
            tokio::task::spawn_blocking(move || prepare(&config, &store_dir, custom))
                .await
                .map_err(|e| StartError::Task(e.to_string()))??
        };
        let Prepared { key, store, executor, systems, token } = prepared;
        let key = Arc::new(key);
        let span = tracing::info_span!("node", id = %key.node_id().fmt_short(), key = %key.name());

        let mut sched_options = options.scheduler.unwrap_or_default();
        sched_options.slots = config.effective_slots();
        sched_options.max_attempts = config.max_attempts;
        sched_options.build_timeout = Duration::from_secs(config.build_timeout_secs);
        sched_options.max_log_bytes = config.max_log_bytes as u64;
        let mesh_on = config.mesh.is_enabled(&config.bootstrap);
        if mesh_on {
            // The mesh retries a failed build on another node.
            sched_options.max_attempts = 1;
        }
        let mut scheduler = Scheduler::new(
            store.clone(),
            store_dir.clone(),
            key.clone(),
            systems.clone(),
            executor.clone(),
            sched_options.clone(),
        );
        // The trust rule for inputs and the cache: this node's own builds, or on a mesh node
        // the mesh's policy (own key plus `trusted_keys`, `quorum`).
        let trust = if mesh_on {
            let mut t = crate::mesh::trust_policy(&config.trusted_keys, config.quorum, key.node_id(), key.name())
                .map_err(|e| StartError::Mesh(crate::mesh::StartError::from(e)))?
                .0;
            t.needs_native = config.quorum_needs_native;
            t.no_emulation_for = config.no_emulation_for.iter().cloned().collect();
            t
        } else {
            crate::trust::standalone(key.node_id())
        };
        scheduler = scheduler.with_trust(trust.clone(), Some(data_dir.join(build::STORE_FS_DIR)));
        let handle = scheduler.handle();
        let shutdown = CancellationToken::new();
        let (mesh, mesh_task) = if mesh_on {
            let (tx, builds) = tokio::sync::mpsc::channel(crate::mesh::BUILD_EVENT_BUFFER);
            scheduler = scheduler.with_build_events(tx);
            let params = crate::mesh::MeshParams {
                key: key.clone(),
                store: store.clone(),
                store_dir: store_dir.clone(),
                data_dir: data_dir.clone(),
                listen: config.listen.clone(),
                bootstrap: config.bootstrap.clone(),
                nat: config.nat.clone(),
                net: config.net.clone(),
                mdns: config.mdns,
                trusted_keys: config.trusted_keys.clone(),
                submitters: config.submitters.clone(),
                builders: config.builders.clone(),
                quorum: config.quorum,
                quorum_needs_native: config.quorum_needs_native,
                no_emulation_for: config.no_emulation_for.clone(),
                replicas: config.replicas,
                owner: config.owner.clone(),
                features: config.features.clone(),
                mandatory_features: config.mandatory_features.clone(),
                settings: config.mesh.clone(),
                shards: config.mesh_shards,
                max_finished_drvs: config.mesh_max_finished_drvs,
                systems: systems.clone(),
                slots: sched_options.slots,
                scheduler: handle.clone(),
                builds,
            };
            let (mesh, task) = crate::mesh::start(params, shutdown.clone()).instrument(span.clone()).await?;
            (Some(mesh), Some(task))
        } else {
            (None, None)
        };

        let listener =
            crate::http::server::bind(config.http).map_err(|source| StartError::Bind { addr: config.http, source })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.http, source })?;
        let admin_listener = match config.admin_listener() {
            Some(addr) => Some(crate::http::server::bind(addr).map_err(|source| StartError::Bind { addr, source })?),
            None => None,
        };
        let admin_addr = match &admin_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind { addr: config.http, source })?),
            None => None,
        };
        if let Some(a) = admin_addr
            && !a.ip().is_loopback()
        {
            tracing::warn!(admin_http = %a, "the admin listener is not on a loopback address: firewall it");
        }
        if admin_addr.is_none() && !http_addr.ip().is_loopback() {
            tracing::warn!(http = %http_addr, "admin_http = http: control routes (token-guarded) are served on a public address");
        }

        let info = Arc::new(NodeInfo {
            peer_id: key.peer_id(),
            key_name: key.name().to_string(),
            public_key: key.nix_public_key().to_string(),
            guix_public_key: key.guix_public_key().to_sexp(),
            systems,
            store_dir: store_dir.to_string(),
            executor: executor.name().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            addresses: Vec::new(),
            reachability: Default::default(),
            http: http_addr.to_string(),
            admin_http: admin_addr.unwrap_or(http_addr).to_string(),
            slots: sched_options.slots,
        });

        let qa = crate::qa::QaContext::new(crate::qa::QaParams {
            store: store.clone(),
            store_dir: store_dir.clone(),
            key: key.clone(),
            mesh: mesh.clone(),
            trust: trust.clone(),
            rule: config.qa.ready.clone(),
            replicas: u8::try_from(config.replicas).unwrap_or(buildmesh_protocol::wire::MAX_REPLICAS),
            local: crate::qa::explain::LocalCapabilities {
                native: info.systems.native.clone(),
                emulated: info.systems.emulated.clone(),
                features: config.features.iter().cloned().collect(),
            },
        });
        {
            // Read every stored attestation into the QA index now, not at the first question.
            let qa = qa.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = qa.warm_up() {
                    tracing::warn!(cause = %e, "QA index not built at start; the first question builds it");
                }
            });
        }
        let collector = crate::gc::Collector::new(
            store.clone(),
            store_dir.clone(),
            data_dir.clone(),
            Some(qa.clone()),
            config.gc_settings(),
        )
        .map_err(|e| StartError::Gc(e.to_string()))?;
        let gc_task = tokio::spawn(collector.clone().watch(shutdown.clone()).instrument(span.clone()));
        let mut app_state = crate::http::AppState::new(
            store.clone(),
            store_dir.clone(),
            key.clone(),
            info.clone(),
            handle.clone(),
            submit_context(&store, &store_dir, &data_dir, &handle, trust, &config.submit),
        );
        if let Some(m) = &mesh {
            app_state = app_state.with_mesh(m.clone());
        }
        app_state = app_state
            .with_server_settings(&config.server)
            .with_cache_settings(&config.cache)
            .with_qa(qa)
            .with_gc(collector);
        let serve = |listener, app| {
            let shutdown = shutdown.clone();
            let settings = config.server.clone();
            tokio::spawn(
                async move { crate::http::server::serve(listener, app, &settings, shutdown).await }
                    .instrument(span.clone()),
            )
        };
        let (http_task, admin_task) = match (admin_listener, admin_addr) {
            (Some(admin), Some(addr)) => {
                let public = crate::http::public_router(app_state.clone(), token.clone(), addr);
                let full = crate::http::router(app_state, token);
                (serve(listener, public), Some(serve(admin, full)))
            }
            _ => (serve(listener, crate::http::router(app_state, token)), None),
        };
        let failure = Arc::new(std::sync::Mutex::new(None));
        let store_task = tokio::spawn(
            health::watch_store(
                store.clone(),
                Duration::from_secs(config.store_failure_exit_secs),
                failure.clone(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
        );
        let scheduler_task = tokio::spawn(scheduler.run(shutdown.clone()).instrument(span.clone()));
        span.in_scope(|| {
            tracing::info!(
                peer_id = %info.peer_id, public_key = %info.public_key, http = %http_addr,
                executor = %info.executor, slots = info.slots, "node started"
            );
        });
        Ok(Node {
            info,
            key,
            store,
            http_addr,
            data_dir,
            scheduler: handle,
            shutdown,
            http_task: Some(http_task),
            admin_task,
            admin_addr,
            scheduler_task: Some(scheduler_task),
            store_task: Some(store_task),
            gc_task: Some(gc_task),
            failure,
            mesh,
            mesh_task,
            span,
        })
    }

    /// What the node says about itself.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The node key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The address the HTTP server listens on (the real port when the config said port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://<http_addr>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://<address>` of the listener serving the control routes: the admin listener, or
    /// [`Node::http_url`] when there is no separate one.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr.unwrap_or(self.http_addr))
    }

    /// The data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The scheduler's handle (wake it after enqueueing builds; cancel and retry).
    pub fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }

    /// The mesh driver's handle, when the node runs the mesh.
    pub fn mesh(&self) -> Option<&crate::mesh::MeshHandle> {
        self.mesh.as_ref()
    }

    /// The node's tracing span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Resolves once the node stops (after [`Node::shutdown`] began, or a task died).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }

    /// Why the node stopped by itself, when it did (e.g. its database stayed broken); `buildmesh
    /// node` then exits with an error so that its supervisor restarts it.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stop: no new connections, running builds cancelled (requeued at the next start), tasks
    /// awaited, store closed when the last clone is dropped.
    pub async fn shutdown(mut self) {
        let span = self.span.clone();
        async {
            tracing::info!("node shutting down");
            self.shutdown.cancel();
            if let Some(t) = self.scheduler_task.take()
                && let Err(e) = t.await
            {
                tracing::error!(cause = %e, "scheduler task failed");
            }
            if let Some(t) = self.store_task.take()
                && let Err(e) = t.await
            {
                tracing::error!(cause = %e, "store watch task failed");
            }
            if let Some(t) = self.gc_task.take()
                && let Err(e) = t.await
            {
                tracing::error!(cause = %e, "garbage collector task failed");
            }
            if let Some(t) = self.mesh_task.take()
                && let Err(e) = t.await
            {
                tracing::error!(cause = %e, "mesh task failed");
            }
            if let Some(mut t) = self.admin_task.take()
                && tokio::time::timeout(HTTP_DRAIN, &mut t).await.is_err()
            {
                t.abort();
                let _ = t.await;
            }
            if let Some(mut t) = self.http_task.take() {
                match tokio::time::timeout(HTTP_DRAIN, &mut t).await {
                    Ok(Err(e)) => tracing::error!(cause = %e, "HTTP task failed"),
                    Ok(Ok(())) => {}
                    Err(_) => {
                        tracing::warn!("open HTTP connections did not finish in time; closing them");
                        t.abort();
                        let _ = t.await;
                    }
                }
            }
            tracing::info!("node stopped");
        }
        .instrument(span)
        .await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Prepared {
    key: NodeKey,
    token: crate::http::auth::ApiToken,
    store: Store,
    executor: Arc<dyn Executor>,
    systems: Systems,
}

/// The blocking part of startup: key, store, recovery, executor.
fn prepare(config: &Config, store_dir: &StoreDir, custom: Option<Arc<dyn Executor>>) -> Result<Prepared, StartError> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::Io {
        op: "create data dir",
        path: data_dir.clone(),
        source,
    })?;
    let (key, origin) = key::load_or_create(&config.key_path(), config.key_name.as_deref())?;
    if origin == KeyOrigin::Created {
        tracing::info!(file = %config.key_path().display(), public_key = %key.nix_public_key(), "created the node key");
    }
    let (token, created) = crate::http::auth::load_or_create(data_dir)?;
    if created {
        tracing::info!(file = %crate::http::auth::token_path(data_dir).display(), "created the API token");
    }
    if !token.submitter_names().is_empty() {
        tracing::info!(submitters = ?token.submitter_names(), "submitter tokens (DATA/submitters) may upload");
    }
    let options = StoreOptions {
        max_log_bytes: config.max_log_bytes,
        plain_copy_bytes: config.plain_copy_bytes,
        ..StoreOptions::default()
    };
    let store_err = |source| StartError::Store { data_dir: data_dir.clone(), source: Box::new(source) };
    let store = Store::open_with(data_dir, options).map_err(store_err)?;
    let requeued = store.requeue_interrupted().map_err(store_err)?;
    if !requeued.is_empty() {
        tracing::info!(count = requeued.len(), "requeued builds interrupted by the last shutdown or crash");
    }
    let builds_dir = data_dir.join(build::BUILDS_DIR);
    build::reset_builds_dir(&builds_dir)
        .map_err(|e| StartError::Executor { executor: "(any)".into(), message: e.to_string() })?;
    reset_dir(&data_dir.join(SPOOL_DIR))?;
    let mut systems = crate::systems::detect();
    for missing in systems.restrict_emulated(config.emulated_systems.as_deref()) {
        tracing::warn!(system = %missing, "emulated_systems names a system binfmt_misc cannot run here; ignored");
    }
    systems.emulated.retain(|s| !config.no_emulation_for.contains(s));
    tracing::info!(native = ?systems.native, emulated = ?systems.emulated, "systems");
    let executor = match custom {
        Some(e) => e,
        None => {
            let kind = config.executor;
            let name = format!("{kind:?}").to_lowercase();
            let exec_err = |message: String| StartError::Executor { executor: name.clone(), message };
            let mut ec =
                ExecutorConfig::new(store.clone(), data_dir, store_dir.clone()).map_err(|e| exec_err(e.to_string()))?;
            let slots = config.effective_slots().max(1);
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            ec.cores = u32::try_from((cpus / slots).max(1)).unwrap_or(1);
            ec.systems = systems.clone();
            ec.sandbox_paths = config.sandbox_paths.clone();
            ec.sandbox = config.sandbox.clone();
            if kind == build::ExecutorKind::Local {
                ec.cgroups = build_cgroups(config).map_err(exec_err)?;
                ec.build_dir_max = config.build_dir_max_bytes;
            }
            build::make_executor(kind, ec).map_err(|e| exec_err(e.to_string()))?
        }
    };
    Ok(Prepared { key, store, executor, systems, token })
}

/// The per-build cgroups of the `local` executor: the configured limits, or the defaults where
/// cgroups can be used (an explicit limit that cannot be enforced is an error).
fn build_cgroups(config: &Config) -> Result<Option<crate::sandbox::Cgroups>, String> {
    let (limits, explicit) = config.build_limits();
    match crate::sandbox::Cgroups::setup(limits, &format!("buildmesh-{}", std::process::id())) {
        Ok(Some(c)) => {
            tracing::info!(
                cgroup = c.version(),
                memory_max = limits.memory_max,
                pids_max = limits.pids_max,
                cpu_max = limits.cpu_max,
                "per-build resource limits"
            );
            Ok(Some(c))
        }
        Ok(None) => Ok(None),
        Err(e) if explicit => Err(format!("build_memory_max / build_pids_max / build_cpu_max cannot be enforced: {e}")),
        Err(e) => {
            tracing::warn!(cause = %e, "builds run without memory and process limits (no usable cgroup)");
            Ok(None)
        }
    }
}

/// Create `dir` and delete what is in it.
fn reset_dir(dir: &std::path::Path) -> Result<(), StartError> {
    let io = |op: &'static str| move |source| StartError::Io { op, path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io("create"))?;
    for entry in std::fs::read_dir(dir).map_err(io("list"))? {
        let entry = entry.map_err(io("list"))?;
        let path = entry.path();
        let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| StartError::Io { op: "remove", path: path.clone(), source })?;
    }
    Ok(())
}

fn submit_context(
    store: &Store,
    store_dir: &StoreDir,
    data_dir: &std::path::Path,
    handle: &SchedulerHandle,
    trust: buildmesh_protocol::mesh::TrustConfig,
    settings: &crate::submit::SubmitSettings,
) -> crate::submit::SubmitContext {
    let mut ctx = crate::submit::SubmitContext::new(store.clone(), store_dir.clone());
    ctx.trust = trust;
    settings.apply(&mut ctx.limits);
    ctx.limits.spool_dir = Some(data_dir.join(SPOOL_DIR));
    ctx.wake = handle.wake_notify();
    ctx.submitters = handle.submitters();
    ctx
}
