//! `buildmesh nar bench`: NAR hashing speed against the machine's SHA-256 limit and against Nix,
//! on an idle machine and with a busy-looping thread on every core.
//!
//! The reference is `openssl speed -evp sha256` (its largest block size, 16 KiB with OpenSSL 3),
//! run in the same invocation: the single-stream SHA-256 limit of this CPU. The sha2 crate's own
//! speed on a memory buffer is printed beside it, so a gap can be told apart: hashing itself, or
//! the reading around it.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use sha2::Digest as _;

use super::nar::{CPU_PREFIX, MEASURE_PREFIX};

struct Sample {
    wall: f64,
    max_rss_kib: i64,
    cpu: f64,
    /// CPU seconds of the reading and the hashing thread (`nar hash --cpu`).
    threads: Option<(f64, f64)>,
    stdout: String,
}

fn run_measured(exe: &Path, command: &[&str]) -> anyhow::Result<Sample> {
    let out = Process::new(exe)
        .args(["nar", "measure", "--"])
        .args(command)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{}` failed: {}", command.join(" "), stderr.trim());
    }
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(MEASURE_PREFIX))
        .with_context(|| format!("no measurement from `{}`: {stderr}", command.join(" ")))?;
    let mut it = line.split_whitespace();
    let wall: f64 = it.next().context("no wall time")?.parse()?;
    let max_rss_kib: i64 = it.next().context("no peak RSS")?.parse()?;
    let cpu: f64 = it.next().context("no CPU time")?.parse()?;
    let threads = stderr.lines().find_map(|l| l.strip_prefix(CPU_PREFIX)).and_then(|l| {
        let mut it = l.split_whitespace().map(|w| w.parse::<f64>().ok());
        Some((it.next()??, it.next()??))
    });
    Ok(Sample { wall, max_rss_kib, cpu, threads, stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
}

/// Medians (and the best wall time) of a series of runs.
struct Stats {
    wall: f64,
    best_wall: f64,
    cpu: f64,
    max_rss_kib: i64,
    /// Medians of the reading and hashing threads' CPU seconds.
    threads: Option<(f64, f64)>,
}

impl Stats {
    fn of(samples: &[Sample]) -> Stats {
        let mut wall: Vec<f64> = samples.iter().map(|s| s.wall).collect();
        let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu).collect();
        let mut reading: Vec<f64> = samples.iter().filter_map(|s| s.threads.map(|t| t.0)).collect();
        let mut hashing: Vec<f64> = samples.iter().filter_map(|s| s.threads.map(|t| t.1)).collect();
        let threads = (!reading.is_empty()).then(|| (median(&mut reading), median(&mut hashing)));
        Stats {
            threads,
            best_wall: wall.iter().copied().fold(f64::INFINITY, f64::min),
            wall: median(&mut wall),
            cpu: median(&mut cpu),
            max_rss_kib: samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The SHA-256 speed `openssl speed -evp sha256` reports for its largest block size, in bytes
/// per second, and that block size.
fn openssl_sha256() -> anyhow::Result<(f64, u64)> {
    let out = Process::new("openssl")
        .args(["speed", "-seconds", "1", "-evp", "sha256"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run `openssl speed` (install openssl)")?;
    if !out.status.success() {
        bail!("`openssl speed -evp sha256` failed: {}", out.status);
    }
    parse_openssl_speed(&String::from_utf8_lossy(&out.stdout))
}

/// Parse `openssl speed` output: a header `type  16 bytes  64 bytes ... 16384 bytes` and a row
/// `sha256  83066.04k ... 1328891.35k` (thousands of bytes per second). Returns the value of the
/// largest block size in bytes per second, and that size.
fn parse_openssl_speed(text: &str) -> anyhow::Result<(f64, u64)> {
    let header = text.lines().rfind(|l| l.starts_with("type ")).context("no `type` header in openssl's output")?;
    let sizes: Vec<u64> = header.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let row = text
        .lines()
        .rfind(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("sha256")))
        .context("no sha256 row in openssl's output")?;
    let values: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|w| w.strip_suffix('k').unwrap_or(w).parse::<f64>().map(|v| v * 1000.0))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read openssl's sha256 row {row:?}"))?;
    if values.is_empty() || values.len() != sizes.len() {
        bail!("openssl's header has {} block sizes and its sha256 row {} values", sizes.len(), values.len());
    }
    let (i, size) = sizes.iter().enumerate().max_by_key(|(_, s)| **s).map(|(i, s)| (i, *s)).context("no sizes")?;
    Ok((values[i], size))
}

use crate::nar_fs::thread_cpu;

/// The sha2 crate's speed on a buffer in memory (what this binary's hashing can reach), bytes
/// per second of CPU time (as `openssl speed` counts by default), so other processes on the
/// machine do not lower it.
fn sha2_in_memory() -> f64 {
    let buf: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = thread_cpu();
        let mut h = sha2::Sha256::new();
        for piece in buf.chunks(1 << 20) {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
        best = best.min(thread_cpu() - t);
    }
    buf.len() as f64 / best
}

/// A busy-looping thread on every core while it lives.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start(n: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One set of runs (idle or with the hog): rows of (label, MB/s of the median, stats).
struct Round {
    loadavg: String,
    openssl: f64,
    sha2: f64,
    rows: Vec<(String, Stats)>,
}

pub(super) fn bench(path: &Path, runs: u32) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the buildmesh executable")?;
    let exe_s = exe.to_str().context("executable path is not UTF-8")?;
    let p = path.to_str().context("the path is not UTF-8")?;
    let ours = |threads: &'static str| -> Vec<&str> { vec![exe_s, "nar", "hash", "--cpu", "--threads", threads, p] };
    let nix: Vec<&str> =
        vec!["nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha256", p];
    let has_nix = Process::new("nix").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();

    // Warm-up (page cache), and the hashes must agree.
    let w_ours = run_measured(&exe, &ours("auto"))?;
    let mut lines = w_ours.stdout.lines();
    let our_hash = lines.next().context("no hash from buildmesh")?.to_string();
    let nar_size: u64 = lines.next().context("no NarSize from buildmesh")?.trim().parse()?;
    for t in ["1", "2"] {
        let s = run_measured(&exe, &ours(t))?;
        if s.stdout.lines().next() != Some(our_hash.as_str()) {
            bail!("--threads {t} gives another hash: {} (auto: {our_hash})", s.stdout.trim());
        }
    }
    if has_nix {
        let mut nix_b32 = nix.clone();
        nix_b32.insert(7, "--base32");
        let w_nix = run_measured(&exe, &nix_b32)?;
        let nix_hash = format!("sha256:{}", w_nix.stdout.trim());
        if our_hash != nix_hash {
            bail!("hashes differ: buildmesh {our_hash}, nix {nix_hash}");
        }
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rounds = Vec::new();
    for hog in [false, true] {
        let _hog = hog.then(|| Hog::start(cores));
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg = loadavg.split_whitespace().next().unwrap_or("?").to_string();
        let (openssl, _) = openssl_sha256()?;
        let sha2 = sha2_in_memory();
        let mut tools: Vec<(String, Vec<&str>)> = vec![
            ("`buildmesh nar hash` (auto)".to_string(), ours("auto")),
            ("`buildmesh nar hash --threads 1`".to_string(), ours("1")),
            ("`buildmesh nar hash --threads 2`".to_string(), ours("2")),
        ];
        if has_nix {
            tools.push(("`nix hash path`".to_string(), nix.clone()));
        }
        let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
        for _ in 0..runs {
            for (i, (_, cmd)) in tools.iter().enumerate() {
                samples[i].push(run_measured(&exe, cmd)?);
            }
        }
        let rows = tools.into_iter().zip(samples).map(|((label, _), s)| (label, Stats::of(&s))).collect();
        rounds.push((hog, Round { loadavg, openssl, sha2, rows }));
    }

    let mbs = |t: f64| nar_size as f64 / t / 1e6;
    let mut o = io::stdout().lock();
    writeln!(o, "NAR hash of {}: {nar_size} bytes of NAR, {our_hash} (all agree)", path.display())?;
    writeln!(
        o,
        "{runs} alternating runs of each; medians, best wall time in brackets; SHA-256 limit = `openssl speed -evp sha256`, largest block size (per CPU second); busy = {cores} busy-looping threads (one per core) during the runs"
    )?;
    for (hog, r) in &rounds {
        writeln!(o, "1-minute load average before the {} runs: {}", if *hog { "busy" } else { "idle" }, r.loadavg)?;
    }
    writeln!(o)?;
    writeln!(
        o,
        "| machine | what | wall time | MB/s | x SHA-256 limit | x nix | CPU time | MB per CPU s | peak RSS | reading / hashing thread CPU | x limit, busiest thread |"
    )?;
    writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (hog, r) in &rounds {
        let machine = if *hog { "busy" } else { "idle" };
        let nix_wall = r.rows.iter().find(|(l, _)| l.contains("nix")).map(|(_, s)| s.wall);
        writeln!(
            o,
            "| {machine} | `openssl speed -evp sha256` (SHA-256 limit) | | {:.0} | 1.00 | | | | | | |",
            r.openssl / 1e6
        )?;
        writeln!(
            o,
            "| {machine} | sha2 crate, 64 MiB in memory (per CPU second) | | {:.0} | {:.2} | | | | | | |",
            r.sha2 / 1e6,
            r.sha2 / r.openssl
        )?;
        for (label, st) in &r.rows {
            let x_nix = nix_wall.map(|n| format!("{:.2}", n / st.wall)).unwrap_or_default();
            // The wall time on free cores is the busier thread's CPU time.
            let (threads, busiest) = match st.threads {
                Some((read, hash)) => {
                    (format!("{read:.3} s / {hash:.3} s"), format!("{:.2}", mbs(read.max(hash)) * 1e6 / r.openssl))
                }
                None => (String::new(), String::new()),
            };
            writeln!(
                o,
                "| {machine} | {label} | {:.3} s ({:.3} s) | {:.0} | {:.2} | {x_nix} | {:.3} s | {:.0} | {:.1} MiB | {threads} | {busiest} |",
                st.wall,
                st.best_wall,
                mbs(st.wall),
                mbs(st.wall) * 1e6 / r.openssl,
                st.cpu,
                mbs(st.cpu),
                st.max_rss_kib as f64 / 1024.0
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_largest_block_size_of_openssl_speed() {
        let out = "version: 3.0.19\n\
                   The 'numbers' are in 1000s of bytes per second processed.\n\
                   type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes\n\
                   sha256           83066.04k   291475.84k   688821.53k  1139793.92k  1330157.38k  1328891.35k\n";
        let (v, size) = parse_openssl_speed(out).unwrap();
        assert_eq!(size, 16384);
        assert!((v - 1_328_891_350.0).abs() < 1.0, "{v}");
        assert!(parse_openssl_speed("type 16 bytes\n").is_err());
        assert!(parse_openssl_speed("type 16 bytes 64 bytes\nsha256 1.0k\n").is_err());
    }
}
