//! What one sandboxed builder run needs ([`SandboxSpec`]) and the environment Nix gives builders.
//!
//! A spec is plain data: the parent ([`super::SandboxRunner`]) validates it, writes it to a private
//! file and hands it to the `buildmesh __sandbox-exec` helper, which sets up the namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the build directory appears inside the sandbox (Nix's `sandbox-build-dir` default).
pub const SANDBOX_BUILD_DIR: &str = "/build";
/// The `HOME` Nix gives builders: a path that does not exist.
pub const HOMELESS_SHELTER: &str = "/homeless-shelter";
/// The uid the builder runs as inside the sandbox (Nix's `nixbld` user in its sandbox).
pub const DEFAULT_SANDBOX_UID: u32 = 1000;
/// The gid the builder runs as inside the sandbox (Nix's `nixbld` group in its sandbox).
pub const DEFAULT_SANDBOX_GID: u32 = 100;
/// Default cap on the kept build log (bytes).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Host paths made visible read-only by default (missing ones are skipped).
pub const DEFAULT_SANDBOX_PATHS: [&str; 4] = ["/bin", "/usr", "/lib", "/lib64"];

/// Paths inside the sandbox that a `sandbox_paths` entry may not cover or sit under.
const RESERVED: [&str; 4] = ["/proc", "/dev", SANDBOX_BUILD_DIR, "/tmp"];

/// One input store path: a host file, directory or symlink shown read-only at its logical path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPath {
    /// Where the content is on the host (for example the node's own store entry).
    pub host: PathBuf,
    /// The store path inside the sandbox, a direct child of [`SandboxSpec::store_dir`].
    pub path: PathBuf,
}

/// Everything needed to run one builder process in the sandbox.
///
/// Construct with [`SandboxSpec::new`] and set the public fields; [`SandboxSpec::validate`] is
/// called by the runner before anything happens on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxSpec {
    /// The builder, an absolute path as seen inside the sandbox (`/bin/sh`, a store path).
    pub builder: PathBuf,
    /// Arguments after `argv[0]` (which is the builder's file name, as in Nix).
    pub args: Vec<Vec<u8>>,
    /// The builder's complete environment: nothing else is passed (see [`nix_builder_env`]).
    #[serde(with = "byte_pairs")]
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The logical store directory, for example `/nix/store`.
    pub store_dir: PathBuf,
    /// The host directory that appears as [`Self::store_dir`] (read-write, so outputs land here).
    pub store_host: PathBuf,
    /// Input store paths, each bind-mounted read-only at its logical path.
    pub inputs: Vec<InputPath>,
    /// A fresh host directory that appears read-write at [`SANDBOX_BUILD_DIR`].
    pub build_dir_host: PathBuf,
    /// Host paths shown read-only at the same place; missing ones are skipped.
    pub sandbox_paths: Vec<PathBuf>,
    /// Outbound network (fixed-output derivations only) through `slirp4netns` in the build's own
    /// network namespace, the host's loopback refused. Otherwise only a loopback interface.
    pub network: bool,
    /// Wall-clock limit; the whole sandbox is killed when it passes.
    pub timeout: Option<Duration>,
    /// Cap on the kept log (the first half and the last half are kept).
    pub max_log_bytes: u64,
    /// Uid of the builder inside the sandbox (mapped to the run's unprivileged build user on the host).
    pub uid: u32,
    /// Gid of the builder inside the sandbox (mapped to the run's build group on the host).
    pub gid: u32,
}

/// A [`SandboxSpec`] that cannot be run: which field is wrong and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    /// A field holds a value the sandbox cannot use.
    #[error("sandbox spec field `{field}`: {reason}")]
    Invalid {
        /// The field (with an index or key when it is a list or map).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), reason: reason.into() }
}

/// An absolute path without `.`/`..` components and not `/` itself.
fn check_abs(field: &str, p: &Path) -> Result<(), SpecError> {
    use std::os::unix::ffi::OsStrExt;
    if !p.is_absolute() {
        return Err(invalid(field, format!("{} is not an absolute path", p.display())));
    }
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(field, "contains a NUL byte"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(invalid(field, format!("{} contains `.` or `..`", p.display())));
    }
    if p.parent().is_none() {
        return Err(invalid(field, "must not be `/`"));
    }
    Ok(())
}

impl SandboxSpec {
    /// A spec with Nix's defaults: no args, empty env, no inputs, [`DEFAULT_SANDBOX_PATHS`], no
    /// network, no timeout, [`DEFAULT_MAX_LOG_BYTES`], uid 1000 / gid 100.
    pub fn new(
        builder: impl Into<PathBuf>,
        store_dir: impl Into<PathBuf>,
        store_host: impl Into<PathBuf>,
        build_dir_host: impl Into<PathBuf>,
    ) -> SandboxSpec {
        SandboxSpec {
            builder: builder.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            store_dir: store_dir.into(),
            store_host: store_host.into(),
            inputs: Vec::new(),
            build_dir_host: build_dir_host.into(),
            sandbox_paths: DEFAULT_SANDBOX_PATHS.iter().map(PathBuf::from).collect(),
            network: false,
            timeout: None,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            uid: DEFAULT_SANDBOX_UID,
            gid: DEFAULT_SANDBOX_GID,
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_abs("builder", &self.builder)?;
        for (i, a) in self.args.iter().enumerate() {
            if a.contains(&0) {
                return Err(invalid(format!("args[{i}]"), "contains a NUL byte"));
            }
        }
        for (k, v) in &self.env {
            let name = String::from_utf8_lossy(k);
            if k.is_empty() {
                return Err(invalid("env", "empty variable name"));
            }
            if k.contains(&0) || k.contains(&b'=') {
                return Err(invalid(format!("env[{name}]"), "variable name contains `=` or NUL"));
            }
            if v.contains(&0) {
                return Err(invalid(format!("env[{name}]"), "value contains a NUL byte"));
            }
        }
        check_abs("store_dir", &self.store_dir)?;
        for r in RESERVED.iter().chain(["/etc"].iter()) {
            let r = Path::new(r);
            if self.store_dir.starts_with(r) || r.starts_with(&self.store_dir) {
                return Err(invalid("store_dir", format!("overlaps {}", r.display())));
            }
        }
        check_abs("store_host", &self.store_host)?;
        check_abs("build_dir_host", &self.build_dir_host)?;
        let mut seen = BTreeSet::new();
        for (i, input) in self.inputs.iter().enumerate() {
            let field = format!("inputs[{i}]");
            check_abs(&format!("{field}.host"), &input.host)?;
            check_abs(&format!("{field}.path"), &input.path)?;
            if input.path.parent() != Some(self.store_dir.as_path()) {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("{} is not directly in {}", input.path.display(), self.store_dir.display()),
                ));
            }
            if !seen.insert(&input.path) {
                return Err(invalid(format!("{field}.path"), format!("{} is listed twice", input.path.display())));
            }
        }
        for (i, p) in self.sandbox_paths.iter().enumerate() {
            let field = format!("sandbox_paths[{i}]");
            check_abs(&field, p)?;
            if p.starts_with(&self.store_dir) || self.store_dir.starts_with(p) {
                return Err(invalid(field, format!("{} overlaps the store dir", p.display())));
            }
            for r in RESERVED {
                if p.starts_with(r) || Path::new(r).starts_with(p) {
                    return Err(invalid(field, format!("{} overlaps {r}, which the sandbox provides", p.display())));
                }
            }
        }
        if self.uid == u32::MAX || self.gid == u32::MAX {
            return Err(invalid("uid/gid", "u32::MAX is not a valid id"));
        }
        Ok(())
    }
}

/// Serde for a byte map as a list of `[name, value]` pairs (JSON maps need string keys).
mod byte_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(m: &BTreeMap<Vec<u8>, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(&Vec<u8>, &Vec<u8>)> = m.iter().collect();
        v.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, D::Error> {
        let v: Vec<(Vec<u8>, Vec<u8>)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

/// The environment Nix 2.8 gives a builder (`LocalDerivationGoal::initEnv`), for a derivation
/// that is not fixed-output.
///
/// In Nix's order: `PATH=/path-not-set`, `HOME=/homeless-shelter`, `NIX_STORE`, `NIX_BUILD_CORES`
/// (all four may be overridden by the derivation), then the derivation's env (after
/// [`pass_as_file`] when it uses `passAsFile`), then `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`,
/// `TEMP` and `PWD` (all = `build_top`), `NIX_LOG_FD=2` and `TERM=xterm-256color`, which the
/// derivation cannot override.
pub fn nix_builder_env(
    drv_env: &BTreeMap<Vec<u8>, Vec<u8>>,
    store_dir: &str,
    build_top: &str,
    cores: u32,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    builder_env(drv_env, store_dir, build_top, cores, None)
}

/// [`nix_builder_env`] for a fixed-output derivation: also `NIX_OUTPUT_CHECKED=1` and the
/// variables its `impureEnvVars` lists, with the values the caller took from the host (Nix uses
/// `""` for a variable the host does not have). They override everything but `NIX_LOG_FD` and
/// `TERM`.
pub fn nix_fixed_output_builder_env(
    drv_env: &BTreeMap<Vec<u8>, Vec<u8>>,
    store_dir: &str,
    build_top: &str,
    cores: u32,
    impure_env: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    builder_env(drv_env, store_dir, build_top, cores, Some(impure_env))
}

fn builder_env(
    drv_env: &BTreeMap<Vec<u8>, Vec<u8>>,
    store_dir: &str,
    build_top: &str,
    cores: u32,
    fixed_output: Option<&BTreeMap<Vec<u8>, Vec<u8>>>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &[u8]| {
        env.insert(k.as_bytes().to_vec(), v.to_vec());
    };
    set("PATH", b"/path-not-set");
    set("HOME", HOMELESS_SHELTER.as_bytes());
    set("NIX_STORE", store_dir.as_bytes());
    set("NIX_BUILD_CORES", cores.to_string().as_bytes());
    env.extend(drv_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.as_bytes().to_vec(), build_top.as_bytes().to_vec());
    }
    if let Some(impure) = fixed_output {
        env.insert(b"NIX_OUTPUT_CHECKED".to_vec(), b"1".to_vec());
        env.extend(impure.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.insert(b"NIX_LOG_FD".to_vec(), b"2".to_vec());
    env.insert(b"TERM".to_vec(), b"xterm-256color".to_vec());
    env
}

/// The file name Nix uses for a `passAsFile` attribute: `.attr-` and the nix32 SHA-256 of the name.
pub fn pass_as_file_name(attr: &[u8]) -> String {
    format!(".attr-{}", buildmesh_protocol::nixbase32::encode(&Sha256::digest(attr)))
}

/// Apply `passAsFile` as Nix does for a derivation without structured attrs: every attribute
/// named in the whitespace-separated `passAsFile` value is written to
/// `build_dir_host/.attr-<nix32 sha256 of name>` and replaced in the env by `<name>Path =
/// build_top/.attr-...`. Other variables (and `passAsFile` itself) are kept.
pub fn pass_as_file(
    drv_env: &BTreeMap<Vec<u8>, Vec<u8>>,
    build_dir_host: &Path,
    build_top: &str,
) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let names: BTreeSet<&[u8]> = drv_env
        .get(b"passAsFile".as_slice())
        .map(|v| v.split(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let mut env = BTreeMap::new();
    for (k, v) in drv_env {
        if names.contains(k.as_slice()) {
            let file = pass_as_file_name(k);
            std::fs::write(build_dir_host.join(&file), v)?;
            let mut key = k.clone();
            key.extend_from_slice(b"Path");
            env.insert(key, format!("{build_top}/{file}").into_bytes());
        } else {
            env.insert(k.clone(), v.clone());
        }
    }
    Ok(env)
}

/// `__structuredAttrs` support as in Nix 2.8 (`writeStructuredAttrs`): when `drv_env` has `__json`,
/// write `build_dir_host/.attrs.json` (the JSON with `outputs` set to `outputs`, keys sorted,
/// compact) and `.attrs.sh` (bash `declare`s of its simple values), and return the variables that
/// replace the derivation's env for the builder: `NIX_ATTRS_JSON_FILE` and `NIX_ATTRS_SH_FILE`
/// (Nix passes none of the derivation's env vars in this mode). `None` when there is no `__json`.
/// `exportReferencesGraph` inside structured attrs is not supported yet.
pub fn structured_attrs(
    drv_env: &BTreeMap<Vec<u8>, Vec<u8>>,
    outputs: &BTreeMap<String, String>,
    build_dir_host: &Path,
    build_top: &str,
) -> io::Result<Option<BTreeMap<Vec<u8>, Vec<u8>>>> {
    let Some(raw) = drv_env.get(b"__json".as_slice()) else { return Ok(None) };
    let mut json: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("__json: {e}")))?;
    let obj = json
        .as_object_mut()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "__json is not a JSON object"))?;
    obj.insert(
        "outputs".into(),
        serde_json::Value::Object(outputs.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()),
    );
    let sh = structured_attrs_shell(obj);
    std::fs::write(build_dir_host.join(".attrs.json"), json.to_string())?;
    std::fs::write(build_dir_host.join(".attrs.sh"), sh)?;
    let mut env = BTreeMap::new();
    env.insert(b"NIX_ATTRS_JSON_FILE".to_vec(), format!("{build_top}/.attrs.json").into_bytes());
    env.insert(b"NIX_ATTRS_SH_FILE".to_vec(), format!("{build_top}/.attrs.sh").into_bytes());
    Ok(Some(env))
}

/// Nix's `shellEscape`: single-quoted, with `'` written as `'\''`.
fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Nix's `writeStructuredAttrsShell`.
fn structured_attrs_shell(obj: &serde_json::Map<String, serde_json::Value>) -> String {
    use serde_json::Value;
    fn simple(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(shell_escape(s)),
            Value::Number(n) => {
                let f = n.as_f64()? as f32;
                (f.ceil() == f).then(|| n.as_i64().map(|i| i.to_string()).unwrap_or_else(|| (f as i64).to_string()))
            }
            Value::Null => Some("''".into()),
            Value::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
            _ => None,
        }
    }
    let is_var = |k: &str| {
        let b = k.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    let mut out = String::new();
    for (k, v) in obj {
        if !is_var(k) {
            continue;
        }
        if let Some(s) = simple(v) {
            out.push_str(&format!("declare {k}={s}\n"));
        } else if let Value::Array(a) = v {
            if let Some(items) = a.iter().map(simple).collect::<Option<Vec<_>>>() {
                let items: String = items.iter().map(|s| format!("{s} ")).collect();
                out.push_str(&format!("declare -a {k}=({items})\n"));
            }
        } else if let Value::Object(o) = v
            && let Some(items) = o.iter().map(|(k2, v2)| simple(v2).map(|s| (k2, s))).collect::<Option<Vec<_>>>()
        {
            let items: String = items.iter().map(|(k2, s)| format!("[{}]={s} ", shell_escape(k2))).collect();
            out.push_str(&format!("declare -A {k}=({items})\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn spec() -> SandboxSpec {
        SandboxSpec::new("/bin/sh", "/nix/store", "/tmp/s", "/tmp/b")
    }

    #[test]
    fn env_matches_nix_order() {
        let mut drv = BTreeMap::new();
        drv.insert(b("PATH"), b("/usr/bin:/bin"));
        drv.insert(b("HOME"), b("/x"));
        drv.insert(b("TMPDIR"), b("/nope"));
        drv.insert(b("TERM"), b("dumb"));
        drv.insert(b("out"), b("/nix/store/aaaa-x"));
        let env = nix_builder_env(&drv, "/nix/store", "/build", 4);
        let get = |k: &str| String::from_utf8(env[k.as_bytes()].clone()).unwrap();
        assert_eq!(get("PATH"), "/usr/bin:/bin");
        assert_eq!(get("HOME"), "/x");
        assert_eq!(get("TMPDIR"), "/build");
        assert_eq!(get("TERM"), "xterm-256color");
        assert_eq!(get("NIX_BUILD_CORES"), "4");
        assert_eq!(get("NIX_STORE"), "/nix/store");
        assert_eq!(get("NIX_LOG_FD"), "2");
        assert_eq!(get("PWD"), "/build");
        assert!(!env.contains_key(b"NIX_OUTPUT_CHECKED".as_slice()));
        let names: Vec<String> = env.keys().map(|k| String::from_utf8(k.clone()).unwrap()).collect();
        assert_eq!(
            names,
            [
                "HOME",
                "NIX_BUILD_CORES",
                "NIX_BUILD_TOP",
                "NIX_LOG_FD",
                "NIX_STORE",
                "PATH",
                "PWD",
                "TEMP",
                "TEMPDIR",
                "TERM",
                "TMP",
                "TMPDIR",
                "out"
            ]
        );
        let empty = nix_builder_env(&BTreeMap::new(), "/gnu/store", "/build", 1);
        assert_eq!(empty[b"PATH".as_slice()], b("/path-not-set"));
        assert_eq!(empty[b"HOME".as_slice()], b("/homeless-shelter"));
    }

    #[test]
    fn fixed_output_env() {
        let mut impure = BTreeMap::new();
        impure.insert(b("http_proxy"), b("http://p"));
        impure.insert(b("TERM"), b("vt100"));
        let env = nix_fixed_output_builder_env(&BTreeMap::new(), "/nix/store", "/build", 1, &impure);
        assert_eq!(env[b"NIX_OUTPUT_CHECKED".as_slice()], b("1"));
        assert_eq!(env[b"http_proxy".as_slice()], b("http://p"));
        assert_eq!(env[b"TERM".as_slice()], b("xterm-256color"));
    }

    #[test]
    fn pass_as_file_writes_attr_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut drv = BTreeMap::new();
        drv.insert(b("passAsFile"), b("payload  blank\n"));
        drv.insert(b("payload"), b("line\n"));
        drv.insert(b("blank"), b(""));
        drv.insert(b("keep"), b("k"));
        let env = pass_as_file(&drv, dir.path(), "/build").unwrap();
        assert!(!env.contains_key(b"payload".as_slice()));
        assert_eq!(env[b"keep".as_slice()], b("k"));
        assert_eq!(env[b"passAsFile".as_slice()], b("payload  blank\n"));
        let p = String::from_utf8(env[b"payloadPath".as_slice()].clone()).unwrap();
        let name = p.strip_prefix("/build/").unwrap();
        assert_eq!(name, pass_as_file_name(b"payload"));
        assert_eq!(name.len(), ".attr-".len() + 52);
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b("line\n"));
        let blank = String::from_utf8(env[b"blankPath".as_slice()].clone()).unwrap();
        assert_eq!(std::fs::read(dir.path().join(blank.strip_prefix("/build/").unwrap())).unwrap(), b(""));
    }

    #[test]
    fn structured_attrs_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut drv = BTreeMap::new();
        drv.insert(
            b("__json"),
            b(r#"{"name":"x","n":7,"f":2.5,"ok":true,"no":false,"nul":null,"l":[1,"a'b"],"bad-key":1,"o":{"k":"v"},"deep":{"a":{}},"outputs":["out"]}"#),
        );
        let outputs = BTreeMap::from([("out".to_string(), "/nix/store/aaaa-x".to_string())]);
        let env = structured_attrs(&drv, &outputs, dir.path(), "/build").unwrap().unwrap();
        assert_eq!(env.len(), 2);
        assert_eq!(env[b"NIX_ATTRS_JSON_FILE".as_slice()], b("/build/.attrs.json"));
        let json = std::fs::read_to_string(dir.path().join(".attrs.json")).unwrap();
        assert_eq!(
            json,
            r#"{"bad-key":1,"deep":{"a":{}},"f":2.5,"l":[1,"a'b"],"n":7,"name":"x","no":false,"nul":null,"o":{"k":"v"},"ok":true,"outputs":{"out":"/nix/store/aaaa-x"}}"#
        );
        let sh = std::fs::read_to_string(dir.path().join(".attrs.sh")).unwrap();
        assert_eq!(
            sh,
            "declare -a l=(1 'a'\\''b' )\ndeclare n=7\ndeclare name='x'\ndeclare no=\ndeclare nul=''\n\
             declare -A o=(['k']='v' )\ndeclare ok=1\ndeclare -A outputs=(['out']='/nix/store/aaaa-x' )\n"
        );
        assert!(structured_attrs(&BTreeMap::new(), &outputs, dir.path(), "/build").unwrap().is_none());
    }

    #[test]
    fn validate_accepts_default_and_rejects_bad_fields() {
        spec().validate().unwrap();
        let field = |s: SandboxSpec| match s.validate() {
            Err(SpecError::Invalid { field, .. }) => field,
            Ok(()) => panic!("accepted"),
        };
        let mut s = spec();
        s.builder = "sh".into();
        assert_eq!(field(s), "builder");
        let mut s = spec();
        s.args.push(b("a\0b"));
        assert_eq!(field(s), "args[0]");
        let mut s = spec();
        s.env.insert(b("A=B"), b("x"));
        assert_eq!(field(s), "env[A=B]");
        let mut s = spec();
        s.env.insert(b("A"), b("x\0"));
        assert_eq!(field(s), "env[A]");
        let mut s = spec();
        s.inputs.push(InputPath { host: "/tmp/x".into(), path: "/nix/store/sub/x".into() });
        assert_eq!(field(s), "inputs[0].path");
        let mut s = spec();
        s.inputs.push(InputPath { host: "/tmp/x".into(), path: "/nix/store/../etc".into() });
        assert_eq!(field(s), "inputs[0].path");
        let mut s = spec();
        s.sandbox_paths.push("/proc/self".into());
        assert_eq!(field(s), "sandbox_paths[4]");
        let mut s = spec();
        s.sandbox_paths.push("/nix".into());
        assert_eq!(field(s), "sandbox_paths[4]");
        let mut s = spec();
        s.store_dir = "/".into();
        assert_eq!(field(s), "store_dir");
        let mut s = spec();
        s.store_dir = "/tmp/store".into();
        assert_eq!(field(s), "store_dir");
    }

    #[test]
    fn spec_json_roundtrip_with_non_utf8_env() {
        let mut s = spec();
        s.env.insert(vec![0xff, b'A'], vec![0xfe, 0x80]);
        s.args.push(vec![0xc3]);
        s.timeout = Some(Duration::from_millis(1500));
        let json = serde_json::to_vec(&s).unwrap();
        let back: SandboxSpec = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
    }
}
