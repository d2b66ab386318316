//! `buildmesh bench gateway`: the binary-cache gateway side by side with nginx (and any other
//! cache given with `--against`), on loopback.
//!
//! 1. A fresh data dir gets `--paths` small store paths and one `--nar-mib` MiB path (a single
//!    file, half incompressible, half text-like: about 2:1 with zstd, like real closures). The
//!    paths are deterministic ([`populate`]): the same names and bytes on every run.
//! 2. A real `buildmesh node` process serves it; `nix copy --from http://… --to
//!    file://DIR?compression=none` (a real Nix client, checking our signatures) writes the same
//!    paths as a plain binary cache, which `nginx` serves as static files. With
//!    `--import-local ROOT` they are also copied into the Nix store at `ROOT` (`/` for the
//!    machine's own), so a cache serving a Nix store (harmonia) can serve them: see
//!    `scripts/bench-against-harmonia.sh`.
//! 3. `wrk` measures, against the gateway and nginx: narinfo requests/s (rotating over every
//!    small path) and NAR throughput of the big path (`.nar`; the gateway decompresses its zstd
//!    blob on the fly and checks its blake3; nginx uses sendfile), and the gateway's `.nar.zst`
//!    as stored.
//! 4. The node's RSS (`VmRSS` in `/proc/PID/status`) is read when idle, after the load, and the
//!    peak (`VmHWM`).
//! 5. Real Nix clients ([`clients`]): `nix copy --from` and `nix-store --realise` of the small
//!    paths and of the big one, from the gateway, nginx and every `--against` cache, each into a
//!    fresh store.
//!
//! Goals: narinfo ≥ 0.5× nginx, NAR streaming ≥ 1 GB/s, idle RSS ≤ 40 MiB; real clients fetch
//! the small paths no slower than from nginx or from any `--against` cache (harmonia).

mod clients;
pub mod narinfo;
mod pipeline;
mod populate;
mod procs;
mod wrk;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use buildmesh_protocol::store_path::StoreDir;
use clap::Args;

use clients::{Cache, Clients, PathSet};
use procs::{free_port, nix_copy, rss_kib, start_nginx, start_node, wait_http};
use wrk::{WrkResult, write_rotation_script};

/// Flags of `buildmesh bench gateway`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Seconds per wrk measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// wrk connections for the narinfo test.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk connections for the NAR test.
    #[arg(long, default_value_t = 4)]
    pub nar_connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Number of small paths (narinfo test, real clients).
    #[arg(long, default_value_t = 1000)]
    pub paths: u32,
    /// Size of the big path's NAR in MiB (throughput test, real clients).
    #[arg(long, default_value_t = 256)]
    pub nar_mib: u64,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// The nix binary (for `nix copy`).
    #[arg(long, default_value = "nix")]
    pub nix: PathBuf,
    /// The nix-store binary (for `nix-store --realise`).
    #[arg(long, default_value = "nix-store")]
    pub nix_store: PathBuf,
    /// Another binary cache to measure the real clients against (repeatable), as `URL` or
    /// `NAME=URL`, e.g. `harmonia=http://127.0.0.1:5000` serving the paths imported with
    /// `--import-local`.
    #[arg(long, value_name = "[NAME=]URL")]
    pub against: Vec<String>,
    /// A public key (`name:base64`) the `--against` caches sign with (repeatable); without one,
    /// the clients fetch from them with signature checks off (the table says so).
    #[arg(long, value_name = "KEY")]
    pub against_key: Vec<String>,
    /// Also copy the bench paths into the Nix store at ROOT (`/`: this machine's own store) so a
    /// cache serving that store can be given with `--against`.
    #[arg(long, value_name = "ROOT")]
    pub import_local: Option<PathBuf>,
    /// Runs of each real-client measurement (the best is reported, with the spread).
    #[arg(long, default_value_t = 3)]
    pub client_runs: u32,
    /// Skip the wrk measurements.
    #[arg(long)]
    pub no_wrk: bool,
    /// Skip the real-client measurements.
    #[arg(long)]
    pub no_clients: bool,
    /// The node's log filter (`BUILDMESH_LOG`); the log is `node.log` in the working directory
    /// (see `--keep`).
    #[arg(long, default_value = "warn")]
    pub node_log: String,
    /// Keep the working directory (printed) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Run the benchmark and print the tables.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("buildmesh-bench-").tempdir().context("create a temp dir")?;
    let dir = work.path().to_path_buf();
    eprintln!("bench: working in {}", dir.display());
    let store_dir = StoreDir::nix();

    // 1. The data dir.
    let data = dir.join("data");
    let t = Instant::now();
    let pop = populate::populate(&data, args.paths, args.nar_mib << 20)?;
    let small = &pop.small;
    eprintln!("bench: stored {} small paths and a {} MiB NAR in {:.1?}", small.len(), args.nar_mib, t.elapsed());

    // 2. The node.
    let node = start_node(&data, &dir.join("node.log"), &args.node_log)?;
    let (node_pid, url, public_key) = (node.pid, node.url.clone(), node.public_key.clone());
    eprintln!("bench: node {node_pid} at {url}, key {public_key}");
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(node_pid, "VmRSS")?;

    // 3. The nginx cache, written by a real Nix client from our gateway.
    let cache = dir.join("cache");
    let t = Instant::now();
    let small_paths: Vec<String> = small.iter().map(|p| store_dir.display(p)).collect();
    let big_path = store_dir.display(&pop.big);
    let mut paths = small_paths.clone();
    paths.push(big_path.clone());
    let file_cache = format!("file://{}?compression=none", cache.display());
    nix_copy(&args.nix, &dir, &url, &file_cache, &public_key, &paths)?;
    eprintln!("bench: nix copy --from {url} --to file://… took {:.1?}", t.elapsed());
    if let Some(root) = &args.import_local {
        let to = if root == std::path::Path::new("/") { "local".to_string() } else { root.display().to_string() };
        let t = Instant::now();
        nix_copy(&args.nix, &dir, &format!("file://{}", cache.display()), &to, &public_key, &paths)?;
        eprintln!("bench: imported the paths into the Nix store {to} in {:.1?}", t.elapsed());
    }
    let nginx_port = free_port()?;
    let _nginx = start_nginx(&args.nginx, &dir, &cache, nginx_port)?;
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    wait_http(&format!("{nginx_url}/nix-cache-info"))?;

    let mut out = String::new();
    // 4. wrk.
    if !args.no_wrk {
        wrk_table(&args, &dir, &pop, &url, &nginx_url, node_pid, idle_rss, &mut out)?;
    }

    // 5. Real clients.
    if !args.no_clients {
        let caches = caches(&args, &url, &nginx_url, &public_key);
        let sets = [
            PathSet {
                name: format!("{} small", small_paths.len()),
                paths: small_paths,
                nar_bytes: pop.small_nar_bytes,
            },
            PathSet { name: format!("1 x {} MiB", args.nar_mib), paths: vec![big_path], nar_bytes: pop.big_nar_bytes },
        ];
        let clients = Clients {
            nix: args.nix.clone(),
            nix_store: args.nix_store.clone(),
            dir: dir.clone(),
            runs: args.client_runs.max(1),
        };
        let rows = clients::measure(&clients, &caches, &sets)?;
        out.push_str(&clients::table(&caches, &sets, &rows, clients.runs, 1));
    }
    drop(node.guard);
    print!("{out}");
    if args.keep {
        let kept = work.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    Ok(())
}

/// The caches the real clients fetch from: the gateway first, nginx second, then `--against`.
fn caches(args: &BenchArgs, url: &str, nginx_url: &str, key: &str) -> Vec<Cache> {
    let mut caches = vec![
        Cache { name: "gateway".into(), url: url.to_string(), keys: vec![key.to_string()] },
        Cache { name: "nginx (file://, uncompressed)".into(), url: nginx_url.to_string(), keys: vec![key.to_string()] },
    ];
    for a in &args.against {
        let (name, url) = match a.split_once('=') {
            Some((name, url)) if !name.is_empty() && !name.contains(['/', ':']) => (name.to_string(), url.to_string()),
            _ => (a.clone(), a.clone()),
        };
        caches.push(Cache { name, url, keys: args.against_key.clone() });
    }
    caches
}

/// The wrk measurements (gateway and nginx) and the node's RSS, as a table appended to `out`.
#[allow(clippy::too_many_arguments)]
fn wrk_table(
    args: &BenchArgs,
    dir: &std::path::Path,
    pop: &populate::Population,
    url: &str,
    nginx_url: &str,
    node_pid: u32,
    idle_rss: u64,
    out: &mut String,
) -> anyhow::Result<()> {
    let small = &pop.small;
    let big_nar = &pop.big_nar_name;
    let script = dir.join("narinfos.lua");
    write_rotation_script(&script, small)?;
    let d = args.duration;
    let run_wrk = |base: &str, path: Option<&str>, conns: u32, threads: u32| -> anyhow::Result<WrkResult> {
        let mut cmd = Command::new(&args.wrk);
        cmd.arg(format!("-t{threads}")).arg(format!("-c{conns}")).arg(format!("-d{d}s"));
        match path {
            Some(p) => {
                cmd.arg(format!("{base}{p}"));
            }
            None => {
                cmd.arg("-s").arg(&script).arg(format!("{base}/"));
            }
        }
        wrk::wrk(cmd)
    };
    let threads = args.threads.max(1);
    let nt = threads.min(args.nar_connections.max(1));
    eprintln!("bench: narinfo, gateway");
    let gw_narinfo = run_wrk(url, None, args.connections, threads)?;
    eprintln!("bench: narinfo, nginx");
    let ng_narinfo = run_wrk(nginx_url, None, args.connections, threads)?;
    eprintln!("bench: NAR, gateway (.nar)");
    let gw_nar = run_wrk(url, Some(&format!("/nar/{big_nar}.nar")), args.nar_connections, nt)?;
    eprintln!("bench: NAR, gateway (.nar.zst)");
    let gw_zst = run_wrk(url, Some(&format!("/nar/{big_nar}.nar.zst")), args.nar_connections, nt)?;
    eprintln!("bench: NAR, nginx (.nar)");
    let ng_nar = run_wrk(nginx_url, Some(&format!("/nar/{big_nar}.nar")), args.nar_connections, nt)?;
    let loaded_rss = rss_kib(node_pid, "VmRSS")?;
    let peak_rss = rss_kib(node_pid, "VmHWM")?;
    std::thread::sleep(Duration::from_secs(3));
    let idle_after = rss_kib(node_pid, "VmRSS")?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let gbs = |r: &WrkResult| r.bytes_per_sec / 1e9;
    let _ = writeln!(
        *out,
        "\nbuildmesh bench gateway: {} small paths, {} MiB NAR, wrk {d}s, {} conns (narinfo) / {} conns (NAR), loopback, {} CPUs\n",
        small.len(),
        args.nar_mib,
        args.connections,
        args.nar_connections,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(*out, "| metric | buildmesh gateway | nginx (file:// cache) | gateway / nginx | goal |");
    let _ = writeln!(*out, "|---|---:|---:|---:|---|");
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".to_string() };
    let ok = |pass: bool| if pass { "met" } else { "MISSED" };
    let _ = writeln!(
        *out,
        "| narinfo requests/s | {:.0} | {:.0} | {} | >= 0.5x nginx: {} |",
        gw_narinfo.requests_per_sec,
        ng_narinfo.requests_per_sec,
        ratio(gw_narinfo.requests_per_sec, ng_narinfo.requests_per_sec),
        ok(gw_narinfo.requests_per_sec >= 0.5 * ng_narinfo.requests_per_sec)
    );
    let _ = writeln!(
        *out,
        "| NAR `.nar` streaming GB/s | {:.2} | {:.2} | {} | >= 1 GB/s: {} |",
        gbs(&gw_nar),
        gbs(&ng_nar),
        ratio(gw_nar.bytes_per_sec, ng_nar.bytes_per_sec),
        ok(gbs(&gw_nar) >= 1.0)
    );
    let _ = writeln!(*out, "| NAR `.nar.zst` as stored GB/s (compressed bytes) | {:.2} | - | - | - |", gbs(&gw_zst));
    let _ = writeln!(
        *out,
        "| node RSS idle MiB | {:.1} | - | - | <= 40 MiB: {} |",
        mib(idle_rss),
        ok(mib(idle_rss) <= 40.0)
    );
    let _ = writeln!(
        *out,
        "| node RSS under load / peak MiB | {:.1} / {:.1} | - | - | - |",
        mib(loaded_rss),
        mib(peak_rss)
    );
    let _ = writeln!(*out, "| node RSS idle after load MiB | {:.1} | - | - | - |", mib(idle_after));
    let errors = gw_narinfo.errors + ng_narinfo.errors + gw_nar.errors + gw_zst.errors + ng_nar.errors;
    if errors > 0 {
        let _ = writeln!(*out, "\nwarning: wrk reported {errors} socket/HTTP errors");
    }
    Ok(())
}
