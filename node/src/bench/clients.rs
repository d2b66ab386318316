//! Real Nix clients against each cache: `nix copy --from CACHE --to ROOT` and
//! `nix-store --store ROOT --realise --option substituters CACHE`, each into a fresh chroot store
//! `ROOT` with a fresh `HOME` (so no path and no narinfo is already known to the client: every
//! byte comes from the cache under test), timed by the wall clock, best of `--client-runs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

/// A binary cache under test.
pub(super) struct Cache {
    /// Its name in the table (`gateway`, `nginx`, or the `--against` URL).
    pub(super) name: String,
    /// Its base URL.
    pub(super) url: String,
    /// Public keys its narinfos are checked against; empty: signature checks off.
    pub(super) keys: Vec<String>,
}

/// A set of paths fetched in one client run.
pub(super) struct PathSet {
    /// Its name in the table (`1000 small`, `1 x 256 MiB`).
    pub(super) name: String,
    /// Full store paths.
    pub(super) paths: Vec<String>,
    /// The sum of their NAR sizes (what the client unpacks).
    pub(super) nar_bytes: u64,
}

/// The real Nix clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Client {
    /// `nix copy --from CACHE --to ROOT`.
    Copy,
    /// `nix-store --store ROOT --realise` with the cache as the only substituter.
    Realise,
}

impl Client {
    fn label(self) -> &'static str {
        match self {
            Client::Copy => "nix copy --from",
            Client::Realise => "nix-store --realise",
        }
    }
}

/// The client binaries and where their stores go.
pub(super) struct Clients {
    /// `nix`.
    pub(super) nix: PathBuf,
    /// `nix-store`.
    pub(super) nix_store: PathBuf,
    /// Scratch directory: each run's chroot store and `HOME` are made and removed here.
    pub(super) dir: PathBuf,
    /// Runs per measurement (the best is reported, with the spread).
    pub(super) runs: u32,
}

/// One measurement: a client fetching a path set from a cache.
pub(super) struct Row {
    set: usize,
    client: Client,
    cache: usize,
    /// Wall seconds of each run.
    secs: Vec<f64>,
}

impl Row {
    fn best(&self) -> f64 {
        self.secs.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn worst(&self) -> f64 {
        self.secs.iter().copied().fold(0.0, f64::max)
    }
}

/// Measure every client on every set from every cache.
pub(super) fn measure(c: &Clients, caches: &[Cache], sets: &[PathSet]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        for client in [Client::Copy, Client::Realise] {
            for (ci, cache) in caches.iter().enumerate() {
                let mut secs = Vec::new();
                for run in 0..c.runs.max(1) {
                    eprintln!("bench: {} of {} from {} (run {})", client.label(), set.name, cache.name, run + 1);
                    secs.push(run_once(c, cache, set, client)?);
                }
                rows.push(Row { set: si, client, cache: ci, secs });
            }
        }
    }
    Ok(rows)
}

/// One client run into a fresh store; returns its wall seconds.
fn run_once(c: &Clients, cache: &Cache, set: &PathSet, client: Client) -> anyhow::Result<f64> {
    let root = c.dir.join("client-root");
    let home = c.dir.join("client-home");
    for d in [&root, &home] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("remove {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let root_s = root.display().to_string();
    let mut cmd = match client {
        Client::Copy => {
            let mut cmd = Command::new(&c.nix);
            cmd.args(["--extra-experimental-features", "nix-command", "copy", "--from", &cache.url, "--to", &root_s]);
            if cache.keys.is_empty() {
                cmd.arg("--no-check-sigs");
            }
            cmd
        }
        Client::Realise => {
            let mut cmd = Command::new(&c.nix_store);
            cmd.args(["--store", &root_s, "--realise", "--option", "substituters", &cache.url]);
            if cache.keys.is_empty() {
                cmd.args(["--option", "require-sigs", "false"]);
            }
            cmd
        }
    };
    if !cache.keys.is_empty() {
        cmd.args(["--option", "trusted-public-keys", &cache.keys.join(" ")]);
    }
    cmd.args(["--option", "narinfo-cache-positive-ttl", "0", "--option", "narinfo-cache-negative-ttl", "0"])
        .args(&set.paths)
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("run {}", client.label()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} of {} from {} ({}) failed: {}",
            client.label(),
            set.name,
            cache.name,
            cache.url,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    check_fetched(&root, set).with_context(|| format!("{} from {}", client.label(), cache.url))?;
    std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    Ok(secs)
}

/// Every path of the set is now in the fresh store (so it came from the cache).
fn check_fetched(root: &Path, set: &PathSet) -> anyhow::Result<()> {
    for p in &set.paths {
        let inside = root.join(p.trim_start_matches('/'));
        if std::fs::symlink_metadata(&inside).is_err() {
            bail!("{p} is not in the client's fresh store {} after the run", root.display());
        }
    }
    Ok(())
}

/// The table: per set, client and cache, wall seconds, paths/s, NAR MB/s and the speed relative
/// to nginx; then the goals on the small paths.
pub(super) fn table(caches: &[Cache], sets: &[PathSet], rows: &[Row], runs: u32, nginx: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nreal Nix clients, each run into a fresh chroot store and HOME; best of {runs} run(s), spread in brackets\n"
    );
    let _ = writeln!(
        out,
        "| paths | client | cache | signatures | wall s | paths/s | NAR MB/s | speed vs nginx (>1: faster) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        let set = &sets[r.set];
        let cache = &caches[r.cache];
        let best = r.best();
        let reference = rows.iter().find(|o| o.set == r.set && o.client == r.client && o.cache == nginx);
        let vs = reference.map(|n| format!("{:.2}x", n.best() / best)).unwrap_or_else(|| "-".into());
        let spread = if r.secs.len() > 1 { format!(" ({:.2}-{:.2})", best, r.worst()) } else { String::new() };
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {:.2}{} | {:.0} | {:.2} | {} |",
            set.name,
            r.client.label(),
            cache.name,
            if cache.keys.is_empty() { "off" } else { "checked" },
            best,
            spread,
            set.paths.len() as f64 / best,
            set.nar_bytes as f64 / 1e6 / best,
            vs
        );
    }
    // Goals: the small set (the first), the gateway (cache 0) against nginx and every other cache.
    let _ = writeln!(out);
    for client in [Client::Copy, Client::Realise] {
        let find = |ci: usize| rows.iter().find(|r| r.set == 0 && r.client == client && r.cache == ci).map(Row::best);
        let Some(gw) = find(0) else { continue };
        for (ci, cache) in caches.iter().enumerate().skip(1) {
            let Some(other) = find(ci) else { continue };
            let met = if gw <= other * 1.05 { "met" } else { "MISSED" };
            let _ = writeln!(
                out,
                "goal: `{}` of {}: gateway {:.2} s vs {} {:.2} s, no slower (5% noise margin): {met}",
                client.label(),
                sets[0].name,
                gw,
                cache.name,
                other
            );
        }
    }
    out
}
