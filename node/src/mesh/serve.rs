//! Answering other nodes: `.drv` closures, NAR chunks, anti-entropy pages (attestations,
//! failures, revision headers) and manifest chunks, from the store.
//!
//! Every answer is computed in a blocking task (store reads, decompression) and sent with
//! [`NetHandle::respond`]. NAR chunks of one object usually arrive in order (the requester
//! pipelines them), so the decompressing reader of the last chunk served is kept per (peer, NAR)
//! and continued instead of decompressing the NAR from its start for every chunk.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::mesh::shard;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use libp2p::PeerId;

use super::rpc::{
    self, ClosureRequest, ClosureResponse, LOG_CHUNK_SIZE, MANIFEST_CHUNK_SIZE, MAX_PAGE_BYTES, MAX_PAGE_ITEMS,
    MAX_SHARD_SCAN, NarRequest, NarResponse, SourceInfo, SyncRequest, SyncResponse,
};
use crate::net::{NAR_CHUNK_SIZE, NetConfig};
use crate::store::{NarBlobReader, Store, StoreError};

/// Open NAR readers kept for continuation.
const READER_CACHE: usize = 8;
/// Most `.drv` files in one closure answer.
const MAX_CLOSURE_DRVS: usize = 100_000;

/// Serves inbound requests from the store. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    store: Store,
    store_dir: StoreDir,
    readers: Arc<Mutex<VecDeque<CachedReader>>>,
    limits: NetConfig,
    /// The mesh's shard count (`mesh_shards`), for [`ShardFilter`]ed sync pages.
    shards: u32,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("store", &self.store).finish_non_exhaustive()
    }
}

struct CachedReader {
    peer: PeerId,
    nar_hash: [u8; 32],
    offset: u64,
    reader: NarBlobReader,
}

impl Server {
    /// A server over `store`, decoding requests and capping answers with `limits`: the node's
    /// configured request-response limits (its `NetConfig`; there is no default, so a node
    /// cannot serve with other caps than its codec enforces).
    pub fn new(store: Store, store_dir: StoreDir, limits: NetConfig) -> Server {
        Server { store, store_dir, readers: Arc::default(), limits, shards: 1 }
    }

    /// The same server in a mesh of `shards` shards (the count [`ShardFilter`]s must name).
    pub fn with_shards(mut self, shards: u32) -> Server {
        self.shards = shards.max(1);
        self
    }

    /// Scanned records `(seq, derivation, envelope)` with the envelope kept only for the
    /// derivations of a `wanted` shard (for [`filtered_page`]).
    fn in_shards<'a>(
        &'a self,
        wanted: &'a BTreeSet<u32>,
        records: impl Iterator<Item = (u64, StorePath, Vec<u8>)> + 'a,
    ) -> impl Iterator<Item = (u64, Option<Vec<u8>>)> + 'a {
        records.map(move |(seq, drv, env)| (seq, wanted.contains(&shard::drv_shard(&drv, self.shards)).then_some(env)))
    }

    /// Answer a `/buildmesh/closure/1` request body (blocking).
    pub fn closure(&self, body: &[u8]) -> Vec<u8> {
        let resp = match rpc::decode::<ClosureRequest>("closure request", body, self.limits.closure_limits.max_request)
        {
            Err(e) => ClosureResponse::Error { message: e.to_string() },
            Ok(req) => match StorePath::from_basename(&req.drv) {
                Err(e) => ClosureResponse::Error { message: format!("{:?} is not a store path: {e}", req.drv) },
                Ok(drv) => self.closure_of(&drv).unwrap_or_else(|e| ClosureResponse::Error { message: e.to_string() }),
            },
        };
        let bytes = rpc::encode(&resp);
        if bytes.len() > self.limits.closure_limits.max_response {
            return rpc::encode(&ClosureResponse::Error {
                message: format!("the closure is {} bytes, more than one response may carry", bytes.len()),
            });
        }
        bytes
    }

    fn closure_of(&self, drv: &StorePath) -> Result<ClosureResponse, StoreError> {
        let sd = &self.store_dir;
        let mut drvs = Vec::new();
        let mut srcs: BTreeSet<StorePath> = BTreeSet::new();
        let mut seen = BTreeSet::from([drv.clone()]);
        let mut todo = VecDeque::from([drv.clone()]);
        while let Some(d) = todo.pop_front() {
            let Some(bytes) = self.store.get_drv(&d)? else {
                return Ok(ClosureResponse::NotFound { missing: sd.display(&d) });
            };
            let parsed = match Derivation::parse(&bytes, sd) {
                Ok(p) => p,
                Err(e) => return Ok(ClosureResponse::Error { message: format!("stored {d} does not parse: {e}") }),
            };
            srcs.extend(parsed.input_srcs.iter().cloned());
            for input in parsed.input_drvs.keys() {
                if seen.insert(input.clone()) {
                    todo.push_back(input.clone());
                }
            }
            drvs.push((d.to_string(), bytes));
            if drvs.len() > MAX_CLOSURE_DRVS {
                return Ok(ClosureResponse::Error {
                    message: format!("closure has more than {MAX_CLOSURE_DRVS} drvs"),
                });
            }
        }
        // Sources with their reference closures.
        let mut sources = Vec::new();
        let mut done: BTreeSet<StorePath> = BTreeSet::new();
        let mut todo: Vec<StorePath> = srcs.into_iter().collect();
        while let Some(p) = todo.pop() {
            if !done.insert(p.clone()) {
                continue;
            }
            let Some(info) = self.store.path_info(&p)? else {
                return Ok(ClosureResponse::NotFound { missing: sd.display(&p) });
            };
            todo.extend(info.references.iter().filter(|r| **r != p).cloned());
            sources.push(SourceInfo {
                path: p.to_string(),
                nar_hash: info.nar_hash.to_string(),
                nar_size: info.nar_size,
                references: info.references.iter().map(|r| r.to_string()).collect(),
                ca: info.ca.clone(),
            });
        }
        Ok(ClosureResponse::Found { drvs, sources })
    }

    /// Answer a `/buildmesh/nar/1` request body from `peer` (blocking).
    pub fn nar(&self, peer: PeerId, body: &[u8]) -> Vec<u8> {
        let resp = match rpc::decode::<NarRequest>("NAR request", body, self.limits.nar_limits.max_request) {
            Err(e) => NarResponse::Error(e.to_string()),
            Ok(req) if req.len > NAR_CHUNK_SIZE || req.len == 0 => {
                NarResponse::Error(format!("chunk length {} is outside 1..={NAR_CHUNK_SIZE}", req.len))
            }
            Ok(req) => self.chunk(peer, &req).unwrap_or_else(|e| NarResponse::Error(e.to_string())),
        };
        rpc::encode(&resp)
    }

    fn chunk(&self, peer: PeerId, req: &NarRequest) -> Result<NarResponse, StoreError> {
        let cached = {
            let mut cache = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            let pos = cache.iter().position(|c| c.peer == peer && c.nar_hash == req.nar_hash && c.offset == req.offset);
            pos.and_then(|i| cache.remove(i))
        };
        let mut c = match cached {
            Some(c) => c,
            None => {
                let Some(blob) = self.store.blob_by_nar_hash(&NixHash::sha256(req.nar_hash))? else {
                    return Ok(NarResponse::NotFound);
                };
                self.store.note_blob_access(&blob.blake3);
                if req.offset >= blob.nar_size {
                    return Ok(NarResponse::Error(format!("offset {} is past the NAR's end", req.offset)));
                }
                let mut reader = self.store.open_nar(&blob.blake3)?;
                let skipped = std::io::copy(&mut (&mut reader).take(req.offset), &mut std::io::sink())
                    .map_err(|source| StoreError::Input { source })?;
                if skipped != req.offset {
                    return Ok(NarResponse::Error("NAR shorter than the requested offset".into()));
                }
                CachedReader { peer, nar_hash: req.nar_hash, offset: req.offset, reader }
            }
        };
        let want = (c.reader.nar_size().saturating_sub(c.offset)).min(u64::from(req.len)) as usize;
        let mut buf = vec![0u8; want];
        c.reader.read_exact(&mut buf).map_err(|source| StoreError::Input { source })?;
        c.offset += want as u64;
        if c.offset < c.reader.nar_size() {
            let mut cache = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            cache.push_back(c);
            while cache.len() > READER_CACHE {
                cache.pop_front();
            }
        }
        Ok(NarResponse::Chunk(buf))
    }

    /// Answer the anti-entropy part of a `/buildmesh/sync/1` request (blocking). Retry requests
    /// need the state machine and are answered by the driver.
    pub fn sync(&self, req: &SyncRequest) -> SyncResponse {
        let r = match req {
            SyncRequest::Summary => self.store.attestation_summary().and_then(|a| {
                Ok(SyncResponse::Summary { attestations: a.into(), failures: self.store.failure_summary()?.into() })
            }),
            SyncRequest::Attestations { from, limit } => {
                let limit = (*limit).clamp(1, MAX_PAGE_ITEMS) as usize;
                self.store.attestations_since(*from, limit).and_then(|list| {
                    let next_seq = self.store.attestation_summary()?.next_seq;
                    Ok(page(list.into_iter().map(|a| (a.seq, a.entry.envelope)), *from, next_seq))
                })
            }
            SyncRequest::Failures { from, limit } => {
                let limit = (*limit).clamp(1, MAX_PAGE_ITEMS) as usize;
                self.store.failures_since(*from, limit).and_then(|list| {
                    let next_seq = self.store.failure_summary()?.next_seq;
                    Ok(page(list.into_iter().map(|f| (f.seq, f.entry.envelope)), *from, next_seq))
                })
            }
            SyncRequest::Retry { .. } => Ok(SyncResponse::Error("retry requests go to the driver".into())),
            SyncRequest::RevisionSummary => {
                self.store.revision_summary().map(|s| SyncResponse::RevisionSummary(s.into()))
            }
            SyncRequest::Revisions { from, limit } => {
                let limit = (*limit).clamp(1, MAX_PAGE_ITEMS) as usize;
                self.store.revisions_since(*from, limit).and_then(|list| {
                    let next_seq = self.store.revision_summary()?.next_seq;
                    Ok(page(list.into_iter().map(|r| (r.seq, r.entry.envelope)), *from, next_seq))
                })
            }
            SyncRequest::Manifest { hash, offset, len } => {
                if *len == 0 || *len > MANIFEST_CHUNK_SIZE {
                    Ok(SyncResponse::Error(format!("manifest chunk length {len} is outside 1..={MANIFEST_CHUNK_SIZE}")))
                } else {
                    self.store.manifest_chunk(hash, *offset, *len).map(|c| match c {
                        Some((total, bytes)) => SyncResponse::ManifestChunk { total, bytes },
                        None => SyncResponse::ManifestNotFound,
                    })
                }
            }
            SyncRequest::Log { drv, offset, len } => Ok(self.log_chunk(drv, *offset, *len)),
            SyncRequest::ShardAttestations { from, limit, filter } => match filter.check(self.shards) {
                Err(e) => Ok(SyncResponse::Error(e)),
                Ok(wanted) => self.store.attestations_since(*from, MAX_SHARD_SCAN).and_then(|list| {
                    let next_seq = self.store.attestation_summary()?.next_seq;
                    let items = list.into_iter().map(|a| (a.seq, a.entry.drv, a.entry.envelope));
                    Ok(filtered_page(self.in_shards(&wanted, items), *from, next_seq, *limit))
                }),
            },
            SyncRequest::ShardFailures { from, limit, filter } => match filter.check(self.shards) {
                Err(e) => Ok(SyncResponse::Error(e)),
                Ok(wanted) => self.store.failures_since(*from, MAX_SHARD_SCAN).and_then(|list| {
                    let next_seq = self.store.failure_summary()?.next_seq;
                    let items = list.into_iter().map(|f| (f.seq, f.entry.drv, f.entry.envelope));
                    Ok(filtered_page(self.in_shards(&wanted, items), *from, next_seq, *limit))
                }),
            },
        };
        r.unwrap_or_else(|e| SyncResponse::Error(e.to_string()))
    }

    /// A chunk of this node's stored log of `drv` (issue 14): the bytes its signed attestation or
    /// failure names by [`buildmesh_protocol::wire::LogDigest`].
    fn log_chunk(&self, drv: &str, offset: u64, len: u32) -> SyncResponse {
        if len == 0 || len > LOG_CHUNK_SIZE {
            return SyncResponse::Error(format!("log chunk length {len} is outside 1..={LOG_CHUNK_SIZE}"));
        }
        let drv = match StorePath::from_basename(drv) {
            Ok(d) => d,
            Err(e) => return SyncResponse::Error(format!("{:?} is not a store path: {e}", drv)),
        };
        match self.store.get_log(&drv) {
            Err(e) => SyncResponse::Error(e.to_string()),
            Ok(None) => SyncResponse::LogNotFound,
            Ok(Some(log)) => {
                let total = log.len() as u64;
                if offset > total {
                    return SyncResponse::Error(format!("offset {offset} is past the log's end ({total} bytes)"));
                }
                let end = (offset + u64::from(len)).min(total);
                SyncResponse::LogChunk { total, bytes: log[offset as usize..end as usize].to_vec() }
            }
        }
    }
}

/// A page of at most [`MAX_PAGE_BYTES`] of envelopes.
fn page(items: impl Iterator<Item = (u64, Vec<u8>)>, from: u64, next_seq: u64) -> SyncResponse {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut next = from;
    for (seq, env) in items {
        if !out.is_empty() && bytes + env.len() > MAX_PAGE_BYTES {
            break;
        }
        bytes += env.len() + 16;
        next = seq + 1;
        out.push((seq, env));
    }
    SyncResponse::Page { more: next < next_seq && !out.is_empty(), items: out, next }
}

/// A page of the scanned records `items` (`None`: of a shard not wanted, skipped) holding at
/// most `limit` (capped at [`MAX_PAGE_ITEMS`]) records and [`MAX_PAGE_BYTES`] of envelopes;
/// `next` follows the last record scanned, kept or not.
fn filtered_page(
    items: impl Iterator<Item = (u64, Option<Vec<u8>>)>,
    from: u64,
    next_seq: u64,
    limit: u32,
) -> SyncResponse {
    let limit = limit.clamp(1, MAX_PAGE_ITEMS) as usize;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut next = from;
    for (seq, env) in items {
        if let Some(env) = env {
            if out.len() >= limit || (!out.is_empty() && bytes + env.len() > MAX_PAGE_BYTES) {
                break;
            }
            bytes += env.len() + 16;
            out.push((seq, env));
        }
        next = seq + 1;
    }
    SyncResponse::Page { more: next < next_seq, items: out, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mesh::rpc::{MAX_FILTER_SHARDS, ShardFilter};
    use buildmesh_protocol::identity::NodeKey;
    use buildmesh_protocol::signed::Envelope;
    use buildmesh_protocol::wire::Message;

    /// A server of 2 shards over a store holding 40 attestations of 40 derivations, and the
    /// sequence numbers of those whose derivation lies in shard 1.
    fn sharded_server() -> (Server, Vec<u64>, tempfile::TempDir) {
        let (store, dir) = crate::store::test_support::memory_store();
        let key = NodeKey::from_seed("b", [3; 32]).unwrap();
        let mut in_one = Vec::new();
        for i in 0..40u8 {
            let mut a = crate::mesh::test_util::att(&key, &StorePath::new([i; 20], "o").unwrap(), i);
            a.drv = StorePath::new([i; 20], "d.drv").unwrap();
            let v = Envelope::sign(&key, &Message::Attestation(a.clone())).unwrap().verify().unwrap();
            assert!(crate::mesh::sync::commit(&store, &v).unwrap());
            if shard::drv_shard(&a.drv, 2) == 1 {
                in_one.push(u64::from(i));
            }
        }
        assert!(!in_one.is_empty() && in_one.len() < 40);
        (Server::new(store, StoreDir::nix(), NetConfig::default()).with_shards(2), in_one, dir)
    }

    fn seqs(r: &SyncResponse) -> (Vec<u64>, u64, bool) {
        let SyncResponse::Page { items, next, more } = r else { panic!("{r:?}") };
        (items.iter().map(|(s, _)| *s).collect(), *next, *more)
    }

    #[test]
    fn sync_pages_carry_only_the_named_shards_and_move_past_the_others() {
        let (server, in_one, _dir) = sharded_server();
        let filter = ShardFilter { shards: 2, of: vec![1] };
        let all = server.sync(&SyncRequest::ShardAttestations { from: 0, limit: 1024, filter: filter.clone() });
        assert_eq!(seqs(&all), (in_one.clone(), 40, false), "every record of shard 1, the cursor at the end");
        // A limit of 2: the page stops after the second record of shard 1 and says more follow.
        let two = server.sync(&SyncRequest::ShardAttestations { from: 0, limit: 2, filter: filter.clone() });
        assert_eq!(seqs(&two), (in_one[..2].to_vec(), in_one[1] + 1, true));
        // Both shards named: what an unnamed request serves.
        let both = ShardFilter { shards: 2, of: vec![0, 1] };
        let named = server.sync(&SyncRequest::ShardAttestations { from: 0, limit: 1024, filter: both });
        let unnamed = server.sync(&SyncRequest::Attestations { from: 0, limit: 1024 });
        assert_eq!(seqs(&named).0, (0..40).collect::<Vec<u64>>());
        assert_eq!(seqs(&named).0, seqs(&unnamed).0);
        // No failures at all: an empty page without more.
        let none = server.sync(&SyncRequest::ShardFailures { from: 0, limit: 10, filter });
        assert_eq!(seqs(&none), (vec![], 0, false));
    }

    #[test]
    fn a_bad_shard_filter_is_refused() {
        let (server, _, _dir) = sharded_server();
        let ask = |shards: u32, of: Vec<u32>| {
            server.sync(&SyncRequest::ShardAttestations { from: 0, limit: 10, filter: ShardFilter { shards, of } })
        };
        for (shards, of, why) in [
            (3, vec![1], "another shard count"),
            (2, vec![], "no shard"),
            (2, vec![2], "a shard out of range"),
            (2, vec![u32::MAX], "a shard out of range"),
            (2, vec![1; MAX_FILTER_SHARDS + 1], "too many shards"),
        ] {
            assert!(matches!(ask(shards, of), SyncResponse::Error(_)), "{why} accepted");
        }
        assert!(matches!(ask(2, vec![1, 1, 0]), SyncResponse::Page { .. }), "repeats are harmless");
    }

    #[test]
    fn a_filtered_page_scans_a_bounded_number_of_records() {
        // Nothing of the wanted shards among the scanned records: an empty page that moves on.
        let skipped = (5..5 + MAX_SHARD_SCAN as u64).map(|s| (s, None));
        assert_eq!(seqs(&filtered_page(skipped, 5, 1_000_000, 10)), (vec![], 5 + MAX_SHARD_SCAN as u64, true));
        // Big envelopes: bounded by bytes like any page.
        let big = (0..10u64).map(|s| (s, Some(vec![0u8; MAX_PAGE_BYTES / 4])));
        let (items, next, more) = seqs(&filtered_page(big, 0, 10, 1024));
        assert!(items.len() < 5 && !items.is_empty() && more);
        assert_eq!(next, items.len() as u64);
    }

    #[test]
    fn pages_are_bounded_and_say_where_to_go_on() {
        let items = (0..10u64).map(|s| (s, vec![0u8; MAX_PAGE_BYTES / 4]));
        let SyncResponse::Page { items, next, more } = page(items, 0, 10) else { panic!() };
        assert!(items.len() < 5 && !items.is_empty());
        assert_eq!(next, items.len() as u64);
        assert!(more);
        let SyncResponse::Page { items, next, more } = page(std::iter::empty(), 7, 7) else { panic!() };
        assert!(items.is_empty() && next == 7 && !more);
    }
}
