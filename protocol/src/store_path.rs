//! Store directories and store paths, as Nix computes and validates them.
//!
//! A store path is `<store dir>/<nix32 of a 20-byte digest>-<name>`. The digest is the XOR-fold of
//! `sha256("<type>:sha256:<hex inner digest>:<store dir>:<name>")` to 20 bytes (Nix `compressHash`;
//! it is not a truncation). The store dir is a parameter everywhere (`/nix/store`, `/gnu/store`).
//! Sources: Nix `doc/manual/source/protocols/store-path.md`, `src/libstore/path.cc` (`checkName`).

use std::fmt;

use sha2::Digest as _;
use thiserror::Error;

use crate::nixbase32;

/// Length in characters of the hash part of a store path's base name.
pub const HASH_PART_LEN: usize = 32;
/// The longest store path name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store directory, path or name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorePathError {
    /// The store directory is not an absolute, normalised path.
    #[error("store directory {} must be an absolute path without a trailing slash, `.`/`..` parts or `//`", short(.0))]
    BadStoreDir(String),
    /// The path does not start with `<store dir>/`.
    #[error("path {} is not in the store directory {store_dir:?}", short(path))]
    NotInStore {
        /// The path given.
        path: String,
        /// The store dir expected.
        store_dir: String,
    },
    /// The base name is too short to hold `<hash>-<name>`.
    #[error("store path base name {} is too short: expected <32-char hash>-<name>", short(.0))]
    TooShort(String),
    /// The hash part is not valid nix32.
    #[error("store path base name {} has an invalid hash part: {reason}", short(basename))]
    BadHash {
        /// The base name.
        basename: String,
        /// Why the hash part is invalid.
        reason: nixbase32::Nix32Error,
    },
    /// No `-` after the hash part.
    #[error("store path base name {} lacks the '-' after the hash part", short(.0))]
    MissingDash(String),
    /// The name part breaks Nix's naming rules.
    #[error("store path name {} is invalid: {reason}", short(name))]
    BadName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// Characters of an invalid input that a [`StorePathError`] message quotes.
pub const ERROR_QUOTE_CHARS: usize = 64;

/// `s` quoted for an error message, cut to [`ERROR_QUOTE_CHARS`] characters (then `…`), so that
/// an error about an 8 KB name (which may be sent back to whoever sent it) stays short.
fn short(s: &str) -> String {
    match s.char_indices().nth(ERROR_QUOTE_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
    }
}

/// A validated store directory such as `/nix/store` or `/gnu/store` (cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreDir(std::sync::Arc<str>);

impl StoreDir {
    /// Validate a store directory: absolute, no trailing slash, no empty, `.` or `..` component.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        let bad = || StorePathError::BadStoreDir(dir.to_string());
        if !dir.starts_with('/') || dir.len() < 2 || dir.ends_with('/') {
            return Err(bad());
        }
        if dir[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") || dir.contains('\0') {
            return Err(bad());
        }
        Ok(StoreDir(dir.into()))
    }

    /// `/nix/store`.
    pub fn nix() -> StoreDir {
        StoreDir("/nix/store".into())
    }

    /// `/gnu/store`.
    pub fn guix() -> StoreDir {
        StoreDir("/gnu/store".into())
    }

    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse an absolute store path that must lie directly in this store dir.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let not_in = || StorePathError::NotInStore { path: path.to_string(), store_dir: self.0.to_string() };
        let rest = path.strip_prefix(&*self.0).ok_or_else(not_in)?;
        let base = rest.strip_prefix('/').ok_or_else(not_in)?;
        StorePath::from_basename(base)
    }

    /// Parse a store path that may be followed by a sub-path (`/nix/store/<h>-x/bin/sh`); returns
    /// the store path and the remainder (empty or starting with `/`).
    pub fn parse_path_prefix<'a>(&self, path: &'a str) -> Result<(StorePath, &'a str), StorePathError> {
        let not_in = || StorePathError::NotInStore { path: path.to_string(), store_dir: self.0.to_string() };
        let rest = path.strip_prefix(&*self.0).ok_or_else(not_in)?;
        let base = rest.strip_prefix('/').ok_or_else(not_in)?;
        let end = base.find('/').unwrap_or(base.len());
        Ok((StorePath::from_basename(&base[..end])?, &base[end..]))
    }

    /// Render a store path under this store dir.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir::nix()
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store path without its store dir: the 20-byte digest and the name. `Display` prints the base
/// name `<nix32>-<name>`; use [`StoreDir::display`] for the absolute path.
///
/// `Ord` is the byte order of the base names (as Nix sorts `StorePath`s in a `.drv` or a
/// `References` list), so a `BTreeMap<StorePath, _>` iterates in Nix's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; 20],
    name: String,
}

/// The nix32 alphabet is in ascending ASCII order and encodes the digest as one little-endian
/// 160-bit number, most significant 5 bits first; so comparing hash parts as strings is comparing
/// the digests' bytes from the last to the first. Equal hash parts (fixed length) leave the names.
impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Bytes 19..=12, 11..=4 and 3..=0 as little-endian words: the same order as comparing
        // byte by byte from the last, in three comparisons (derivation tables are keyed by this).
        let words = |d: &[u8; 20]| {
            let mut hi = [0u8; 8];
            let mut mid = [0u8; 8];
            let mut lo = [0u8; 4];
            hi.copy_from_slice(&d[12..20]);
            mid.copy_from_slice(&d[4..12]);
            lo.copy_from_slice(&d[..4]);
            (u64::from_le_bytes(hi), u64::from_le_bytes(mid), u32::from_le_bytes(lo))
        };
        words(&self.digest).cmp(&words(&other.digest)).then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StorePath {
    /// Build from a digest and a name, validating the name.
    pub fn new(digest: [u8; 20], name: &str) -> Result<StorePath, StorePathError> {
        validate_name(name)?;
        Ok(StorePath { digest, name: name.to_string() })
    }

    /// Parse a base name `<32-char nix32>-<name>`.
    pub fn from_basename(base: &str) -> Result<StorePath, StorePathError> {
        if base.len() < HASH_PART_LEN + 2 || !base.is_char_boundary(HASH_PART_LEN) {
            return Err(StorePathError::TooShort(base.to_string()));
        }
        let (hash, rest) = base.split_at(HASH_PART_LEN);
        let digest = nixbase32::decode_fixed::<20>(hash)
            .map_err(|reason| StorePathError::BadHash { basename: base.to_string(), reason })?;
        let name = rest.strip_prefix('-').ok_or_else(|| StorePathError::MissingDash(base.to_string()))?;
        StorePath::new(digest, name)
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> &[u8; 20] {
        &self.digest
    }

    /// The 32-character nix32 hash part (what a narinfo URL is named after).
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a derivation (`.drv`) path.
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = nixbase32::encode_20(&self.digest);
        // nix32 digits are ASCII.
        f.write_str(std::str::from_utf8(&hash).map_err(|_| fmt::Error)?)?;
        f.write_str("-")?;
        f.write_str(&self.name)
    }
}

/// Check a store path name against Nix's rules (`checkName`): 1–211 characters of
/// `[0-9A-Za-z+-._?=]`, not `.` or `..`, not starting with `.-` or `..-`.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let bad = |reason| Err(StorePathError::BadName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 211 characters");
    }
    if name == "." || name == ".." {
        return bad("it is `.` or `..`");
    }
    if name.starts_with(".-") || name.starts_with("..-") {
        return bad("it starts with `.-` or `..-`");
    }
    if !name.bytes().all(|c| NAME_CHARS[usize::from(c)]) {
        return bad("it contains a character outside [0-9A-Za-z+-._?=]");
    }
    Ok(())
}

/// The bytes allowed in a store path name: `[0-9A-Za-z+-._?=]`.
const NAME_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=');
        c += 1;
    }
    t
};

/// XOR-fold a digest to `N` bytes (Nix `compressHash`).
pub fn compress_hash<const N: usize>(hash: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in hash.iter().enumerate() {
        out[i % N] ^= b;
    }
    out
}

/// Nix `makeStorePath`: the store path for a path type (e.g. `text:<refs>`, `source`,
/// `output:out`), a SHA-256 inner digest and a name.
pub fn make_store_path(
    store_dir: &StoreDir,
    path_type: &str,
    inner_sha256: &[u8; 32],
    name: &str,
) -> Result<StorePath, StorePathError> {
    make_store_path_with(store_dir, |h| h.update(path_type.as_bytes()), inner_sha256, name)
}

/// [`make_store_path`] with the `<type>` part fed straight into the fingerprint's hasher by
/// `path_type` (so no string is built for a type with many references).
fn make_store_path_with(
    store_dir: &StoreDir,
    path_type: impl FnOnce(&mut sha2::Sha256),
    inner_sha256: &[u8; 32],
    name: &str,
) -> Result<StorePath, StorePathError> {
    validate_name(name)?;
    let mut h = sha2::Sha256::new();
    path_type(&mut h);
    h.update(b":sha256:");
    let mut hex = [0u8; 64];
    // 64 bytes of room for 32 bytes of hex cannot fail.
    let _ = hex::encode_to_slice(inner_sha256, &mut hex);
    h.update(hex);
    h.update(b":");
    h.update(store_dir.as_str().as_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    let digest = compress_hash::<20>(&h.finalize());
    StorePath::new(digest, name)
}

/// The `<type>` string with references appended: `text:/nix/store/a:/nix/store/b` (refs sorted).
pub fn type_with_references<'a>(
    kind: &str,
    store_dir: &StoreDir,
    references: impl IntoIterator<Item = &'a StorePath>,
    self_reference: bool,
) -> String {
    let mut refs: Vec<String> = references.into_iter().map(|p| store_dir.display(p)).collect();
    refs.sort();
    let mut s = kind.to_string();
    for r in refs {
        s.push(':');
        s.push_str(&r);
    }
    if self_reference {
        s.push_str(":self");
    }
    s
}

/// The store path of a text file (`builtins.toFile`, and `.drv` files): type `text[:refs]`,
/// inner digest = sha256 of the contents.
pub fn make_text_path<'a>(
    store_dir: &StoreDir,
    name: &str,
    contents: &[u8],
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    let inner: [u8; 32] = sha2::Sha256::digest(contents).into();
    let mut refs: Vec<&StorePath> = references.into_iter().collect();
    // All references lie in one store dir, so the absolute paths sort as the base names do
    // (`StorePath`'s order); a set holds each once, as Nix's `StorePathSet` does.
    refs.sort_unstable();
    refs.dedup();
    let feed = |h: &mut sha2::Sha256| {
        h.update(b"text");
        for r in refs {
            h.update(b":");
            h.update(store_dir.as_str().as_bytes());
            h.update(b"/");
            h.update(nixbase32::encode_20(r.digest()));
            h.update(b"-");
            h.update(r.name().as_bytes());
        }
    };
    make_store_path_with(store_dir, feed, &inner, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_at_most_a_short_prefix_of_the_input() {
        let long = format!("00bgd045z0d4icpbc2yyz4gx48ak44la-{}", "x".repeat(8000));
        let e = StorePath::from_basename(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        assert!(e.contains('…'), "{e}");
        let e = StorePath::from_basename("short").unwrap_err().to_string();
        assert!(e.contains("\"short\"") && !e.contains('…'), "{e}");
    }

    #[test]
    fn parse_and_display() {
        let sd = StoreDir::nix();
        let p = sd.parse_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432").unwrap();
        assert_eq!(p.name(), "net-tools-1.60_p20170221182432");
        assert_eq!(hex::encode(p.digest()), "8a12321522fd91efbd60ebb2481af88580f61600");
        assert_eq!(sd.display(&p), "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432");
        assert!(sd.parse_path("/gnu/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x").is_err());
        assert!(sd.parse_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la").is_err());
        assert!(sd.parse_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44le-x").is_err());
        assert!(sd.parse_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-a/b").is_err());
        let (p2, rest) = sd.parse_path_prefix("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-a/bin/sh").unwrap();
        assert_eq!((p2.name(), rest), ("a", "/bin/sh"));
    }

    #[test]
    fn names() {
        assert!(validate_name("libc++_abi-17.0.6+git.2024").is_ok());
        assert!(validate_name("-x?y=z").is_ok());
        for bad in ["", ".", "..", ".-x", "..-x", "a b", "a/b", &"x".repeat(212)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(211)).is_ok());
    }

    #[test]
    fn store_dirs() {
        assert!(StoreDir::new("/gnu/store").is_ok());
        for bad in ["", "/", "nix/store", "/nix/store/", "/nix//store", "/nix/../store"] {
            assert!(StoreDir::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ord_is_basename_order() {
        let mut paths: Vec<StorePath> = (0u8..=255)
            .map(|i| StorePath::new(compress_hash::<20>(&sha2::Sha256::digest([i])), "x").unwrap())
            .collect();
        paths.push(StorePath::new([9; 20], "a").unwrap());
        paths.push(StorePath::new([9; 20], "b").unwrap());
        // Digests that differ in one byte only, at every position (and in each direction).
        for i in 0..20 {
            for v in [0u8, 8, 10, 255] {
                let mut d = [9u8; 20];
                d[i] = v;
                paths.push(StorePath::new(d, "x").unwrap());
            }
        }
        let mut by_ord = paths.clone();
        by_ord.sort();
        let mut by_string = paths;
        by_string.sort_by_key(|p| p.to_string());
        assert_eq!(by_ord, by_string);
    }

    #[test]
    fn text_paths_from_snix() {
        let sd = StoreDir::nix();
        let foo = make_text_path(&sd, "foo", b"bar", []).unwrap();
        assert_eq!(foo.to_string(), "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
    }
}
