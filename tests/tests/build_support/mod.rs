//! Shared by `build_local.rs` and `build_nix.rs`: the Nix vectors loaded into a node store, and
//! ad-hoc derivations for failure cases.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use buildmesh::build::{BuildRequest, ExecutorConfig};
use buildmesh::store::{PathInfo, Store};
use buildmesh_protocol::derivation::{CaMethod, Derivation, Output, OutputHash};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

pub fn vectors() -> PathBuf {
    buildmesh_tests::nix_vectors()
}

pub use buildmesh_tests::tsv;

pub fn sd() -> StoreDir {
    StoreDir::nix()
}

pub fn path(s: &str) -> StorePath {
    sd().parse_path(s).unwrap()
}

/// One row of nar/index.tsv.
#[derive(Debug, Clone)]
pub struct NarRow {
    pub name: String,
    pub path: StorePath,
    pub nar_hash: NixHash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
}

/// The public vectors: derivations by path and name, recorded NARs.
pub struct Vectors {
    /// drv path -> (name, parsed derivation)
    pub drvs: BTreeMap<StorePath, (String, Derivation)>,
    /// name -> drv path
    pub by_name: BTreeMap<String, StorePath>,
    /// store path -> recorded NAR (twins share a path; the first row is kept)
    pub nars: HashMap<StorePath, NarRow>,
    /// input sources (nar/src.*)
    pub sources: Vec<NarRow>,
}

impl Vectors {
    pub fn load() -> Vectors {
        let mut drvs = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for r in tsv(&vectors().join("drv/index.tsv")) {
            let drv_path = path(&r[1]);
            if drvs.contains_key(&drv_path) {
                continue;
            }
            let bytes = std::fs::read(vectors().join(format!("drv/{}.drv", r[0]))).unwrap();
            let drv = Derivation::parse(&bytes, &sd()).unwrap();
            assert_eq!(drv.drv_path(&sd(), &drv.name().unwrap()).unwrap(), drv_path, "{}", r[0]);
            by_name.insert(r[0].clone(), drv_path.clone());
            drvs.insert(drv_path, (r[0].clone(), drv));
        }
        let mut nars = HashMap::new();
        let mut sources = Vec::new();
        for r in tsv(&vectors().join("nar/index.tsv")) {
            let row = NarRow {
                name: r[0].clone(),
                path: path(&r[1]),
                nar_hash: NixHash::parse(&r[2], None).unwrap(),
                nar_size: r[3].parse().unwrap(),
                references: r
                    .get(4)
                    .map_or("", |s| s.as_str())
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(path)
                    .collect(),
            };
            if row.name.starts_with("src.") {
                sources.push(row.clone());
            }
            nars.entry(row.path.clone()).or_insert(row);
        }
        Vectors { drvs, by_name, nars, sources }
    }

    /// Derivations whose every output has a recorded NAR (the deterministic ones).
    pub fn deterministic(&self) -> Vec<StorePath> {
        self.drvs
            .iter()
            .filter(|(_, (_, d))| {
                d.outputs.values().all(|o| o.path.as_ref().is_some_and(|p| self.nars.contains_key(p)))
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// `roots` after everything they depend on (input derivations first), each once.
    pub fn in_dependency_order(&self, roots: &[StorePath]) -> Vec<StorePath> {
        fn visit(v: &Vectors, p: &StorePath, seen: &mut BTreeSet<StorePath>, out: &mut Vec<StorePath>) {
            if !seen.insert(p.clone()) {
                return;
            }
            for input in v.drvs[p].1.input_drvs.keys() {
                visit(v, input, seen, out);
            }
            out.push(p.clone());
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in roots {
            visit(self, r, &mut seen, &mut out);
        }
        out
    }

    /// The CA line Nix recorded for `p` in narinfo/, if any.
    pub fn recorded_ca(&self, p: &StorePath) -> Option<String> {
        let text = std::fs::read_to_string(vectors().join(format!("narinfo/{}.narinfo", p.hash_part()))).ok()?;
        text.lines().find_map(|l| l.strip_prefix("CA: ").map(str::to_string))
    }

    /// Put every `.drv` and every input source into `store`, as a submission would.
    pub fn load_into(&self, store: &Store) {
        for (p, (name, _)) in &self.drvs {
            let bytes = std::fs::read(vectors().join(format!("drv/{name}.drv"))).unwrap();
            store.put_drv(p, &bytes).unwrap();
        }
        for row in &self.sources {
            let nar = std::fs::File::open(vectors().join(format!("nar/{}.nar", row.name))).unwrap();
            let blob = store.put_nar(&mut std::io::BufReader::new(nar)).unwrap();
            assert_eq!((&blob.nar_hash, blob.nar_size), (&row.nar_hash, row.nar_size), "{}", row.name);
            store
                .register_path(&PathInfo {
                    path: row.path.clone(),
                    nar_hash: blob.nar_hash,
                    nar_size: blob.nar_size,
                    references: row.references.clone(),
                    deriver: None,
                    ca: self.recorded_ca(&row.path),
                    blob: blob.blake3,
                    registered_at: 1,
                })
                .unwrap();
        }
    }
}

pub fn request(drv_path: &StorePath, drv: &Derivation) -> BuildRequest {
    BuildRequest {
        drv_path: drv_path.clone(),
        drv: drv.clone(),
        attempt: 1,
        timeout: Some(Duration::from_secs(120)),
        max_log_bytes: 1 << 20,
    }
}

/// A node data dir with a store and an executor config (cores 1, test sandbox helper).
pub struct Node {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Node { dir, store }
    }

    pub fn config(&self) -> ExecutorConfig {
        let mut c = ExecutorConfig::new(self.store.clone(), self.dir.path(), sd()).unwrap();
        c.cores = 1;
        c.sandbox_helper = Some(PathBuf::from(buildmesh_tests::buildmesh_bin!()));
        c.kill_grace = Duration::from_millis(300);
        c
    }

    pub fn builds_dir_entries(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("builds")).map(|d| d.count()).unwrap_or(0)
    }
}

/// A `/bin/sh -c SCRIPT` derivation named `name` (PATH=/usr/bin:/bin), optionally fixed-output,
/// with the given inputs; its paths computed with the protocol crate and its `.drv` stored.
pub fn make_drv(
    store: &Store,
    name: &str,
    script: &str,
    fixed: Option<(CaMethod, NixHash)>,
    input_srcs: &[StorePath],
    input_drvs: &[(StorePath, &str)],
) -> (StorePath, Derivation) {
    let mut env: BTreeMap<Vec<u8>, Vec<u8>> =
        [("builder", "/bin/sh"), ("name", name), ("system", "x86_64-linux"), ("PATH", "/usr/bin:/bin")]
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
    env.insert(b"out".to_vec(), Vec::new());
    let hash = match fixed {
        Some((method, hash)) => {
            env.insert(b"outputHash".to_vec(), hash.to_string().into_bytes());
            env.insert(
                b"outputHashMode".to_vec(),
                if method == CaMethod::Nar { b"recursive".to_vec() } else { b"flat".to_vec() },
            );
            OutputHash::Fixed { method, hash }
        }
        None => OutputHash::None,
    };
    let mut drv = Derivation {
        outputs: BTreeMap::from([("out".to_string(), Output { path: None, hash })]),
        input_drvs: input_drvs.iter().map(|(p, o)| (p.clone(), BTreeSet::from([o.to_string()]))).fold(
            BTreeMap::new(),
            |mut m: BTreeMap<StorePath, BTreeSet<String>>, (p, o)| {
                m.entry(p).or_default().extend(o);
                m
            },
        ),
        input_srcs: input_srcs.iter().cloned().collect(),
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), script.as_bytes().to_vec()],
        env,
    };
    // Input derivations resolve through the store (hashDerivationModulo of each input).
    let mut set = buildmesh_protocol::derivation::DrvSet::new(sd());
    let mut todo: Vec<StorePath> = drv.input_drvs.keys().cloned().collect();
    while let Some(p) = todo.pop() {
        let bytes = store.get_drv(&p).unwrap().unwrap();
        let d = Derivation::parse(&bytes, &sd()).unwrap();
        todo.extend(d.input_drvs.keys().cloned());
        set.insert(d.name().unwrap(), d).unwrap();
    }
    set.fill_in(&mut drv, name).unwrap();
    let drv_path = drv.drv_path(&sd(), name).unwrap();
    store.put_drv(&drv_path, &drv.to_aterm(&sd())).unwrap();
    (drv_path, drv)
}

/// sha256 of `data` as a NixHash.
pub fn sha256(data: &[u8]) -> NixHash {
    NixHash::sha256_of(data)
}
