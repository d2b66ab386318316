//! `buildmesh nar ...` commands: dump, restore and hash Nix archives, and benchmark the hash
//! against `nix hash path`.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::Command as Process;
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
        /// Threads for the plain hash: `1` (read and hash on one), `2` (read on one, hash on
        /// another) or `auto` (2 unless the process may use only one core).
        #[arg(long, default_value = "auto", value_parser = parse_threads)]
        threads: nar_fs::Threads,
        /// Also print the CPU seconds of the reading and the hashing thread on stderr (used by
        /// `bench`).
        #[arg(long, hide = true)]
        cpu: bool,
    },
    /// Time `buildmesh nar hash PATH` (1 thread, 2 threads, auto) against `nix hash path --type
    /// sha256 PATH` and the machine's SHA-256 speed (`openssl speed -evp sha256`), on an idle
    /// machine and again with a busy-looping thread on every core; print a table.
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
        Command::Hash { path, json, threads, cpu } => {
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
                let ((nar_hash, nar_size), used) = nar_fs::nar_hash_path_cpu(&path, threads)?;
                writeln!(out, "{nar_hash}\n{nar_size}")?;
                if cpu {
                    eprintln!("{CPU_PREFIX} {:.6} {:.6}", used.reading, used.hashing);
                }
            }
            Ok(())
        }
        Command::Bench { path, runs } => super::nar_bench::bench(&path, runs.max(1)),
        Command::Measure { command } => measure(&command),
    }
}

fn parse_threads(s: &str) -> Result<nar_fs::Threads, String> {
    match s {
        "1" => Ok(nar_fs::Threads::One),
        "2" => Ok(nar_fs::Threads::Two),
        "auto" => Ok(nar_fs::Threads::Auto),
        _ => Err(format!("{s:?}: expected 1, 2 or auto")),
    }
}

/// Prefix of the line `hash --cpu` prints on stderr.
pub(super) const CPU_PREFIX: &str = "buildmesh-nar-cpu:";

/// Prefix of the line `measure` prints on stderr.
pub(super) const MEASURE_PREFIX: &str = "buildmesh-measure:";

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
