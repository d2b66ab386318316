//! Typed records kept in the store's tables, and their postcard encoding.
//!
//! Store paths are [`StorePath`]s in the API and basenames (`<hash>-<name>`) on disk; hashes are
//! [`NixHash`]es in the API and `sha256:<nix32>` strings on disk. Every record also serialises to
//! readable JSON (the gateway's `/api/v1` reuses them).

use std::collections::BTreeSet;
use std::fmt;

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::{ArtifactHash, JobId, MessageId, NodeId};
use buildmesh_protocol::store_path::StorePath;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// What the store knows about one valid store path (the narinfo fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// The store path.
    #[serde(with = "store_path_serde")]
    pub path: StorePath,
    /// NarHash (sha256 of the NAR).
    #[serde(with = "nix_hash_serde")]
    pub nar_hash: NixHash,
    /// NarSize.
    pub nar_size: u64,
    /// References (may include `path` itself).
    #[serde(with = "store_path_set_serde")]
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it, when known.
    #[serde(with = "store_path_opt_serde")]
    pub deriver: Option<StorePath>,
    /// Content address (`fixed:r:sha256:...`, `text:sha256:...`) when content-addressed.
    pub ca: Option<String>,
    /// The NAR blob (blake3 of the NAR).
    pub blob: ArtifactHash,
    /// When it was registered (Unix milliseconds).
    pub registered_at: u64,
}

/// A stored NAR blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// blake3 of the uncompressed NAR: the blob's content id and file name.
    pub blake3: ArtifactHash,
    /// NarHash (sha256 of the uncompressed NAR).
    #[serde(with = "nix_hash_serde")]
    pub nar_hash: NixHash,
    /// Length of the uncompressed NAR.
    pub nar_size: u64,
    /// Length of the zstd file on disk.
    pub compressed_size: u64,
}

/// The `blobs` table row (the key is the blake3 id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRow {
    #[serde(with = "nix_hash_serde")]
    pub(crate) nar_hash: NixHash,
    pub(crate) nar_size: u64,
    pub(crate) compressed_size: u64,
}

/// Where a build is in its life.
///
/// Transitions: `Queued -> Running -> Done | Failed`, `Running -> Queued` (retry, or restart after a
/// crash), `Queued | Running -> Cancelled`, `Failed | Cancelled -> Queued` (explicit retry).
/// Variants are only ever appended (postcard stores the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Waiting for a slot.
    Queued,
    /// An executor is running it.
    Running,
    /// Built; outputs registered.
    Done,
    /// Failed (see `last_error`); `retry` queues it again.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl BuildState {
    /// Lowercase name, as in the JSON API (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Done => "done",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Every state, in declaration order.
    pub const ALL: [BuildState; 5] =
        [BuildState::Queued, BuildState::Running, BuildState::Done, BuildState::Failed, BuildState::Cancelled];
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One derivation this node was asked to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The `.drv` store path.
    #[serde(with = "store_path_serde")]
    pub drv: StorePath,
    /// Current state.
    pub state: BuildState,
    /// Higher runs first.
    pub priority: i32,
    /// How many times it was started.
    pub attempts: u32,
    /// When it was first enqueued (Unix ms).
    pub submitted_at: u64,
    /// When the last attempt started.
    pub started_at: Option<u64>,
    /// When it reached `Done`, `Failed` or `Cancelled`.
    pub finished_at: Option<u64>,
    /// Do not start before this time (retry backoff), Unix ms.
    pub not_before: Option<u64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Output names wanted (empty = all).
    pub wanted_outputs: BTreeSet<String>,
    /// How many independent builders the submitter asked for.
    pub replicas: u32,
    /// Position in the FIFO order within one priority (assigned when (re)queued).
    pub queue_seq: u64,
}

/// A request to build a derivation (see [`super::StoreWriter::enqueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueRequest {
    /// The `.drv` store path.
    pub drv: StorePath,
    /// Higher runs first.
    pub priority: i32,
    /// Output names wanted (empty = all).
    pub wanted_outputs: BTreeSet<String>,
    /// Builders wanted.
    pub replicas: u32,
}

/// What [`super::StoreWriter::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnqueueOutcome {
    /// A new build was queued.
    Created(BuildRecord),
    /// The build existed; priority (max), wanted outputs (union) and replicas (max) were merged.
    Existing(BuildRecord),
}

impl EnqueueOutcome {
    /// The record after the operation.
    pub fn record(&self) -> &BuildRecord {
        match self {
            EnqueueOutcome::Created(r) | EnqueueOutcome::Existing(r) => r,
        }
    }
}

/// Which builds [`super::Store::list_builds`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    /// Only builds in one of these states (empty = all).
    pub states: Vec<BuildState>,
    /// Only builds whose drv basename sorts after this one (paging).
    pub after: Option<StorePath>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}

/// Number of builds per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCounts {
    /// Queued builds.
    pub queued: u64,
    /// Running builds.
    pub running: u64,
    /// Done builds.
    pub done: u64,
    /// Failed builds.
    pub failed: u64,
    /// Cancelled builds.
    pub cancelled: u64,
}

/// One output named by an attestation (the indexed fields the caller extracts from the verified
/// message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedOutput {
    /// The output store path.
    #[serde(with = "store_path_serde")]
    pub path: StorePath,
    /// NarHash the builder signed.
    #[serde(with = "nix_hash_serde")]
    pub nar_hash: NixHash,
    /// NarSize the builder signed.
    pub nar_size: u64,
}

/// A signed attestation as the store keeps it: opaque signed bytes plus the fields it is indexed
/// by. The caller verified the signature before handing it over (DESIGN invariant 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationEntry {
    /// The message id (`Envelope::id`); the union-merge key.
    pub id: MessageId,
    /// The derivation built.
    #[serde(with = "store_path_serde")]
    pub drv: StorePath,
    /// Who built and signed.
    pub builder: NodeId,
    /// The outputs attested.
    pub outputs: Vec<AttestedOutput>,
    /// When this node received (or made) it, Unix ms.
    pub received_at: u64,
    /// The signed, encoded envelope bytes.
    pub envelope: Vec<u8>,
}

impl AttestationEntry {
    /// The entry of attestation `a` (whose signature the caller checked or made), with message id
    /// `id`, its encoded envelope and when this node received or made it.
    pub fn of(id: MessageId, a: &buildmesh_protocol::wire::Attestation, envelope: Vec<u8>, received_at: u64) -> Self {
        AttestationEntry {
            id,
            drv: a.drv.clone(),
            builder: a.builder,
            outputs: a
                .outputs
                .values()
                .map(|o| AttestedOutput { path: o.path.clone(), nar_hash: o.nar_hash(), nar_size: o.nar_size })
                .collect(),
            received_at,
            envelope,
        }
    }
}

/// An attestation read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttestation {
    /// Local insertion sequence number (anti-entropy cursor position).
    pub seq: u64,
    /// The entry as inserted.
    pub entry: AttestationEntry,
}

/// A signed build failure as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureEntry {
    /// The message id; the union-merge key.
    pub id: MessageId,
    /// The derivation that failed.
    #[serde(with = "store_path_serde")]
    pub drv: StorePath,
    /// Who tried and signed.
    pub builder: NodeId,
    /// The builder's attempt number.
    pub attempt: u32,
    /// When this node received (or made) it, Unix ms.
    pub received_at: u64,
    /// The signed, encoded envelope bytes.
    pub envelope: Vec<u8>,
}

/// A failure read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFailure {
    /// Local insertion sequence number.
    pub seq: u64,
    /// The entry as inserted.
    pub entry: FailureEntry,
}

/// What an insert of a signed record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// `false` when the id was already present (nothing changed).
    pub new: bool,
    /// The record's sequence number (the existing one when not new).
    pub seq: u64,
}

/// An order-independent fingerprint of a set of message ids: two nodes with equal summaries hold
/// the same set (up to blake3 collisions), so anti-entropy can skip them cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    /// Number of ids.
    pub count: u64,
    /// XOR of all ids.
    pub xor: [u8; 32],
    /// Next local sequence number (everything below it exists).
    pub next_seq: u64,
}

// ---- on-disk rows ----

/// A per-peer anti-entropy position (the `sync_cursors` row): the next sequence numbers of the
/// peer's attestation and failure sequences this node has not fetched yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    /// Next attestation sequence number to fetch.
    pub attestations: u64,
    /// Next failure sequence number to fetch.
    pub failures: u64,
}

/// One of this node's own submissions to the mesh that is not decided yet (the
/// `mesh_submissions` row; the key is the `.drv` basename).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedJob {
    /// The job id.
    pub job: JobId,
    /// When it was first submitted (Unix ms).
    pub submitted_at_ms: u64,
    /// Priority.
    pub priority: i32,
    /// Replication factor.
    pub replicas: u8,
    /// Outputs wanted (empty = all).
    pub outputs: BTreeSet<String>,
    /// Input derivations (base names) that had to be built first.
    pub inputs: BTreeSet<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct AttestationRow {
    pub(crate) seq: u64,
    #[serde(with = "store_path_serde")]
    pub(crate) drv: StorePath,
    pub(crate) builder: NodeId,
    pub(crate) outputs: Vec<AttestedOutput>,
    pub(crate) received_at: u64,
    pub(crate) envelope: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FailureRow {
    pub(crate) seq: u64,
    #[serde(with = "store_path_serde")]
    pub(crate) drv: StorePath,
    pub(crate) builder: NodeId,
    pub(crate) attempt: u32,
    pub(crate) received_at: u64,
    pub(crate) envelope: Vec<u8>,
}

/// Encode a row. Postcard into a `Vec` fails only for types serde cannot express, which ours are
/// not; the error is still surfaced rather than unwrapped.
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &dyn fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Decode a row, naming the table and key when the bytes are not a valid record.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &dyn fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("undecodable record ({} bytes): {e}", bytes.len()),
    })?;
    if !rest.is_empty() {
        return Err(StoreError::Corrupt {
            table,
            key: key.to_string(),
            reason: format!("{} trailing bytes after the record", rest.len()),
        });
    }
    Ok(value)
}

mod store_path_serde {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(p: &StorePath, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorePath, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        StorePath::from_basename(&s).map_err(D::Error::custom)
    }
}

mod store_path_opt_serde {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(p: &Option<StorePath>, s: S) -> Result<S::Ok, S::Error> {
        p.as_ref().map(|p| p.to_string()).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StorePath>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| StorePath::from_basename(&s).map_err(D::Error::custom)).transpose()
    }
}

mod store_path_set_serde {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(set: &BTreeSet<StorePath>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(set.iter().map(|p| p.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<StorePath>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| StorePath::from_basename(s).map_err(D::Error::custom)).collect()
    }
}

mod nix_hash_serde {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(h: &NixHash, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(h)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NixHash, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        NixHash::parse(&s, None).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sp(n: u8, name: &str) -> StorePath {
        StorePath::new([n; 20], name).expect("valid name")
    }

    fn arb_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[a-z][a-z0-9.+_-]{0,20}").prop_map(|(d, n)| StorePath::new(d, &n).expect("valid name"))
    }

    proptest! {
        #[test]
        fn path_info_roundtrips(
            path in arb_path(),
            digest in any::<[u8; 32]>(),
            nar_size in any::<u64>(),
            refs in proptest::collection::btree_set(arb_path(), 0..5),
            deriver in proptest::option::of(arb_path()),
            ca in proptest::option::of("[ -~]{0,40}"),
            blob in any::<[u8; 32]>(),
            registered_at in any::<u64>(),
        ) {
            let info = PathInfo {
                path, nar_hash: NixHash::sha256(digest), nar_size, references: refs, deriver, ca,
                blob: ArtifactHash::from_bytes(blob), registered_at,
            };
            let bytes = encode("paths", &"k", &info).expect("encodes");
            prop_assert_eq!(decode::<PathInfo>("paths", &"k", &bytes).expect("decodes"), info.clone());
            let json = serde_json::to_string(&info).expect("json");
            prop_assert_eq!(serde_json::from_str::<PathInfo>(&json).expect("json back"), info);
        }

        #[test]
        fn build_record_roundtrips(
            prio in any::<i32>(), attempts in any::<u32>(), state in 0usize..5, times in any::<(u64, Option<u64>, Option<u64>, Option<u64>)>(),
            err in proptest::option::of(".{0,30}"), outs in proptest::collection::btree_set("[a-z]{1,6}", 0..3),
            replicas in any::<u32>(), seq in any::<u64>(),
        ) {
            let r = BuildRecord {
                drv: sp(3, "x.drv"), state: BuildState::ALL[state], priority: prio, attempts,
                submitted_at: times.0, started_at: times.1, finished_at: times.2, not_before: times.3,
                last_error: err, wanted_outputs: outs, replicas, queue_seq: seq,
            };
            let bytes = encode("builds", &"k", &r).expect("encodes");
            prop_assert_eq!(decode::<BuildRecord>("builds", &"k", &bytes).expect("decodes"), r);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<PathInfo>("paths", &"k", &bytes);
            let _ = decode::<BuildRecord>("builds", &"k", &bytes);
            let _ = decode::<AttestationRow>("attestations", &"k", &bytes);
        }
    }

    #[test]
    fn corrupt_row_names_table_and_key() {
        let err = decode::<PathInfo>("paths", &"abc-def", &[0xff, 0xff]).expect_err("garbage");
        let msg = err.to_string();
        assert!(msg.contains("paths") && msg.contains("abc-def"), "{msg}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode("builds", &"k", &BuildState::Done).expect("encodes");
        bytes.push(0);
        assert!(matches!(decode::<BuildState>("builds", &"k", &bytes), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn build_state_json_is_lowercase() {
        assert_eq!(serde_json::to_string(&BuildState::Queued).expect("json"), "\"queued\"");
    }
}
