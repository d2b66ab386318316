//! Identifier newtypes: [`NodeId`], [`JobId`], [`ArtifactHash`] and [`MessageId`].
//!
//! ## Which name to use where
//! - **[`NodeId`]** names a node everywhere inside buildmesh (state, wire messages, placement, the JSON
//!   API). It is the node's ed25519 public key. `Display` is 64 lowercase hex digits; logs use
//!   [`NodeId::fmt_short`] (the first 10). `FromStr` also accepts the libp2p PeerId text form.
//! - **libp2p `PeerId`** (`12D3KooW…`, [`NodeId::to_peer_id`]) is used only at the libp2p boundary
//!   (multiaddrs, `--bootstrap`). It is the same key, so a node converts between the two without a
//!   lookup table ([`NodeId::from_peer_id`]).
//! - **Nix key name** (`name:base64`, [`NodeId::nix_public_key`]) is used only where Nix reads it:
//!   narinfo `Sig:` lines and `trusted-public-keys`.
//! - **[`JobId`]** names one submission of a build request; **[`MessageId`]** names one signed message
//!   (deduplication); **[`ArtifactHash`]** is the blake3 content id of a NAR.
//!
//! Every id serialises with serde as its text form when the format is human-readable (JSON, TOML) and
//! as raw bytes otherwise.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::nixkey;

/// Length of the libp2p PeerId bytes of an ed25519 key: identity multihash of the protobuf key.
pub const PEER_ID_LEN: usize = 38;

/// The fixed prefix of an ed25519 PeerId: multihash code 0x00 (identity), length 0x24 (36), then the
/// protobuf `PublicKey { Type = Ed25519 (field 1 = 1), Data (field 2, 32 bytes) }` header.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// Why an identifier string or byte string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text is neither 64 hex digits nor (for node ids) a PeerId.
    #[error("{what} {input:?} is not 64 hexadecimal digits")]
    BadHex {
        /// Which id.
        what: &'static str,
        /// The text given.
        input: String,
    },
    /// Raw bytes of the wrong length.
    #[error("{what} has {found} bytes, expected {expected}")]
    BadLength {
        /// Which id.
        what: &'static str,
        /// Bytes found.
        found: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The 32 bytes are not a valid compressed ed25519 point.
    #[error("node id {0} is not a valid ed25519 public key")]
    InvalidKey(String),
    /// The key is of small order (it would accept forged signatures under non-strict verification).
    #[error("node id {0} is a weak (small-order) ed25519 public key")]
    WeakKey(String),
    /// A PeerId that is not base58, not an identity multihash, or not an ed25519 key.
    #[error("peer id {input:?} is not an ed25519 libp2p PeerId: {reason}")]
    BadPeerId {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A node: its ed25519 public key (32 bytes, validated on construction: a point on the curve that
/// is not of small order).
///
/// `Ord` is the byte order of the key; placement uses it to break ties.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId([u8; 32]);

/// The byte order, compared as four big-endian words: the same order as comparing the bytes, but
/// without a `memcmp` call per comparison (node ids key most of the mesh's tables; searching them
/// was a tenth of a 10,000-node simulation).
impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let word = |b: &[u8; 32], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 * i..8 * i + 8]);
            u64::from_be_bytes(w)
        };
        (0..4)
            .map(|i| word(&self.0, i).cmp(&word(&other.0, i)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeId {
    /// Validate 32 public-key bytes: they must decode to an ed25519 point that is not weak.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<NodeId, IdError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdError::InvalidKey(hex::encode(bytes)))?;
        NodeId::from_verifying_key(key)
    }

    /// From a dalek verifying key; rejects weak keys.
    pub fn from_verifying_key(key: VerifyingKey) -> Result<NodeId, IdError> {
        if key.is_weak() {
            return Err(IdError::WeakKey(hex::encode(key.as_bytes())));
        }
        Ok(NodeId(key.to_bytes()))
    }

    /// The 32 public-key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The dalek verifying key (decompressed on each call). Never fails for a `NodeId` made by this
    /// crate, since construction validated the point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::InvalidKey(hex::encode(self.0)))
    }

    /// The first 10 hex digits, for logs and tables.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.as_bytes()[..5])
    }

    /// The libp2p PeerId bytes: `00 24 08 01 12 20 ‖ key` (identity multihash of the protobuf
    /// public key). Equal to `libp2p::PeerId::to_bytes()` for this key.
    pub fn to_peer_id_bytes(&self) -> [u8; PEER_ID_LEN] {
        let mut out = [0u8; PEER_ID_LEN];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(self.as_bytes());
        out
    }

    /// The libp2p PeerId in its text form (base58btc, starts with `12D3KooW`).
    pub fn to_peer_id(&self) -> String {
        bs58::encode(self.to_peer_id_bytes()).into_string()
    }

    /// Parse a libp2p PeerId text (base58btc) of an ed25519 key.
    pub fn from_peer_id(s: &str) -> Result<NodeId, IdError> {
        let bad = |reason| IdError::BadPeerId { input: s.to_string(), reason };
        if s.len() > 64 {
            return Err(bad("too long"));
        }
        let bytes = bs58::decode(s).into_vec().map_err(|_| bad("not base58btc"))?;
        NodeId::from_peer_id_bytes(&bytes).map_err(|e| match e {
            IdError::BadPeerId { reason, .. } => bad(reason),
            other => other,
        })
    }

    /// Parse libp2p PeerId bytes of an ed25519 key.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Result<NodeId, IdError> {
        let bad = |reason| IdError::BadPeerId { input: hex::encode(bytes), reason };
        if bytes.len() != PEER_ID_LEN {
            return Err(bad("not 38 bytes (identity multihash of an ed25519 key)"));
        }
        if bytes[..6] != PEER_ID_PREFIX {
            return Err(bad("not an identity multihash of a protobuf ed25519 public key"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        NodeId::from_bytes(&key)
    }

    /// This key as a Nix public key with the given key name (for `trusted-public-keys`).
    pub fn nix_public_key(&self, name: &str) -> Result<nixkey::PublicKey, nixkey::NixKeyError> {
        let key = self.verifying_key().map_err(|_| nixkey::NixKeyError::BadPoint(name.to_string()))?;
        nixkey::PublicKey::new(name, key)
    }

    /// Strict ed25519 verification of `message` under this key.
    pub(crate) fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        match self.verifying_key() {
            Ok(key) => key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.fmt_short())
    }
}

/// Accepts 64 hex digits or a libp2p PeerId (`12D3KooW…`).
impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64 {
            let bytes = parse_hex32(s, "node id")?;
            return NodeId::from_bytes(&bytes);
        }
        if s.starts_with("12D3KooW") {
            return NodeId::from_peer_id(s);
        }
        Err(IdError::BadHex { what: "node id", input: s.to_string() })
    }
}

fn parse_hex32(s: &str, what: &'static str) -> Result<[u8; 32], IdError> {
    let mut out = [0u8; 32];
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdError::BadHex { what, input: s.to_string() });
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadHex { what, input: s.to_string() })?;
    Ok(out)
}

fn serialize_id<S: Serializer>(s: S, bytes: &[u8; 32], text: impl fmt::Display) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() { s.collect_str(&text) } else { s.serialize_bytes(bytes) }
}

struct Bytes32Visitor(&'static str);

impl<'de> serde::de::Visitor<'de> for Bytes32Visitor {
    type Value = [u8; 32];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "32 bytes of {}", self.0)
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
        v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(A::Error::invalid_length(33, &self));
        }
        Ok(out)
    }
}

fn deserialize_id<'de, D: Deserializer<'de>, T: FromStr<Err = IdError>>(
    d: D,
    what: &'static str,
    from_bytes: impl FnOnce([u8; 32]) -> Result<T, IdError>,
) -> Result<T, D::Error> {
    if d.is_human_readable() {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    } else {
        let bytes = d.deserialize_bytes(Bytes32Visitor(what))?;
        from_bytes(bytes).map_err(D::Error::custom)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_id(s, self.as_bytes(), self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_id(d, "node id", |b| NodeId::from_bytes(&b))
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// From raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 10 hex digits, for logs and tables.
            pub fn fmt_short(&self) -> String {
                hex::encode(&self.0[..5])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fmt_short())
            }
        }

        /// 64 lowercase hex digits.
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s, $what).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_id(s, &self.0, self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_id(d, $what, |b| Ok($name(b)))
            }
        }
    };
}

hash_id!(
    /// One submission of a build request (32 bytes). Chosen by the submitter: random
    /// ([`JobId::random`]) or derived from the request ([`JobId::derive`]) so that resubmitting the
    /// same request yields the same id.
    JobId,
    "job id"
);

hash_id!(
    /// The blake3 hash of a NAR: buildmesh's content id for fetching and deduplicating blobs.
    ArtifactHash,
    "artifact hash"
);

hash_id!(
    /// The id of one signed message: blake3 over its signing domain, signer and payload (see
    /// [`crate::signed::Envelope::id`]). Receivers deduplicate gossip by it.
    MessageId,
    "message id"
);

impl JobId {
    /// A random job id.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> JobId {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        JobId(bytes)
    }

    /// A deterministic job id for `submitter` asking for the derivation at `drv_path` (absolute) at
    /// `submitted_at_ms`: blake3 in derive-key mode over the three, length-prefixed.
    pub fn derive(submitter: &NodeId, drv_path: &str, submitted_at_ms: u64) -> JobId {
        let mut h = blake3::Hasher::new_derive_key("buildmesh v1 job id");
        h.update(submitter.as_bytes());
        h.update(&(drv_path.len() as u64).to_le_bytes());
        h.update(drv_path.as_bytes());
        h.update(&submitted_at_ms.to_le_bytes());
        JobId(*h.finalize().as_bytes())
    }
}

impl ArtifactHash {
    /// blake3 of `data`.
    pub fn of(data: &[u8]) -> ArtifactHash {
        ArtifactHash(*blake3::hash(data).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_order_is_byte_order() {
        let mut ids = Vec::new();
        for i in 0..32 {
            for v in [0u8, 6, 8, 255] {
                let mut b = [7u8; 32];
                b[i] = v;
                ids.push(NodeId(b));
            }
        }
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a:?} {b:?}");
                assert_eq!(a.partial_cmp(b), Some(a.0.cmp(&b.0)));
            }
        }
    }

    /// (seed, public key, PeerId) computed with `libp2p_identity` 0.3.1
    /// (`Keypair::ed25519_from_bytes(seed).public().to_peer_id()`).
    const PEER_VECTORS: [(&str, &str, &str); 3] = [
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ),
        (
            "0707070707070707070707070707070707070707070707070707070707070707",
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c",
            "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
            "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB",
        ),
    ];

    #[test]
    fn peer_ids_match_libp2p() {
        for (seed, pk, peer) in PEER_VECTORS {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let id = NodeId::from_verifying_key(key.verifying_key()).unwrap();
            assert_eq!(id.to_string(), pk);
            assert_eq!(id.to_peer_id(), peer);
            assert_eq!(NodeId::from_peer_id(peer).unwrap(), id);
            assert_eq!(peer.parse::<NodeId>().unwrap(), id);
            assert_eq!(pk.parse::<NodeId>().unwrap(), id);
            assert_eq!(id.fmt_short(), &pk[..10]);
        }
    }

    #[test]
    fn rejects_bad_ids() {
        // The identity point (small order) is a valid encoding but weak.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(NodeId::from_bytes(&identity), Err(IdError::WeakKey(_))));
        // y = 2 is not on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(matches!(NodeId::from_bytes(&off_curve), Err(IdError::InvalidKey(_))));
        assert!(matches!("zz".parse::<NodeId>(), Err(IdError::BadHex { .. })));
        assert!(matches!("12D3KooW0000".parse::<NodeId>(), Err(IdError::BadPeerId { .. })));
        let upper = PEER_VECTORS[0].1.to_uppercase();
        assert!(upper.parse::<NodeId>().is_err());
        assert!("ab".parse::<JobId>().is_err());
        // A secp256k1-style PeerId prefix is refused.
        let mut bytes = NodeId::from_bytes(&[0x3b; 32]).map(|n| n.to_peer_id_bytes()).unwrap_or([0; 38]);
        bytes[3] = 2;
        assert!(NodeId::from_peer_id_bytes(&bytes).is_err());
    }

    #[test]
    fn serde_text_and_bytes() {
        let id: NodeId = PEER_VECTORS[1].1.parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", PEER_VECTORS[1].1));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        let bin = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bin.len(), 33); // varint length + 32 bytes
        assert_eq!(postcard::from_bytes::<NodeId>(&bin).unwrap(), id);
        let job = JobId::from_bytes([9; 32]);
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), job);
        assert_eq!(postcard::from_bytes::<JobId>(&postcard::to_stdvec(&job).unwrap()).unwrap(), job);
        assert!(serde_json::from_str::<NodeId>("\"00\"").is_err());
    }

    #[test]
    fn job_ids() {
        let id: NodeId = PEER_VECTORS[0].1.parse().unwrap();
        let a = JobId::derive(&id, "/nix/store/x.drv", 5);
        assert_eq!(a, JobId::derive(&id, "/nix/store/x.drv", 5));
        assert_ne!(a, JobId::derive(&id, "/nix/store/x.drv", 6));
        use rand_core::SeedableRng as _;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert_ne!(JobId::random(&mut rng), JobId::random(&mut rng));
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
    }
}
