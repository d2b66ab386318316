//! `buildmesh drv ...`: show a derivation with computed paths, and a parse/path benchmark.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use buildmesh_protocol::derivation::{Derivation, DrvError, DrvSet, MAX_DRV_SIZE};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use clap::Subcommand;

use crate::nar_fs::thread_cpu;

/// `buildmesh drv` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a .drv file as `nix show-derivation` (Nix 2.8) JSON. The drv path and the output
    /// paths are computed, never copied: empty output paths are filled in, and a recorded path
    /// that differs from the computed one is an error naming the output and both paths.
    Show {
        /// The .drv file (ATerm).
        file: PathBuf,
        /// Directory whose .drv files (any file name) provide the input derivations; default:
        /// the directory of FILE.
        #[arg(long, value_name = "DIR")]
        inputs: Option<PathBuf>,
        /// The store directory the derivation's paths live in.
        #[arg(long, value_name = "DIR", default_value = "/nix/store")]
        store_dir: String,
        /// The derivation name (default: env `name`, or `"name"` in `__json`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Measure parsing plus drv path and output path computation (build with --release).
    Bench {
        /// How many derivations to process (the vector files are repeated).
        #[arg(long, default_value_t = 200_000)]
        count: usize,
        /// Directory of .drv files to use (default: the repository's Nix vectors).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The store directory the derivations' paths live in.
        #[arg(long, value_name = "DIR", default_value = "/nix/store")]
        store_dir: String,
    },
}

/// Run a `buildmesh drv` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Show { file, inputs, store_dir, name } => {
            let sd = StoreDir::new(&store_dir)?;
            let json = show(&file, inputs.as_deref(), &sd, name.as_deref())?;
            let mut out = std::io::stdout().lock();
            out.write_all(&json)?;
            out.flush()?;
            Ok(())
        }
        Command::Bench { count, dir, store_dir } => {
            let sd = StoreDir::new(&store_dir)?;
            let dir = dir.unwrap_or_else(default_bench_dir);
            let report = bench(&dir, &sd, count)?;
            print!("{report}");
            Ok(())
        }
    }
}

/// Read a file of at most [`MAX_DRV_SIZE`] bytes.
fn read_drv_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    if len > MAX_DRV_SIZE as u64 {
        bail!("{}: {len} bytes is more than the {MAX_DRV_SIZE}-byte limit for a derivation", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Parse a .drv file and work out its name.
fn load(path: &Path, sd: &StoreDir, name: Option<&str>) -> anyhow::Result<(String, Derivation)> {
    let bytes = read_drv_file(path)?;
    let drv = Derivation::parse(&bytes, sd).with_context(|| format!("{}: not a valid derivation", path.display()))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => drv.name().map_err(|e| anyhow::anyhow!("{}: {e}; give the name with --name", path.display()))?,
    };
    Ok((name, drv))
}

/// Every .drv file in `dir` by its computed store path, and the files that could not be used.
struct InputIndex {
    set: DrvSet,
    files: BTreeMap<StorePath, PathBuf>,
    unusable: Vec<String>,
    dir: PathBuf,
}

impl InputIndex {
    fn scan(dir: &Path, sd: &StoreDir) -> anyhow::Result<InputIndex> {
        let mut idx =
            InputIndex { set: DrvSet::new(sd.clone()), files: BTreeMap::new(), unusable: Vec::new(), dir: dir.into() };
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading input directory {}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "drv") && p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            match load(&p, sd, None).and_then(|(name, drv)| Ok(idx.set.insert(name, drv)?)) {
                Ok(drv_path) => {
                    idx.files.insert(drv_path, p);
                }
                Err(e) => {
                    tracing::debug!(file = %p.display(), cause = %e, "skipping unusable .drv in the input directory");
                    idx.unusable.push(format!("{e:#}"));
                }
            }
        }
        Ok(idx)
    }

    fn file_of(&self, path: &str) -> Option<&Path> {
        self.files.iter().find(|(p, _)| self.set.store_dir().display(p) == path).map(|(_, f)| f.as_path())
    }

    /// Explain a computation error, naming the files of input derivations.
    fn explain(&self, e: &DrvError) -> String {
        match e {
            DrvError::InInput { input, error } => {
                let file = self.file_of(input).map(|f| format!(" (file {})", f.display())).unwrap_or_default();
                format!("in input derivation {input}{file}: {}", self.explain(error))
            }
            DrvError::MissingInput { path } => {
                let mut s = format!(
                    "input derivation {path} not found: no .drv file in {} has that store path ({} usable .drv files",
                    self.dir.display(),
                    self.files.len()
                );
                if !self.unusable.is_empty() {
                    s.push_str(&format!("; {} unusable: {}", self.unusable.len(), self.unusable.join("; ")));
                }
                s.push_str("); use --inputs DIR");
                s
            }
            other => other.to_string(),
        }
    }
}

/// `drv show`: the JSON bytes for `file`.
pub fn show(file: &Path, inputs: Option<&Path>, sd: &StoreDir, name: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let (name, mut drv) = load(file, sd, name)?;
    let dir = match inputs {
        Some(d) => d.to_path_buf(),
        None => match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let mut index = if drv.input_drvs.is_empty() {
        InputIndex { set: DrvSet::new(sd.clone()), files: BTreeMap::new(), unusable: Vec::new(), dir }
    } else {
        InputIndex::scan(&dir, sd)?
    };
    if let Err(e) = index.set.fill_in(&mut drv, &name) {
        bail!("{}: {}", file.display(), index.explain(&e));
    }
    let drv_path = drv.drv_path(sd, &name).with_context(|| format!("{}", file.display()))?;
    Ok(drv.to_show_json(&drv_path, sd))
}

fn default_bench_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/nix/drv"))
}

/// `drv bench`: run the three phases over the .drv files of `dir`, repeated up to `count`
/// derivations each, and return the table.
pub fn bench(dir: &Path, sd: &StoreDir, count: usize) -> anyhow::Result<String> {
    let mut corpus = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .collect();
    paths.sort();
    for p in paths {
        let bytes = read_drv_file(&p)?;
        // Only derivations that parse and have a name take part.
        if Derivation::parse(&bytes, sd).ok().and_then(|d| d.name().ok()).is_some() {
            corpus.push(bytes);
        }
    }
    if corpus.is_empty() {
        bail!("no usable .drv files in {}", dir.display());
    }
    let rounds = count.div_ceil(corpus.len()).max(1);
    let n = rounds * corpus.len();
    let bytes_total: usize = corpus.iter().map(Vec::len).sum::<usize>() * rounds;

    // Wall time and this thread's CPU time of each phase: on a machine shared with other work
    // the CPU time is what the code costs.
    let timer = || (Instant::now(), thread_cpu());
    let elapsed = |(t, c): (Instant, f64)| (t.elapsed().as_secs_f64(), thread_cpu() - c);

    // 1. parse only.
    let t = timer();
    let mut sink = 0usize;
    for _ in 0..rounds {
        for b in &corpus {
            sink += Derivation::parse(b, sd)?.outputs.len();
        }
    }
    let parse = elapsed(t);

    // 2. parse + name + own drv path.
    let t = timer();
    for _ in 0..rounds {
        for b in &corpus {
            let (_, _, path) = Derivation::parse_with_path(b, sd, None)?;
            sink += path.digest()[0] as usize;
        }
    }
    let drv_path = elapsed(t);

    // 3. parse + drv path + output paths (inputs resolved within the round, memoized).
    let t = timer();
    let mut unresolved = 0usize;
    let mut members = Vec::with_capacity(corpus.len());
    for _ in 0..rounds {
        let mut set = DrvSet::new(sd.clone());
        members.clear();
        for b in &corpus {
            members.push(set.insert_aterm(b, None)?);
        }
        for p in &members {
            match set.member_output_paths(p) {
                Ok(outs) => sink += outs.len(),
                Err(_) => unresolved += 1,
            }
        }
    }
    let full = elapsed(t);
    std::hint::black_box(sink);

    let mut s = String::new();
    s.push_str(&format!(
        "{} derivations ({} files x {rounds}, {:.0} bytes on average) from {}\n",
        n,
        corpus.len(),
        bytes_total as f64 / n as f64,
        dir.display()
    ));
    s.push_str(&format!(
        "{:<44} {:>10} {:>12} {:>9} {:>10} {:>14}\n",
        "phase", "seconds", "drv/s", "MB/s", "CPU s", "drv per CPU s"
    ));
    for (label, (secs, cpu)) in
        [("parse", parse), ("parse + drv path", drv_path), ("parse + drv path + output paths", full)]
    {
        s.push_str(&format!(
            "{label:<44} {secs:>10.3} {:>12.0} {:>9.1} {cpu:>10.3} {:>14.0}\n",
            n as f64 / secs,
            bytes_total as f64 / secs / 1e6,
            n as f64 / cpu.max(1e-9),
        ));
    }
    if unresolved > 0 {
        s.push_str(&format!(
            "note: {unresolved} output path computations failed (inputs missing from the directory)\n"
        ));
    }
    Ok(s)
}
