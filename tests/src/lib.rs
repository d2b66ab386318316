//! Helpers shared by the integration tests: where the vectors are, where the built `buildmesh`
//! program is ([`buildmesh_bin!`]), and a check that a real Nix client is installed (the test command installs it; a
//! missing tool is a failure, never a skip).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/vectors`, beside the repository (CI has it too).
pub fn vectors_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    assert!(dir.is_dir(), "test vectors not found at {}: ../shared must sit beside the repository", dir.display());
    dir
}

/// `../shared/vectors/nix`: the derivations, NARs and narinfos real Nix 2.8 made.
pub fn nix_vectors() -> PathBuf {
    vectors_dir().join("nix")
}

/// Rows of a vectors TSV file (`#` comment lines and empty lines skipped), split on TAB.
pub fn tsv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// The `ip` program (in /usr/sbin on Debian, which a non-login PATH may lack).
pub fn ip_program() -> String {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
        .to_string()
}

/// Run `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let o =
        Command::new(ip_program()).args(args).output().expect("run `ip` (iproute2 is installed by scripts/test.sh)");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// The path of the `buildmesh` program the tests run: this package's `buildmesh-under-test`
/// binary (the same code as `buildmesh`, see tests/src/bin/), which cargo builds before the
/// integration tests. A macro, because cargo sets `CARGO_BIN_EXE_*` only when it compiles a test
/// target, not this library.
#[macro_export]
macro_rules! buildmesh_bin {
    () => {
        env!("CARGO_BIN_EXE_buildmesh-under-test")
    };
}

/// Panic with a clear message unless a real Nix (`nix-store`, `nix`, `nix-hash`) is on PATH.
pub fn require_nix() {
    for tool in ["nix-store", "nix", "nix-hash"] {
        let ok = Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(
            ok,
            "`{tool}` is not installed: run the tests through scripts/test.sh, which installs Debian's nix-bin"
        );
    }
}
