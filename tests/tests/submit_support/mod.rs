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
use buildmesh::cli::submit_client as client;
use buildmesh::store::{BuildFilter, BuildState, PathInfo, Store};
use buildmesh::submit::closure::{self, Closure, NarOrigin, Origin};
use buildmesh::submit::{SubmitContext, SubmitLimits, wire};
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

pub fn vectors() -> PathBuf {
    buildmesh_tests::nix_vectors()
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

/// The `drv/NAME.drv` file of the vector derivation at store path `drv_path` (NAME looked up in
/// `drv/index.tsv`, never assumed).
pub fn drv_file(drv_path: &str) -> PathBuf {
    let name = vector_drvs()
        .into_iter()
        .find_map(|(n, p)| (p == drv_path).then_some(n))
        .unwrap_or_else(|| panic!("{drv_path} is not in drv/index.tsv"));
    drv_dir().join(format!("{name}.drv"))
}

/// The exact bytes of the vector derivation at store path `drv_path`.
pub fn drv_bytes(drv_path: &str) -> Vec<u8> {
    std::fs::read(drv_file(drv_path)).expect("read .drv")
}

/// One vector derivation, parsed from its ATerm.
#[derive(Debug, Clone)]
pub struct VectorDrv {
    /// Column 1 of `drv/index.tsv` (the file stem in `drv/`); only the `unrepro-` prefix of it
    /// means anything (see the vectors' README).
    pub name: String,
    /// Its store path.
    pub path: String,
    /// The `.drv` bytes.
    pub bytes: Vec<u8>,
    /// The parsed derivation.
    pub drv: Derivation,
}

impl VectorDrv {
    /// Input derivations (store paths) and the outputs of each that are used.
    pub fn inputs(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.drv.input_drvs.iter().map(|(p, o)| (sd().display(p), o.clone())).collect()
    }

    /// Input sources (store paths).
    pub fn srcs(&self) -> BTreeSet<String> {
        self.drv.input_srcs.iter().map(|p| sd().display(p)).collect()
    }

    /// Output name -> recorded output path.
    pub fn outputs(&self) -> BTreeMap<String, String> {
        self.drv
            .outputs
            .iter()
            .map(|(n, o)| (n.clone(), sd().display(o.path.as_ref().expect("vector outputs have paths"))))
            .collect()
    }
}

/// The vector derivations as a dependency graph, read from the `.drv` files listed in
/// `drv/index.tsv`, with the selectors the tests use to pick derivations by structure (the hidden
/// vector set has other names, hashes and counts). Ties are broken by store path, so a choice is
/// stable for a given set.
pub struct DrvGraph {
    /// Every vector derivation by store path.
    pub drvs: BTreeMap<String, VectorDrv>,
    nars: BTreeMap<String, NarRow>,
}

impl DrvGraph {
    pub fn load() -> DrvGraph {
        let drvs = vector_drvs()
            .into_iter()
            .map(|(name, path)| {
                let bytes = std::fs::read(drv_dir().join(format!("{name}.drv"))).expect("read .drv");
                let drv = Derivation::parse(&bytes, &sd()).unwrap_or_else(|e| panic!("{name}: {e}"));
                (path.clone(), VectorDrv { name, path, bytes, drv })
            })
            .collect();
        DrvGraph { drvs, nars: nar_index() }
    }

    pub fn get(&self, path: &str) -> &VectorDrv {
        self.drvs.get(path).unwrap_or_else(|| panic!("{path} is not a vector derivation"))
    }

    /// The input derivations of `path`.
    pub fn inputs(&self, path: &str) -> BTreeSet<String> {
        self.get(path).inputs().into_keys().collect()
    }

    /// `path` and every derivation it depends on, transitively.
    pub fn closure(&self, path: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![path.to_string()];
        while let Some(p) = todo.pop() {
            if seen.insert(p.clone())
                && let Some(d) = self.drvs.get(&p)
            {
                todo.extend(d.inputs().into_keys());
            }
        }
        seen
    }

    /// The longest dependency chain from `path` down: `path` first, each next one an input
    /// derivation of the one before, the last one without input derivations.
    pub fn longest_chain(&self, path: &str) -> Vec<String> {
        let mut best = Vec::new();
        for i in self.inputs(path) {
            let c = self.longest_chain(&i);
            if c.len() > best.len() {
                best = c;
            }
        }
        let mut chain = vec![path.to_string()];
        chain.extend(best);
        chain
    }

    /// The input derivations of `root`'s closure that two different derivations of that closure
    /// use (two paths from `root` to the same input: a diamond), most users first.
    pub fn shared_inputs(&self, root: &str) -> Vec<String> {
        let closure = self.closure(root);
        let mut users: BTreeMap<String, usize> = BTreeMap::new();
        for d in &closure {
            for i in self.inputs(d) {
                *users.entry(i).or_default() += 1;
            }
        }
        let mut shared: Vec<(usize, String)> =
            users.into_iter().filter(|(_, n)| *n >= 2).map(|(i, n)| (n, i)).collect();
        shared.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        shared.into_iter().map(|(_, i)| i).collect()
    }

    /// The input sources of every derivation in the closures of `roots`, with the sources they
    /// refer to (from `nar/index.tsv`), transitively.
    pub fn source_closure(&self, roots: &[&str]) -> BTreeSet<String> {
        let mut todo: Vec<String> =
            roots.iter().flat_map(|r| self.closure(r)).flat_map(|d| self.get(&d).srcs()).collect();
        let mut seen = BTreeSet::new();
        while let Some(s) = todo.pop() {
            if seen.insert(s.clone()) {
                let row = self.nars.get(&s).unwrap_or_else(|| panic!("no NAR vector for source {s}"));
                todo.extend(row.references.iter().filter(|r| **r != s).cloned());
            }
        }
        seen
    }

    /// Whether every derivation of `path`'s closure is reproducible (no `unrepro-` name) and has a
    /// NAR vector for each output, so its build result can be compared or faked.
    pub fn deterministic(&self, path: &str) -> bool {
        self.closure(path).iter().all(|d| {
            let v = self.get(d);
            !v.name.starts_with("unrepro-") && v.outputs().values().all(|o| self.nars.contains_key(o))
        })
    }

    fn pick<K: Ord>(&self, keep: impl Fn(&VectorDrv) -> bool, key: impl Fn(&VectorDrv) -> K) -> Option<String> {
        self.drvs.values().filter(|v| keep(v)).min_by_key(|v| (key(v), v.path.clone())).map(|v| v.path.clone())
    }

    /// Leaves: deterministic derivations with no input derivations and no input sources,
    /// smallest `.drv` first.
    pub fn leaves(&self) -> Vec<String> {
        let mut l: Vec<&VectorDrv> = self
            .drvs
            .values()
            .filter(|v| v.drv.input_drvs.is_empty() && v.drv.input_srcs.is_empty() && self.deterministic(&v.path))
            .collect();
        l.sort_by_key(|v| (v.bytes.len(), v.path.clone()));
        l.into_iter().map(|v| v.path.clone()).collect()
    }

    /// The smallest leaf (see [`DrvGraph::leaves`]): "some simple derivation".
    pub fn leaf(&self) -> String {
        self.leaves().into_iter().next().expect("a leaf derivation (no input drvs, no input sources)")
    }

    /// The deterministic derivation with the longest dependency chain (fewest derivations in its
    /// closure on a tie), as [`DrvGraph::longest_chain`] gives it: root first. At least three
    /// long (the root's input has an input itself).
    pub fn chain(&self) -> Vec<String> {
        let root = self
            .pick(
                |v| self.deterministic(&v.path),
                |v| (std::cmp::Reverse(self.longest_chain(&v.path).len()), self.closure(&v.path).len()),
            )
            .expect("a deterministic derivation");
        let chain = self.longest_chain(&root);
        assert!(chain.len() >= 3, "no derivation whose input derivation has an input derivation: {chain:?}");
        chain
    }

    /// A deterministic diamond: the root with the largest closure among those with a shared
    /// input (see [`DrvGraph::shared_inputs`]), and that input (the one with the most users).
    /// When the set has no diamond, the deterministic derivation with the largest closure and
    /// `None`.
    pub fn diamond(&self) -> (String, Option<String>) {
        let largest = |keep: &dyn Fn(&VectorDrv) -> bool| {
            self.pick(|v| keep(v) && self.deterministic(&v.path), |v| std::cmp::Reverse(self.closure(&v.path).len()))
        };
        match largest(&|v| !self.shared_inputs(&v.path).is_empty()) {
            Some(root) => {
                let shared = self.shared_inputs(&root).into_iter().next();
                (root, shared)
            }
            None => (largest(&|_| true).expect("a deterministic derivation"), None),
        }
    }

    /// A derivation with input derivations and no input sources whose outputs are all
    /// input-addressed and whose `.drv` is UTF-8 text (so an output path can be edited in it), with
    /// the smallest closure; and one of its inputs that nothing else in that closure uses (so
    /// leaving it out of an upload makes exactly that derivation miss it).
    pub fn dependent(&self) -> (String, String) {
        use buildmesh_protocol::derivation::OutputKind;
        let sole_input = |d: &str| {
            let closure = self.closure(d);
            self.inputs(d).into_iter().find(|i| closure.iter().filter(|c| self.inputs(c).contains(i)).count() == 1)
        };
        let d = self
            .pick(
                |v| {
                    !v.drv.input_drvs.is_empty()
                        && v.drv.input_srcs.is_empty()
                        && v.drv.outputs.values().all(|o| o.kind() == OutputKind::InputAddressed)
                        && std::str::from_utf8(&v.bytes).is_ok()
                        && sole_input(&v.path).is_some()
                },
                |v| self.closure(&v.path).len(),
            )
            .expect("an input-addressed derivation with an input derivation");
        let i = sole_input(&d).expect("sole input");
        (d, i)
    }

    /// A derivation with input sources and no input derivations, with the fewest sources in its
    /// closure (then the smallest `.drv`).
    pub fn with_sources(&self) -> String {
        self.pick(
            |v| v.drv.input_drvs.is_empty() && !v.drv.input_srcs.is_empty(),
            |v| (self.source_closure(&[&v.path]).len(), v.bytes.len()),
        )
        .expect("a derivation with input sources and no input derivations")
    }

    /// The derivation with the most sources in its closure (then the fewest derivations).
    pub fn most_sources(&self) -> String {
        self.pick(
            |v| !self.source_closure(&[&v.path]).is_empty(),
            |v| (std::cmp::Reverse(self.source_closure(&[&v.path]).len()), self.closure(&v.path).len()),
        )
        .expect("a derivation with input sources")
    }

    /// A derivation with no input derivations whose sources include one that another of its
    /// sources refers to (fewest sources first), and that referenced source.
    pub fn source_with_referrer(&self) -> (String, String) {
        let referenced = |d: &str| {
            let srcs = self.source_closure(&[d]);
            srcs.iter().find(|s| srcs.iter().any(|r| r != *s && self.nars[r].references.contains(s))).cloned()
        };
        let d = self
            .pick(
                |v| v.drv.input_drvs.is_empty() && referenced(&v.path).is_some(),
                |v| self.source_closure(&[&v.path]).len(),
            )
            .expect("a derivation with a source that refers to another source");
        let s = referenced(&d).expect("referenced source");
        (d, s)
    }

    /// The NAR vector row of a store path (an output or a source).
    pub fn nar(&self, path: &str) -> &NarRow {
        self.nars.get(path).unwrap_or_else(|| panic!("no NAR vector for {path}"))
    }
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

/// The key of the node the acceptance tests pretend to be (its builds count as built).
pub fn node_key() -> buildmesh_protocol::identity::NodeKey {
    buildmesh_protocol::identity::NodeKey::from_seed("submit-test", [9; 32]).expect("key")
}

pub fn context(store: &Store, limits: SubmitLimits) -> SubmitContext {
    SubmitContext {
        store: store.clone(),
        store_dir: sd(),
        limits,
        wake: Arc::new(tokio::sync::Notify::new()),
        submitters: Default::default(),
        trust: buildmesh::trust::standalone(node_key().node_id()),
    }
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
