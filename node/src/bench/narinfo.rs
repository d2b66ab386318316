//! `buildmesh bench narinfo`: narinfo lookups per second as `guix substitute` makes them
//! (pipelined batches of 1,000 `GET /<hash>.narinfo` on one keep-alive connection, see
//! [`super::pipeline`]), the Guix layout of a `/gnu/store` gateway beside the Nix layout of a
//! `/nix/store` gateway (issue 17 item 8).
//!
//! Two data dirs get the same `--paths` outputs (a small NAR each, a reference to the previous
//! one, a deriver), each attested by the node's own key as a build of its own, so a standalone
//! node serves them under its trust rule: in `/gnu/store` with the builder's Guix signature
//! (ECDSA, made at attestation time and carried in the attestation; the gateway signs nothing
//! when serving), in `/nix/store` with its `Sig:` line. A real `buildmesh node` process serves
//! each in turn; for each, hits (every request names a served path) and misses (none does:
//! what Guix asks most servers for most paths) are measured `--runs` times.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StoreDir, StorePath, make_store_path};
use clap::Args;

use super::pipeline::{ConnResult, quantile_ms, run_connection};
use super::procs::{rss_kib, start_node_with};
use crate::build::{BuildReport, BuiltOutput};
use crate::store::{PathInfo, Store, unix_ms};

/// Flags of `buildmesh bench narinfo`.
#[derive(Debug, Clone, Args)]
pub struct NarinfoBenchArgs {
    /// Outputs stored (and attested) in each store.
    #[arg(long, default_value_t = 1000)]
    pub paths: u32,
    /// Requests per pipelined batch (`guix substitute` sends 1,000).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches per connection in one measurement.
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    /// Concurrent keep-alive connections (one per `guix substitute` process).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Measurements per row (the best is shown, with the spread).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The nodes' log filter (`BUILDMESH_LOG`).
    #[arg(long, default_value = "warn")]
    pub node_log: String,
}

/// One row of the table.
struct Row {
    what: String,
    /// Narinfos per second of each run.
    rates: Vec<f64>,
    /// The best run's latencies (p50, p99) and batch p50, in ms.
    p50: f64,
    p99: f64,
    batch_p50: f64,
    statuses: String,
}

/// Run `buildmesh bench narinfo` and print the table.
pub fn run(args: NarinfoBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("buildmesh-bench-narinfo-").tempdir().context("create a temp dir")?;
    let dir = work.path();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (label, store_dir, expect) in
        [("Guix layout, /gnu/store", "/gnu/store", "Signature: 1;"), ("Nix layout, /nix/store", "/nix/store", "Sig: ")]
    {
        let sd = StoreDir::new(store_dir).context("store dir")?;
        let data = dir.join(store_dir.trim_start_matches('/').replace('/', "-"));
        let t = Instant::now();
        let paths = populate(&data, &sd, args.paths)?;
        eprintln!("bench narinfo: {label}: {} attested outputs stored in {:.1?}", paths.len(), t.elapsed());
        let node = start_node_with(&data, &data.with_extension("log"), &args.node_log, &["--store-dir", store_dir])?;
        let addr = node.url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let hits: Vec<String> = paths.iter().map(|p| format!("/{}.narinfo", p.hash_part())).collect();
        let misses: Vec<String> = (0..args.paths).map(|i| format!("/{}.narinfo", fake_hash_part(i))).collect();
        // Warm-up: one batch of each (the node's narinfo cache, the page cache).
        let warm = run_connection(&addr, &hits, 0, args.batch, 1)?;
        anyhow::ensure!(warm.ok as usize == args.batch, "{label}: {} of {} hits answered 200", warm.ok, args.batch);
        let sample = warm.sample.unwrap_or_default();
        anyhow::ensure!(sample.contains(expect), "{label}: the narinfo lacks `{expect}`:\n{sample}");
        notes.push(format!("first narinfo of the {label} gateway:\n```\n{}```", sample));
        for (kind, targets) in [("hits", &hits), ("misses (404)", &misses)] {
            let mut rates = Vec::new();
            let mut best: Option<(f64, Vec<ConnResult>)> = None;
            for _ in 0..args.runs.max(1) {
                let (rate, results) = measure(&args, &addr, targets)?;
                eprintln!("bench narinfo: {label}, {kind}: {rate:.0} narinfos/s");
                rates.push(rate);
                if best.as_ref().is_none_or(|(b, _)| rate > *b) {
                    best = Some((rate, results));
                }
            }
            let (_, results) = best.context("no run")?;
            rows.push(row(format!("{label}: {kind}"), rates, &results));
        }
        let peak = rss_kib(node.pid, "VmHWM").unwrap_or(0);
        notes.push(format!("{label} node peak RSS: {:.1} MiB", peak as f64 / 1024.0));
        drop(node.guard);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nbuildmesh bench narinfo: {} outputs per store, pipelined batches of {} on {} keep-alive connection(s), \
         {} batches per connection per run, best of {} runs, loopback, {} CPUs\n",
        args.paths,
        args.batch,
        args.connections,
        args.batches,
        args.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(
        out,
        "| gateway: requests | narinfos/s (best) | spread (worst run) | p50 ms | p99 ms | batch of {} p50 ms | answers |",
        args.batch
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let best = r.rates.iter().copied().fold(0.0, f64::max);
        let worst = r.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            out,
            "| {} | {best:.0} | {worst:.0} | {:.1} | {:.1} | {:.1} | {} |",
            r.what, r.p50, r.p99, r.batch_p50, r.statuses
        );
    }
    let guix = rows.first().map(|r| r.rates.iter().copied().fold(0.0, f64::max)).unwrap_or(0.0);
    let nix = rows.get(2).map(|r| r.rates.iter().copied().fold(0.0, f64::max)).unwrap_or(0.0);
    if nix > 0.0 {
        let _ = writeln!(out, "\nGuix layout / Nix layout (hits): {:.2}x", guix / nix);
    }
    let _ = writeln!(
        out,
        "\np50/p99: time from a batch's first byte sent to each answer's last byte read (a narinfo waits for \
         the ones before it, as in Guix's client)."
    );
    for n in notes {
        let _ = writeln!(out, "\n{n}");
    }
    print!("{out}");
    Ok(())
}

/// One measurement: `--connections` threads, each its own connection; narinfos per second over
/// the wall time of the whole measurement.
fn measure(args: &NarinfoBenchArgs, addr: &str, targets: &[String]) -> anyhow::Result<(f64, Vec<ConnResult>)> {
    let start = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections.max(1))
            .map(|c| s.spawn(move || run_connection(addr, targets, c * 7919, args.batch, args.batches)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let answers: usize = results.iter().map(|r| r.latencies.len()).sum();
    Ok((answers as f64 / elapsed, results))
}

fn row(what: String, rates: Vec<f64>, results: &[ConnResult]) -> Row {
    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    lat.sort();
    let mut batches: Vec<Duration> = results.iter().flat_map(|r| r.batch_times.iter().copied()).collect();
    batches.sort();
    let (ok, nf, other) = results.iter().fold((0, 0, 0), |(a, b, c), r| (a + r.ok, b + r.not_found, c + r.other));
    Row {
        what,
        rates,
        p50: quantile_ms(&lat, 0.5),
        p99: quantile_ms(&lat, 0.99),
        batch_p50: quantile_ms(&batches, 0.5),
        statuses: format!("{ok} x 200, {nf} x 404, {other} other"),
    }
}

/// A valid hash part no bench output has.
fn fake_hash_part(i: u32) -> String {
    let digest = blake3::hash(format!("buildmesh bench narinfo miss {i}").as_bytes());
    buildmesh_protocol::nixbase32::encode(&digest.as_bytes()[..20])
}

/// Store `n` outputs in a new store at `data` for `sd`, each attested by the node key
/// (`DATA/node.key`, created here) as its own build of `bench-narinfo-<i>.drv`.
fn populate(data: &Path, sd: &StoreDir, n: u32) -> anyhow::Result<Vec<StorePath>> {
    let (key, _) = crate::runtime::key::load_or_create(&data.join("node.key"), Some("bench-narinfo"))?;
    let store = Store::open(data)?;
    let mut paths: Vec<StorePath> = Vec::new();
    for i in 0..n {
        let contents = format!("buildmesh narinfo bench output {i}\n").repeat(1 + (i as usize % 5));
        let mut nar = Vec::new();
        let mut w = NarWriter::new(&mut nar)?;
        w.regular(false, contents.len() as u64, &mut contents.as_bytes())?;
        w.finish()?;
        let blob = store.put_nar(&mut nar.as_slice())?;
        let seed = |what: &str| -> [u8; 32] { *blake3::hash(format!("{what} {i}").as_bytes()).as_bytes() };
        let name = format!("bench-narinfo-{i}");
        let drv = make_store_path(sd, "text", &seed("drv"), &format!("{name}.drv"))?;
        let path = make_store_path(sd, "output:out", &seed("out"), &name)?;
        let references: BTreeSet<StorePath> = paths.last().cloned().into_iter().collect();
        let now = unix_ms();
        store.register_path(&PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash.clone(),
            nar_size: blob.nar_size,
            references: references.clone(),
            deriver: Some(drv.clone()),
            ca: None,
            blob: blob.blake3,
            registered_at: now,
        })?;
        let report = BuildReport {
            outputs: BTreeMap::from([(
                "out".to_string(),
                BuiltOutput {
                    path: path.clone(),
                    nar_hash: blob.nar_hash.clone(),
                    nar_size: blob.nar_size,
                    references,
                    content_id: blob.blake3,
                },
            )]),
            log: format!("bench build {i}\n").into_bytes(),
            emulated: false,
            started_at_ms: now,
            finished_at_ms: now,
        };
        crate::build::attest::commit_attestation(&store, &key, sd, &drv, &report)
            .with_context(|| format!("attest {}", sd.display(&path)))?;
        paths.push(path);
    }
    Ok(paths)
}
