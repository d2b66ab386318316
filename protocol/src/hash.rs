//! Typed content hashes as Nix prints and parses them.
//!
//! Nix writes a hash as `<algo>:<nix32>` (NarHash, CA fields), as plain lowercase hex (the `.drv`
//! output tuple), as base64, or as SRI `<algo>-<base64>`. [`NixHash::parse`] accepts every one of
//! these, and [`NixHash`]'s `Display` prints the `<algo>:<nix32>` form Nix uses in narinfo files.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest as _;
use thiserror::Error;

use crate::nixbase32;

/// A hash algorithm Nix accepts for content addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    /// MD5 (16 bytes); still accepted by Nix 2.8 for fixed-output derivations.
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes): NarHash and store paths.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// Every algorithm, in the order Nix lists them.
    pub const ALL: [HashAlgo; 4] = [HashAlgo::Md5, HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512];

    /// The digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix uses (`md5`, `sha1`, `sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Parse an algorithm name.
    pub fn from_name(s: &str) -> Option<HashAlgo> {
        HashAlgo::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a hash string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HashError {
    /// The algorithm name is not one Nix knows.
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    /// No algorithm was given and none was implied.
    #[error("hash {0:?} does not name its algorithm")]
    MissingAlgo(String),
    /// The digest part has a length that fits no encoding of this algorithm.
    #[error("hash {input:?} has a digest of length {len}, which is not a {algo} digest in hex, nix32 or base64")]
    BadLength {
        /// The whole input.
        input: String,
        /// The algorithm.
        algo: HashAlgo,
        /// Length of the digest part in characters.
        len: usize,
    },
    /// The digest is not valid in the encoding its length implies.
    #[error("hash {input:?} is not valid {encoding}")]
    BadEncoding {
        /// The whole input.
        input: String,
        /// `hex`, `nix32` or `base64`.
        encoding: &'static str,
    },
}

/// A digest together with its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NixHash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl NixHash {
    /// Build from raw digest bytes; `None` if the length does not fit the algorithm.
    pub fn new(algo: HashAlgo, digest: Vec<u8>) -> Option<NixHash> {
        (digest.len() == algo.digest_len()).then_some(NixHash { algo, digest })
    }

    /// A SHA-256 hash from its 32 bytes.
    pub fn sha256(digest: [u8; 32]) -> NixHash {
        NixHash { algo: HashAlgo::Sha256, digest: digest.to_vec() }
    }

    /// SHA-256 of `data`.
    pub fn sha256_of(data: &[u8]) -> NixHash {
        NixHash::sha256(sha2::Sha256::digest(data).into())
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Lowercase hex of the digest (no algorithm prefix).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.digest)
    }

    /// nix32 of the digest (no algorithm prefix).
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// SRI form `<algo>-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, BASE64.encode(&self.digest))
    }

    /// Parse any form Nix accepts: `<algo>:<hex|nix32|base64>`, SRI `<algo>-<base64>`, or a bare
    /// digest when `implied` gives the algorithm.
    pub fn parse(s: &str, implied: Option<HashAlgo>) -> Result<NixHash, HashError> {
        if let Some((algo, rest)) = s.split_once(':') {
            let algo = HashAlgo::from_name(algo).ok_or_else(|| HashError::UnknownAlgo(algo.to_string()))?;
            return Self::parse_digest(s, algo, rest);
        }
        if let Some((algo, rest)) = s.split_once('-')
            && let Some(algo) = HashAlgo::from_name(algo)
        {
            let digest =
                BASE64.decode(rest).map_err(|_| HashError::BadEncoding { input: s.to_string(), encoding: "base64" })?;
            return NixHash::new(algo, digest).ok_or(HashError::BadLength {
                input: s.to_string(),
                algo,
                len: rest.len(),
            });
        }
        match implied {
            Some(algo) => Self::parse_digest(s, algo, s),
            None => Err(HashError::MissingAlgo(s.to_string())),
        }
    }

    /// Parse a digest whose algorithm is known, in hex, nix32 or base64 (chosen by length, as Nix does).
    pub fn parse_digest(input: &str, algo: HashAlgo, digest: &str) -> Result<NixHash, HashError> {
        let n = algo.digest_len();
        let bad = |encoding| HashError::BadEncoding { input: input.to_string(), encoding };
        let bytes = if digest.len() == n * 2 {
            hex::decode(digest).map_err(|_| bad("hex"))?
        } else if digest.len() == nixbase32::encoded_len(n) {
            nixbase32::decode(digest).map_err(|_| bad("nix32"))?
        } else if digest.len() == n.div_ceil(3) * 4 {
            BASE64.decode(digest).map_err(|_| bad("base64"))?
        } else {
            return Err(HashError::BadLength { input: input.to_string(), algo, len: digest.len() });
        };
        NixHash::new(algo, bytes).ok_or(HashError::BadLength { input: input.to_string(), algo, len: digest.len() })
    }
}

/// `<algo>:<nix32>`, the form of narinfo's `NarHash` and of CA fields.
impl fmt::Display for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

impl FromStr for NixHash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NixHash::parse(s, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let hex = "894517c9163c896ec31a2adbd33c0681fd5f45b2c0ef08a64c92a03fb97f390f";
        let h = NixHash::parse(&format!("sha256:{hex}"), None).unwrap();
        assert_eq!(h.to_hex(), hex);
        let sri = "sha256-iUUXyRY8iW7DGirb0zwGgf1fRbLA7wimTJKgP7l/OQ8=";
        assert_eq!(NixHash::parse(sri, None).unwrap(), h);
        assert_eq!(h.to_sri(), sri);
        let nix32 = h.to_string();
        assert_eq!(NixHash::parse(&nix32, None).unwrap(), h);
        assert_eq!(NixHash::parse(hex, Some(HashAlgo::Sha256)).unwrap(), h);
        assert!(NixHash::parse(hex, None).is_err());
        assert!(NixHash::parse("sha257:00", None).is_err());
        assert!(NixHash::parse("sha256:abc", None).is_err());
    }
}
