//! One ed25519 key per node, used three ways.
//!
//! A [`NodeKey`] is a key name plus an ed25519 signing key. The same key is:
//! 1. **the node's libp2p identity.** The node crate passes [`NodeKey::seed`] to
//!    `libp2p::identity::Keypair::ed25519_from_bytes(seed)`; the resulting `PeerId` equals
//!    [`NodeId::to_peer_id`] (this crate computes it without depending on libp2p);
//! 2. **the mesh signing key** for [`crate::signed::Signed`] messages, whose signatures are over
//!    `b"buildmesh/v1/<kind>\0" ‖ payload`;
//! 3. **a Nix binary-cache signing key** ([`NodeKey::nix_secret_key`], [`NodeKey::sign_nix`]) whose
//!    narinfo signatures are over the Nix fingerprint `1;<path>;<narHash>;<narSize>;<refs>`.
//!
//! The three message spaces cannot collide: a Nix fingerprint starts with `1;`, a mesh message with
//! `buildmesh/`, and libp2p's own signatures with its prefixes (`noise-libp2p-static-key:`,
//! `libp2p-pubsub:`, or a varint-length-prefixed signed-envelope domain). No byte string is a valid
//! message in two of these spaces, so one signature can never be replayed as another.
//!
//! The key file is the Nix secret key file (`name:base64(seed ‖ public)`), so
//! `nix store sign --key-file` accepts a node's key directly.

use std::fmt;

use ed25519_dalek::Signer as _;
use thiserror::Error;

use crate::id::NodeId;
use crate::nixkey::{self, NixSignature};

/// The longest key name accepted.
pub const MAX_KEY_NAME_LEN: usize = 128;

/// Why a node key cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key name breaks the naming rule.
    #[error("key name {name:?} is invalid: it must be 1-{MAX_KEY_NAME_LEN} characters of [A-Za-z0-9._-]")]
    BadName {
        /// The name given.
        name: String,
    },
    /// The key file could not be parsed.
    #[error("invalid node key file: {0}")]
    KeyFile(#[from] nixkey::NixKeyError),
    /// The key is weak (cannot happen for keys derived from a seed; kept for completeness).
    #[error("node key: {0}")]
    Id(#[from] crate::id::IdError),
}

/// Check a key name: 1–128 characters of `[A-Za-z0-9._-]` (a subset of what Nix accepts, so the
/// name survives every Nix key parser, including snix's).
pub fn validate_key_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(IdentityError::BadName { name: name.to_string() }) }
}

/// A node's secret identity: a key name and an ed25519 signing key. `Debug` does not print the
/// secret.
#[derive(Clone)]
pub struct NodeKey {
    nix: nixkey::SecretKey,
    id: NodeId,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").field("name", &self.nix.name()).field("id", &self.id).finish_non_exhaustive()
    }
}

impl NodeKey {
    /// The key with this name and 32-byte ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NodeKey, IdentityError> {
        validate_key_name(name)?;
        let nix = nixkey::SecretKey::from_seed(name, seed)?;
        let id = NodeId::from_verifying_key(nix.signing_key().verifying_key())?;
        Ok(NodeKey { nix, id })
    }

    /// A fresh key from a caller-supplied cryptographic RNG.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(name: &str, rng: &mut R) -> Result<NodeKey, IdentityError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        NodeKey::from_seed(name, seed)
    }

    /// From a Nix secret key (its name must also satisfy [`validate_key_name`]).
    pub fn from_nix_secret_key(key: &nixkey::SecretKey) -> Result<NodeKey, IdentityError> {
        NodeKey::from_seed(key.name(), key.seed())
    }

    /// Parse a key file: the Nix secret key format `name:base64(seed ‖ public)`.
    pub fn parse_file(contents: &str) -> Result<NodeKey, IdentityError> {
        NodeKey::from_nix_secret_key(&nixkey::SecretKey::parse(contents)?)
    }

    /// The key file contents (Nix secret key format, no newline). Keep it secret.
    pub fn to_file_string(&self) -> String {
        self.nix_secret_key().to_file_string()
    }

    /// The key name (used in narinfo `Sig:` lines and `trusted-public-keys`).
    pub fn name(&self) -> &str {
        self.nix.name()
    }

    /// The public identity.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The 32-byte seed: what `libp2p::identity::Keypair::ed25519_from_bytes` takes. Keep it secret.
    pub fn seed(&self) -> [u8; 32] {
        self.nix.seed()
    }

    /// The libp2p PeerId text (`12D3KooW…`).
    pub fn peer_id(&self) -> String {
        self.id.to_peer_id()
    }

    /// This key as a Nix secret key.
    pub fn nix_secret_key(&self) -> nixkey::SecretKey {
        self.nix.clone()
    }

    /// The Nix public key `name:base64(public)`.
    pub fn nix_public_key(&self) -> nixkey::PublicKey {
        self.nix.public()
    }

    /// The node's Guix signing key: the same secret scalar, used for ECDSA over edwards25519 as
    /// Guix signs narinfos (see [`crate::guix`]).
    pub fn guix_secret_key(&self) -> crate::guix::GuixSecretKey {
        crate::guix::GuixSecretKey::from_ed25519_seed(&self.seed())
    }

    /// The node's Guix public key: its Ed25519 public key as `(public-key (ecc (curve Ed25519) (q #…#)))`.
    pub fn guix_public_key(&self) -> crate::guix::GuixPublicKey {
        crate::guix::GuixPublicKey::from_ed25519(self.nix.signing_key().as_ref())
    }

    /// A Nix signature (`name:base64(sig)`) over `message`, e.g. a narinfo fingerprint.
    pub fn sign_nix(&self, message: &[u8]) -> NixSignature {
        self.nix.sign(message)
    }

    /// A raw ed25519 signature; only [`crate::signed`] calls this, always with a domain prefix.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.nix.signing_key().sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng as _;

    #[test]
    fn one_key_three_uses() {
        let key = NodeKey::from_seed("node-a.example-1", [7; 32]).unwrap();
        assert_eq!(key.peer_id(), "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7");
        assert_eq!(key.node_id().as_bytes(), key.nix_public_key().verifying_key().as_bytes());
        let sig = key.sign_nix(b"1;/nix/store/x;sha256:y;1;");
        assert!(key.nix_public_key().verify(b"1;/nix/store/x;sha256:y;1;", &sig));
        assert_eq!(sig.key_name(), "node-a.example-1");
        let again = NodeKey::parse_file(&key.to_file_string()).unwrap();
        assert_eq!(again.node_id(), key.node_id());
        assert_eq!(again.seed(), [7; 32]);
        assert!(!format!("{key:?}").contains(&hex::encode(key.seed())));
    }

    #[test]
    fn generate_uses_the_rng() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let a = NodeKey::generate("a", &mut rng).unwrap();
        let b = NodeKey::generate("a", &mut rng).unwrap();
        assert_ne!(a.node_id(), b.node_id());
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        assert_eq!(NodeKey::generate("a", &mut rng).unwrap().node_id(), a.node_id());
    }

    #[test]
    fn names() {
        for bad in ["", "a b", "a:b", "ä", &"x".repeat(129)] {
            assert!(matches!(NodeKey::from_seed(bad, [1; 32]), Err(IdentityError::BadName { .. })), "{bad:?}");
        }
        assert!(NodeKey::from_seed(&"x".repeat(128), [1; 32]).is_ok());
        assert!(matches!(NodeKey::parse_file("nocolon"), Err(IdentityError::KeyFile(_))));
    }
}
