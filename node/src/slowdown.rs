//! The measured slowdown of each emulated system (issue 16): how many times longer a small fixed
//! workload takes under QEMU user-mode emulation than natively on this machine, announced to the
//! mesh so that placement lowers this node's weight for that system accordingly
//! (`buildmesh_protocol::placement`; docs/emulation.md).
//!
//! The workload is a static busybox running the same shell script natively and for the emulated
//! system: an arithmetic loop and a `sha256sum` over `seq` output, i.e. interpretation, a pipe and
//! two processes started (a QEMU build pays for every `exec`, so a loop alone would flatter it).
//! The busyboxes are looked up as `<probe dir>/<debian arch>/busybox` (`amd64`, `arm64`, `armhf`,
//! …; `scripts/emulation.sh setup` puts them in `/var/cache/buildmesh/busybox`). Each side runs
//! [`RUNS`] times and the best time counts (the least disturbed by other load); the emulated one
//! is started through binfmt_misc exactly as a build's processes are. A system without its busybox
//! is not measured (placement then assumes `DEFAULT_SLOWDOWN`).
//!
//! The result is cached in `DATA/emulation-slowdown.json`, keyed by the interpreter binfmt_misc
//! runs (path, size, modification time) and the workload's version, so a node measures once per
//! QEMU install (a few seconds) and restarts announce at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The cache file in the data dir.
pub const CACHE_FILE: &str = "emulation-slowdown.json";
/// Where `scripts/emulation.sh` puts the static busyboxes (the default probe dir).
pub const DEFAULT_PROBE_DIR: &str = "/var/cache/buildmesh/busybox";
/// Runs per side; the best counts.
pub const RUNS: usize = 3;
/// The longest one run may take before the probe gives up on that system.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bump when [`SCRIPT`] changes, so cached results are measured again.
const WORKLOAD_VERSION: u32 = 1;
/// The workload (busybox `sh -c`).
const SCRIPT: &str = "i=0; while [ $i -lt 4000 ]; do i=$((i+1)); done; seq 1 20000 | sha256sum >/dev/null";

/// One system's measurement, as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Emulated time over native time, in hundredths (`850` = 8.5x), at least 100.
    pub slowdown: u32,
    /// Best native run (ms).
    pub native_ms: f64,
    /// Best emulated run (ms).
    pub emulated_ms: f64,
    /// The binfmt_misc interpreter and its size and mtime when measured: the cache key.
    pub interpreter: String,
    /// Its size in bytes.
    pub interpreter_size: u64,
    /// Its modification time (unix seconds).
    pub interpreter_mtime: i64,
    /// [`WORKLOAD_VERSION`] when measured.
    pub workload: u32,
}

/// Why a system was not measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// No binfmt_misc entry runs this system.
    #[error("no binfmt_misc entry for {0}")]
    NoInterpreter(String),
    /// No busybox for one of the two sides.
    #[error("no probe binary {0} (scripts/emulation.sh setup puts the static busyboxes there)")]
    NoBinary(PathBuf),
    /// Running the workload failed.
    #[error("{binary}: {message}")]
    Run {
        /// The busybox run.
        binary: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Debian's name of the architecture of a Nix system (the probe dir's layout).
pub fn debian_arch(system: &str) -> Option<&'static str> {
    Some(match system {
        "x86_64-linux" => "amd64",
        "i686-linux" => "i386",
        "aarch64-linux" => "arm64",
        "armv7l-linux" => "armhf",
        "riscv64-linux" => "riscv64",
        "powerpc64le-linux" => "ppc64el",
        "s390x-linux" => "s390x",
        "mips64el-linux" => "mips64el",
        "loongarch64-linux" => "loong64",
        _ => return None,
    })
}

/// The interpreter binfmt_misc runs for `system` (from an enabled entry with the `F` flag).
pub fn interpreter_for(system: &str, binfmt_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(binfmt_dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if crate::systems::parse_binfmt_entry(&name, &text).as_deref() != Some(system) {
            continue;
        }
        if let Some(i) = text.lines().find_map(|l| l.strip_prefix("interpreter ")) {
            return Some(PathBuf::from(i.trim()));
        }
    }
    None
}

fn file_key(path: &Path) -> (u64, i64) {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map(|m| (m.size(), m.mtime())).unwrap_or((0, 0))
}

/// Read the cache (an unreadable or corrupt cache is empty: it is only measured again).
pub fn load_cache(data_dir: &Path) -> BTreeMap<String, Measurement> {
    std::fs::read(data_dir.join(CACHE_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_cache(data_dir: &Path, cache: &BTreeMap<String, Measurement>) {
    let path = data_dir.join(CACHE_FILE);
    let tmp = data_dir.join(format!("{CACHE_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, serde_json::to_vec_pretty(cache).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), cause = %e, "emulation slowdown not cached");
    }
}

/// The best of [`RUNS`] runs of the workload with `busybox` (ms).
async fn best_run(busybox: &Path) -> Result<f64, ProbeError> {
    if !busybox.is_file() {
        return Err(ProbeError::NoBinary(busybox.to_path_buf()));
    }
    let err = |message: String| ProbeError::Run { binary: busybox.to_path_buf(), message };
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut cmd = tokio::process::Command::new(busybox);
        cmd.args(["sh", "-c", SCRIPT])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
            .await
            .map_err(|_| err(format!("no result within {} s", RUN_TIMEOUT.as_secs())))?
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        best = best.min(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(best)
}

/// Measure `system` (emulated) against `native` with the busyboxes in `probe_dir`.
pub async fn measure(
    system: &str,
    native: &str,
    probe_dir: &Path,
    binfmt_dir: &Path,
) -> Result<Measurement, ProbeError> {
    let interpreter = interpreter_for(system, binfmt_dir).ok_or_else(|| ProbeError::NoInterpreter(system.into()))?;
    let bin = |s: &str| probe_dir.join(debian_arch(s).unwrap_or("unknown")).join("busybox");
    let native_ms = best_run(&bin(native)).await?;
    let emulated_ms = best_run(&bin(system)).await?;
    let (interpreter_size, interpreter_mtime) = file_key(&interpreter);
    Ok(Measurement {
        slowdown: ratio(native_ms, emulated_ms),
        native_ms,
        emulated_ms,
        interpreter: interpreter.display().to_string(),
        interpreter_size,
        interpreter_mtime,
        workload: WORKLOAD_VERSION,
    })
}

/// Emulated over native in hundredths, within the wire's bounds.
pub fn ratio(native_ms: f64, emulated_ms: f64) -> u32 {
    use buildmesh_protocol::wire::{MAX_SLOWDOWN, MIN_SLOWDOWN};
    let r = (emulated_ms / native_ms.max(0.001) * 100.0).round();
    if r.is_finite() { (r as u32).clamp(MIN_SLOWDOWN, MAX_SLOWDOWN) } else { MAX_SLOWDOWN }
}

/// The slowdown of every emulated system in `emulated`, from the cache when its key still holds,
/// else measured now (and cached). Systems that cannot be measured are left out (logged).
pub async fn slowdowns(
    emulated: &[String],
    native: &str,
    probe_dir: &Path,
    binfmt_dir: &Path,
    data_dir: &Path,
) -> BTreeMap<String, u32> {
    let mut cache = load_cache(data_dir);
    let mut out = BTreeMap::new();
    let mut changed = false;
    for system in emulated {
        let cached = cache.get(system).filter(|m| {
            let i = PathBuf::from(&m.interpreter);
            m.workload == WORKLOAD_VERSION
                && interpreter_for(system, binfmt_dir).as_deref() == Some(i.as_path())
                && file_key(&i) == (m.interpreter_size, m.interpreter_mtime)
        });
        if let Some(m) = cached {
            out.insert(system.clone(), m.slowdown);
            continue;
        }
        match measure(system, native, probe_dir, binfmt_dir).await {
            Ok(m) => {
                tracing::info!(
                    system = %system,
                    slowdown = f64::from(m.slowdown) / 100.0,
                    native_ms = m.native_ms,
                    emulated_ms = m.emulated_ms,
                    "measured the emulation slowdown"
                );
                out.insert(system.clone(), m.slowdown);
                cache.insert(system.clone(), m);
                changed = true;
            }
            Err(e) => tracing::info!(system = %system, cause = %e, "emulation slowdown not measured"),
        }
    }
    if changed {
        save_cache(data_dir, &cache);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_bounded() {
        assert_eq!(ratio(100.0, 850.0), 850);
        assert_eq!(ratio(100.0, 50.0), 100, "never below 1x");
        assert_eq!(ratio(0.0, 50.0), 100_000.min(ratio(0.0, 50.0)));
        assert_eq!(ratio(1.0, 1e9), 100_000);
        assert_eq!(debian_arch("aarch64-linux"), Some("arm64"));
    }

    /// The real probe, when this machine has QEMU registered and the busyboxes
    /// (`scripts/emulation.sh setup`): aarch64 is measured slower than native, the result is
    /// cached, and a second call answers from the cache without running anything.
    #[tokio::test]
    async fn measures_and_caches_when_qemu_is_here() {
        let binfmt = Path::new(crate::systems::BINFMT_MISC_DIR);
        let probe = Path::new(DEFAULT_PROBE_DIR);
        if interpreter_for("aarch64-linux", binfmt).is_none() || !probe.join("arm64/busybox").is_file() {
            eprintln!("skipped: no QEMU aarch64 entry or no busybox (scripts/emulation.sh setup)");
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let systems = vec!["aarch64-linux".to_string(), "s390x-linux".to_string()];
        let got = slowdowns(&systems, "x86_64-linux", probe, binfmt, data.path()).await;
        let x = got["aarch64-linux"];
        assert!(x > 100, "emulation measured as fast as native: {x}");
        assert!(!got.contains_key("s390x-linux"), "no interpreter, no measurement");
        let cache = load_cache(data.path());
        assert_eq!(cache["aarch64-linux"].slowdown, x);
        // From the cache: an absent probe dir does not matter any more.
        let again = slowdowns(&systems, "x86_64-linux", Path::new("/nonexistent"), binfmt, data.path()).await;
        assert_eq!(again["aarch64-linux"], x);
    }
}
