//! Collecting what a submission uploads: the requested derivations, the `.drv` files of every
//! input derivation (transitively), and the NARs of every input source with its references
//! (transitively).
//!
//! Two places to find them:
//! - **The local Nix store** (default): `.drv` files are read from `<store dir>/<basename>`;
//!   the sources' closure and registration (NarHash, NarSize, references) come from
//!   `nix-store --query --requisites` and `nix-store --dump-db`, and their NARs are dumped from
//!   the store directory on the fly ([`crate::nar_fs::dump_path`], byte-identical to
//!   `nix-store --dump`).
//! - **A directory** (`--from DIR`): every `*.drv` file of DIR is indexed by its *computed* store
//!   path, whatever the file is called. Sources come from source directories (`--sources DIR`,
//!   repeatable; default: DIR and `DIR/../nar` when it exists). In a source directory,
//!   - `index.tsv` (the test vectors' format: `name`, `store path`, `sha256:<nix32>` NarHash,
//!     NarSize, comma-joined references; `#` lines are comments) names `<name>.nar` files (an
//!     `index.tsv` whose first line is a `#` header without `nar_hash` is another kind of
//!     index and is ignored);
//!   - any other `<hash>-<name>.nar` file is the NAR of `<store dir>/<hash>-<name>`: its NarHash
//!     is computed, and its references are found by scanning it for the hash parts of every
//!     other source known in the source directories (as Nix scans outputs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use buildmesh_protocol::derivation::{Derivation, DrvError, MAX_DRV_SIZE};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use sha2::Digest as _;
use thiserror::Error;

use crate::build::refscan::RefScanner;

/// Why a closure could not be collected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClosureError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A `.drv` file is not a usable derivation.
    #[error("{}: {error}", file.display())]
    BadDrv {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        error: DrvError,
    },
    /// A `.drv` file is larger than [`MAX_DRV_SIZE`].
    #[error("{}: {size} bytes is more than the {MAX_DRV_SIZE}-byte limit for a derivation", file.display())]
    DrvTooLarge {
        /// The file.
        file: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A command-line argument names no derivation that can be found.
    #[error("{arg}: {reason}")]
    BadArgument {
        /// The argument.
        arg: String,
        /// Why.
        reason: String,
    },
    /// A `.drv` in the local store has other contents than its path says.
    #[error("{}: its contents have store path {computed}", file.display())]
    DrvPathMismatch {
        /// The file.
        file: PathBuf,
        /// The computed path.
        computed: String,
    },
    /// An input derivation was not found.
    #[error("{drv} needs input derivation {input}, which is not in {searched}")]
    MissingInputDrv {
        /// The derivation needing it.
        drv: String,
        /// The input.
        input: String,
        /// Where it was looked for.
        searched: String,
    },
    /// An input source (or a reference of one) was not found.
    #[error("{needed_by} needs source {path}, which is not in {searched}")]
    MissingSource {
        /// The derivation or source needing it.
        needed_by: String,
        /// The source.
        path: String,
        /// Where it was looked for.
        searched: String,
    },
    /// A source index file has a bad line.
    #[error("{}:{line}: {reason}", file.display())]
    BadIndex {
        /// The index file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A NAR file does not have the size its index says.
    #[error("{}: {actual} bytes, the index says NarSize {expected}", file.display())]
    NarSizeMismatch {
        /// The NAR file.
        file: PathBuf,
        /// From the index.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// Querying the local Nix store failed.
    #[error("`{command}` failed: {reason}")]
    NixStore {
        /// The command run.
        command: String,
        /// Its stderr or the spawn error.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClosureError + 'a {
    move |source| ClosureError::Io { op, path: path.to_path_buf(), source }
}

/// Where a source's NAR bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarOrigin {
    /// A NAR file.
    File(PathBuf),
    /// A filesystem tree to serialise (a path in the local Nix store).
    Dump(PathBuf),
}

/// One input source to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceItem {
    /// Its store path.
    pub path: StorePath,
    /// NarHash (SHA-256).
    pub nar_hash: NixHash,
    /// NarSize.
    pub nar_size: u64,
    /// References (may include itself).
    pub references: BTreeSet<StorePath>,
    /// Where the NAR comes from.
    pub origin: NarOrigin,
}

/// Everything one submission uploads.
#[derive(Debug, Clone)]
pub struct Closure {
    /// The store directory of every path.
    pub store_dir: StoreDir,
    /// The requested derivations, in argument order, without duplicates.
    pub requested: Vec<StorePath>,
    /// Every derivation of the closure: its ATerm bytes.
    pub drvs: BTreeMap<StorePath, Vec<u8>>,
    /// Every derivation's input derivations.
    pub inputs: BTreeMap<StorePath, BTreeSet<StorePath>>,
    /// Every input source (and, transitively, their references).
    pub sources: BTreeMap<StorePath, SourceItem>,
}

impl Closure {
    /// The derivations `drv` depends on, transitively (without `drv`).
    pub fn inputs_closure(&self, drv: &StorePath) -> BTreeSet<StorePath> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&StorePath> = self.inputs.get(drv).map(|s| s.iter().collect()).unwrap_or_default();
        while let Some(p) = stack.pop() {
            if seen.insert(p.clone())
                && let Some(next) = self.inputs.get(p)
            {
                stack.extend(next.iter());
            }
        }
        seen
    }

    /// Total bytes of `.drv` files and NARs.
    pub fn payload_bytes(&self) -> u64 {
        self.drvs.values().map(|b| b.len() as u64).sum::<u64>() + self.sources.values().map(|s| s.nar_size).sum::<u64>()
    }
}

/// Where to look for derivations and sources.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The local Nix store (its directory is the store dir).
    LocalStore,
    /// A directory of `.drv` files, and source directories.
    Directory {
        /// The `.drv` directory.
        dir: PathBuf,
        /// Source directories (empty = DIR and `DIR/../nar`).
        sources: Vec<PathBuf>,
    },
}

/// Read a `.drv` file (at most [`MAX_DRV_SIZE`] bytes) and parse it; returns bytes, name and
/// derivation.
fn load_drv_file(file: &Path, sd: &StoreDir) -> Result<(Vec<u8>, String, Derivation), ClosureError> {
    let size = std::fs::metadata(file).map_err(io_err("stat", file))?.len();
    if size > MAX_DRV_SIZE as u64 {
        return Err(ClosureError::DrvTooLarge { file: file.to_path_buf(), size });
    }
    let bytes = std::fs::read(file).map_err(io_err("read", file))?;
    let bad = |error| ClosureError::BadDrv { file: file.to_path_buf(), error };
    let drv = Derivation::parse(&bytes, sd).map_err(bad)?;
    let name = drv.name().map_err(bad)?;
    Ok((bytes, name, drv))
}

/// A `.drv` file's bytes and parsed form.
type LoadedDrv = (Vec<u8>, Derivation);
/// One `nix-store --dump-db` record: path, NarHash, NarSize, references.
type DbRecord = (StorePath, NixHash, u64, BTreeSet<StorePath>);

/// Derivations by computed store path, found on demand.
trait DrvLookup {
    /// The bytes and parsed form of the `.drv` with this store path, if it can be found.
    fn get(&mut self, path: &StorePath) -> Result<Option<LoadedDrv>, ClosureError>;
    /// Where it looks (for error messages).
    fn describe(&self) -> String;
}

struct LocalDrvs {
    sd: StoreDir,
}

impl DrvLookup for LocalDrvs {
    fn get(&mut self, path: &StorePath) -> Result<Option<LoadedDrv>, ClosureError> {
        let file = PathBuf::from(self.sd.display(path));
        if !file.is_file() {
            return Ok(None);
        }
        let (bytes, name, drv) = load_drv_file(&file, &self.sd)?;
        let computed =
            drv.drv_path(&self.sd, &name).map_err(|error| ClosureError::BadDrv { file: file.clone(), error })?;
        if &computed != path {
            return Err(ClosureError::DrvPathMismatch { file, computed: self.sd.display(&computed) });
        }
        Ok(Some((bytes, drv)))
    }

    fn describe(&self) -> String {
        format!("the local store {}", self.sd)
    }
}

struct DirDrvs {
    dir: PathBuf,
    files: BTreeMap<StorePath, LoadedDrv>,
    unusable: Vec<String>,
}

impl DirDrvs {
    fn scan(dir: &Path, sd: &StoreDir) -> Result<DirDrvs, ClosureError> {
        let mut files = BTreeMap::new();
        let mut unusable = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "drv") && p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            let loaded = load_drv_file(&p, sd).and_then(|(bytes, name, drv)| {
                let path = drv.drv_path(sd, &name).map_err(|error| ClosureError::BadDrv { file: p.clone(), error })?;
                Ok((path, bytes, drv))
            });
            match loaded {
                Ok((path, bytes, drv)) => {
                    files.entry(path).or_insert((bytes, drv));
                }
                Err(e) => {
                    tracing::debug!(file = %p.display(), cause = %e, "skipping unusable .drv file");
                    unusable.push(e.to_string());
                }
            }
        }
        Ok(DirDrvs { dir: dir.to_path_buf(), files, unusable })
    }
}

impl DrvLookup for DirDrvs {
    fn get(&mut self, path: &StorePath) -> Result<Option<LoadedDrv>, ClosureError> {
        Ok(self.files.get(path).cloned())
    }

    fn describe(&self) -> String {
        let mut s = format!("{} ({} usable .drv files", self.dir.display(), self.files.len());
        if !self.unusable.is_empty() {
            s.push_str(&format!("; {} unusable: {}", self.unusable.len(), self.unusable.join("; ")));
        }
        s.push(')');
        s
    }
}

/// Resolve the command-line arguments (`.drv` files or store paths) and collect the closure.
pub fn collect(args: &[String], origin: &Origin, sd: &StoreDir) -> Result<Closure, ClosureError> {
    let mut lookup: Box<dyn DrvLookup> = match origin {
        Origin::LocalStore => Box::new(LocalDrvs { sd: sd.clone() }),
        Origin::Directory { dir, .. } => Box::new(DirDrvs::scan(dir, sd)?),
    };
    let mut closure = Closure {
        store_dir: sd.clone(),
        requested: Vec::new(),
        drvs: BTreeMap::new(),
        inputs: BTreeMap::new(),
        sources: BTreeMap::new(),
    };
    let mut parsed: BTreeMap<StorePath, Derivation> = BTreeMap::new();
    for arg in args {
        let (path, found) = resolve_arg(arg, sd, lookup.as_mut())?;
        if let Some((bytes, drv)) = found {
            closure.drvs.insert(path.clone(), bytes);
            parsed.insert(path.clone(), drv);
        }
        if !closure.requested.contains(&path) {
            closure.requested.push(path);
        }
    }
    // Input derivations, transitively.
    let mut stack: Vec<StorePath> = parsed.keys().cloned().collect();
    while let Some(p) = stack.pop() {
        let inputs: BTreeSet<StorePath> =
            parsed.get(&p).map(|d| d.input_drvs.keys().cloned().collect()).unwrap_or_default();
        for input in &inputs {
            if parsed.contains_key(input) {
                continue;
            }
            let Some((bytes, drv)) = lookup.get(input)? else {
                return Err(ClosureError::MissingInputDrv {
                    drv: sd.display(&p),
                    input: sd.display(input),
                    searched: lookup.describe(),
                });
            };
            closure.drvs.insert(input.clone(), bytes);
            parsed.insert(input.clone(), drv);
            stack.push(input.clone());
        }
        closure.inputs.insert(p, inputs);
    }
    // Input sources, with the derivation that first needs each.
    let mut wanted: BTreeMap<StorePath, StorePath> = BTreeMap::new();
    for (p, d) in &parsed {
        for s in &d.input_srcs {
            wanted.entry(s.clone()).or_insert_with(|| p.clone());
        }
    }
    closure.sources = match origin {
        Origin::LocalStore => local_sources(&wanted, sd)?,
        Origin::Directory { dir, sources } => {
            let dirs = if sources.is_empty() { default_source_dirs(dir) } else { sources.clone() };
            dir_sources(&wanted, sd, &dirs)?
        }
    };
    Ok(closure)
}

/// DIR and `DIR/../nar` (when it exists).
fn default_source_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(parent) = dir.parent() {
        let nar = parent.join("nar");
        if nar.is_dir() {
            dirs.push(nar);
        }
    }
    dirs
}

/// One argument: an existing `.drv` file, or a `.drv` store path (absolute or a base name).
fn resolve_arg(
    arg: &str,
    sd: &StoreDir,
    lookup: &mut dyn DrvLookup,
) -> Result<(StorePath, Option<LoadedDrv>), ClosureError> {
    let as_file = Path::new(arg);
    let in_store =
        sd.parse_path(arg).ok().or_else(|| (!arg.contains('/')).then(|| StorePath::from_basename(arg).ok()).flatten());
    if let Some(path) = in_store {
        if !path.is_derivation() {
            return Err(ClosureError::BadArgument {
                arg: arg.to_string(),
                reason: "not a .drv store path".to_string(),
            });
        }
        if let Some(found) = lookup.get(&path)? {
            return Ok((path, Some(found)));
        }
        if !as_file.is_file() {
            return Err(ClosureError::BadArgument {
                arg: arg.to_string(),
                reason: format!("no such derivation in {}", lookup.describe()),
            });
        }
    }
    if as_file.is_file() {
        let (bytes, name, drv) = load_drv_file(as_file, sd)?;
        let path =
            drv.drv_path(sd, &name).map_err(|error| ClosureError::BadDrv { file: as_file.to_path_buf(), error })?;
        return Ok((path, Some((bytes, drv))));
    }
    Err(ClosureError::BadArgument {
        arg: arg.to_string(),
        reason: format!("neither a .drv file nor a derivation store path in {sd}"),
    })
}

// ---- sources from the local Nix store ----

fn run_nix_store(args: &[String]) -> Result<String, ClosureError> {
    let command = format!("nix-store {}", args.iter().take(3).cloned().collect::<Vec<_>>().join(" "));
    let out = Command::new("nix-store")
        .args(args)
        .output()
        .map_err(|e| ClosureError::NixStore { command: command.clone(), reason: e.to_string() })?;
    if !out.status.success() {
        return Err(ClosureError::NixStore {
            command,
            reason: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| ClosureError::NixStore { command, reason: "output is not UTF-8".into() })
}

/// Paths per `nix-store` invocation (keeps the command line well under ARG_MAX).
const NIX_STORE_BATCH: usize = 1000;

fn local_sources(
    wanted: &BTreeMap<StorePath, StorePath>,
    sd: &StoreDir,
) -> Result<BTreeMap<StorePath, SourceItem>, ClosureError> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    for (src, needed_by) in wanted {
        if !Path::new(&sd.display(src)).exists() {
            return Err(ClosureError::MissingSource {
                needed_by: sd.display(needed_by),
                path: sd.display(src),
                searched: format!("the local store {sd}"),
            });
        }
    }
    let srcs: Vec<String> = wanted.keys().map(|p| sd.display(p)).collect();
    let mut all: BTreeSet<String> = BTreeSet::new();
    for batch in srcs.chunks(NIX_STORE_BATCH) {
        let mut args = vec!["--query".to_string(), "--requisites".to_string()];
        args.extend(batch.iter().cloned());
        all.extend(run_nix_store(&args)?.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    let all: Vec<String> = all.into_iter().collect();
    for batch in all.chunks(NIX_STORE_BATCH) {
        let mut args = vec!["--dump-db".to_string()];
        args.extend(batch.iter().cloned());
        let text = run_nix_store(&args)?;
        for item in parse_dump_db(&text, sd)? {
            let origin = NarOrigin::Dump(PathBuf::from(sd.display(&item.0)));
            out.insert(
                item.0.clone(),
                SourceItem { path: item.0, nar_hash: item.1, nar_size: item.2, references: item.3, origin },
            );
        }
    }
    Ok(out)
}

/// Parse `nix-store --dump-db` output: per path the lines `path`, NarHash (hex SHA-256),
/// NarSize, deriver (may be empty), reference count, then one reference per line.
fn parse_dump_db(text: &str, sd: &StoreDir) -> Result<Vec<DbRecord>, ClosureError> {
    let bad = |reason: String| ClosureError::NixStore { command: "nix-store --dump-db".into(), reason };
    let mut lines = text.lines();
    let mut out = Vec::new();
    while let Some(path) = lines.next() {
        if path.is_empty() {
            continue;
        }
        let mut next = |what: &str| lines.next().ok_or_else(|| bad(format!("output ends before the {what} of {path}")));
        let path_p = sd.parse_path(path).map_err(|e| bad(e.to_string()))?;
        let hash_line = next("NarHash")?;
        let nar_hash = NixHash::parse(hash_line, Some(HashAlgo::Sha256)).map_err(|e| bad(format!("{path}: {e}")))?;
        let nar_size: u64 = next("NarSize")?.parse().map_err(|e| bad(format!("{path}: NarSize: {e}")))?;
        let _deriver = next("deriver")?;
        let n: usize = next("reference count")?.parse().map_err(|e| bad(format!("{path}: reference count: {e}")))?;
        let mut refs = BTreeSet::new();
        for _ in 0..n {
            let r = next("references")?;
            refs.insert(sd.parse_path(r).map_err(|e| bad(e.to_string()))?);
        }
        out.push((path_p, nar_hash, nar_size, refs));
    }
    Ok(out)
}

// ---- sources from directories ----

/// What a source directory offers for one path.
#[derive(Debug, Clone)]
enum CatalogEntry {
    /// From `index.tsv`: everything known.
    Indexed { file: PathBuf, nar_hash: NixHash, nar_size: u64, references: BTreeSet<StorePath> },
    /// A `<basename>.nar` file: hash and references computed when needed.
    Named { file: PathBuf },
}

fn read_index(dir: &Path, sd: &StoreDir, catalog: &mut BTreeMap<StorePath, CatalogEntry>) -> Result<(), ClosureError> {
    let file = dir.join("index.tsv");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &file)(e)),
    };
    // Another kind of index (e.g. the vectors' drv/index.tsv: name, drv path, output, path).
    if let Some(first) = text.lines().next()
        && first.starts_with('#')
        && !first.contains("nar_hash")
    {
        tracing::debug!(file = %file.display(), "index.tsv has no nar_hash column; not a NAR index");
        return Ok(());
    }
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ClosureError::BadIndex { file: file.clone(), line: i + 1, reason };
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 4 {
            return Err(bad(format!(
                "expected name, store path, NarHash, NarSize, references; got {} fields",
                cols.len()
            )));
        }
        let path = sd.parse_path(cols[1]).map_err(|e| bad(e.to_string()))?;
        let nar_hash = NixHash::parse(cols[2], None).map_err(|e| bad(e.to_string()))?;
        let nar_size: u64 = cols[3].parse().map_err(|e| bad(format!("NarSize: {e}")))?;
        let references = cols
            .get(4)
            .map(|r| {
                r.split(',').filter(|s| !s.is_empty()).map(|s| sd.parse_path(s)).collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_default();
        let nar_file = dir.join(format!("{}.nar", cols[0]));
        if nar_file.is_file() {
            catalog.entry(path).or_insert(CatalogEntry::Indexed { file: nar_file, nar_hash, nar_size, references });
        }
    }
    Ok(())
}

fn read_named(dir: &Path, catalog: &mut BTreeMap<StorePath, CatalogEntry>) -> Result<(), ClosureError> {
    let entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
    for e in entries.flatten() {
        let file = e.path();
        let Some(stem) = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".nar")) else {
            continue;
        };
        if let Ok(path) = StorePath::from_basename(stem) {
            catalog.entry(path).or_insert(CatalogEntry::Named { file });
        }
    }
    Ok(())
}

fn dir_sources(
    wanted: &BTreeMap<StorePath, StorePath>,
    sd: &StoreDir,
    dirs: &[PathBuf],
) -> Result<BTreeMap<StorePath, SourceItem>, ClosureError> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut catalog = BTreeMap::new();
    for d in dirs {
        read_index(d, sd, &mut catalog)?;
    }
    for d in dirs {
        if d.is_dir() {
            read_named(d, &mut catalog)?;
        }
    }
    let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let all_known: Vec<String> = catalog.keys().map(|p| p.to_string()).collect();
    let mut stack: Vec<(StorePath, String)> = wanted.iter().map(|(s, by)| (s.clone(), sd.display(by))).collect();
    while let Some((p, needed_by)) = stack.pop() {
        if out.contains_key(&p) {
            continue;
        }
        let Some(entry) = catalog.get(&p) else {
            return Err(ClosureError::MissingSource {
                needed_by,
                path: sd.display(&p),
                searched: format!("the source directories {searched}"),
            });
        };
        let item = match entry {
            CatalogEntry::Indexed { file, nar_hash, nar_size, references } => {
                let actual = std::fs::metadata(file).map_err(io_err("stat", file))?.len();
                if actual != *nar_size {
                    return Err(ClosureError::NarSizeMismatch { file: file.clone(), expected: *nar_size, actual });
                }
                SourceItem {
                    path: p.clone(),
                    nar_hash: nar_hash.clone(),
                    nar_size: *nar_size,
                    references: references.clone(),
                    origin: NarOrigin::File(file.clone()),
                }
            }
            CatalogEntry::Named { file } => hash_named_nar(&p, file, &all_known)?,
        };
        for r in &item.references {
            if r != &p {
                stack.push((r.clone(), sd.display(&p)));
            }
        }
        out.insert(p, item);
    }
    Ok(out)
}

/// NarHash, NarSize and references (hash parts of `candidates` found in it) of a NAR file.
fn hash_named_nar(path: &StorePath, file: &Path, candidates: &[String]) -> Result<SourceItem, ClosureError> {
    let mut scanner = RefScanner::new(candidates.iter()).map_err(|e| ClosureError::BadIndex {
        file: file.to_path_buf(),
        line: 0,
        reason: e.to_string(),
    })?;
    let mut f = File::open(file).map_err(io_err("open", file))?;
    let mut sha = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", file))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        scanner.feed(&buf[..n]);
        size += n as u64;
    }
    let references = scanner.finish().iter().filter_map(|r| StorePath::from_basename(r).ok()).collect();
    Ok(SourceItem {
        path: path.clone(),
        nar_hash: NixHash::sha256(sha.finalize().into()),
        nar_size: size,
        references,
        origin: NarOrigin::File(file.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_db_is_parsed() {
        let sd = StoreDir::nix();
        let text = "/nix/store/igvy19nxgizlrkcsfpdw0mc2icvjnd0n-tiny-builder.sh\n\
                    a10fe5f02b49bad1e49d90ae484a182c88c8b5d0c4e54158edfc61eb9f43098e\n128\n\n0\n\
                    /nix/store/mxqzvrna31vd5ir04shdypdd7kwzp99m-tiny.drv\n\
                    f882ce784cee47e088be4ede5494d8e141617e2e799115d1f78de96c8db07823\n472\n\n1\n\
                    /nix/store/igvy19nxgizlrkcsfpdw0mc2icvjnd0n-tiny-builder.sh\n";
        let items = parse_dump_db(text, &sd).expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.name(), "tiny-builder.sh");
        assert_eq!(items[0].2, 128);
        assert!(items[0].3.is_empty());
        assert_eq!(items[1].3.iter().next().map(|p| p.name()), Some("tiny-builder.sh"));
        assert_eq!(items[0].1.to_hex(), "a10fe5f02b49bad1e49d90ae484a182c88c8b5d0c4e54158edfc61eb9f43098e");
        let truncated = &text[..text.len() - 60];
        assert!(parse_dump_db(truncated, &sd).is_err());
    }
}
