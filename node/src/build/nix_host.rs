//! The `nix` executor's part of the input check (DESIGN invariant 10): an input that is valid in
//! the host store already is used from there, so its host copy must have the NarHash registered
//! here (which the scheduler checked against the trust rule before the build). A host copy with
//! other bytes (e.g. imported before a poisoned registration was replaced) is never built upon.

use std::path::Path;
use std::process::Stdio;

use buildmesh_protocol::store_path::{StoreDir, StorePath};

use super::BuildError;
use super::local::executor_error;
use crate::store::PathInfo;

/// Compare the host store's NarHash of every path of `valid` (valid in the host store) with the
/// registered one, `per_call` paths per `nix-store --query --hash`.
pub(crate) fn check_host_copies(
    nix_store: &Path,
    store_dir: &StoreDir,
    valid: &[(&StorePath, &PathInfo)],
    per_call: usize,
) -> Result<(), BuildError> {
    let fail = |what: &str, e: String| executor_error(format!("{what}: {e}"), Vec::new());
    for chunk in valid.chunks(per_call.max(1)) {
        let out = std::process::Command::new(nix_store)
            .stdin(Stdio::null())
            .args(["--query", "--hash"])
            .args(chunk.iter().map(|(p, _)| store_dir.display(p)))
            .output()
            .map_err(|e| fail("running nix-store --query --hash", e.to_string()))?;
        if !out.status.success() {
            return Err(fail("nix-store --query --hash", String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for ((p, info), line) in chunk.iter().zip(text.lines()) {
            if line.trim() != info.nar_hash.to_string() {
                let shown = store_dir.display(p);
                return Err(BuildError::InputRejected {
                    reason: format!(
                        "input {shown} is valid in the host Nix store with NarHash {}, but the trust policy \
                         accepts {}; the host copy is not used (remove it with nix-store --delete)",
                        line.trim(),
                        info.nar_hash
                    ),
                    path: shown,
                    transient: false,
                });
            }
        }
    }
    Ok(())
}
