//! Every redb table of the node's database, in one place.
//!
//! Naming: keys that name a store object are store path **basenames** (`<hash>-<name>`, no store
//! directory), so one database works for `/nix/store` and `/gnu/store` alike. Ids (blake3 content
//! ids, message ids, node ids) are their raw 32 bytes. Values that are records are
//! [postcard](https://docs.rs/postcard) encodings of the types in [`super::records`]; postcard encodes
//! enum variants by index, so variants and fields are only ever appended (bump [`SCHEMA_VERSION`]
//! for anything else).
//!
//! Secondary indexes have `()` values: their keys are tuples whose last element points back at the
//! primary row, and they are written in the same write transaction as that row.

use redb::TableDefinition;

/// Version of the table layout written by this build. [`super::Store::open`] refuses a database
/// with a newer version.
///
/// Adding a table does not change the version: opening a database creates every table it lacks
/// (so a database written before [`SYNC_CURSORS`] and [`MESH_SUBMISSIONS`] existed gains them
/// empty), and an older build ignores tables it does not know.
pub(crate) const SCHEMA_VERSION: u64 = 1;

/// `meta`: node-level values, `name -> bytes`. Keys: [`META_SCHEMA_VERSION`] (u64 LE) and the
/// counters below (u64 LE), the attestation/failure set fingerprints (32 bytes).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key: the schema version (u64 little-endian).
pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key: the next attestation insertion sequence number.
pub(crate) const META_NEXT_ATT_SEQ: &str = "next_attestation_seq";
/// `meta` key: the next failure insertion sequence number.
pub(crate) const META_NEXT_FAIL_SEQ: &str = "next_failure_seq";
/// `meta` key: the next build queue sequence number (FIFO order within one priority).
pub(crate) const META_NEXT_BUILD_SEQ: &str = "next_build_seq";
/// `meta` key: XOR of all attestation ids (order-independent set fingerprint).
pub(crate) const META_ATT_XOR: &str = "attestation_xor";
/// `meta` key: XOR of all failure ids.
pub(crate) const META_FAIL_XOR: &str = "failure_xor";
/// `meta` key: present once [`SIGNER_USAGE`] counts every stored record (see `usage::backfill`).
pub(crate) const META_SIGNER_USAGE_COMPLETE: &str = "signer_usage_complete";

/// `paths`: store path basename -> `PathInfo` (NarHash, NarSize, references, deriver, ca, blob).
/// A row exists only once its blob is committed in [`BLOBS`]. Looking a path up by its 32-char
/// hash part (narinfo requests) is a range scan over the prefix `<hash>-`.
pub(crate) const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");

/// `blobs`: blake3 of the uncompressed NAR (32 bytes) -> `BlobRecord` (NarHash, NarSize,
/// compressed size). A row is committed only after the blob file was fsynced and renamed into place.
pub(crate) const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");

/// `blobs_by_nar_hash`: sha256 NarHash digest (32 bytes) -> blake3 of the same NAR. Serves
/// `/nar/<nix32 NarHash>.nar` requests.
pub(crate) const BLOBS_BY_NAR_HASH: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("blobs_by_nar_hash");

/// `drvs`: `.drv` store path basename -> the derivation's ATerm bytes, exactly as submitted.
pub(crate) const DRVS: TableDefinition<&str, &[u8]> = TableDefinition::new("drvs");

/// `builds`: `.drv` basename -> `BuildRecord` (state, priority, attempts, times, last error, wanted
/// outputs, replicas).
pub(crate) const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");

/// `build_queue`: `(u32::MAX - (priority as sortable u32), queue_seq, drv basename) -> ()`, one row
/// per build in state `Queued`: iterating it in key order yields the highest priority first, then
/// the oldest.
pub(crate) const BUILD_QUEUE: TableDefinition<(u32, u64, &str), ()> = TableDefinition::new("build_queue");

/// `logs`: `.drv` basename -> zstd-compressed build log (capped at `StoreOptions::max_log_bytes`).
pub(crate) const LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("logs");

/// `attestations`: message id (32 bytes) -> `AttestationRow` (indexed fields given by the caller,
/// insertion sequence number, and the opaque signed envelope bytes). Insert is a union merge: an id
/// already present is left alone.
pub(crate) const ATTESTATIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("attestations");

/// `attestations_by_output`: `(output basename, builder node id, message id) -> ()`.
pub(crate) const ATT_BY_OUTPUT: TableDefinition<(&str, &[u8; 32], &[u8; 32]), ()> =
    TableDefinition::new("attestations_by_output");

/// `attestations_by_drv`: `(drv basename, message id) -> ()`.
pub(crate) const ATT_BY_DRV: TableDefinition<(&str, &[u8; 32]), ()> = TableDefinition::new("attestations_by_drv");

/// `attestation_seq`: local insertion sequence number -> message id. Anti-entropy cursors are
/// positions in this table (`ids_since`), so sync never re-sends what a peer already fetched.
pub(crate) const ATT_SEQ: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("attestation_seq");

/// `failures`: message id -> `FailureRow` (drv, builder, attempt, seq, opaque signed bytes).
pub(crate) const FAILURES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("failures");

/// `failures_by_drv`: `(drv basename, message id) -> ()`.
pub(crate) const FAIL_BY_DRV: TableDefinition<(&str, &[u8; 32]), ()> = TableDefinition::new("failures_by_drv");

/// `failure_seq`: local insertion sequence number -> message id.
pub(crate) const FAIL_SEQ: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("failure_seq");

/// `sync_cursors`: peer id (base58) -> `SyncCursor` (the next attestation and failure sequence
/// numbers to pull from that peer; see `mesh::sync`). Losing a row costs one full re-sync with that
/// peer.
pub(crate) const SYNC_CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("sync_cursors");

/// `signer_usage`: signing key (node id, 32 bytes) -> records (u64 LE) ‖ envelope bytes (u64 LE)
/// of the attestations and failures it signed that are stored (see `usage`).
pub(crate) const SIGNER_USAGE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("signer_usage");

/// `mesh_submissions`: `.drv` basename -> `SubmittedJob`: this node's own submissions to the mesh
/// that are not decided yet, resubmitted after a restart (see `mesh::jobs`).
pub(crate) const MESH_SUBMISSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("mesh_submissions");

/// `meta` key: the next revision insertion sequence number.
pub(crate) const META_NEXT_REV_SEQ: &str = "next_revision_seq";
/// `meta` key: XOR of all revision header ids (every stored envelope, superseded ones included).
pub(crate) const META_REV_XOR: &str = "revision_xor";

/// `revisions`: message id -> `RevisionRow` (channel, branch, commit, submitter, created_at_ms,
/// manifest hash and size, seq, received_at, the opaque signed envelope). Union merge: every
/// verified header is kept (anti-entropy carries them all), also those a later one superseded.
pub(crate) const REVISIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("revisions");

/// `revision_seq`: local insertion sequence number -> message id (sync paging, as `attestation_seq`).
pub(crate) const REVISION_SEQ: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("revision_seq");

/// `revisions_by_name`: `(channel, commit, submitter node id) -> message id` of the **visible**
/// header of that key: the one with the latest `created_at_ms`, then the larger message id.
pub(crate) const REVISIONS_BY_NAME: TableDefinition<(&str, &str, &[u8; 32]), &[u8; 32]> =
    TableDefinition::new("revisions_by_name");

/// `revisions_by_manifest`: `(manifest hash, message id) -> ()`, every stored header naming that
/// manifest (which headers a fetched manifest serves, and the `drv_manifests` join).
pub(crate) const REVISIONS_BY_MANIFEST: TableDefinition<(&[u8; 32], &[u8; 32]), ()> =
    TableDefinition::new("revisions_by_manifest");

/// `manifests`: blake3 of a manifest's canonical encoding -> its zstd-compressed bytes. A row is
/// written only after the uncompressed bytes were checked to hash to the key.
pub(crate) const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");

/// `drv_manifests`: `(.drv basename, manifest hash) -> ()`, written with the manifest: which
/// manifests contain a derivation. Joined with `revisions_by_manifest` it answers "every revision
/// a derivation belongs to" whatever order the header and its manifest arrived in (REV-SPEC's
/// `drv_revisions`, keyed by the manifest rather than the header: a manifest may be named by
/// several headers, and a header may arrive after its manifest).
pub(crate) const DRV_MANIFESTS: TableDefinition<(&str, &[u8; 32]), ()> = TableDefinition::new("drv_manifests");

/// `revision_cursors`: peer id (base58) -> the next revision sequence number (u64 LE) to pull from
/// that peer. A table of its own rather than a field of `SyncCursor`, so that rows written by an
/// older build still decode and an older build still reads the rows written by this one.
pub(crate) const REVISION_CURSORS: TableDefinition<&str, u64> = TableDefinition::new("revision_cursors");

/// `peers`: peer id (base58) -> `PeerRecord` (dialable addresses, last seen, reachability): the
/// peers this node rejoins after a restart without a bootstrap address (see `peers`; bounded by
/// the mesh's peer book). Losing a row costs at most one bootstrap.
pub(crate) const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
