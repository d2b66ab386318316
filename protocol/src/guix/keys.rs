//! Guix keys: `signing-key.pub`, `signing-key.sec` and the ACL (`/etc/guix/acl`).
//!
//! - public: `(public-key (ecc (curve Ed25519) (q #32 bytes#)))`, q the EdDSA-style compressed
//!   point (the same 32 bytes as an Ed25519 public key);
//! - secret: `(private-key (ecc (curve Ed25519) (q #…#) (d #…#)))`, d a big-endian integer
//!   (libgcrypt makes it a clamped 255-bit value; it is used mod n);
//! - ACL: `(acl (entry <public-key> (tag (guix import))) …)`, what `guix archive --authorize`
//!   writes (`guix/pki.scm`).
//!
//! One node key serves Nix and Guix: the Guix secret is the node's Ed25519 secret scalar (the
//! clamped first half of SHA-512(seed)) reduced mod ℓ, whose public point is the node's Ed25519
//! public key, so [`GuixPublicKey::from_ed25519`] is just a change of notation.

use std::fmt;

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest as _, Sha512};
use thiserror::Error;

use super::ecdsa;
use super::sexp::{Sexp, SexpError};

/// Why a Guix key, secret key or ACL text is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GuixKeyError {
    /// The text is not an s-expression.
    #[error("not an s-expression: {0}")]
    Sexp(#[from] SexpError),
    /// The s-expression is not the expected kind (`public-key`, `private-key`, `acl`).
    #[error("expected a ({expected} ...) s-expression, found ({found} ...)")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// The head found.
        found: String,
    },
    /// The key is not an `(ecc (curve Ed25519) ...)` key in the form Guix writes.
    #[error("{0}")]
    Unsupported(String),
    /// `q` is not 32 bytes or not a point on edwards25519.
    #[error("q is not a valid edwards25519 point: {0}")]
    BadPoint(String),
    /// `d` is missing, too long or zero mod n.
    #[error("d is not a valid secret: {0}")]
    BadSecret(String),
    /// The secret's `q` is not `d`·G.
    #[error("the secret key's q does not match its d")]
    PublicMismatch,
    /// An ACL entry is not `(entry <public-key> (tag (guix import)))`.
    #[error("ACL entry {index}: {reason}")]
    BadAclEntry {
        /// 0-based entry index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

fn head_name(sexp: &Sexp) -> String {
    sexp.head().map(|h| String::from_utf8_lossy(h).into_owned()).unwrap_or_else(|| "?".to_string())
}

/// A Guix public key: an edwards25519 point, the same 32 bytes as an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuixPublicKey([u8; 32]);

impl fmt::Debug for GuixPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuixPublicKey({})", hex::encode_upper(self.0))
    }
}

impl GuixPublicKey {
    /// The Guix form of a node's Ed25519 public key.
    pub fn from_ed25519(public: &ed25519_dalek::VerifyingKey) -> Self {
        GuixPublicKey(public.to_bytes())
    }

    /// From the 32-byte compressed point; errors when it is not a point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, GuixKeyError> {
        ecdsa::decompress(&bytes).ok_or_else(|| GuixKeyError::BadPoint(hex::encode_upper(bytes)))?;
        Ok(GuixPublicKey(bytes))
    }

    /// The 32 bytes of q.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The key as an s-expression tree.
    pub fn to_tree(&self) -> Sexp {
        Sexp::list(vec![
            Sexp::atom("public-key"),
            Sexp::list(vec![
                Sexp::atom("ecc"),
                Sexp::list(vec![Sexp::atom("curve"), Sexp::atom("Ed25519")]),
                Sexp::list(vec![Sexp::atom("q"), Sexp::Atom(self.0.to_vec())]),
            ]),
        ])
    }

    /// `(public-key (ecc (curve Ed25519) (q #HEX#)))` exactly as Guix writes `signing-key.pub`
    /// (libgcrypt's advanced rendering: one item per line, final newline).
    pub fn to_sexp(&self) -> String {
        self.to_tree().advanced_string()
    }

    /// The canonical encoding: what Guix compares when it looks a signer up in its ACL.
    pub fn canonical(&self) -> Vec<u8> {
        self.to_tree().canonical()
    }

    /// Parses Guix's public-key s-expression (advanced or canonical form): exactly
    /// `(public-key (ecc (curve Ed25519) (q <32 bytes>)))`, which is what Guix writes; any other
    /// form could never match a Guix signature's key in an ACL, so it is refused by name.
    pub fn parse_sexp(text: &str) -> Result<Self, GuixKeyError> {
        Self::from_tree(&Sexp::parse(text.as_bytes())?)
    }

    /// From a parsed `(public-key ...)` tree.
    pub fn from_tree(sexp: &Sexp) -> Result<Self, GuixKeyError> {
        if sexp.head() != Some(b"public-key") {
            return Err(GuixKeyError::WrongKind { expected: "public-key", found: head_name(sexp) });
        }
        let q = ecc_params(sexp, &["q"])?;
        let key = GuixPublicKey::from_bytes(q_bytes(q[0])?)?;
        // Only the exact form matches Guix's ACL comparison; refuse anything else by name.
        if key.to_tree() != *sexp {
            return Err(GuixKeyError::Unsupported(
                "public key has extra or reordered elements; Guix's form is \
                 (public-key (ecc (curve Ed25519) (q #...#)))"
                    .to_string(),
            ));
        }
        Ok(key)
    }

    /// The edwards25519 point.
    pub(crate) fn point(&self) -> Option<EdwardsPoint> {
        ecdsa::decompress(&self.0)
    }
}

/// Checks `(KIND (ecc (curve Ed25519) (NAME value)...))` and returns the values of `names`, in order.
fn ecc_params<'a>(sexp: &'a Sexp, names: &[&str]) -> Result<Vec<&'a [u8]>, GuixKeyError> {
    let items = sexp.items();
    let ecc = match items {
        [_, ecc] => ecc,
        _ => return Err(GuixKeyError::Unsupported("key must hold exactly one (ecc ...) list".to_string())),
    };
    if ecc.head() != Some(b"ecc") {
        return Err(GuixKeyError::Unsupported(format!(
            "key algorithm is ({} ...); Guix keys are (ecc (curve Ed25519) ...)",
            head_name(ecc)
        )));
    }
    let curve = ecc.items().iter().find(|i| i.head() == Some(b"curve"));
    match curve.and_then(|c| c.nth_data(1)) {
        Some(b"Ed25519") => {}
        Some(other) => {
            return Err(GuixKeyError::Unsupported(format!(
                "curve {:?} is not supported; Guix uses Ed25519",
                String::from_utf8_lossy(other)
            )));
        }
        None => return Err(GuixKeyError::Unsupported("key has no (curve Ed25519)".to_string())),
    }
    names
        .iter()
        .map(|name| {
            let param = ecc.items().iter().find(|i| i.head() == Some(name.as_bytes()));
            match param.map(|p| p.items()) {
                Some([_, Sexp::Atom(v)]) => Ok(v.as_slice()),
                Some(_) => Err(GuixKeyError::Unsupported(format!("({name} ...) must hold one value"))),
                None => Err(GuixKeyError::Unsupported(format!("key has no ({name} ...)"))),
            }
        })
        .collect()
}

fn q_bytes(q: &[u8]) -> Result<[u8; 32], GuixKeyError> {
    q.try_into().map_err(|_| GuixKeyError::BadPoint(format!("q is {} bytes, expected 32 (compressed point)", q.len())))
}

/// A Guix signing key: ECDSA over edwards25519, secret d.
#[derive(Clone)]
pub struct GuixSecretKey {
    /// d as the key holds it, big-endian (seeds RFC 6979 as libgcrypt does).
    d_be: [u8; 32],
    /// d mod n.
    d: Scalar,
    public: GuixPublicKey,
}

impl fmt::Debug for GuixSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuixSecretKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl GuixSecretKey {
    /// From the node's 32-byte Ed25519 seed: the clamped first half of SHA-512(seed), as
    /// Ed25519 uses it, reduced mod ℓ. Its public key is the node's Ed25519 public key.
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Self {
        let digest = Sha512::digest(seed);
        let mut clamped = [0u8; 32];
        clamped.copy_from_slice(&digest[..32]);
        clamped[0] &= 248;
        clamped[31] &= 127;
        clamped[31] |= 64;
        let d = Scalar::from_bytes_mod_order(clamped);
        let mut d_be = d.to_bytes();
        d_be.reverse();
        Self::from_parts(d_be, d)
    }

    fn from_parts(d_be: [u8; 32], d: Scalar) -> Self {
        let public = GuixPublicKey(EdwardsPoint::mul_base(&d).compress().to_bytes());
        GuixSecretKey { d_be, d, public }
    }

    /// Parses Guix's secret-key s-expression (`guix archive --generate-key` writes
    /// `(private-key (ecc (curve Ed25519) (q #…#) (d #…#)))`). When q is present it must be d·G.
    pub fn parse_sexp(text: &str) -> Result<Self, GuixKeyError> {
        let sexp = Sexp::parse(text.as_bytes())?;
        if sexp.head() != Some(b"private-key") {
            return Err(GuixKeyError::WrongKind { expected: "private-key", found: head_name(&sexp) });
        }
        let d_raw = ecc_params(&sexp, &["d"])?[0];
        let start = d_raw.iter().position(|&b| b != 0).unwrap_or(d_raw.len());
        let digits = &d_raw[start..];
        if digits.len() > 32 {
            return Err(GuixKeyError::BadSecret(format!("d is {} bytes, at most 32 expected", digits.len())));
        }
        let mut d_be = [0u8; 32];
        d_be[32 - digits.len()..].copy_from_slice(digits);
        let mut le = d_be;
        le.reverse();
        let d = Scalar::from_bytes_mod_order(le);
        if d == Scalar::ZERO {
            return Err(GuixKeyError::BadSecret("d is 0 mod n".to_string()));
        }
        let key = Self::from_parts(d_be, d);
        if let Ok(q) = ecc_params(&sexp, &["q"])
            && q[0] != key.public.0
        {
            return Err(GuixKeyError::PublicMismatch);
        }
        Ok(key)
    }

    /// The secret key as Guix writes `signing-key.sec` (what `guix publish` and
    /// `guix archive --export` read).
    pub fn to_sexp(&self) -> String {
        Sexp::list(vec![
            Sexp::atom("private-key"),
            Sexp::list(vec![
                Sexp::atom("ecc"),
                Sexp::list(vec![Sexp::atom("curve"), Sexp::atom("Ed25519")]),
                Sexp::list(vec![Sexp::atom("q"), Sexp::Atom(self.public.0.to_vec())]),
                Sexp::list(vec![Sexp::atom("d"), Sexp::Atom(self.d_be.to_vec())]),
            ]),
        ])
        .advanced_string()
    }

    /// The public key.
    pub fn public(&self) -> GuixPublicKey {
        self.public
    }

    /// Signs a hash with ECDSA as libgcrypt does (RFC 6979 nonce).
    pub(crate) fn sign_hash(&self, hash: &[u8]) -> ecdsa::EcdsaSignature {
        ecdsa::sign_hash(&self.d_be, &self.d, hash)
    }
}

/// Parses an ACL file (`(acl (entry (public-key ...) (tag (guix import))) ...)`), as
/// `(guix pki)` `acl->public-keys` reads it: every entry must have exactly that shape.
pub fn parse_acl(text: &str) -> Result<Vec<GuixPublicKey>, GuixKeyError> {
    let sexp = Sexp::parse(text.as_bytes())?;
    if sexp.head() != Some(b"acl") {
        return Err(GuixKeyError::WrongKind { expected: "acl", found: head_name(&sexp) });
    }
    let tag = Sexp::list(vec![Sexp::atom("tag"), Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")])]);
    sexp.items()[1..]
        .iter()
        .enumerate()
        .map(|(index, entry)| match entry.items() {
            [Sexp::Atom(head), key, t] if head == b"entry" && *t == tag => {
                GuixPublicKey::from_tree(key).map_err(|e| GuixKeyError::BadAclEntry { index, reason: e.to_string() })
            }
            _ => Err(GuixKeyError::BadAclEntry {
                index,
                reason: "not (entry <public-key> (tag (guix import)))".to_string(),
            }),
        })
        .collect()
}

/// Parses either one public key or an ACL: what `--guix-key`/`--acl` files and trusted-key
/// settings may hold.
pub fn parse_keys(text: &str) -> Result<Vec<GuixPublicKey>, GuixKeyError> {
    let sexp = Sexp::parse(text.as_bytes())?;
    match sexp.head() {
        Some(b"acl") => parse_acl(text),
        Some(b"public-key") => Ok(vec![GuixPublicKey::from_tree(&sexp)?]),
        _ => Err(GuixKeyError::WrongKind { expected: "public-key or acl", found: head_name(&sexp) }),
    }
}

/// The ACL `guix archive --authorize` writes for `keys`.
pub fn acl_sexp(keys: &[GuixPublicKey]) -> String {
    let tag = Sexp::list(vec![Sexp::atom("tag"), Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")])]);
    let mut items = vec![Sexp::atom("acl")];
    items.extend(keys.iter().map(|k| Sexp::list(vec![Sexp::atom("entry"), k.to_tree(), tag.clone()])));
    Sexp::list(items).advanced_string()
}

/// A trusted key as a configuration may give it: a Nix public key `name:base64`, or a Guix
/// public key `(public-key (ecc (curve Ed25519) (q #…#)))` (as in `/etc/guix/acl` or a farm's
/// `signing-key.pub`), which becomes the Nix public key of the same point named
/// `guix-<first 8 bytes of q in hex>`. Either way the key names one Ed25519 point.
pub fn parse_trusted_key(text: &str) -> Result<crate::nixkey::PublicKey, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('(') {
        let key = GuixPublicKey::parse_sexp(trimmed).map_err(|e| format!("not a Guix public key: {e}"))?;
        let point = ed25519_dalek::VerifyingKey::from_bytes(&key.to_bytes()).map_err(|e| e.to_string())?;
        let name = format!("guix-{}", hex::encode(&key.to_bytes()[..8]));
        crate::nixkey::PublicKey::new(&name, point).map_err(|e| e.to_string())
    } else {
        crate::nixkey::PublicKey::parse(trimmed).map_err(|e| e.to_string())
    }
}
