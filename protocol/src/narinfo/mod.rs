//! `.narinfo` files: parse, render, fingerprint, sign and verify.
//!
//! A narinfo describes one store path in a binary cache. It is a list of `Key: value\n` lines
//! (Nix `src/libstore/nar-info.cc`). [`NarInfo::parse`] reads one, [`NarInfo`]'s `Display` writes
//! it back, and the round trip is **byte-exact** for every narinfo that Nix or snix writes:
//!
//! - known keys are rendered in Nix's order: `StorePath URL Compression FileHash FileSize NarHash
//!   NarSize References Deriver System Sig* CA` (`System` sits where snix and cache.nixos.org put it);
//! - the spelling of `NarHash`/`FileHash` (nix32 or the old 64-hex form) is remembered in
//!   [`HashEncoding`] fields, an absent `Compression` line stays absent
//!   ([`NarInfo::compression`] is `None`; Nix then assumes `bzip2`), an absent `References` line stays
//!   absent ([`NarInfo::omit_empty_references`]), `Deriver: unknown-deriver` stays ([`Deriver::Unknown`]),
//!   `Sig` lines keep their order and `CA` keeps its text;
//! - unknown keys are kept in [`NarInfo::extra`], each anchored after the known key that preceded it
//!   in the file ([`ExtraField::after`]), so they come back at the same place.
//!
//! What is **not** byte-exact: known keys given in another order than Nix's are accepted and
//! re-rendered in Nix's order, and an unknown line between two `Sig` lines moves after the last
//! `Sig`. Nix itself never writes either. Guix narinfos (store dir `/gnu/store`) parse when they
//! carry one `URL`/`Compression`/`FileSize` triple; their `Signature:` line is kept as an unknown
//! key (Guix signatures are ECDSA over the text, not the Nix fingerprint).
//!
//! The parser is stricter than Nix where Nix would silently lose information: a repeated
//! single-valued key, an empty line, a missing `": "`, double spaces in `References`, or a number with
//! leading zeros is an error ([`NarInfoError`]) naming the line and the field.
//!
//! Signatures ([`NarInfo::fingerprint`], [`NarInfo::sign`], [`NarInfo::verify`]) cover only
//! `StorePath`, `NarHash`, `NarSize` and `References` (Nix `path-info.cc` `fingerprint`); see
//! [`sign`](self#signing) below.
//!
//! # Signing
//! The fingerprint is `1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<absolute references, sorted,
//! comma-joined>`, signed with plain Ed25519 by a [`SecretKey`](crate::nixkey::SecretKey). C++ Nix
//! sorts the references; snix keeps file order, and a few very old cache.nixos.org narinfos (e.g.
//! `gcc-3.4.6`) were signed over file order. [`NarInfo::verify`] therefore tries the sorted form
//! first and, only when the file lists its references out of order, the file order as well; the
//! result says which one matched ([`ReferenceOrder`]). [`NarInfo::sign`] always signs the sorted
//! form, as Nix does.

pub mod guix_layout;
mod parse;
mod sign;

use std::fmt;

pub use parse::NarInfoError;
pub use sign::{FingerprintError, ReferenceOrder, SigCheck, SigResult, Verification, fingerprint};

use crate::hash::{HashAlgo, HashError, NixHash};
use crate::nixbase32;
use crate::nixkey::NixSignature;
use crate::store_path::{StoreDir, StorePath};

/// The largest narinfo [`NarInfo::parse`] accepts, in bytes.
///
/// The largest of the 978 real cache.nixos.org narinfos in the snix corpus is 37,528 bytes (730
/// references); 256 KiB leaves room for about 5,000 references and bounds what an untrusted peer
/// can make us allocate.
pub const MAX_NARINFO_SIZE: usize = 256 * 1024;

/// The known narinfo keys, in the order Nix writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `StorePath`: the absolute store path.
    StorePath,
    /// `URL`: where the (compressed) NAR is, relative to the cache.
    Url,
    /// `Compression`: `none`, `xz`, `bzip2`, `zstd`, ...
    Compression,
    /// `FileHash`: hash of the file at `URL`.
    FileHash,
    /// `FileSize`: size of the file at `URL`.
    FileSize,
    /// `NarHash`: sha256 of the uncompressed NAR.
    NarHash,
    /// `NarSize`: size of the uncompressed NAR (> 0).
    NarSize,
    /// `References`: space-separated base names.
    References,
    /// `Deriver`: base name of the `.drv`, or `unknown-deriver`.
    Deriver,
    /// `System`: the platform (snix and cache.nixos.org write it; C++ Nix ignores it).
    System,
    /// `Sig`: `keyname:base64(signature)`, repeatable.
    Sig,
    /// `CA`: content address, e.g. `fixed:r:sha256:<nix32>`.
    Ca,
}

impl Field {
    /// Every known key, in Nix's order.
    pub const ALL: [Field; 12] = [
        Field::StorePath,
        Field::Url,
        Field::Compression,
        Field::FileHash,
        Field::FileSize,
        Field::NarHash,
        Field::NarSize,
        Field::References,
        Field::Deriver,
        Field::System,
        Field::Sig,
        Field::Ca,
    ];

    /// The key as written in the file.
    pub const fn name(self) -> &'static str {
        match self {
            Field::StorePath => "StorePath",
            Field::Url => "URL",
            Field::Compression => "Compression",
            Field::FileHash => "FileHash",
            Field::FileSize => "FileSize",
            Field::NarHash => "NarHash",
            Field::NarSize => "NarSize",
            Field::References => "References",
            Field::Deriver => "Deriver",
            Field::System => "System",
            Field::Sig => "Sig",
            Field::Ca => "CA",
        }
    }

    /// The known key with this name (case-sensitive, as Nix).
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a hash field spells its digest after `<algo>:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashEncoding {
    /// nix32 (what Nix writes today).
    #[default]
    Nix32,
    /// Lowercase hex (old caches; snix flag `NAR_HASH_HEX`).
    Hex,
}

impl HashEncoding {
    fn render(self, hash: &NixHash) -> String {
        match self {
            HashEncoding::Nix32 => hash.to_string(),
            HashEncoding::Hex => format!("{}:{}", hash.algo(), hash.to_hex()),
        }
    }
}

/// The `Deriver` line's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Deriver {
    /// The base name of the derivation that built the path.
    Path(StorePath),
    /// `unknown-deriver`: written by some caches instead of omitting the line.
    Unknown,
}

/// How a content-addressed path was hashed (the part of `CA` before the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaMethod {
    /// `text:` (`builtins.toFile`, `.drv` files); always sha256.
    Text,
    /// `fixed:` flat file hash.
    Flat,
    /// `fixed:r:` hash of the NAR.
    Recursive,
    /// `fixed:git:` git tree hash (newer Nix).
    Git,
}

impl CaMethod {
    /// The prefix before `<algo>:` in a `CA` value.
    pub const fn prefix(self) -> &'static str {
        match self {
            CaMethod::Text => "text:",
            CaMethod::Flat => "fixed:",
            CaMethod::Recursive => "fixed:r:",
            CaMethod::Git => "fixed:git:",
        }
    }
}

/// A `CA` value: method and hash. It keeps the exact text it was parsed from, so that a narinfo
/// whose CA hash is spelled in hex renders back unchanged; [`ContentAddress::new`] writes nix32 as
/// Nix does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentAddress {
    method: CaMethod,
    hash: NixHash,
    text: String,
}

/// Why a `CA` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentAddressError {
    /// The value starts with neither `text:` nor `fixed:`.
    #[error("content address {0:?} starts with neither `text:` nor `fixed:`")]
    UnknownMethod(String),
    /// `text:` with another algorithm than sha256.
    #[error("content address {0:?}: `text:` requires sha256")]
    TextNotSha256(String),
    /// The `<algo>:<digest>` part is invalid.
    #[error("content address {value:?}: {source}")]
    BadHash {
        /// The whole value.
        value: String,
        /// Why the hash is invalid.
        source: HashError,
    },
}

impl ContentAddress {
    /// A content address rendered as Nix does (`<prefix><algo>:<nix32>`).
    pub fn new(method: CaMethod, hash: NixHash) -> Result<ContentAddress, ContentAddressError> {
        let text = format!("{}{}", method.prefix(), hash);
        if method == CaMethod::Text && hash.algo() != HashAlgo::Sha256 {
            return Err(ContentAddressError::TextNotSha256(text));
        }
        Ok(ContentAddress { method, hash, text })
    }

    /// Parse `text:sha256:<h>`, `fixed:[r:|git:]<algo>:<h>` (h in nix32, hex or base64, as Nix accepts).
    pub fn parse(s: &str) -> Result<ContentAddress, ContentAddressError> {
        let (method, rest) = if let Some(rest) = s.strip_prefix("text:") {
            (CaMethod::Text, rest)
        } else if let Some(rest) = s.strip_prefix("fixed:r:") {
            (CaMethod::Recursive, rest)
        } else if let Some(rest) = s.strip_prefix("fixed:git:") {
            (CaMethod::Git, rest)
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            (CaMethod::Flat, rest)
        } else {
            return Err(ContentAddressError::UnknownMethod(s.to_string()));
        };
        let bad = |source| ContentAddressError::BadHash { value: s.to_string(), source };
        let (algo, digest) = rest.split_once(':').ok_or_else(|| bad(HashError::MissingAlgo(rest.to_string())))?;
        let algo = HashAlgo::from_name(algo).ok_or_else(|| bad(HashError::UnknownAlgo(algo.to_string())))?;
        let hash = NixHash::parse_digest(rest, algo, digest).map_err(bad)?;
        if method == CaMethod::Text && algo != HashAlgo::Sha256 {
            return Err(ContentAddressError::TextNotSha256(s.to_string()));
        }
        Ok(ContentAddress { method, hash, text: s.to_string() })
    }

    /// The method.
    pub fn method(&self) -> CaMethod {
        self.method
    }

    /// The hash.
    pub fn hash(&self) -> &NixHash {
        &self.hash
    }

    /// The text as written in the `CA` line.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A line with a key this module does not know, kept so that a round trip is byte-exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtraField {
    /// The key (non-empty, no `:` or newline, not a known key).
    pub key: String,
    /// The value (no newline).
    pub value: String,
    /// The known key after whose line(s) it is rendered (where that key's lines would be if it is
    /// absent); `None` = before `StorePath`. The parser sets it to the last known key before the line.
    pub after: Option<Field>,
}

/// One parsed narinfo. Fields are public; [`NarInfo::validate`] checks the invariants that
/// [`NarInfo::parse`] guarantees (use it before rendering one you built by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store directory `StorePath`, references and the deriver live in.
    pub store_dir: StoreDir,
    /// `StorePath`.
    pub store_path: StorePath,
    /// `URL` (non-empty).
    pub url: String,
    /// `Compression`; `None` = no line (Nix then assumes `bzip2`, see [`NarInfo::compression_or_default`]).
    pub compression: Option<String>,
    /// `FileHash`.
    pub file_hash: Option<NixHash>,
    /// How `FileHash` is spelled.
    pub file_hash_encoding: HashEncoding,
    /// `FileSize`.
    pub file_size: Option<u64>,
    /// `NarHash` (always sha256).
    pub nar_hash: [u8; 32],
    /// How `NarHash` is spelled.
    pub nar_hash_encoding: HashEncoding,
    /// `NarSize` (> 0).
    pub nar_size: u64,
    /// `References`, in file order.
    pub references: Vec<StorePath>,
    /// When true and `references` is empty, no `References` line is written (some caches, e.g.
    /// harmonia, omit it). Nix writes `References: ` with a trailing space instead.
    pub omit_empty_references: bool,
    /// `Deriver`; `None` = no line.
    pub deriver: Option<Deriver>,
    /// `System`.
    pub system: Option<String>,
    /// `Sig` lines, in file order.
    pub sigs: Vec<NixSignature>,
    /// `CA`.
    pub ca: Option<ContentAddress>,
    /// Lines with unknown keys.
    pub extra: Vec<ExtraField>,
}

impl NarInfo {
    /// A narinfo for an uncompressed NAR served at `nar/<nix32 NarHash>.nar` (`Compression: none`,
    /// no FileHash/FileSize, Deriver, System, Sig or CA). Change the public fields as needed.
    pub fn new(
        store_dir: StoreDir,
        store_path: StorePath,
        nar_hash: [u8; 32],
        nar_size: u64,
        references: Vec<StorePath>,
    ) -> NarInfo {
        NarInfo {
            store_dir,
            store_path,
            url: format!("nar/{}.nar", nixbase32::encode(&nar_hash)),
            compression: Some("none".to_string()),
            file_hash: None,
            file_hash_encoding: HashEncoding::Nix32,
            file_size: None,
            nar_hash,
            nar_hash_encoding: HashEncoding::Nix32,
            nar_size,
            references,
            omit_empty_references: false,
            deriver: None,
            system: None,
            sigs: Vec::new(),
            ca: None,
            extra: Vec::new(),
        }
    }

    /// `NarHash` as a [`NixHash`].
    pub fn nar_hash(&self) -> NixHash {
        NixHash::sha256(self.nar_hash)
    }

    /// The compression Nix will use: the `Compression` value, or `bzip2` when it is absent or empty.
    pub fn compression_or_default(&self) -> &str {
        match self.compression.as_deref() {
            None | Some("") => "bzip2",
            Some(c) => c,
        }
    }

    /// The absolute store path.
    pub fn store_path_string(&self) -> String {
        self.store_dir.display(&self.store_path)
    }

    /// Check what [`NarInfo::parse`] guarantees, so that the rendering parses back to an equal
    /// value: a non-empty URL, `NarSize` > 0, free-text values without newline, `omit_empty_references`
    /// only with no references, and unknown keys that are neither known keys nor malformed.
    pub fn validate(&self) -> Result<(), NarInfoError> {
        let bad =
            |field: Field, reason: &str| Err(NarInfoError::BadValue { line: 0, field, reason: reason.to_string() });
        if self.url.is_empty() {
            return bad(Field::Url, "it is empty");
        }
        if self.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize { line: 0 });
        }
        for (field, value) in [
            (Field::Url, Some(self.url.as_str())),
            (Field::Compression, self.compression.as_deref()),
            (Field::System, self.system.as_deref()),
        ] {
            if value.is_some_and(|v| v.contains('\n')) {
                return bad(field, "it contains a newline");
            }
        }
        if self.omit_empty_references && !self.references.is_empty() {
            return bad(Field::References, "omit_empty_references is set but there are references");
        }
        for e in &self.extra {
            parse::check_extra_key(&e.key, 0)?;
            if e.value.contains('\n') {
                return Err(NarInfoError::BadExtra {
                    line: 0,
                    key: e.key.clone(),
                    reason: "its value contains a newline",
                });
            }
        }
        Ok(())
    }

    fn write_extras(&self, f: &mut fmt::Formatter<'_>, after: Option<Field>) -> fmt::Result {
        for e in self.extra.iter().filter(|e| e.after == after) {
            writeln!(f, "{}: {}", e.key, e.value)?;
        }
        Ok(())
    }
}

/// Renders the narinfo in Nix's line format (see the module docs for the order).
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_extras(f, None)?;
        for field in Field::ALL {
            match field {
                Field::StorePath => writeln!(f, "StorePath: {}", self.store_path_string())?,
                Field::Url => writeln!(f, "URL: {}", self.url)?,
                Field::Compression => {
                    if let Some(c) = &self.compression {
                        writeln!(f, "Compression: {c}")?;
                    }
                }
                Field::FileHash => {
                    if let Some(h) = &self.file_hash {
                        writeln!(f, "FileHash: {}", self.file_hash_encoding.render(h))?;
                    }
                }
                Field::FileSize => {
                    if let Some(s) = self.file_size {
                        writeln!(f, "FileSize: {s}")?;
                    }
                }
                Field::NarHash => writeln!(f, "NarHash: {}", self.nar_hash_encoding.render(&self.nar_hash()))?,
                Field::NarSize => writeln!(f, "NarSize: {}", self.nar_size)?,
                Field::References => {
                    if !(self.omit_empty_references && self.references.is_empty()) {
                        f.write_str("References: ")?;
                        for (i, r) in self.references.iter().enumerate() {
                            if i > 0 {
                                f.write_str(" ")?;
                            }
                            write!(f, "{r}")?;
                        }
                        f.write_str("\n")?;
                    }
                }
                Field::Deriver => match &self.deriver {
                    Some(Deriver::Path(p)) => writeln!(f, "Deriver: {p}")?,
                    Some(Deriver::Unknown) => writeln!(f, "Deriver: unknown-deriver")?,
                    None => {}
                },
                Field::System => {
                    if let Some(s) = &self.system {
                        writeln!(f, "System: {s}")?;
                    }
                }
                Field::Sig => {
                    for s in &self.sigs {
                        writeln!(f, "Sig: {s}")?;
                    }
                }
                Field::Ca => {
                    if let Some(ca) = &self.ca {
                        writeln!(f, "CA: {ca}")?;
                    }
                }
            }
            self.write_extras(f, Some(field))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
