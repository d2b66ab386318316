//! Whether the `nix` executor may run here: the host's Nix isolates builders less than the
//! `local` sandbox, so it runs only when the operator opts in
//! (`sandbox.allow_unsafe_nix_executor = true`, `--allow-unsafe-nix-executor`).
//!
//! What Nix does with a builder depends on its config (`nix show-config`):
//! - `sandbox = false` (Debian's default, Nix 2.8): the builder sees the whole host filesystem
//!   and network, the node's loopback API included;
//! - `build-users-group` empty with Nix run as root (single-user): the builder runs as root, so it
//!   can change host settings (`/proc/sys/kernel/core_pattern`) and take the machine;
//! - even sandboxed with build users, Nix gives fixed-output builds the host's network namespace.
//!
//! Without the opt-in [`check`] refuses with an error naming what this Nix allows; with it, the
//! node starts and logs a warning saying the same.

use std::path::Path;
use std::process::Stdio;

/// What the host's Nix config says about isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NixIsolation {
    /// `sandbox` (`true`, `false`, `relaxed`; `?` when unknown).
    pub(crate) sandbox: String,
    /// `build-users-group` (empty: builders run as Nix's own user).
    pub(crate) build_users_group: String,
}

impl NixIsolation {
    /// Parse `nix show-config` output (`key = value` lines).
    pub(crate) fn parse(text: &str) -> NixIsolation {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(" = "))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        NixIsolation {
            sandbox: get("sandbox").unwrap_or_else(|| "?".into()),
            build_users_group: get("build-users-group").unwrap_or_default(),
        }
    }

    /// What a builder may do under this config, in words.
    pub(crate) fn risks(&self, euid_root: bool) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.sandbox != "true" {
            r.push("builders see the host's files and network, the node's loopback API included (sandbox is not true)");
        }
        if euid_root && self.build_users_group.is_empty() {
            r.push("builders run as root (build-users-group is empty), so a derivation can change host settings");
        }
        r.push("fixed-output builds share the host's network namespace and loopback");
        r
    }
}

/// Read the host Nix's isolation settings with `nix show-config`.
fn detect(nix: &Path) -> NixIsolation {
    let out = std::process::Command::new(nix)
        .args(["--extra-experimental-features", "nix-command", "show-config"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => NixIsolation::parse(&String::from_utf8_lossy(&o.stdout)),
        _ => NixIsolation { sandbox: "?".into(), build_users_group: String::new() },
    }
}

/// Allow the `nix` executor only when `allowed`; the error (or the warning logged when allowed)
/// says what this Nix lets a builder do.
pub(crate) fn check(nix: &Path, allowed: bool) -> Result<(), String> {
    let iso = detect(nix);
    let risks = iso.risks(nix::unistd::geteuid().is_root()).join("; ");
    if !allowed {
        return Err(format!(
            "the nix executor runs untrusted builders with the host Nix's isolation (sandbox = {}, \
             build-users-group = {:?}): {risks}. Use the `local` executor, or accept this for trusted jobs only \
             with `sandbox.allow_unsafe_nix_executor = true` (--allow-unsafe-nix-executor)",
            iso.sandbox, iso.build_users_group
        ));
    }
    tracing::warn!(
        sandbox = %iso.sandbox,
        build_users_group = %iso.build_users_group,
        "the nix executor is allowed by sandbox.allow_unsafe_nix_executor: {risks}; build only jobs you trust"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_config() {
        let iso = NixIsolation::parse(
            "allowed-uris = \nbuild-users-group = nixbld\nsandbox = false\nsandbox-fallback = true\n",
        );
        assert_eq!(iso, NixIsolation { sandbox: "false".into(), build_users_group: "nixbld".into() });
        assert_eq!(iso.risks(true).len(), 2);
        let single = NixIsolation::parse("build-users-group = \nsandbox = false\n");
        assert!(single.risks(true).iter().any(|r| r.contains("as root")));
        let good = NixIsolation::parse("build-users-group = nixbld\nsandbox = true\n");
        assert_eq!(good.risks(true), ["fixed-output builds share the host's network namespace and loopback"]);
    }
}
