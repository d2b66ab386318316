//! Nix signing keys and signatures in their text forms.
//!
//! - secret key file: `name:base64(64 bytes = 32-byte seed ‖ 32-byte public key)` (libsodium layout);
//! - public key: `name:base64(32 bytes)`;
//! - signature (narinfo `Sig:`): `name:base64(64-byte ed25519 signature)`.
//!
//! Signatures are plain Ed25519 over the UTF-8 bytes of the message (for narinfos, the fingerprint).
//! Source: Nix `src/libutil/signature/local-keys.cc`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

/// Why a key or signature string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NixKeyError {
    /// No `:` separates the name from the base64 data.
    #[error("{what} has no ':' between the key name and the base64 data")]
    MissingColon {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
    },
    /// The name is empty or contains whitespace.
    #[error("{what} name {name:?} is invalid: it must be non-empty without whitespace")]
    BadName {
        /// What was parsed.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The data after the colon is not base64.
    #[error("{what} {name:?}: data is not valid base64")]
    BadBase64 {
        /// What was parsed.
        what: &'static str,
        /// The key name.
        name: String,
    },
    /// The decoded data has the wrong length.
    #[error("{what} {name:?}: decoded data is {found} bytes, expected {expected}")]
    BadLength {
        /// What was parsed.
        what: &'static str,
        /// The key name.
        name: String,
        /// Bytes found.
        found: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The public half of a secret key does not match its seed.
    #[error("secret key {0:?}: its public half does not match its seed")]
    PublicMismatch(String),
    /// The public key bytes are not a valid Ed25519 point.
    #[error("public key {0:?} is not a valid ed25519 point")]
    BadPoint(String),
}

fn split<'a>(s: &'a str, what: &'static str) -> Result<(&'a str, Vec<u8>), NixKeyError> {
    let s = s.trim();
    let (name, data) = s.split_once(':').ok_or(NixKeyError::MissingColon { what })?;
    check_name(name, what)?;
    let bytes = BASE64.decode(data).map_err(|_| NixKeyError::BadBase64 { what, name: name.to_string() })?;
    Ok((name, bytes))
}

fn check_name(name: &str, what: &'static str) -> Result<(), NixKeyError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NixKeyError::BadName { what, name: name.to_string() });
    }
    Ok(())
}

fn fixed<const N: usize>(bytes: &[u8], what: &'static str, name: &str) -> Result<[u8; N], NixKeyError> {
    bytes.try_into().map_err(|_| NixKeyError::BadLength {
        what,
        name: name.to_string(),
        found: bytes.len(),
        expected: N,
    })
}

/// A named Ed25519 secret key in Nix's format.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A key from a name and a 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<SecretKey, NixKeyError> {
        check_name(name, "secret key")?;
        Ok(SecretKey { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parse `name:base64(seed ‖ public)`.
    pub fn parse(s: &str) -> Result<SecretKey, NixKeyError> {
        let (name, bytes) = split(s, "secret key")?;
        let bytes: [u8; 64] = fixed(&bytes, "secret key", name)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(NixKeyError::PublicMismatch(name.to_string()));
        }
        Ok(SecretKey { name: name.to_string(), key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-byte seed (keep secret).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The dalek signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// Sign a message (for narinfos: the fingerprint string).
    pub fn sign(&self, message: &[u8]) -> NixSignature {
        NixSignature { name: self.name.clone(), bytes: self.key.sign(message).to_bytes() }
    }

    /// The secret key file contents `name:base64(seed ‖ public)` (no newline).
    pub fn to_file_string(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.key.to_bytes());
        bytes[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes))
    }
}

impl FromStr for SecretKey {
    type Err = NixKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretKey::parse(s)
    }
}

/// A named Ed25519 public key in Nix's format `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// A named public key from a dalek verifying key.
    pub fn new(name: &str, key: VerifyingKey) -> Result<PublicKey, NixKeyError> {
        check_name(name, "public key")?;
        Ok(PublicKey { name: name.to_string(), key })
    }

    /// Parse `name:base64(32 bytes)`.
    pub fn parse(s: &str) -> Result<PublicKey, NixKeyError> {
        let (name, bytes) = split(s, "public key")?;
        let bytes: [u8; 32] = fixed(&bytes, "public key", name)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| NixKeyError::BadPoint(name.to_string()))?;
        Ok(PublicKey { name: name.to_string(), key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dalek verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` is this key's (same name) valid signature of `message` (strict verification).
    pub fn verify(&self, message: &[u8], sig: &NixSignature) -> bool {
        sig.name == self.name
            && self.key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig.bytes)).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl FromStr for PublicKey {
    type Err = NixKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

/// A named signature `name:base64(64 bytes)`, as in a narinfo `Sig:` line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NixSignature {
    name: String,
    bytes: [u8; 64],
}

impl fmt::Debug for NixSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixSignature({self})")
    }
}

impl NixSignature {
    /// A signature from a key name and raw bytes.
    pub fn new(name: &str, bytes: [u8; 64]) -> Result<NixSignature, NixKeyError> {
        check_name(name, "signature")?;
        Ok(NixSignature { name: name.to_string(), bytes })
    }

    /// Parse `name:base64(64 bytes)`.
    pub fn parse(s: &str) -> Result<NixSignature, NixKeyError> {
        let (name, bytes) = split(s, "signature")?;
        let bytes: [u8; 64] = fixed(&bytes, "signature", name)?;
        Ok(NixSignature { name: name.to_string(), bytes })
    }

    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.name
    }

    /// The raw 64 bytes.
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for NixSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

impl FromStr for NixSignature {
    type Err = NixKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NixSignature::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str =
        "cache.example.com-1:cCta2MEsRNuYCgWYyeRXLyfoFpKhQJKn8gLMeXWAb7vIpRKKo/3JoxJ24OYa3DxT2JVV38KjK/1ywHWuMe2JEw==";
    const PUBLIC: &str = "cache.example.com-1:yKUSiqP9yaMSduDmGtw8U9iVVd/Coyv9csB1rjHtiRM=";

    #[test]
    fn snix_keypair() {
        let sk = SecretKey::parse(SECRET).unwrap();
        assert_eq!(sk.public().to_string(), PUBLIC);
        assert_eq!(sk.to_file_string(), SECRET);
        let pk = PublicKey::parse(PUBLIC).unwrap();
        let sig = sk.sign(b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellO", &sig));
        assert_eq!(NixSignature::parse(&sig.to_string()).unwrap(), sig);
    }

    #[test]
    fn cache_nixos_org_vector() {
        let pk = PublicKey::parse("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=").unwrap();
        let fp = "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n";
        let sig = NixSignature::parse("cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==").unwrap();
        assert!(pk.verify(fp.as_bytes(), &sig));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(SecretKey::parse("nocolon"), Err(NixKeyError::MissingColon { .. })));
        assert!(matches!(PublicKey::parse("x:!!"), Err(NixKeyError::BadBase64 { .. })));
        assert!(matches!(PublicKey::parse(SECRET), Err(NixKeyError::BadLength { found: 64, .. })));
        assert!(matches!(SecretKey::parse(PUBLIC), Err(NixKeyError::BadLength { found: 32, .. })));
        assert!(matches!(
            PublicKey::parse(":yKUSiqP9yaMSduDmGtw8U9iVVd/Coyv9csB1rjHtiRM="),
            Err(NixKeyError::BadName { .. })
        ));
        // Flip one bit of the public half of the secret key.
        let mut raw = BASE64.decode(SECRET.split_once(':').unwrap().1).unwrap();
        raw[40] ^= 1;
        let bad = format!("k:{}", BASE64.encode(raw));
        assert!(matches!(SecretKey::parse(&bad), Err(NixKeyError::PublicMismatch(_))));
    }
}
