//! Nix derivations (`.drv` files): the ATerm format byte for byte, a derivation's own store path,
//! `hashDerivationModulo`, output paths, and the JSON of `nix show-derivation` (Nix 2.8 shape).
//!
//! # Model
//! A [`Derivation`] holds exactly what the ATerm holds. Strings that Nix copies from the Nix
//! language (`system`, `builder`, `args`, `env`) are **bytes**: real `.drv` files contain raw
//! non-UTF-8 bytes. Store paths and output names are validated strings. Every map and set is a
//! `BTreeMap`/`BTreeSet` whose order is the byte order Nix writes ([`StorePath`]'s `Ord` is its base
//! name order), so printing needs no sorting and there is one encoding per value.
//!
//! # Parsing is canonical
//! [`Derivation::parse`] accepts exactly the bytes C++ Nix writes (`src/libstore/derivation/aterm.cc`):
//! lists sorted and free of duplicates, escapes only in `builder`, `args` and `env` and only the five
//! Nix writes (`\"`, `\\`, `\n`, `\r`, `\t`; a raw LF, CR or TAB there is rejected), no escape at all
//! in the fields Nix writes unescaped (names, paths, hashes, `system`), hashes in lowercase hex, no
//! trailing bytes. Hence `to_aterm(parse(x)) == x` for every accepted `x`, and the hash of the
//! printed form is the hash of the file. `DrvWithVersion("xp-dyn-drv", ...)` (experimental dynamic
//! derivations) is rejected with [`DrvError::DynamicDerivation`]; any other version with
//! [`DrvError::UnknownVersion`].
//!
//! # Paths
//! - [`Derivation::drv_path`]: `makeTextPath(name + ".drv", ATerm, inputSrcs ∪ inputDrvs)`.
//! - [`Derivation::hash_modulo`]: Nix's `hashDerivationModulo`, pure: input derivations are
//!   resolved through a caller-supplied lookup (which may memoize) returning each input's
//!   [`DrvHash`] "as an input" (`mask_outputs = false`).
//! - [`Derivation::output_paths`], [`Derivation::fill_in_output_paths`],
//!   [`Derivation::check_output_paths`]: output paths of input-addressed and fixed-output
//!   derivations, as `nix-instantiate` computes them.
//!
//! The store dir is a parameter everywhere (`/nix/store`, `/gnu/store`).

mod aterm;
mod index;
mod json;
mod paths;
mod set;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use crate::hash::{HashAlgo, NixHash};
use crate::store_path::{StoreDir, StorePath, StorePathError, validate_name};

pub use paths::DrvHash;
pub use set::{DrvSet, MAX_INPUT_DEPTH};

/// The largest `.drv` [`Derivation::parse`] accepts (32 MiB; real ones are kilobytes, a NixOS
/// system closure's largest is well under a megabyte).
pub const MAX_DRV_SIZE: usize = 32 << 20;

/// How the content of a content-addressed output is hashed: the prefix of the ATerm's `hashAlgo`
/// field (`""`, `r:`, `text:`, `git:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaMethod {
    /// The file's bytes (`outputHashMode = "flat"`); no prefix.
    Flat,
    /// The NAR serialisation (`outputHashMode = "recursive"`); prefix `r:`.
    Nar,
    /// A text file as `builtins.toFile` writes it; prefix `text:`.
    Text,
    /// A git tree/blob hash (experimental); prefix `git:`.
    Git,
}

impl CaMethod {
    /// The prefix this method has in the ATerm's `hashAlgo` field and in `fixed:out:` strings.
    pub const fn prefix(self) -> &'static str {
        match self {
            CaMethod::Flat => "",
            CaMethod::Nar => "r:",
            CaMethod::Text => "text:",
            CaMethod::Git => "git:",
        }
    }

    /// Split `"<prefix><algo>"` (e.g. `r:sha256`) into method and algorithm.
    pub fn parse_method_algo(s: &str) -> Option<(CaMethod, HashAlgo)> {
        let (method, algo) = if let Some(a) = s.strip_prefix("r:") {
            (CaMethod::Nar, a)
        } else if let Some(a) = s.strip_prefix("text:") {
            (CaMethod::Text, a)
        } else if let Some(a) = s.strip_prefix("git:") {
            (CaMethod::Git, a)
        } else {
            (CaMethod::Flat, s)
        };
        Some((method, HashAlgo::from_name(algo)?))
    }

    /// `"<prefix><algo>"`, the ATerm's `hashAlgo` field (Nix `printMethodAlgo`).
    pub fn method_algo(self, algo: HashAlgo) -> String {
        format!("{}{}", self.prefix(), algo.name())
    }
}

/// The hash fields of an output tuple (`hashAlgo`, `hash`), which say what kind of output it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutputHash {
    /// `"",""`: input-addressed (when the path is set) or deferred (path empty).
    None,
    /// Fixed-output: the content hash is known in advance (`"r:sha256","<hex>"`).
    Fixed {
        /// How the content is hashed.
        method: CaMethod,
        /// The expected hash.
        hash: NixHash,
    },
    /// Floating content-addressed (`"r:sha256",""`, experimental `ca-derivations`); no path.
    Floating {
        /// How the content is hashed.
        method: CaMethod,
        /// The algorithm.
        algo: HashAlgo,
    },
    /// Impure (`"r:sha256","impure"`, experimental `impure-derivations`); no path.
    Impure {
        /// How the content is hashed.
        method: CaMethod,
        /// The algorithm.
        algo: HashAlgo,
    },
}

/// One output of a derivation: `("<name>","<path>","<hashAlgo>","<hash>")` without the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Output {
    /// The recorded output path; `None` when the ATerm has `""` (deferred, floating, impure, or
    /// the hashing form before [`Derivation::fill_in_output_paths`]).
    pub path: Option<StorePath>,
    /// The hash fields.
    pub hash: OutputHash,
}

/// What kind of output an [`Output`] is (Nix `DerivationOutput`'s variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// Input-addressed with a path.
    InputAddressed,
    /// Input-addressed, path not (yet) known.
    Deferred,
    /// Fixed-output (content hash given).
    Fixed,
    /// Floating content-addressed.
    Floating,
    /// Impure.
    Impure,
}

impl Output {
    /// An input-addressed output with the given path (`None` = deferred).
    pub fn input_addressed(path: Option<StorePath>) -> Output {
        Output { path, hash: OutputHash::None }
    }

    /// Which kind of output this is.
    pub fn kind(&self) -> OutputKind {
        match (&self.hash, &self.path) {
            (OutputHash::None, Some(_)) => OutputKind::InputAddressed,
            (OutputHash::None, None) => OutputKind::Deferred,
            (OutputHash::Fixed { .. }, _) => OutputKind::Fixed,
            (OutputHash::Floating { .. }, _) => OutputKind::Floating,
            (OutputHash::Impure { .. }, _) => OutputKind::Impure,
        }
    }

    /// The ATerm's `hashAlgo` field (`""`, `sha256`, `r:sha256`, ...).
    pub fn hash_algo_field(&self) -> String {
        match &self.hash {
            OutputHash::None => String::new(),
            OutputHash::Fixed { method, hash } => method.method_algo(hash.algo()),
            OutputHash::Floating { method, algo } | OutputHash::Impure { method, algo } => method.method_algo(*algo),
        }
    }

    /// The ATerm's `hash` field (`""`, lowercase hex, or `impure`).
    pub fn hash_field(&self) -> String {
        match &self.hash {
            OutputHash::None | OutputHash::Floating { .. } => String::new(),
            OutputHash::Fixed { hash, .. } => hash.to_hex(),
            OutputHash::Impure { .. } => "impure".to_string(),
        }
    }
}

/// A derivation, field for field as in the ATerm
/// `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`.
///
/// Executors use `builder`, `args`, `env` (bytes, passed to `execve` as they are), `outputs`,
/// `input_drvs` (which outputs of which derivations must be realised first) and `input_srcs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Derivation {
    /// Outputs by name (names follow store path name rules).
    pub outputs: BTreeMap<String, Output>,
    /// Input derivations (`.drv` store paths) and the outputs of each that are used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources: store paths that are not derivation outputs.
    pub input_srcs: BTreeSet<StorePath>,
    /// The system type, e.g. `x86_64-linux` (Nix writes it unescaped).
    pub system: Vec<u8>,
    /// The builder executable.
    pub builder: Vec<u8>,
    /// Arguments passed to the builder.
    pub args: Vec<Vec<u8>>,
    /// The builder's environment.
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Why a derivation could not be parsed, or why a computation on it failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DrvError {
    /// The input is larger than [`MAX_DRV_SIZE`].
    #[error("derivation is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not follow the ATerm grammar.
    #[error("at byte {offset}: expected {expected}, found {found}")]
    Syntax {
        /// Byte offset of the problem.
        offset: usize,
        /// What the grammar expects there.
        expected: String,
        /// What is there (a quoted character or "end of input").
        found: String,
    },
    /// A string has no closing quote.
    #[error("at byte {offset}: unterminated string in derivation")]
    UnterminatedString {
        /// Offset of the opening quote.
        offset: usize,
    },
    /// A string is not written the way Nix writes it (so it would not print back identically).
    #[error("at byte {offset}: {reason}")]
    NonCanonical {
        /// Offset of the offending byte.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A list that Nix keeps sorted is not sorted.
    #[error("at byte {offset}: {list} are not sorted: {key:?} comes after {prev:?}")]
    Unsorted {
        /// Offset of the out-of-order entry.
        offset: usize,
        /// Which list.
        list: &'static str,
        /// The entry.
        key: String,
        /// The entry before it.
        prev: String,
    },
    /// A list that Nix keeps free of duplicates has one.
    #[error("at byte {offset}: duplicate {list} entry {key:?}")]
    Duplicate {
        /// Offset of the second occurrence.
        offset: usize,
        /// Which list.
        list: &'static str,
        /// The repeated key.
        key: String,
    },
    /// A store path is invalid or not in the given store dir.
    #[error("at byte {offset}: {reason}")]
    BadStorePath {
        /// Offset of the string.
        offset: usize,
        /// Why.
        reason: StorePathError,
    },
    /// An output name is invalid.
    #[error("at byte {offset}: invalid output name {name:?}: {reason}")]
    BadOutputName {
        /// Offset of the string.
        offset: usize,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An output tuple's path/hashAlgo/hash combination is invalid.
    #[error("at byte {offset}: output {output:?}: {reason}")]
    BadOutput {
        /// Offset of the tuple.
        offset: usize,
        /// The output name.
        output: String,
        /// Why.
        reason: String,
    },
    /// `DrvWithVersion` with a version Nix does not know.
    #[error("at byte {offset}: unknown derivation ATerm format version {version:?}")]
    UnknownVersion {
        /// Offset of the version string.
        offset: usize,
        /// The version.
        version: String,
    },
    /// Dynamic-derivation syntax (`DrvWithVersion("xp-dyn-drv", ...)` or the nested inputDrv form).
    #[error("at byte {offset}: dynamic derivations (experimental `xp-dyn-drv` format) are not supported")]
    DynamicDerivation {
        /// Offset of the construct.
        offset: usize,
    },
    /// Bytes after the closing parenthesis.
    #[error("at byte {offset}: {len} trailing bytes after the derivation")]
    TrailingData {
        /// Offset of the first extra byte.
        offset: usize,
        /// How many extra bytes.
        len: usize,
    },
    /// The derivation name is neither in env `name` nor in `__json`, and none was given.
    #[error("derivation has no name: no env var `name` and no \"name\" in `__json`")]
    NoName,
    /// The derivation name is invalid (as a store path name or as UTF-8).
    #[error("derivation name {name:?} is invalid: {reason}")]
    BadName {
        /// The name (lossy UTF-8).
        name: String,
        /// Why.
        reason: String,
    },
    /// A fixed output's recorded path is not the one its content address gives.
    #[error(
        "derivation output {output:?} has path {recorded}, which does not match its content address (expected {computed})"
    )]
    FixedPathMismatch {
        /// The output.
        output: String,
        /// The path in the file.
        recorded: String,
        /// The computed path.
        computed: String,
    },
    /// An output's recorded path differs from the computed one.
    #[error("derivation output {output:?} records path {recorded}, but its computed path is {computed}")]
    OutputPathMismatch {
        /// The output.
        output: String,
        /// The path in the file.
        recorded: String,
        /// The computed path.
        computed: String,
    },
    /// The env var named after an output holds something else than the output's path.
    #[error("env var {output:?} holds {recorded:?}, but the output's computed path is {computed}")]
    EnvMismatch {
        /// The output (= env var name).
        output: String,
        /// The env value (lossy UTF-8).
        recorded: String,
        /// The computed path.
        computed: String,
    },
    /// An output records a path although its path cannot be known before building.
    #[error(
        "derivation output {output:?} records path {recorded}, but it should be deferred (an input is content-addressed)"
    )]
    ShouldBeDeferred {
        /// The output.
        output: String,
        /// The recorded path.
        recorded: String,
    },
    /// An input derivation could not be resolved by the lookup.
    #[error("input derivation {path} is not available")]
    MissingInput {
        /// Absolute path of the input `.drv`.
        path: String,
    },
    /// An input derivation does not have an output this derivation uses.
    #[error("input derivation {input} has no output {output:?}")]
    MissingInputOutput {
        /// Absolute path of the input `.drv`.
        input: String,
        /// The output name.
        output: String,
    },
    /// Resolving an input derivation failed.
    #[error("in input derivation {input}: {error}")]
    InInput {
        /// Absolute path of the input `.drv`.
        input: String,
        /// What failed there.
        error: Box<DrvError>,
    },
    /// Input derivations nest deeper than [`MAX_INPUT_DEPTH`].
    #[error("input derivations nest deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A content address that no store path can be made from.
    #[error("output {output:?}: {reason}")]
    BadContentAddress {
        /// The output.
        output: String,
        /// Why.
        reason: String,
    },
}

impl Derivation {
    /// Parse a `.drv` file (ATerm) whose store paths lie in `store_dir`. Structural checks only; see
    /// [`Derivation::parse_checked`] for the fixed-output path check Nix's parser also does.
    pub fn parse(bytes: &[u8], store_dir: &StoreDir) -> Result<Derivation, DrvError> {
        aterm::parse(bytes, store_dir)
    }

    /// Parse a `.drv` file and compute its own store path from the same bytes: parsing is
    /// canonical (the bytes are exactly what [`Derivation::to_aterm`] prints), so they are hashed
    /// as they are instead of printed again. `name` as in [`Derivation::parse_checked`]. Returns
    /// the derivation, its name and its `.drv` path.
    pub fn parse_with_path(
        bytes: &[u8],
        store_dir: &StoreDir,
        name: Option<&str>,
    ) -> Result<(Derivation, String, StorePath), DrvError> {
        let drv = Self::parse(bytes, store_dir)?;
        let name = match name {
            Some(n) => n.to_string(),
            None => drv.name()?,
        };
        let path = drv.drv_path_of_aterm(store_dir, &name, bytes)?;
        Ok((drv, name, path))
    }

    /// [`Derivation::parse`] followed by [`Derivation::validate`] with `name` (or, when `None`,
    /// the name from [`Derivation::name`]).
    pub fn parse_checked(bytes: &[u8], store_dir: &StoreDir, name: Option<&str>) -> Result<Derivation, DrvError> {
        let drv = Self::parse(bytes, store_dir)?;
        let name = match name {
            Some(n) => n.to_string(),
            None => drv.name()?,
        };
        drv.validate(store_dir, &name)?;
        Ok(drv)
    }

    /// The ATerm bytes, exactly as C++ Nix writes them (escaping `builder`, `args` and `env` only).
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Vec<u8> {
        aterm::print(self, store_dir, false, None)
    }

    /// The derivation's name: env `name`, or for structured attributes the `"name"` of `__json`.
    pub fn name(&self) -> Result<String, DrvError> {
        name_from(self.env_var("name"), self.env_var("__json"))
    }

    /// Semantic checks Nix does on a parsed derivation: the name makes valid store paths, and every
    /// fixed output's recorded path is the one its content address gives (Nix: "derivation output
    /// '…' has path '…', which does not match its content address").
    pub fn validate(&self, store_dir: &StoreDir, name: &str) -> Result<(), DrvError> {
        validate_drv_name(name)?;
        for (out, o) in &self.outputs {
            if let (OutputHash::Fixed { method, hash }, Some(recorded)) = (&o.hash, &o.path) {
                let computed = paths::fixed_output_path(store_dir, name, out, *method, hash)?;
                if &computed != recorded {
                    return Err(DrvError::FixedPathMismatch {
                        output: out.clone(),
                        recorded: store_dir.display(recorded),
                        computed: store_dir.display(&computed),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether every output is fixed (a fixed-output derivation, which may fetch from the network).
    pub fn is_fixed_output(&self) -> bool {
        !self.outputs.is_empty() && self.outputs.values().all(|o| matches!(o.hash, OutputHash::Fixed { .. }))
    }

    /// Whether `__json` holds the attributes (structured attrs).
    pub fn has_structured_attrs(&self) -> bool {
        self.env.contains_key(b"__json".as_slice())
    }

    /// An env var as bytes.
    pub fn env_var(&self, key: &str) -> Option<&[u8]> {
        self.env.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// All store paths this derivation refers to: input sources and input derivations (the
    /// references of its `.drv` file).
    pub fn references(&self) -> impl Iterator<Item = &StorePath> {
        self.input_srcs.iter().chain(self.input_drvs.keys())
    }
}

/// The name of output `output` of a derivation named `drv_name`: `drv_name` for `out`, otherwise
/// `drv_name-output` (Nix `outputPathName`).
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" { drv_name.to_string() } else { format!("{drv_name}-{output}") }
}

/// A derivation's name from its env var `name` (or, without one, the `"name"` of `__json`),
/// validated.
fn name_from(name: Option<&[u8]>, json: Option<&[u8]>) -> Result<String, DrvError> {
    let raw = if let Some(n) = name {
        String::from_utf8(n.to_vec())
            .map_err(|_| DrvError::BadName { name: lossy(n), reason: "not UTF-8".to_string() })?
    } else if let Some(json) = json {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| DrvError::BadName { name: String::new(), reason: format!("`__json` is not JSON: {e}") })?;
        match v.get("name").and_then(|n| n.as_str()) {
            Some(n) => n.to_string(),
            None => return Err(DrvError::NoName),
        }
    } else {
        return Err(DrvError::NoName);
    };
    validate_drv_name(&raw)?;
    Ok(raw)
}

fn validate_drv_name(name: &str) -> Result<(), DrvError> {
    validate_name(&format!("{name}.drv"))
        .map_err(|e| DrvError::BadName { name: name.to_string(), reason: e.to_string() })
}

/// Output names follow the store path name rules (they become part of output path names).
pub(crate) fn validate_output_name(name: &str) -> Result<(), String> {
    validate_name(name).map_err(|e| match e {
        StorePathError::BadName { reason, .. } => reason.to_string(),
        other => other.to_string(),
    })
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputKind::InputAddressed => "input-addressed",
            OutputKind::Deferred => "deferred",
            OutputKind::Fixed => "fixed-output",
            OutputKind::Floating => "floating content-addressed",
            OutputKind::Impure => "impure",
        })
    }
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;
