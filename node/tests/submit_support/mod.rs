//! Helpers shared by the `submit_*` integration tests: the Nix vectors, upload bodies, store
//! snapshots, an in-process HTTP server, and a stand-in for the builds API backed by the real
//! store (for `--wait` before a scheduler runs).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use buildmesh::store::{BuildFilter, BuildState, PathInfo, Store};
use buildmesh::submit::closure::{self, Closure, NarOrigin, Origin};
use buildmesh::submit::{SubmitContext, SubmitLimits, client, wire};
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

pub fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/nix"))
}

pub fn drv_dir() -> PathBuf {
    vectors().join("drv")
}

pub fn sd() -> StoreDir {
    StoreDir::nix()
}

/// `drv/index.tsv`: name -> drv path (one per derivation).
pub fn vector_drvs() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(drv_dir().join("index.tsv")).expect("drv/index.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0].to_string(), c[1].to_string())
        })
        .collect()
}

/// One row of `nar/index.tsv`.
#[derive(Debug, Clone)]
pub struct NarRow {
    pub name: String,
    pub path: String,
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
}

impl NarRow {
    pub fn file(&self) -> PathBuf {
        vectors().join("nar").join(format!("{}.nar", self.name))
    }
}

/// `nar/index.tsv` by store path (first row wins for twins).
pub fn nar_index() -> BTreeMap<String, NarRow> {
    let text = std::fs::read_to_string(vectors().join("nar/index.tsv")).expect("nar/index.tsv");
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let c: Vec<&str> = l.split('\t').collect();
        let row = NarRow {
            name: c[0].to_string(),
            path: c[1].to_string(),
            nar_hash: c[2].to_string(),
            nar_size: c[3].parse().expect("size"),
            references: c
                .get(4)
                .map(|r| r.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
                .unwrap_or_default(),
        };
        out.entry(row.path.clone()).or_insert(row);
    }
    out
}

/// The `CA:` line of the vectors' narinfo of `path`, if any.
pub fn narinfo_ca(path: &str) -> Option<String> {
    let hash = path.rsplit('/').next().expect("basename").split('-').next().expect("hash");
    let text = std::fs::read_to_string(vectors().join("narinfo").join(format!("{hash}.narinfo"))).ok()?;
    text.lines().find_map(|l| l.strip_prefix("CA: ").map(str::to_string))
}

/// The closure of `args` from the vectors' drv/ directory (sources from the sibling nar/).
pub fn vector_closure(args: &[&str]) -> Closure {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    closure::collect(&args, &Origin::Directory { dir: drv_dir(), sources: vec![] }, &sd()).expect("collect closure")
}

/// The whole upload body of a closure, in memory.
pub fn body_of(c: &Closure, priority: i32, replicas: u32) -> Vec<u8> {
    let header = client::header_for(c, priority, replicas);
    let drvs: Vec<&[u8]> = c.drvs.values().map(Vec::as_slice).collect();
    let nars: Vec<Vec<u8>> = c
        .sources
        .values()
        .map(|s| match &s.origin {
            NarOrigin::File(f) => std::fs::read(f).expect("read NAR"),
            NarOrigin::Dump(p) => buildmesh::nar_fs::dump_path(p, Vec::new()).expect("dump"),
        })
        .collect();
    let nars: Vec<&[u8]> = nars.iter().map(Vec::as_slice).collect();
    wire::encode_body(&header, &drvs, &nars).expect("encode body")
}

pub fn open_store(dir: &Path) -> Store {
    Store::open(dir).expect("open store")
}

pub fn context(store: &Store, limits: SubmitLimits) -> SubmitContext {
    SubmitContext { store: store.clone(), store_dir: sd(), limits, wake: Arc::new(tokio::sync::Notify::new()) }
}

/// Everything an upload could change, to compare before and after a rejected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub paths: u64,
    pub blobs: usize,
    pub blob_files: usize,
    pub builds: usize,
    pub drvs: BTreeSet<String>,
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// Snapshot of `store` (data dir `data`), checking which vector drvs are stored.
pub fn snapshot(store: &Store, data: &Path) -> Snapshot {
    let drvs = vector_drvs()
        .values()
        .filter(|p| store.has_drv(&sd().parse_path(p).expect("path")).expect("has_drv"))
        .cloned()
        .collect();
    Snapshot {
        paths: store.path_count().expect("count"),
        blobs: store.list_blobs(None, 0).expect("blobs").len(),
        blob_files: count_files(&data.join("blobs")),
        builds: store.list_builds(&BuildFilter::default()).expect("builds").len(),
        drvs,
    }
}

/// An HTTP server on 127.0.0.1:<random> serving `app` on its own runtime thread; stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(app: Router) -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("server address");
        Server { addr, stop: Some(stop), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- a stand-in for the runtime's builds API, backed by the real store ----

/// Outputs "built" by [`FakeBuilder`]: drv path -> output name -> JSON output object.
pub type Built = Arc<Mutex<BTreeMap<String, BTreeMap<String, serde_json::Value>>>>;

#[derive(Clone)]
struct StubState {
    store: Store,
    built: Built,
}

fn build_json(st: &StubState, r: &buildmesh::store::BuildRecord) -> serde_json::Value {
    let drv = sd().display(&r.drv);
    let outputs = st.built.lock().expect("lock").get(&drv).cloned().unwrap_or_default();
    serde_json::json!({
        "drv": drv, "state": r.state.as_str(), "priority": r.priority, "attempts": r.attempts,
        "submitted_at": r.submitted_at, "started_at": r.started_at, "finished_at": r.finished_at,
        "error": r.last_error, "outputs": outputs,
    })
}

async fn stub_list(State(st): State<StubState>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let states = match q.get("state").map(String::as_str) {
        None => vec![],
        Some(s) => BuildState::ALL.iter().copied().filter(|b| b.as_str() == s).collect(),
    };
    let list = st.store.list_builds(&BuildFilter { states, ..BuildFilter::default() }).expect("list");
    Json(list.iter().map(|r| build_json(&st, r)).collect::<Vec<_>>()).into_response()
}

async fn stub_one(State(st): State<StubState>, UrlPath(drv): UrlPath<String>) -> Response {
    let base = drv.rsplit('/').next().unwrap_or(&drv).to_string();
    let Ok(path) = StorePath::from_basename(&base) else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "bad drv"}))).into_response();
    };
    match st.store.get_build(&path).expect("get") {
        Some(r) => Json(build_json(&st, &r)).into_response(),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "unknown build"}))).into_response(),
    }
}

/// `GET /api/v1/builds[?state=]` and `GET /api/v1/builds/{drv}` as the contract describes them.
pub fn builds_stub(store: &Store, built: &Built) -> Router {
    Router::new()
        .route("/api/v1/builds", get(stub_list))
        .route("/api/v1/builds/{drv}", get(stub_one))
        .with_state(StubState { store: store.clone(), built: built.clone() })
}

/// Plays the scheduler: runs queued builds whose input builds are done, "building" each by
/// registering its outputs from the vectors' NARs, or failing the ones in `fail`.
pub struct FakeBuilder {
    pub store: Store,
    pub built: Built,
    pub fail: BTreeSet<String>,
}

impl FakeBuilder {
    /// One pass; returns how many builds it finished.
    pub fn step(&self) -> usize {
        let nars = nar_index();
        let mut finished = 0;
        for r in self.store.queued_builds(0).expect("queued") {
            let bytes = self.store.get_drv(&r.drv).expect("get_drv").expect("drv stored");
            let drv = Derivation::parse(&bytes, &sd()).expect("parse");
            let ready = drv
                .input_drvs
                .keys()
                .all(|i| self.store.get_build(i).expect("get").is_none_or(|b| b.state == BuildState::Done));
            if !ready {
                continue;
            }
            let full = sd().display(&r.drv);
            self.store.mark_running(&r.drv, 1).expect("running");
            if self.fail.contains(&full) {
                self.store.mark_failed(&r.drv, 2, "builder failed with exit status 1").expect("failed");
                finished += 1;
                continue;
            }
            let mut outs = BTreeMap::new();
            for (name, o) in &drv.outputs {
                let path = o.path.as_ref().expect("vector outputs have paths");
                let shown = sd().display(path);
                let row = nars.get(&shown).unwrap_or_else(|| panic!("no NAR vector for {shown}"));
                let hash = NixHash::parse(&row.nar_hash, None).expect("hash");
                let blob = self
                    .store
                    .put_nar_expecting(&mut std::fs::File::open(row.file()).expect("nar"), &hash, row.nar_size)
                    .expect("put nar");
                self.store
                    .register_path(&PathInfo {
                        path: path.clone(),
                        nar_hash: hash,
                        nar_size: row.nar_size,
                        references: row.references.iter().map(|r| sd().parse_path(r).expect("ref")).collect(),
                        deriver: Some(r.drv.clone()),
                        ca: None,
                        blob: blob.blake3,
                        registered_at: 3,
                    })
                    .expect("register");
                outs.insert(
                    name.clone(),
                    serde_json::json!({"path": shown, "nar_hash": row.nar_hash, "nar_size": row.nar_size}),
                );
            }
            self.built.lock().expect("lock").insert(full, outs);
            self.store.mark_done(&r.drv, 4).expect("done");
            finished += 1;
        }
        finished
    }
}
