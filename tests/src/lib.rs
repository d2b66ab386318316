//! Helpers shared by the integration tests: where the vectors are, where the built `buildmesh`
//! program is ([`buildmesh_bin!`]), and a check that a real Nix client is installed (the test command installs it; a
//! missing tool is a failure, never a skip).

use std::path::PathBuf;
use std::process::Command;

/// `../shared/vectors`, beside the repository (CI has it too).
pub fn vectors_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    assert!(dir.is_dir(), "test vectors not found at {}: ../shared must sit beside the repository", dir.display());
    dir
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

/// Panic with a clear message unless a real Nix (`nix-store`, `nix`) is on PATH.
pub fn require_nix() {
    for tool in ["nix-store", "nix"] {
        let ok = Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(
            ok,
            "`{tool}` is not installed: run the tests through scripts/test.sh, which installs Debian's nix-bin"
        );
    }
}
