//! The narinfo fingerprint, signing and verification.

use std::fmt;

use thiserror::Error;

use super::NarInfo;
use crate::nixbase32;
use crate::nixkey::{NixSignature, PublicKey, SecretKey};
use crate::store_path::{StoreDir, StorePath};

/// Why a fingerprint cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// Nix refuses to fingerprint a path with `NarSize` 0 (`path-info.cc`).
    #[error("cannot fingerprint {path}: NarSize is 0")]
    ZeroNarSize {
        /// The absolute store path.
        path: String,
    },
}

/// The string Nix signs for a store path: `1;<path>;sha256:<nix32 narHash>;<narSize>;<refs>`,
/// where `<refs>` are the absolute reference paths **sorted** (byte order of the path text, as
/// C++ Nix's `StorePathSet`) and joined with `,`.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &[u8; 32],
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<String, FingerprintError> {
    let mut refs: Vec<String> = references.into_iter().map(|r| store_dir.display(r)).collect();
    refs.sort_unstable();
    refs.dedup();
    fingerprint_of(store_dir, path, nar_hash, nar_size, &refs)
}

fn fingerprint_of(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &[u8; 32],
    nar_size: u64,
    refs: &[String],
) -> Result<String, FingerprintError> {
    let path = store_dir.display(path);
    if nar_size == 0 {
        return Err(FingerprintError::ZeroNarSize { path });
    }
    Ok(format!("1;{path};sha256:{};{nar_size};{}", nixbase32::encode(nar_hash), refs.join(",")))
}

/// Which reference order a valid signature was made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferenceOrder {
    /// Sorted, as C++ Nix signs (every modern narinfo).
    Sorted,
    /// The order of the `References` line, which differs from sorted (a few legacy
    /// cache.nixos.org narinfos; snix signs this way).
    FileOrder,
}

/// The outcome for one `Sig` line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// One value per `Sig` line: the size of `Valid` does not matter, and an unboxed key is simpler to use.
#[allow(clippy::large_enum_variant)]
pub enum SigResult {
    /// A trusted key with the signature's name verified it (`verify_strict`).
    Valid {
        /// The key that verified it.
        key: PublicKey,
        /// The reference order of the fingerprint that matched.
        order: ReferenceOrder,
    },
    /// No trusted key has this signature's key name.
    UnknownKey,
    /// A trusted key has this name, but the signature does not verify against the fingerprint
    /// (the signed fields were changed, or the signature is forged or corrupt).
    BadSignature,
}

impl fmt::Display for SigResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigResult::Valid { key, order: ReferenceOrder::Sorted } => write!(f, "valid (trusted key {key})"),
            SigResult::Valid { key, order: ReferenceOrder::FileOrder } => {
                write!(f, "valid (trusted key {key}; signed over references in file order, not sorted)")
            }
            SigResult::UnknownKey => f.write_str("unknown key: no trusted key has this name"),
            SigResult::BadSignature => {
                f.write_str("bad signature: the trusted key with this name did not sign this fingerprint")
            }
        }
    }
}

/// One `Sig` line and what verification said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigCheck {
    /// The signature.
    pub signature: NixSignature,
    /// The outcome.
    pub result: SigResult,
}

/// The result of [`NarInfo::verify`]: one entry per `Sig` line, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The sorted-references fingerprint that was checked first.
    pub fingerprint: String,
    /// One entry per `Sig` line.
    pub checks: Vec<SigCheck>,
}

impl Verification {
    /// Whether at least one signature by a trusted key is valid (what Nix requires with
    /// `require-sigs`).
    pub fn is_valid(&self) -> bool {
        self.checks.iter().any(|c| matches!(c.result, SigResult::Valid { .. }))
    }

    /// The trusted keys that made a valid signature.
    pub fn valid_keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.checks.iter().filter_map(|c| match &c.result {
            SigResult::Valid { key, .. } => Some(key),
            _ => None,
        })
    }
}

impl NarInfo {
    /// The fingerprint Nix signs, with the references sorted (see [`fingerprint`]).
    pub fn fingerprint(&self) -> Result<String, FingerprintError> {
        fingerprint(&self.store_dir, &self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }

    /// The fingerprint with the references in file order (snix's form); equal to
    /// [`NarInfo::fingerprint`] when the file lists them sorted.
    pub fn fingerprint_file_order(&self) -> Result<String, FingerprintError> {
        let refs: Vec<String> = self.references.iter().map(|r| self.store_dir.display(r)).collect();
        fingerprint_of(&self.store_dir, &self.store_path, &self.nar_hash, self.nar_size, &refs)
    }

    /// Sign the (sorted) fingerprint with `key` and add the `Sig` line. A `Sig` with the same key
    /// name is replaced in place (Ed25519 is deterministic, so re-signing unchanged fields yields the
    /// same line); otherwise the new line is appended. Returns the signature.
    pub fn sign(&mut self, key: &SecretKey) -> Result<NixSignature, FingerprintError> {
        let sig = key.sign(self.fingerprint()?.as_bytes());
        match self.sigs.iter_mut().find(|s| s.key_name() == key.name()) {
            Some(old) => *old = sig.clone(),
            None => self.sigs.push(sig.clone()),
        }
        Ok(sig)
    }

    /// Check every `Sig` line against `trusted` keys: a signature is matched to the trusted keys with
    /// the same name, then checked with Ed25519 `verify_strict` over the sorted fingerprint and, when
    /// the `References` line is not sorted, over the file-order fingerprint too.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<Verification, FingerprintError> {
        let sorted = self.fingerprint()?;
        let file_order = self.fingerprint_file_order()?;
        let checks = self
            .sigs
            .iter()
            .map(|sig| {
                let mut named = trusted.iter().filter(|k| k.name() == sig.key_name()).peekable();
                if named.peek().is_none() {
                    return SigCheck { signature: sig.clone(), result: SigResult::UnknownKey };
                }
                let mut result = SigResult::BadSignature;
                for key in named {
                    if key.verify(sorted.as_bytes(), sig) {
                        result = SigResult::Valid { key: key.clone(), order: ReferenceOrder::Sorted };
                        break;
                    }
                    if file_order != sorted && key.verify(file_order.as_bytes(), sig) {
                        result = SigResult::Valid { key: key.clone(), order: ReferenceOrder::FileOrder };
                        break;
                    }
                }
                SigCheck { signature: sig.clone(), result }
            })
            .collect();
        Ok(Verification { fingerprint: sorted, checks })
    }
}
