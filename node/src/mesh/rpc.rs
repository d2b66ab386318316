//! Bodies of the three request-response protocols, and their encoding.
//!
//! The net layer carries opaque, size-capped frames ([`crate::net::RrLimits`]); this module gives
//! them meaning. Bodies are [postcard](https://docs.rs/postcard) encodings of the types below
//! (unsigned: what they carry is either signed itself, an attestation or failure envelope, or
//! checked against a hash the receiver already trusts, a `.drv` path or a NarHash). Decoding
//! refuses bodies above the protocol's cap before parsing, and trailing bytes.
//!
//! | protocol | request | response |
//! |---|---|---|
//! | `/buildmesh/closure/1` | [`ClosureRequest`] | [`ClosureResponse`] |
//! | `/buildmesh/nar/1` | [`NarRequest`] | [`NarResponse`] (one chunk) |
//! | `/buildmesh/sync/1` | [`SyncRequest`] | [`SyncResponse`] |
//!
//! Revisions (issue 13) ride on `/buildmesh/sync/1` with variants appended at the end of
//! [`SyncRequest`] and [`SyncResponse`] (postcard encodes variants by index, so the earlier ones
//! keep their encoding): [`SyncRequest::RevisionSummary`] and [`SyncRequest::Revisions`] for
//! anti-entropy, [`SyncRequest::Manifest`] for one chunk of a manifest. A node older than these
//! cannot decode them and answers [`SyncResponse::Error`], which the asker takes as "this peer
//! has no revisions"; it never asks for them itself, so it never sees the new responses.
//!
//! Build logs (issue 14) are appended the same way: [`SyncRequest::Log`] asks a builder for one
//! chunk of its stored log of a derivation ([`SyncResponse::LogChunk`] or
//! [`SyncResponse::LogNotFound`]); the asker checks the whole log against the
//! [`buildmesh_protocol::wire::LogDigest`] in the builder's signed attestation or failure.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::SetSummary;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The body is larger than the protocol allows.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which body.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which body.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
}

/// Encode a body.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on types it cannot represent (none here) or a full buffer (a Vec grows).
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decode a body of at most `max` bytes; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8], max: usize) -> Result<T, RpcError> {
    if bytes.len() > max {
        return Err(RpcError::TooLarge { what, len: bytes.len(), max });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| RpcError::Malformed { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(RpcError::Malformed { what, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

// ---- /buildmesh/closure/1 ----

/// Ask for the `.drv` closure of a derivation (every `.drv` it needs, transitively) and the path
/// infos of the input sources of that closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureRequest {
    /// The derivation, as a base name (`<hash>-<name>.drv`).
    pub drv: String,
}

/// An input source's registration (its NAR is fetched over `/buildmesh/nar/1` by NarHash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Base name.
    pub path: String,
    /// `sha256:<nix32>`.
    pub nar_hash: String,
    /// NarSize.
    pub nar_size: u64,
    /// References, as base names.
    pub references: Vec<String>,
    /// Content address, when known.
    pub ca: Option<String>,
}

/// The answer to a [`ClosureRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClosureResponse {
    /// The closure: `(base name, ATerm bytes)` of every `.drv`, the requested one first, and the
    /// input sources of all of them with their reference closures.
    Found {
        /// The `.drv` files.
        drvs: Vec<(String, Vec<u8>)>,
        /// The input sources.
        sources: Vec<SourceInfo>,
    },
    /// The responder does not have the derivation or part of its closure.
    NotFound {
        /// What is missing.
        missing: String,
    },
    /// The responder failed.
    Error {
        /// What failed.
        message: String,
    },
}

impl ClosureResponse {
    /// The variants this build knows: an answer whose variant index is at least this comes from
    /// a newer build ([`is_unknown_variant`]).
    pub const VARIANTS: u32 = 3;
}

// ---- /buildmesh/nar/1 ----

/// Ask for `len` bytes at `offset` of the NAR whose sha256 is `nar_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarRequest {
    /// sha256 of the NAR (its NarHash digest).
    pub nar_hash: [u8; 32],
    /// Offset of the chunk.
    pub offset: u64,
    /// Length of the chunk (at most [`crate::net::NAR_CHUNK_SIZE`]).
    pub len: u32,
}

/// The answer to a [`NarRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NarResponse {
    /// The chunk's bytes.
    Chunk(#[serde(with = "serde_bytes_vec")] Vec<u8>),
    /// The responder has no NAR with this hash.
    NotFound,
    /// The responder failed (or the range lies outside the NAR).
    Error(String),
}

impl NarResponse {
    /// The variants this build knows (see [`ClosureResponse::VARIANTS`]).
    pub const VARIANTS: u32 = 3;
}

mod serde_bytes_vec {
    //! `Vec<u8>` as one byte string (postcard: length + raw bytes, no per-byte overhead either
    //! way, but explicit).
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

// ---- /buildmesh/sync/1 ----

/// Most records a [`SyncResponse::Page`] carries.
pub const MAX_PAGE_ITEMS: u32 = 1024;
/// Most envelope bytes a [`SyncResponse::Page`] carries (well under the 16 MiB response cap).
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// Anti-entropy and direct requests between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// The responder's set fingerprints.
    Summary,
    /// Attestations in the responder's insertion order, from sequence number `from` on.
    Attestations {
        /// First sequence number wanted.
        from: u64,
        /// Most records wanted (capped at [`MAX_PAGE_ITEMS`]).
        limit: u32,
    },
    /// Build failures, like `Attestations`.
    Failures {
        /// First sequence number wanted.
        from: u64,
        /// Most records wanted.
        limit: u32,
    },
    /// `buildmesh retry DRV --on <responder>`: build `drv` (base name) regardless of placement.
    Retry {
        /// The derivation.
        drv: String,
    },
    /// The responder's revision header set fingerprint ([`SyncResponse::RevisionSummary`]).
    RevisionSummary,
    /// Revision headers in the responder's insertion order, like `Attestations`.
    Revisions {
        /// First sequence number wanted.
        from: u64,
        /// Most records wanted (capped at [`MAX_PAGE_ITEMS`]).
        limit: u32,
    },
    /// `len` bytes at `offset` of the zstd-compressed manifest whose blake3 is `hash`
    /// ([`SyncResponse::ManifestChunk`]).
    Manifest {
        /// blake3 of the manifest's canonical encoding.
        hash: [u8; 32],
        /// Offset in the compressed bytes.
        offset: u64,
        /// Most bytes wanted (at most [`MANIFEST_CHUNK_SIZE`]).
        len: u32,
    },
    /// `len` bytes at `offset` of the responder's stored build log of `drv` (base name)
    /// ([`SyncResponse::LogChunk`]).
    Log {
        /// The derivation.
        drv: String,
        /// Offset in the log.
        offset: u64,
        /// Most bytes wanted (at most [`LOG_CHUNK_SIZE`]).
        len: u32,
    },
    /// Attestations of some shards only (issue 18), like `Attestations`: the responder scans at
    /// most [`MAX_SHARD_SCAN`] records from `from` on and returns those whose derivation lies in
    /// a shard of `filter`; the page's `next` follows the last record scanned, and `more` says
    /// whether records follow (a page may be empty and have more). A responder older than this
    /// answers [`SyncResponse::Error`]; the asker then falls back to `Attestations`.
    ShardAttestations {
        /// First sequence number wanted.
        from: u64,
        /// Most records wanted (capped at [`MAX_PAGE_ITEMS`]).
        limit: u32,
        /// The shards wanted.
        filter: ShardFilter,
    },
    /// Build failures of some shards only, like `ShardAttestations`.
    ShardFailures {
        /// First sequence number wanted.
        from: u64,
        /// Most records wanted (capped at [`MAX_PAGE_ITEMS`]).
        limit: u32,
        /// The shards wanted.
        filter: ShardFilter,
    },
}

impl SyncRequest {
    /// The variants this build knows ([`SyncRequest::ShardFailures`] is the last). A body whose
    /// variant index is at least this comes from a newer build (see [`is_unknown_variant`]).
    pub const VARIANTS: u32 = 10;
}

/// Whether `body` starts with a postcard variant index of `variants` or more: a request (or
/// answer) of a newer build (variants are appended at the end), which this node answers with an
/// error (or drops) but does not count against the sender. Any other body that does not decode
/// is malformed: no build sends it.
pub fn is_unknown_variant(body: &[u8], variants: u32) -> bool {
    postcard::take_from_bytes::<u32>(body).is_ok_and(|(index, _)| index >= variants)
}

/// Records scanned for one [`SyncRequest::ShardAttestations`] or
/// [`SyncRequest::ShardFailures`] page at most (those of other shards are skipped): one page
/// costs the responder a bounded read whatever the filter, and serves at most
/// [`MAX_PAGE_ITEMS`] records and [`MAX_PAGE_BYTES`] like any page.
pub const MAX_SHARD_SCAN: usize = 8 * MAX_PAGE_ITEMS as usize;

/// Shards named in one [`ShardFilter`] at most.
pub const MAX_FILTER_SHARDS: usize = 1024;

/// Which shards' records an anti-entropy page should carry: the asker's own shard and those it
/// observes (docs/protocol.md *Shards*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFilter {
    /// The asker's shard count (`mesh_shards`): a responder with another count refuses.
    pub shards: u32,
    /// The shards wanted, each below `shards`.
    pub of: Vec<u32>,
}

impl ShardFilter {
    /// The wanted shards, checked against the responder's shard count `shards`: the same count,
    /// 1 to [`MAX_FILTER_SHARDS`] shards, each below it. Anything else is refused (an
    /// unnamed request serves every shard, so naming many gains a peer nothing).
    pub fn check(&self, shards: u32) -> Result<BTreeSet<u32>, String> {
        if self.shards != shards {
            return Err(format!("shard filter for {} shards; this node runs {shards}", self.shards));
        }
        if self.of.is_empty() || self.of.len() > MAX_FILTER_SHARDS {
            return Err(format!("shard filter names {} shards (1..={MAX_FILTER_SHARDS})", self.of.len()));
        }
        if let Some(bad) = self.of.iter().find(|s| **s >= shards) {
            return Err(format!("shard filter names shard {bad} of {shards}"));
        }
        Ok(self.of.iter().copied().collect())
    }
}

/// Largest log chunk asked for or served (1 MiB, well under the sync response cap).
pub const LOG_CHUNK_SIZE: u32 = 1 << 20;

/// Largest manifest chunk asked for or served (1 MiB, well under the sync response cap).
pub const MANIFEST_CHUNK_SIZE: u32 = 1 << 20;

/// A set fingerprint as sent over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of records.
    pub count: u64,
    /// XOR of their message ids.
    pub xor: [u8; 32],
    /// The responder's next sequence number.
    pub next_seq: u64,
}

impl From<SetSummary> for Summary {
    fn from(s: SetSummary) -> Summary {
        Summary { count: s.count, xor: s.xor, next_seq: s.next_seq }
    }
}

impl Summary {
    /// Whether two fingerprints describe the same set (count and XOR; sequence numbers are local).
    pub fn same_set(&self, other: &Summary) -> bool {
        self.count == other.count && self.xor == other.xor
    }
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Fingerprints of the attestation and failure sets.
    Summary {
        /// Attestations.
        attestations: Summary,
        /// Failures.
        failures: Summary,
    },
    /// A page of signed envelopes, `(sequence number, envelope bytes)`, in sequence order.
    Page {
        /// The records.
        items: Vec<(u64, Vec<u8>)>,
        /// Where the next page starts.
        next: u64,
        /// Whether more records follow.
        more: bool,
    },
    /// The retry was taken (`Ok`) or refused with a reason.
    Retry(Result<(), String>),
    /// The responder failed.
    Error(String),
    /// The revision header set fingerprint.
    RevisionSummary(Summary),
    /// A chunk of a compressed manifest.
    ManifestChunk {
        /// The whole compressed length.
        total: u64,
        /// The bytes at the requested offset (shorter at the end).
        #[serde(with = "serde_bytes_vec")]
        bytes: Vec<u8>,
    },
    /// The responder has no manifest with this hash.
    ManifestNotFound,
    /// A chunk of a build log.
    LogChunk {
        /// The whole log's length.
        total: u64,
        /// The bytes at the requested offset (shorter at the end).
        #[serde(with = "serde_bytes_vec")]
        bytes: Vec<u8>,
    },
    /// The responder holds no log of this derivation.
    LogNotFound,
}

impl SyncResponse {
    /// The variants this build knows ([`SyncResponse::LogNotFound`] is the last; see
    /// [`ClosureResponse::VARIANTS`]).
    pub const VARIANTS: u32 = 9;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nar_chunks_are_raw_bytes() {
        let r = NarResponse::Chunk(vec![7u8; 1000]);
        let bytes = encode(&r);
        assert!(bytes.len() < 1010, "{}", bytes.len());
        assert_eq!(decode::<NarResponse>("nar response", &bytes, 2000).unwrap(), r);
    }

    #[test]
    fn oversized_and_trailing_bodies_are_refused() {
        let bytes = encode(&SyncRequest::Summary);
        assert!(matches!(decode::<SyncRequest>("x", &bytes, 0), Err(RpcError::TooLarge { .. })));
        let mut more = bytes.clone();
        more.push(0);
        assert!(matches!(decode::<SyncRequest>("x", &more, 100), Err(RpcError::Malformed { .. })));
        assert!(matches!(decode::<SyncRequest>("x", &[0xff, 0xff], 100), Err(RpcError::Malformed { .. })));
    }

    /// The variants an older node knows keep their encoding (postcard: by index), so a request
    /// it sends still decodes here and an answer it gets from here still decodes there.
    #[test]
    fn older_variants_keep_their_encoding_and_new_ones_come_after() {
        assert_eq!(encode(&SyncRequest::Summary), [0]);
        assert_eq!(encode(&SyncRequest::Retry { drv: "x".into() }), [3, 1, b'x']);
        assert_eq!(encode(&SyncRequest::RevisionSummary), [4]);
        assert_eq!(encode(&SyncResponse::Error("e".into())), [3, 1, b'e']);
        assert_eq!(encode(&SyncResponse::ManifestNotFound)[0], 6);
        assert_eq!(encode(&SyncRequest::Log { drv: "x".into(), offset: 0, len: 1 })[0], 7);
        assert_eq!(encode(&SyncResponse::LogNotFound)[0], 8);
        let filter = ShardFilter { shards: 2, of: vec![1] };
        assert_eq!(encode(&SyncRequest::ShardAttestations { from: 0, limit: 1, filter: filter.clone() })[0], 8);
        assert_eq!(encode(&SyncRequest::ShardFailures { from: 0, limit: 1, filter })[0], 9);
        assert_eq!(SyncRequest::VARIANTS, 10, "a new variant moves SyncRequest::VARIANTS");
        // The last known variant of each answer sits just below its VARIANTS.
        assert_eq!(encode(&SyncResponse::LogNotFound), [SyncResponse::VARIANTS as u8 - 1]);
        assert_eq!(encode(&NarResponse::Error(String::new()))[0], NarResponse::VARIANTS as u8 - 1);
        let closure_error = ClosureResponse::Error { message: String::new() };
        assert_eq!(encode(&closure_error)[0], ClosureResponse::VARIANTS as u8 - 1);
        let req = SyncRequest::Manifest { hash: [7; 32], offset: 5, len: MANIFEST_CHUNK_SIZE };
        assert_eq!(decode::<SyncRequest>("r", &encode(&req), 1024).unwrap(), req);
        let resp = SyncResponse::ManifestChunk { total: 9, bytes: vec![1; 1000] };
        let bytes = encode(&resp);
        assert!(bytes.len() < 1010, "chunks are raw bytes: {}", bytes.len());
        assert_eq!(decode::<SyncResponse>("r", &bytes, 4096).unwrap(), resp);
    }

    /// A newer build's request (a variant index this build does not know) is told apart from
    /// garbage: only garbage counts against the sender.
    #[test]
    fn unknown_variants_are_told_apart_from_garbage() {
        let n = SyncRequest::VARIANTS;
        for newer in [vec![10], vec![11, 1, 2], vec![0x80, 0x01], vec![0xff, 0xff, 0xff, 0xff, 0x0f]] {
            assert!(decode::<SyncRequest>("r", &newer, 100).is_err(), "{newer:?}");
            assert!(is_unknown_variant(&newer, n), "{newer:?}");
        }
        let summary = encode(&SyncRequest::Summary);
        for garbage in [vec![], vec![0xff; 64], vec![8, 0], summary.repeat(2), vec![3, 200]] {
            assert!(decode::<SyncRequest>("r", &garbage, 100).is_err(), "{garbage:?}");
            assert!(!is_unknown_variant(&garbage, n), "{garbage:?}");
        }
        let filter = ShardFilter { shards: 2, of: vec![1] };
        assert!(!is_unknown_variant(&encode(&SyncRequest::ShardFailures { from: 0, limit: 1, filter }), n));
    }

    proptest! {
        #[test]
        fn sync_round_trips(from in any::<u64>(), limit in any::<u32>(), items in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8), more in any::<bool>()) {
            let req = SyncRequest::Attestations { from, limit };
            prop_assert_eq!(decode::<SyncRequest>("r", &encode(&req), 1 << 20).unwrap(), req);
            let resp = SyncResponse::Page { items, next: from, more };
            prop_assert_eq!(decode::<SyncResponse>("r", &encode(&resp), 1 << 20).unwrap(), resp);
        }

        #[test]
        fn nar_request_round_trips(h in any::<[u8; 32]>(), offset in any::<u64>(), len in any::<u32>()) {
            let req = NarRequest { nar_hash: h, offset, len };
            prop_assert_eq!(decode::<NarRequest>("r", &encode(&req), 4096).unwrap(), req);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<SyncResponse>("r", &bytes, 1 << 20);
            let _ = decode::<ClosureResponse>("r", &bytes, 1 << 20);
            let _ = decode::<NarResponse>("r", &bytes, 1 << 20);
        }
    }
}
