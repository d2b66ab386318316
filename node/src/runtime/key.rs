//! The node key on disk: read it, or create it on first start.
//!
//! The file is the Nix secret key format `buildmesh key generate` and
//! `nix-store --generate-binary-cache-key` write (`name:base64(seed ‖ public)`, mode 0600), so the
//! same file signs narinfos, mesh messages and is the libp2p identity.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use buildmesh_protocol::identity::{IdentityError, NodeKey};

/// Largest key file read (a real one is about 100 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// Why the node key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("cannot {op} key file {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is too large to be a key.
    #[error("key file {} is {len} bytes: not a Nix secret key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not a valid key (or the configured name is not a valid key name).
    #[error("key file {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// No randomness from the operating system.
    #[error("cannot get randomness from the OS for a new key: {0}")]
    Random(String),
}

/// Whether the key was read or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from an existing file.
    Loaded,
    /// Created (first start).
    Created,
}

/// Read the key at `path`, or create it there (with `name`, or a name derived from the host name
/// and the new key's id) when the file does not exist.
pub fn load_or_create(path: &Path, name: Option<&str>) -> Result<(NodeKey, KeyOrigin), KeyError> {
    match fs::metadata(path) {
        Ok(meta) => {
            if meta.len() > MAX_KEY_FILE {
                return Err(KeyError::TooLarge { path: path.into(), len: meta.len() });
            }
            let text =
                fs::read_to_string(path).map_err(|source| KeyError::Io { op: "read", path: path.into(), source })?;
            let key =
                NodeKey::parse_file(text.trim()).map_err(|source| KeyError::Invalid { path: path.into(), source })?;
            if let Some(name) = name
                && name != key.name()
            {
                tracing::warn!(
                    file = %path.display(), file_name = key.name(), configured = name,
                    "the key file's name differs from key_name; the file wins"
                );
            }
            Ok((key, KeyOrigin::Loaded))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate(name).map_err(|source| match source {
                GenError::Random(m) => KeyError::Random(m),
                GenError::Identity(source) => KeyError::Invalid { path: path.into(), source },
            })?;
            write_new(path, &key.to_file_string())?;
            Ok((key, KeyOrigin::Created))
        }
        Err(source) => Err(KeyError::Io { op: "read", path: path.into(), source }),
    }
}

enum GenError {
    Random(String),
    Identity(IdentityError),
}

fn generate(name: Option<&str>) -> Result<NodeKey, GenError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| GenError::Random(e.to_string()))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let id = NodeKey::from_seed("x", seed).map_err(GenError::Identity)?.node_id();
            default_key_name(&hostname(), &id.fmt_short())
        }
    };
    NodeKey::from_seed(&name, seed).map_err(GenError::Identity)
}

/// `<host>-<short id>`: the host name reduced to key-name characters, plus the key's short id so
/// that several nodes on one host get distinct names (Nix matches signatures to keys by name).
pub fn default_key_name(host: &str, short_id: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '-' })
        .take(64)
        .collect();
    let host = host.trim_matches(|c| c == '-' || c == '.');
    if host.is_empty() { format!("buildmesh-{short_id}") } else { format!("{host}-{short_id}") }
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Write `contents` to a new file at `path`, mode 0600, atomically (temp file + rename), so a
/// crash never leaves a half-written key.
fn write_new(path: &Path, contents: &str) -> Result<(), KeyError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        op: "create the directory of",
        path: path.into(),
        source,
    })?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "node.key".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| KeyError::Io { op: "create", path: tmp.clone(), source })?;
    f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()).map_err(|source| KeyError::Io {
        op: "write",
        path: tmp.clone(),
        source,
    })?;
    drop(f);
    fs::rename(&tmp, path).map_err(|source| KeyError::Io { op: "create", path: path.into(), source })?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let (a, origin) = load_or_create(&path, None).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        assert!(a.name().ends_with(&a.node_id().fmt_short()), "{}", a.name());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, origin) = load_or_create(&path, Some("other-name")).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(b.name(), a.name());
        // The file is what `buildmesh key generate` writes: a Nix secret key.
        let text = fs::read_to_string(&path).unwrap();
        buildmesh_protocol::nixkey::SecretKey::parse(&text).unwrap();
    }

    #[test]
    fn configured_name_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = load_or_create(&dir.path().join("k"), Some("cache.example.org-1")).unwrap();
        assert_eq!(k.name(), "cache.example.org-1");
        assert!(matches!(load_or_create(&dir.path().join("k2"), Some("bad name")), Err(KeyError::Invalid { .. })));
        fs::write(dir.path().join("garbage"), "nope").unwrap();
        let e = load_or_create(&dir.path().join("garbage"), None).unwrap_err();
        assert!(e.to_string().contains("garbage"), "{e}");
        fs::write(dir.path().join("big"), vec![b'a'; 5000]).unwrap();
        assert!(matches!(load_or_create(&dir.path().join("big"), None), Err(KeyError::TooLarge { .. })));
    }

    #[test]
    fn default_names() {
        assert_eq!(default_key_name("host.example.org", "0a1b2c3d4e"), "host.example.org-0a1b2c3d4e");
        assert_eq!(default_key_name("", "0a1b2c3d4e"), "buildmesh-0a1b2c3d4e");
        assert_eq!(default_key_name("wéird host", "00"), "w-ird-host-00");
    }
}
