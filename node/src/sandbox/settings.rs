//! The operator's knobs for build isolation: the `[sandbox]` table of the node config.
//!
//! ```toml
//! [sandbox]
//! build_uid_base = 30000          # builders run as host uids 30000..30256 (one per running build)
//! build_uid_count = 256
//! build_users_lock_dir = "/run/buildmesh/build-users"
//! fixed_output_network = "slirp4netns"   # or "none": fixed-output builds get no network
//! slirp4netns = "slirp4netns"
//! impure_env_allow = ["http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"]
//! allow_unsafe_nix_executor = false   # the `nix` executor refuses to start
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SandboxRunner;
use super::build_users::{
    BuildUserError, BuildUsers, DEFAULT_BUILD_UID_BASE, DEFAULT_BUILD_UID_COUNT, DEFAULT_BUILD_USERS_LOCK_DIR,
};
use super::slirp::find_program;

/// The `impureEnvVars` passed by default (when the node's environment has them): proxies only.
pub const DEFAULT_IMPURE_ENV_ALLOW: [&str; 5] = ["http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"];

/// What network a fixed-output build gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FixedOutputNetwork {
    /// Its own network namespace with outbound access through `slirp4netns`, the host's
    /// loopback refused.
    Slirp4netns,
    /// No network at all (only its own `lo`), as for every other build.
    None,
}

/// How builds are isolated (see the module docs and [`super`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// First host uid (and gid) of the build users.
    pub build_uid_base: u32,
    /// How many build users; at least the number of slots. Several nodes on one machine share
    /// the range safely (each running build locks its uid).
    pub build_uid_count: u32,
    /// Where the per-uid lock files are kept (host-wide).
    pub build_users_lock_dir: PathBuf,
    /// Network of fixed-output builds.
    pub fixed_output_network: FixedOutputNetwork,
    /// The `slirp4netns` program (a name is looked up in `PATH` and the usual directories).
    pub slirp4netns: PathBuf,
    /// The only variables a fixed-output derivation's `impureEnvVars` may take from the node's
    /// environment; others it names are not passed at all.
    pub impure_env_allow: Vec<String>,
    /// Let the `nix` executor run. The host's Nix gives builders less isolation than the `local`
    /// sandbox (Debian's Nix: `sandbox = false`, so builders see the host's files and network,
    /// as root in single-user mode; even a sandboxed Nix gives fixed-output builds the host's
    /// network and loopback). Off: the `nix` executor refuses to start.
    pub allow_unsafe_nix_executor: bool,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            build_uid_base: DEFAULT_BUILD_UID_BASE,
            build_uid_count: DEFAULT_BUILD_UID_COUNT,
            build_users_lock_dir: PathBuf::from(DEFAULT_BUILD_USERS_LOCK_DIR),
            fixed_output_network: FixedOutputNetwork::Slirp4netns,
            slirp4netns: PathBuf::from("slirp4netns"),
            impure_env_allow: DEFAULT_IMPURE_ENV_ALLOW.iter().map(|s| s.to_string()).collect(),
            allow_unsafe_nix_executor: false,
        }
    }
}

/// A [`SandboxSettings`] field that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The build uid range is unusable.
    #[error("sandbox.build_uid_base/build_uid_count: {0}")]
    BuildUsers(#[from] BuildUserError),
    /// Fewer build users than slots.
    #[error("sandbox.build_uid_count = {count} is less than the {slots} build slots")]
    TooFewBuildUsers {
        /// Configured count.
        count: u32,
        /// Effective slots.
        slots: usize,
    },
    /// A name in `impure_env_allow` is not a variable name.
    #[error("sandbox.impure_env_allow: {0:?} is not a variable name")]
    BadVariable(String),
}

impl SandboxSettings {
    /// The build users these settings describe.
    pub fn build_users(&self) -> Result<BuildUsers, BuildUserError> {
        BuildUsers::new(self.build_uid_base, self.build_uid_count, &self.build_users_lock_dir)
    }

    /// Check every field for a node with `slots` build slots.
    pub fn validate(&self, slots: usize) -> Result<(), SettingsError> {
        self.build_users()?;
        if (self.build_uid_count as usize) < slots {
            return Err(SettingsError::TooFewBuildUsers { count: self.build_uid_count, slots });
        }
        for v in &self.impure_env_allow {
            if v.is_empty() || v.contains(['=', '\0']) {
                return Err(SettingsError::BadVariable(v.clone()));
            }
        }
        Ok(())
    }

    /// A [`SandboxRunner`] with these build users and fixed-output network, starting `helper`
    /// (`None`: the running executable). Fails, with the reason, when the build uid range is
    /// unusable or holds accounts of this host. Warns when slirp4netns is wanted but missing
    /// (fixed-output builds then fail with [`super::ExecutorError::NoNetwork`]).
    pub fn runner(&self, helper: Option<PathBuf>) -> Result<SandboxRunner, String> {
        let users = self.build_users().map_err(|e| format!("sandbox.build_uid_base/build_uid_count: {e}"))?;
        let taken = users.host_accounts_in_range();
        if !taken.is_empty() {
            return Err(format!(
                "the build uid range {}..{} holds accounts of this host ({}); builders must not share a uid with \
                 anyone: choose another `sandbox.build_uid_base`",
                users.base(),
                u64::from(users.base()) + u64::from(users.count()),
                taken.join(", ")
            ));
        }
        let slirp = match self.fixed_output_network {
            FixedOutputNetwork::None => None,
            FixedOutputNetwork::Slirp4netns => {
                let found = find_program(&self.slirp4netns);
                if found.is_none() {
                    tracing::warn!(
                        program = %self.slirp4netns.display(),
                        "slirp4netns not found: fixed-output builds will fail until it is installed (Debian: \
                         apt-get install slirp4netns) or sandbox.fixed_output_network = \"none\""
                    );
                }
                found
            }
        };
        let runner = match helper {
            Some(h) => SandboxRunner::new(h),
            None => SandboxRunner::current_exe().map_err(|e| e.to_string())?,
        };
        Ok(runner.with_build_users(users).with_slirp4netns(slirp))
    }

    /// The environment a fixed-output derivation listing `requested` in `impureEnvVars` gets:
    /// each allowed name with the node's value (`""` when unset, as Nix does), nothing else.
    pub fn impure_env(&self, requested: &[String]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        impure_env(requested, &self.impure_env_allow, |k| std::env::var_os(k))
    }
}

/// [`SandboxSettings::impure_env`] with the host environment as a parameter.
pub fn impure_env(
    requested: &[String],
    allowed: &[String],
    host: impl Fn(&str) -> Option<OsString>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    requested
        .iter()
        .filter(|k| allowed.contains(k))
        .map(|k| (k.clone().into_bytes(), host(k).map(|v| v.into_vec()).unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_impure_vars_pass() {
        let host = |k: &str| match k {
            "http_proxy" => Some(OsString::from("http://proxy:3128")),
            "SECRET_TOKEN" => Some(OsString::from("hunter2")),
            _ => None,
        };
        let allowed: Vec<String> = DEFAULT_IMPURE_ENV_ALLOW.iter().map(|s| s.to_string()).collect();
        let req = ["http_proxy", "SECRET_TOKEN", "no_proxy"].map(String::from);
        let env = impure_env(&req, &allowed, host);
        assert_eq!(
            env,
            BTreeMap::from([
                (b"http_proxy".to_vec(), b"http://proxy:3128".to_vec()),
                (b"no_proxy".to_vec(), Vec::new())
            ])
        );
        assert!(impure_env(&req, &[], host).is_empty());
    }

    #[test]
    fn validation_names_the_field() {
        let s = SandboxSettings::default();
        s.validate(4).unwrap();
        let e = SandboxSettings { build_uid_count: 2, ..s.clone() }.validate(4).unwrap_err().to_string();
        assert!(e.contains("build_uid_count = 2") && e.contains("4 build slots"), "{e}");
        let e = SandboxSettings { build_uid_base: 10, ..s.clone() }.validate(1).unwrap_err().to_string();
        assert!(e.contains("build_uid_base"), "{e}");
        let e = SandboxSettings { impure_env_allow: vec!["A=B".into()], ..s }.validate(1).unwrap_err().to_string();
        assert!(e.contains("impure_env_allow"), "{e}");
    }

    #[test]
    fn toml_round_trip() {
        let s: SandboxSettings =
            toml::from_str("fixed_output_network = \"none\"\nimpure_env_allow = []\nbuild_uid_base = 50000\n").unwrap();
        assert_eq!(s.fixed_output_network, FixedOutputNetwork::None);
        assert!(s.impure_env_allow.is_empty());
        assert_eq!((s.build_uid_base, s.build_uid_count), (50000, DEFAULT_BUILD_UID_COUNT));
    }
}
