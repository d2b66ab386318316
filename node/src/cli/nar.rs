//! `buildmesh nar ...` commands: dump, restore and hash Nix archives, and benchmark the hash
//! against `nix hash path`.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use buildmesh_protocol::nar::NarLimits;
use clap::Subcommand;

use crate::nar_fs;

/// `buildmesh nar` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the NAR of PATH to stdout (byte-identical to `nix-store --dump PATH`).
    Dump {
        /// A regular file, symlink or directory (symlinks are archived, not followed).
        path: PathBuf,
    },
    /// Unpack a NAR read from stdin into DIR, which must not exist (like `nix-store --restore`).
    Restore {
        /// Where to create the restored tree.
        dir: PathBuf,
        /// Reject archives larger than this many bytes.
        #[arg(long)]
        max_size: Option<u64>,
    },
    /// Print the NarHash (`sha256:<nix32>`) on the first line and the NarSize on the second.
    Hash {
        /// A regular file, symlink or directory.
        path: PathBuf,
        /// Print `{"narHash": "sha256:...", "narSize": N, "blake3": "<hex>"}` instead.
        #[arg(long)]
        json: bool,
    },
    /// Time `buildmesh nar hash PATH` against `nix hash path --type sha256 PATH` and print a table.
    Bench {
        /// The tree to hash.
        #[arg(default_value = "/usr/share")]
        path: PathBuf,
        /// Timed runs of each tool (after one warm-up run each).
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Run a command and report its wall time and peak RSS on stderr (used by `bench`).
    #[command(hide = true)]
    Measure {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

/// Run a `buildmesh nar` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Dump { path } => {
            let out = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            nar_fs::dump_path(&path, out)?;
            Ok(())
        }
        Command::Restore { dir, max_size } => {
            let limits = NarLimits { max_total_size: max_size.unwrap_or(u64::MAX), ..NarLimits::default() };
            let input = BufReader::with_capacity(256 * 1024, io::stdin().lock());
            nar_fs::restore(input, &dir, limits)?;
            Ok(())
        }
        Command::Hash { path, json } => {
            let mut out = io::stdout().lock();
            if json {
                let d = nar_fs::hash_path(&path)?;
                let v = serde_json::json!({
                    "narHash": d.nar_hash.to_string(),
                    "narSize": d.nar_size,
                    "blake3": d.blake3_hex(),
                });
                writeln!(out, "{v}")?;
            } else {
                let (nar_hash, nar_size) = nar_fs::nar_hash_path(&path)?;
                writeln!(out, "{nar_hash}\n{nar_size}")?;
            }
            Ok(())
        }
        Command::Bench { path, runs } => bench(&path, runs.max(1)),
        Command::Measure { command } => measure(&command),
    }
}

/// Prefix of the line `measure` prints on stderr.
const MEASURE_PREFIX: &str = "buildmesh-measure:";

fn measure(command: &[String]) -> anyhow::Result<()> {
    let (prog, args) = command.split_first().context("no command given")?;
    let start = Instant::now();
    let status = Process::new(prog).args(args).status().with_context(|| format!("cannot run {prog}"))?;
    let wall = start.elapsed().as_secs_f64();
    // This process has exactly one child, so the children's peak RSS is that child's.
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = tv(usage.user_time()) + tv(usage.system_time());
    eprintln!("{MEASURE_PREFIX} {wall:.6} {} {cpu:.6}", usage.max_rss());
    if !status.success() {
        bail!("{prog} failed: {status}");
    }
    Ok(())
}

struct Sample {
    wall: f64,
    max_rss_kib: i64,
    cpu: f64,
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
    Ok(Sample { wall, max_rss_kib, cpu, stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
}

/// Medians (and the best wall time) of a series of runs.
struct Stats {
    wall: f64,
    best_wall: f64,
    cpu: f64,
    max_rss_kib: i64,
}

impl Stats {
    fn of(samples: &[Sample]) -> Stats {
        let mut wall: Vec<f64> = samples.iter().map(|s| s.wall).collect();
        let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu).collect();
        Stats {
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
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn bench(path: &Path, runs: u32) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the buildmesh executable")?;
    let p = path.to_str().context("the path is not UTF-8")?;
    let ours: [&str; 4] = [exe.to_str().context("executable path is not UTF-8")?, "nar", "hash", p];
    let nix: [&str; 8] = ["nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha256", p];
    let mut nix_b32 = nix.to_vec();
    nix_b32.insert(7, "--base32");

    // Warm-up (page cache), and the hashes must agree.
    let w_ours = run_measured(&exe, &ours)?;
    let w_nix = run_measured(&exe, &nix_b32)?;
    let mut lines = w_ours.stdout.lines();
    let our_hash = lines.next().context("no hash from buildmesh")?.to_string();
    let nar_size: u64 = lines.next().context("no NarSize from buildmesh")?.trim().parse()?;
    let nix_hash = format!("sha256:{}", w_nix.stdout.trim());
    if our_hash != nix_hash {
        bail!("hashes differ: buildmesh {our_hash}, nix {nix_hash}");
    }

    let (mut ours_s, mut nix_s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours_s.push(run_measured(&exe, &ours)?);
        nix_s.push(run_measured(&exe, &nix)?);
    }
    let o_stats = Stats::of(&ours_s);
    let n_stats = Stats::of(&nix_s);
    let mbs = |t: f64| nar_size as f64 / t / 1e6;
    let mut o = io::stdout().lock();
    writeln!(o, "NAR hash of {}: {nar_size} bytes of NAR, {our_hash} (both tools agree)", path.display())?;
    writeln!(o, "{runs} alternating runs of each after one warm-up run each; medians, best wall time in brackets")?;
    writeln!(o)?;
    writeln!(o, "| tool | wall time | MB/s | CPU time (user+sys) | peak RSS |")?;
    writeln!(o, "|---|---:|---:|---:|---:|")?;
    for (name, st) in [("`buildmesh nar hash`", &o_stats), ("`nix hash path --type sha256`", &n_stats)] {
        writeln!(
            o,
            "| {name} | {:.3} s ({:.3} s) | {:.0} | {:.3} s | {:.1} MiB |",
            st.wall,
            st.best_wall,
            mbs(st.wall),
            st.cpu,
            st.max_rss_kib as f64 / 1024.0
        )?;
    }
    writeln!(o)?;
    let (faster, slower, ratio) = if o_stats.wall <= n_stats.wall {
        ("buildmesh", "nix", n_stats.wall / o_stats.wall)
    } else {
        ("nix", "buildmesh", o_stats.wall / n_stats.wall)
    };
    writeln!(o, "{faster} is {ratio:.2}x faster than {slower} (median wall time)")?;
    Ok(())
}
