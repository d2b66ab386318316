//! The node's configuration: one serde struct read from TOML, with command-line flags applied
//! on top (`buildmesh node --config FILE --http ... --bootstrap ...`), validated in one place and
//! printed back by `buildmesh check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use buildmesh_protocol::nixkey::PublicKey;
use buildmesh_protocol::store_path::StoreDir;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `executor` setting's values (defined with the executors, in [`crate::build`]).
pub use crate::build::ExecutorKind;

/// Why a configuration is unusable. Each variant names the field (and file) at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema (the message names line and column).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A field has an invalid value.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// The field name, as in the TOML file.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// Every setting of a node. Field names are the TOML keys; see the README's configuration reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its redb database, NAR blobs, key and build scratch space.
    pub data_dir: PathBuf,
    /// Address of the HTTP server (binary-cache gateway and JSON API).
    pub http: SocketAddr,
    /// Address of the admin listener, which serves the control routes (every request that is not
    /// `GET`/`HEAD`, token-guarded) besides everything `http` serves. Unset: the same listener as
    /// `http` when `http` is a loopback address, else `127.0.0.1:7802` (`127.0.0.1:0` when the
    /// `http` port is 0). Equal to `http`: one listener serves everything. See
    /// [`Config::admin_listener`].
    pub admin_http: Option<SocketAddr>,
    /// The node's secret key file (Nix format `name:base64`); default `<data_dir>/node.key`,
    /// created on first start.
    pub key_file: Option<PathBuf>,
    /// Key name used when the node creates its key (default `<hostname>-<first 10 hex digits of the node id>`).
    pub key_name: Option<String>,
    /// The logical store directory builds see (`/nix/store`, or `/gnu/store` for Guix).
    pub store_dir: String,
    /// Which executor runs builds.
    pub executor: ExecutorKind,
    /// How many builds may run at once (0 = number of CPUs).
    pub slots: usize,
    /// Per-build timeout in seconds.
    pub build_timeout_secs: u64,
    /// Cap on the kept log of one build, in bytes.
    pub max_log_bytes: usize,
    /// Disk the plain (decompressed) copies of large NARs served over HTTP may take, in bytes
    /// (`DATA/blobs/.plain`, least recently used deleted first; 0 = no copies).
    pub plain_copy_bytes: u64,
    /// How many times a transiently failing build is tried in all.
    pub max_attempts: u32,
    /// Host paths visible read-only inside the `local` sandbox.
    pub sandbox_paths: Vec<PathBuf>,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Builder keys whose attestations count towards the quorum (`name:base64`). The node's own key
    /// is always trusted.
    pub trusted_keys: Vec<String>,
    /// How many distinct trusted builders must attest the same NarHash before the gateway serves it.
    pub quorum: usize,
    /// Whose mesh jobs this node accepts and builds: `"any"`, or keys (`name:base64`); empty
    /// (the default) means `trusted_keys`. The node's own key always ([`crate::mesh::policy`]).
    pub submitters: crate::mesh::policy::Submitters,
    /// Who may be designated to build: keys (`name:base64`); empty (the default) is an open mesh
    /// ([`crate::mesh::policy`]).
    pub builders: Vec<String>,
    /// Default replication factor: how many independent nodes build each derivation.
    pub replicas: usize,
    /// A label naming who operates this machine; placement prefers builders with distinct owners.
    pub owner: Option<String>,
    /// Extra system features this node supports (like Nix's `system-features`).
    pub features: Vec<String>,
    /// Features a derivation must require to be built here (like Nix's mandatory features).
    pub mandatory_features: Vec<String>,
    /// The foreign systems this node builds under QEMU user-mode emulation (docs/emulation.md):
    /// absent = every system binfmt_misc can run here (entries with the `F` flag); `[]` = none.
    pub emulated_systems: Option<Vec<String>>,
    /// Whether an output needs at least one native builder among the agreeing trusted builders
    /// before it is accepted: emulated attestations alone never make a quorum.
    pub quorum_needs_native: bool,
    /// Systems for which emulated builds do not count at all: this node does not emulate them,
    /// and emulated attestations of their derivations never count towards the quorum here.
    pub no_emulation_for: Vec<String>,
    /// Shards the mesh is split into (default 1: unsharded). Each node and each derivation
    /// belongs to one shard; a job is designated, claimed and built in its derivation's shard
    /// only, on per-shard gossip topics. Every node of a mesh must use the same number; more
    /// than 1 needs `trusted_keys` (docs/protocol.md *Shards*).
    pub mesh_shards: u32,
    /// Finished jobs (complete or failed) the mesh state machine keeps in memory, the most
    /// recent ones, for late messages about them (`MeshConfig::max_finished_drvs`; default 0 =
    /// keep all). A builder of a large mesh sets it so its memory is bounded by its active jobs.
    pub mesh_max_finished_drvs: u64,
    /// The mesh: whether it runs and its timers (`[mesh]` table; see [`crate::mesh::MeshSettings`]).
    pub mesh: crate::mesh::MeshSettings,
    /// Transport settings: QUIC's congestion controller (`[net]` table; see
    /// [`crate::net::NetSettings`] and docs/nat.md).
    pub net: crate::net::NetSettings,
    /// NAT traversal: relays to reserve on, the relay service and its limits, AutoNAT (`[nat]`
    /// table; see [`crate::net::NatSettings`] and docs/nat.md).
    pub nat: crate::net::NatSettings,
    /// Build isolation: build users, fixed-output network, impure env allow-list, `nix`
    /// executor opt-in (`[sandbox]` table; see [`crate::sandbox::SandboxSettings`]).
    pub sandbox: crate::sandbox::SandboxSettings,
    /// Upload limits (`[submit]` table; see [`crate::submit::SubmitSettings`]).
    pub submit: crate::submit::SubmitSettings,
    /// The HTTP server's timeouts and limits (`[server]` table; see
    /// [`crate::http::server::ServerSettings`]).
    pub server: crate::http::server::ServerSettings,
    /// What `/nix-cache-info` says: `priority`, `want_mass_query` (`[cache]` table; see
    /// [`crate::http::cache::CacheSettings`]).
    pub cache: crate::http::cache::CacheSettings,
    /// QA across revisions: the ready rule (`[qa.ready]` table; see [`crate::qa::QaSettings`]).
    pub qa: crate::qa::QaSettings,
    /// How long (seconds) the node keeps trying to reopen a failed database (e.g. after the disk
    /// filled up) before it exits with an error so that its supervisor restarts it; `GET /health`
    /// answers 503 meanwhile.
    pub store_failure_exit_secs: u64,
    /// Most bytes the store may take (compressed NAR blobs plus realised paths); the background
    /// collector keeps it under this, least recently used first, keeping what is pinned (0 = no
    /// limit). See [`crate::gc`].
    pub max_store_bytes: u64,
    /// Least free bytes to leave on the data directory's filesystem (0 = no limit).
    pub min_free_bytes: u64,
    /// Seconds between two checks of the disk limits by the background collector.
    pub gc_interval_secs: u64,
    /// Most memory one build may use, in bytes (its cgroup's limit; no swap). Unset: 3/4 of the
    /// machine's memory, where cgroups can be used; `0`: no limit. See
    /// [`crate::sandbox::cgroup`].
    pub build_memory_max: Option<u64>,
    /// Most processes (and threads) one build may have at once. Unset: 4096 where cgroups can be
    /// used; `0`: no limit.
    pub build_pids_max: Option<u64>,
    /// Most CPU one build may use, in cores (`1.5`). Unset or `0`: no limit (builds already get
    /// `NIX_BUILD_CORES` = CPUs / slots).
    pub build_cpu_max: Option<f64>,
    /// Most bytes one build's directory and outputs may take on disk (measured every 2 s; the
    /// build is killed past it); `0` = no limit.
    pub build_dir_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            http: SocketAddr::from(([127, 0, 0, 1], 7800)),
            admin_http: None,
            key_file: None,
            key_name: None,
            store_dir: "/nix/store".to_string(),
            executor: ExecutorKind::Local,
            slots: 0,
            build_timeout_secs: 4 * 3600,
            max_log_bytes: 4 << 20,
            plain_copy_bytes: 1 << 30,
            max_attempts: 3,
            sandbox_paths: ["/bin", "/usr", "/lib", "/lib64"].iter().map(PathBuf::from).collect(),
            listen: vec!["/ip4/0.0.0.0/tcp/7801".to_string(), "/ip4/0.0.0.0/udp/7801/quic-v1".to_string()],
            bootstrap: Vec::new(),
            mdns: true,
            trusted_keys: Vec::new(),
            quorum: 2,
            submitters: crate::mesh::policy::Submitters::default(),
            builders: Vec::new(),
            replicas: 2,
            owner: None,
            features: Vec::new(),
            mandatory_features: Vec::new(),
            emulated_systems: None,
            quorum_needs_native: false,
            no_emulation_for: Vec::new(),
            mesh_shards: 1,
            mesh_max_finished_drvs: 0,
            mesh: crate::mesh::MeshSettings::default(),
            net: crate::net::NetSettings::default(),
            nat: crate::net::NatSettings::default(),
            sandbox: crate::sandbox::SandboxSettings::default(),
            submit: crate::submit::SubmitSettings::default(),
            server: crate::http::server::ServerSettings::default(),
            cache: crate::http::cache::CacheSettings::default(),
            qa: crate::qa::QaSettings::default(),
            store_failure_exit_secs: 300,
            max_store_bytes: 0,
            min_free_bytes: 0,
            gc_interval_secs: 30,
            build_memory_max: None,
            build_pids_max: None,
            build_cpu_max: None,
            build_dir_max_bytes: 0,
        }
    }
}

/// The admin listener's port when `admin_http` is unset and `http` is not loopback.
pub const DEFAULT_ADMIN_PORT: u16 = 7802;

/// `$XDG_DATA_HOME/buildmesh`, `~/.local/share/buildmesh`, or `/var/lib/buildmesh` for root
/// without a home.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("buildmesh");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/buildmesh"),
        None => PathBuf::from("/var/lib/buildmesh"),
    }
}

impl Config {
    /// Read a TOML file; missing keys take their defaults, unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })
    }

    /// Parse TOML text (see [`Config::from_file`]).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::from("<string>"), message: e.to_string() })
    }

    /// The effective configuration as TOML (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The key file: `key_file` or `<data_dir>/node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| self.data_dir.join("node.key"))
    }

    /// The effective number of build slots.
    pub fn effective_slots(&self) -> usize {
        if self.slots > 0 { self.slots } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
    }

    /// The garbage collector's limits.
    pub fn gc_settings(&self) -> crate::gc::GcSettings {
        crate::gc::GcSettings {
            max_store_bytes: self.max_store_bytes,
            min_free_bytes: self.min_free_bytes,
            interval_secs: self.gc_interval_secs,
        }
    }

    /// The per-build limits, and whether they were asked for explicitly (then a node that cannot
    /// enforce them refuses to start; the defaults are applied where cgroups can be used).
    pub fn build_limits(&self) -> (crate::sandbox::BuildLimits, bool) {
        let explicit = self.build_memory_max.is_some() || self.build_pids_max.is_some() || self.build_cpu_max.is_some();
        let memory_default = nix::sys::sysinfo::sysinfo().map(|i| i.ram_total() / 4 * 3).unwrap_or(0);
        let limits = crate::sandbox::BuildLimits {
            memory_max: self.build_memory_max.unwrap_or(memory_default),
            pids_max: self.build_pids_max.unwrap_or(4096),
            cpu_max: self.build_cpu_max.unwrap_or(0.0),
            dir_max: self.build_dir_max_bytes,
        };
        (limits, explicit)
    }

    /// The store dir, validated.
    pub fn store_dir(&self) -> Result<StoreDir, ConfigError> {
        StoreDir::new(&self.store_dir).map_err(|e| invalid("store_dir", e.to_string()))
    }

    /// Where the control routes are served: `None` when the `http` listener serves them itself,
    /// else the address of a separate admin listener (see [`Config::admin_http`]).
    pub fn admin_listener(&self) -> Option<SocketAddr> {
        match self.admin_http {
            Some(a) if a == self.http => None,
            Some(a) => Some(a),
            None if self.http.ip().is_loopback() => None,
            None => {
                Some(SocketAddr::from(([127, 0, 0, 1], if self.http.port() == 0 { 0 } else { DEFAULT_ADMIN_PORT })))
            }
        }
    }

    /// The trusted keys, parsed.
    pub fn trusted_public_keys(&self) -> Result<Vec<PublicKey>, ConfigError> {
        self.trusted_keys
            .iter()
            // Nix `name:base64` or a Guix `(public-key ...)` s-expression (docs/guix.md).
            .map(|k| {
                buildmesh_protocol::guix::parse_trusted_key(k)
                    .map_err(|e| invalid("trusted_keys", format!("{k:?}: {e}")))
            })
            .collect()
    }

    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store_dir()?;
        self.trusted_public_keys()?;
        if let crate::mesh::policy::Submitters::Keys(keys) = &self.submitters {
            for k in keys {
                crate::mesh::policy::key_to_node(k).map_err(|e| invalid("submitters", e))?;
            }
        }
        for k in &self.builders {
            crate::mesh::policy::key_to_node(k).map_err(|e| invalid("builders", e))?;
        }
        if let Some(a) = self.admin_listener()
            && a.port() != 0
            && a.port() == self.http.port()
            && (a.ip() == self.http.ip() || a.ip().is_unspecified() || self.http.ip().is_unspecified())
        {
            return Err(invalid("admin_http", format!("{a} collides with http {}", self.http)));
        }
        self.mesh.validate().map_err(|e| invalid("mesh", e.to_string()))?;
        self.sandbox.validate(self.effective_slots()).map_err(|e| invalid("sandbox", e.to_string()))?;
        self.submit.validate().map_err(|e| invalid("submit", e))?;
        self.server.validate().map_err(|e| invalid("server", e))?;
        self.cache.validate().map_err(|e| invalid("cache", e))?;
        if self.quorum == 0 {
            return Err(invalid("quorum", "must be at least 1"));
        }
        if self.mesh_shards == 0 {
            return Err(invalid("mesh_shards", "must be at least 1"));
        }
        if self.mesh_shards > 1 && self.trusted_keys.is_empty() {
            return Err(invalid(
                "mesh_shards",
                "a sharded mesh needs trusted_keys: a node that trusts only itself cannot count the builds of \
                 another shard; keep mesh_shards = 1",
            ));
        }
        if self.replicas == 0 {
            return Err(invalid("replicas", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.build_timeout_secs == 0 {
            return Err(invalid("build_timeout_secs", "must be at least 1"));
        }
        if let Some(m) = self.build_memory_max
            && m > 0
            && m < (4 << 20)
        {
            return Err(invalid("build_memory_max", "must be 0 (no limit) or at least 4 MiB"));
        }
        if let Some(c) = self.build_cpu_max
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(invalid("build_cpu_max", "must be a number of cores, 0 or more"));
        }
        if self.gc_interval_secs == 0 {
            return Err(invalid("gc_interval_secs", "must be at least 1"));
        }
        if self.max_log_bytes < 1024 {
            return Err(invalid("max_log_bytes", "must be at least 1024"));
        }
        for addr in &self.listen {
            addr.parse::<libp2p::Multiaddr>().map_err(|e| invalid("listen", format!("{addr:?}: {e}")))?;
        }
        for addr in &self.bootstrap {
            let ma = addr.parse::<libp2p::Multiaddr>().map_err(|e| invalid("bootstrap", format!("{addr:?}: {e}")))?;
            if !ma.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(invalid("bootstrap", format!("{addr:?} must end in /p2p/<peer id>")));
            }
        }
        self.nat.to_config().map_err(|e| invalid("nat", e.to_string()))?;
        for p in &self.sandbox_paths {
            if !p.is_absolute() {
                return Err(invalid("sandbox_paths", format!("{} is not an absolute path", p.display())));
            }
        }
        for (field, list) in [
            ("emulated_systems", self.emulated_systems.as_deref().unwrap_or_default()),
            ("no_emulation_for", &self.no_emulation_for),
        ] {
            if let Some(s) = list.iter().find(|s| !is_system_name(s)) {
                return Err(invalid(field, format!("{s:?} is not a system name like \"aarch64-linux\"")));
            }
        }
        if let Some(name) = &self.key_name
            && (name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace))
        {
            return Err(invalid("key_name", format!("{name:?} must be non-empty without ':' or whitespace")));
        }
        Ok(())
    }
}

/// `<cpu>-<os>` as Nix spells systems: ASCII letters, digits and `_`, one `-` or more.
fn is_system_name(s: &str) -> bool {
    s.contains('-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn admin_listener_defaults_to_loopback() {
        let c = Config::default();
        assert_eq!(c.admin_listener(), None, "loopback http serves everything");
        let c = Config { http: "0.0.0.0:7800".parse().unwrap(), ..Config::default() };
        assert_eq!(c.admin_listener(), Some("127.0.0.1:7802".parse().unwrap()));
        let c = Config { http: "0.0.0.0:0".parse().unwrap(), ..Config::default() };
        assert_eq!(c.admin_listener(), Some("127.0.0.1:0".parse().unwrap()));
        let c = Config { admin_http: Some("127.0.0.1:9000".parse().unwrap()), ..Config::default() };
        assert_eq!(c.admin_listener(), Some("127.0.0.1:9000".parse().unwrap()));
        let c = Config { admin_http: Some(c.http), ..Config::default() };
        assert_eq!(c.admin_listener(), None);
        let c = Config {
            http: "0.0.0.0:7800".parse().unwrap(),
            admin_http: Some("127.0.0.1:7800".parse().unwrap()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("admin_http"));
        let c = Config::from_toml("submitters = \"any\"\nbuilders = [\"nope\"]\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("builders"));
    }

    #[test]
    fn partial_file_takes_defaults() {
        let c = Config::from_toml("quorum = 3\nexecutor = \"nix\"\nbootstrap = []\n").unwrap();
        assert_eq!(c.quorum, 3);
        assert_eq!(c.executor, ExecutorKind::Nix);
        assert_eq!(c.replicas, 2);
    }

    #[test]
    fn quic_congestion_is_bbr_unless_set_and_bad_values_name_the_key() {
        assert_eq!(Config::default().net.quic_congestion, crate::net::QuicCongestion::Bbr);
        let c = Config::from_toml("[net]\nquic_congestion = \"cubic\"\n").unwrap();
        assert_eq!(c.net.quic_congestion, crate::net::QuicCongestion::Cubic);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let c = Config::from_toml("[net]\nquic_congestion = \"bbr\"\n").unwrap();
        assert_eq!(c.net.quic_congestion, crate::net::QuicCongestion::Bbr);
        for bad in ["\"reno\"", "\"BBR\"", "1", "\"\""] {
            let e = Config::from_toml(&format!("[net]\nquic_congestion = {bad}\n")).unwrap_err().to_string();
            assert!(e.contains("quic_congestion") && e.contains("line 2"), "{bad}: {e}");
        }
        let e = Config::from_toml("[net]\nquic_congestion = \"reno\"\n").unwrap_err().to_string();
        assert!(e.contains("`bbr`") && e.contains("`cubic`"), "the error names the accepted values: {e}");
        let e = Config::from_toml("[net]\nquic_congestoin = \"bbr\"\n").unwrap_err().to_string();
        assert!(e.contains("quic_congestoin"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let e = Config::from_toml("quorum = 2\nqourum = 3\n").unwrap_err().to_string();
        assert!(e.contains("qourum") && e.contains("line 2"), "{e}");
        let e = Config::from_toml("quorum = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("quorum"), "{e}");
        let c = Config { trusted_keys: vec!["nope".into()], ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("trusted_keys"));
        let c = Config { bootstrap: vec!["/ip4/127.0.0.1/tcp/1".into()], ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("/p2p/"));
        let c = Config { quorum: 0, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("quorum"));
        let c = Config::from_toml("[cache]\npriority = 5000\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("cache"));
        let e = Config::from_toml("[cache]\npriority = -1\n").unwrap_err().to_string();
        assert!(e.contains("priority"), "{e}");
        let c = Config { emulated_systems: Some(vec!["aarch64 linux".into()]), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("emulated_systems"));
        let c = Config::from_toml("emulated_systems = []\nno_emulation_for = [\"armv7l-linux\"]\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.emulated_systems, Some(vec![]));
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
