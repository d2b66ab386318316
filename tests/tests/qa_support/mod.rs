//! Helpers of the `qa_*` tests (issue 13): two revisions of the package set in
//! `tests/fixtures/qa/default.nix`, made by real `nix-instantiate` into a throwaway chroot store
//! (`--store local?root=DIR`: the `.drv` paths are ordinary `/nix/store` paths, the files land in
//! `DIR/nix/store`, which `buildmesh submit --from` and `buildmesh revision submit --from` read),
//! and the expectations the fixture's comment tabulates, as data.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::store_path::StoreDir;

/// `tests/fixtures/qa`: the Nix expression of the package set.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa")
}

/// One package (attribute) of a revision, as Nix instantiated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The attribute name in `default.nix` (equal to the package name).
    pub attr: String,
    /// `pname`.
    pub package: String,
    /// `version`.
    pub version: String,
    /// `system`.
    pub system: String,
    /// The `.drv` store path (`/nix/store/…-NAME.drv`).
    pub drv: String,
    /// Output name → output store path.
    pub outputs: BTreeMap<String, String>,
    /// The input derivations' `.drv` paths (from the `.drv` file, parsed by buildmesh).
    pub inputs: BTreeSet<String>,
}

/// One revision (`rev = 1 | 2`) of the package set.
#[derive(Debug, Clone)]
pub struct Revision {
    pub rev: u8,
    /// By package name.
    pub packages: BTreeMap<String, Package>,
}

impl Revision {
    /// The package `name` (panics when the revision has none).
    pub fn pkg(&self, name: &str) -> &Package {
        self.packages.get(name).unwrap_or_else(|| panic!("rev {} has no package {name}", self.rev))
    }

    /// Every `.drv` path of the revision (its jobs), sorted.
    pub fn drvs(&self) -> Vec<String> {
        self.packages.values().map(|p| p.drv.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// The package whose derivation is `drv`.
    pub fn by_drv(&self, drv: &str) -> Option<&Package> {
        self.packages.values().find(|p| p.drv == drv)
    }

    /// How many derivations of the revision's graph depend on `drv`, transitively (what the
    /// coverage report ranks root causes by). Every derivation of this fixture's closures is a
    /// job, so the graph is the packages' `.drv`s.
    pub fn dependents(&self, drv: &str) -> usize {
        self.packages.values().filter(|p| p.drv != drv && self.depends_on(&p.drv, drv)).count()
    }

    /// Whether `drv` depends on `input`, transitively.
    pub fn depends_on(&self, drv: &str, input: &str) -> bool {
        let mut todo = vec![drv.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(p) = self.by_drv(&d) else { continue };
            if p.inputs.contains(input) {
                return true;
            }
            todo.extend(p.inputs.iter().cloned());
        }
        false
    }
}

/// A throwaway Nix store (chroot store) that `nix-instantiate` writes the fixture's `.drv`
/// files into.
pub struct QaStore {
    /// The chroot: the files are under `ROOT/nix/store`.
    pub root: PathBuf,
    /// HOME and XDG dirs of the Nix commands (nothing of the caller's).
    home: PathBuf,
}

impl QaStore {
    /// A store under `dir` (created).
    pub fn new(dir: &Path) -> QaStore {
        let root = dir.join("root");
        let home = dir.join("home");
        std::fs::create_dir_all(&root).expect("chroot store dir");
        std::fs::create_dir_all(&home).expect("home dir");
        QaStore { root, home }
    }

    /// Where the `.drv` files are: the `--from DIR` of `buildmesh submit`.
    pub fn drv_dir(&self) -> PathBuf {
        self.root.join("nix/store")
    }

    fn nix_instantiate(&self, args: &[&str]) -> String {
        let store = format!("local?root={}", self.root.display());
        let out = Command::new("nix-instantiate")
            .arg("--store")
            .arg(&store)
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_PATH")
            .output()
            .expect("run nix-instantiate (scripts/test.sh installs nix-bin)");
        assert!(
            out.status.success(),
            "nix-instantiate {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 from nix-instantiate")
    }

    /// Instantiate revision `rev` with real `nix-instantiate`: the `.drv` paths it prints, each
    /// with the package, version, system and outputs the expression's `meta` gives, and the input
    /// derivations read from the `.drv` file by buildmesh's parser (which must compute the same
    /// `.drv` path as Nix).
    pub fn instantiate(&self, rev: u8) -> Revision {
        let fixture = fixture_dir();
        let fixture = fixture.to_str().expect("UTF-8 path");
        let rev_s = rev.to_string();
        let printed: BTreeSet<String> = self
            .nix_instantiate(&[fixture, "--arg", "rev", &rev_s])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let meta: serde_json::Value = serde_json::from_str(
            &self.nix_instantiate(&["--eval", "--strict", "--json", fixture, "-A", "meta", "--arg", "rev", &rev_s]),
        )
        .expect("nix-instantiate --json output");
        let sd = StoreDir::nix();
        let mut packages = BTreeMap::new();
        for (attr, m) in meta.as_object().expect("meta is an attribute set") {
            let s = |k: &str| m[k].as_str().unwrap_or_else(|| panic!("{attr}.{k} missing: {m}")).to_string();
            let drv = s("drvPath");
            let outputs: BTreeMap<String, String> = m["outputs"]
                .as_object()
                .expect("outputs")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("output path").to_string()))
                .collect();
            let file = self.root.join(drv.trim_start_matches('/'));
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let parsed = Derivation::parse(&bytes, &sd).unwrap_or_else(|e| panic!("{drv}: {e}"));
            let name = parsed.name().expect("drv name");
            assert_eq!(sd.display(&parsed.drv_path(&sd, &name).expect("drv path")), drv, "buildmesh and Nix disagree");
            let inputs = parsed.input_drvs.keys().map(|p| sd.display(p)).collect();
            let p = Package {
                attr: attr.clone(),
                package: s("pname"),
                version: s("version"),
                system: s("system"),
                drv,
                outputs,
                inputs,
            };
            assert_eq!(&p.package, attr, "the fixture names attributes after their packages");
            packages.insert(attr.clone(), p);
        }
        let from_meta: BTreeSet<String> = packages.values().map(|p| p.drv.clone()).collect();
        assert_eq!(printed, from_meta, "nix-instantiate printed other derivations than `meta` lists");
        Revision { rev, packages }
    }
}

/// A job's status at the end (every build the mesh can do is done), as the QA engine must say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Two trusted attestations that agree.
    Matching,
    /// Two trusted attestations that disagree (unreproducible).
    NotMatching,
    /// Given up (its builder exits 1 on two builders).
    Failed,
    /// An input derivation failed.
    Blocked,
    /// No member builds its system: nobody claims it.
    Queued,
}

impl End {
    /// The job's `status` string.
    pub fn status(self) -> &'static str {
        match self {
            End::Matching | End::NotMatching => "succeeded",
            End::Failed => "failed",
            End::Blocked => "blocked",
            End::Queued => "queued",
        }
    }

    /// The job's `verdict` string (succeeded jobs only).
    pub fn verdict(self) -> Option<&'static str> {
        match self {
            End::Matching => Some("matching"),
            End::NotMatching => Some("not-matching"),
            _ => None,
        }
    }

    /// Whether its outputs are substitutable under quorum 2 (built, and the builders agree).
    pub fn available(self) -> bool {
        self == End::Matching
    }
}

/// How each package of revision `rev` ends (the fixture's table).
pub fn expected_end(rev: u8, package: &str) -> End {
    use End::*;
    match (rev, package) {
        (_, "hello" | "lib" | "app" | "multi" | "oldpkg" | "newpkg") => Matching,
        (1, "broken" | "needs-broken" | "needs-broken-cli") => Matching,
        (2, "broken") => Failed,
        (2, "needs-broken" | "needs-broken-cli") => Blocked,
        (1, "fixed") => Failed,
        (2, "fixed") => Matching,
        (_, "stillfail") => Failed,
        (_, "needs-stillfail") => Blocked,
        (1, "stamp-a") | (2, "stamp-b") => Matching,
        (1, "stamp-b") | (2, "stamp-a") | (_, "unrepro") => NotMatching,
        (_, "darwin-tool") => Queued,
        _ => panic!("no expectation for {package} in rev {rev}"),
    }
}

/// compare(rev 1 → rev 2): package → (build_change, repro_change), for the packages in both.
pub const EXPECTED_CHANGES: &[(&str, &str, &str)] = &[
    ("hello", "still-working", "unchanged"),
    ("lib", "still-working", "unchanged"),
    ("app", "still-working", "unchanged"),
    ("multi", "still-working", "unchanged"),
    ("broken", "broken", "unknown"),
    ("needs-broken", "blocked", "unknown"),
    ("needs-broken-cli", "blocked", "unknown"),
    ("fixed", "fixed", "unknown"),
    ("stillfail", "still-failing", "unknown"),
    ("needs-stillfail", "blocked", "unknown"),
    ("stamp-a", "still-working", "newly-not-matching"),
    ("stamp-b", "still-working", "newly-matching"),
    ("unrepro", "still-working", "still-not-matching"),
    ("darwin-tool", "unknown", "unknown"),
];

/// Packages whose version differs between rev 1 and rev 2: (package, rev 1, rev 2).
pub const EXPECTED_VERSION_CHANGES: &[(&str, &str, &str)] = &[
    ("broken", "1.0", "2.0"),
    ("fixed", "1.0", "1.1"),
    ("lib", "1.0", "1.1"),
    ("stamp-a", "1.0", "1.1"),
    ("stamp-b", "1.0", "1.1"),
];

/// The system no node of the test mesh builds (natively or through binfmt_misc).
pub const FOREIGN_SYSTEM: &str = "aarch64-darwin";

/// Check that the two revisions have the shape the fixture's table assumes (which derivations
/// change, the edges, the systems, the outputs): the expectations above rest on it.
pub fn check_fixture_shape(r1: &Revision, r2: &Revision) {
    let names = |r: &Revision| r.packages.keys().cloned().collect::<BTreeSet<_>>();
    let only1: Vec<String> = names(r1).difference(&names(r2)).cloned().collect();
    let only2: Vec<String> = names(r2).difference(&names(r1)).cloned().collect();
    assert_eq!(only1, ["oldpkg"], "removed in rev 2");
    assert_eq!(only2, ["newpkg"], "new in rev 2");
    for (name, _, _) in EXPECTED_CHANGES {
        let (a, b) = (r1.pkg(name), r2.pkg(name));
        let same = ["hello", "multi", "stillfail", "needs-stillfail", "unrepro", "darwin-tool"].contains(name);
        assert_eq!(a.drv == b.drv, same, "{name}: {} vs {}", a.drv, b.drv);
        let changed = EXPECTED_VERSION_CHANGES.iter().find(|(p, _, _)| p == name);
        match changed {
            Some((_, v1, v2)) => assert_eq!((a.version.as_str(), b.version.as_str()), (*v1, *v2), "{name}"),
            None => assert_eq!(a.version, b.version, "{name}"),
        }
    }
    for r in [r1, r2] {
        for p in r.packages.values() {
            let want = if p.package == "darwin-tool" { FOREIGN_SYSTEM } else { "x86_64-linux" };
            assert_eq!(p.system, want, "{}", p.drv);
            assert!(p.drv.ends_with(&format!("-{}-{}.drv", p.package, p.version)), "{}", p.drv);
            let outs: Vec<&str> = p.outputs.keys().map(String::as_str).collect();
            assert_eq!(outs, if p.package == "multi" { vec!["dev", "out"] } else { vec!["out"] }, "{}", p.drv);
        }
        let edge = |from: &str, to: &str| {
            assert_eq!(r.pkg(from).inputs, BTreeSet::from([r.pkg(to).drv.clone()]), "rev {}: {from} → {to}", r.rev)
        };
        edge("app", "lib");
        edge("needs-broken", "broken");
        edge("needs-broken-cli", "needs-broken");
        edge("needs-stillfail", "stillfail");
        for p in ["hello", "lib", "multi", "broken", "fixed", "stillfail", "stamp-a", "stamp-b", "unrepro"] {
            assert!(r.pkg(p).inputs.is_empty(), "{p} has no inputs");
        }
    }
    // The dependents the coverage ranking of rev 2 rests on.
    assert_eq!(r2.dependents(&r2.pkg("broken").drv), 2);
    assert_eq!(r2.dependents(&r2.pkg("stillfail").drv), 1);
    assert_eq!(r2.dependents(&r2.pkg("lib").drv), 1);
    assert_eq!(r2.dependents(&r2.pkg("hello").drv), 0);
}

/// Every string inside a JSON value (keys excluded), for "does the answer name X" checks.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Whether some string inside `v` contains `needle`.
pub fn mentions(v: &serde_json::Value, needle: &str) -> bool {
    strings(v).iter().any(|s| s.contains(needle))
}

/// Every object inside `v` (at any depth) whose `key` is the string `value`.
pub fn objects_with<'a>(v: &'a serde_json::Value, key: &str, value: &str) -> Vec<&'a serde_json::Value> {
    let mut out = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, key: &str, value: &str, out: &mut Vec<&'a serde_json::Value>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, key, value, out)),
            serde_json::Value::Object(o) => {
                if o.get(key).and_then(|x| x.as_str()) == Some(value) {
                    out.push(v);
                }
                o.values().for_each(|x| walk(x, key, value, out));
            }
            _ => {}
        }
    }
    walk(v, key, value, &mut out);
    out
}
