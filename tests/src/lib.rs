//! Helpers shared by the integration tests: where the vectors are, where the built `buildmesh`
//! binary is, and a check that a real Nix client is installed (the test command installs it; a
//! missing tool is a failure, never a skip).

use std::path::PathBuf;
use std::process::Command;

/// `../shared/vectors`, beside the repository (CI has it too).
pub fn vectors_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    assert!(dir.is_dir(), "test vectors not found at {}: ../shared must sit beside the repository", dir.display());
    dir
}

/// The `buildmesh` binary of this workspace's target dir, built on demand.
pub fn buildmesh_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> -> target/<profile>/buildmesh
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let bin = profile_dir.join("buildmesh");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "buildmesh", "--bin", "buildmesh"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the buildmesh binary failed");
    }
    bin
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
