//! Server-side acceptance of an upload: check everything, then store it in one transaction.
//!
//! Order of work (nothing is written to the store before step 6):
//! 1. header: magic, length cap, JSON, store dir, counts, per-item and total size caps,
//!    `Content-Length` = declared total, paths valid and unique;
//! 2. `.drv` files: parse (canonical ATerm), recompute each store path from the bytes;
//! 3. closure: every input derivation uploaded or stored here (stored ones are loaded to compute
//!    output paths), every recorded output path (and output env var) equal to the computed one;
//! 4. sources: none at an output path of the closure; every input source of an uploaded
//!    derivation, and every reference of an uploaded source, uploaded or registered here; an
//!    uploaded source that is registered already must have the same NarHash;
//! 5. NARs: parsed as NARs (a non-NAR is refused at its first wrong byte) and hashed while they
//!    are spooled to one temp file on disk ([`super::spool`], after checking the disk has room),
//!    each checked against its NarHash and NarSize, and a new source must be a content-addressed
//!    (`text` or `source`) path of its bytes; then the end of the body;
//! 6. blobs written with [`Store::put_nar_expecting`] (skipped when the node has the NAR), then
//!    ONE store transaction: `put_drv` for every `.drv`, `register_path` for every new source,
//!    `enqueue` for every derivation of the closure that has a wanted output not built (an output
//!    counts as built only when the trust rule accepts it: [`crate::trust`]).
//!
//! After step 6 only a database failure (or a concurrent upload registering the same source with
//! another NarHash in between) can fail, and that may leave blobs without a path row behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};

use buildmesh_protocol::derivation::{Derivation, DrvSet};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use sha2::Digest as _;

use super::server::SubmitContext;
use super::spool::{Slice, Spool};
use super::wire::{BodyReader, SubmitHeader};
use super::{OutputInfo, SubmitError, SubmitLimits, SubmitResponse};
use crate::store::{BuildState, EnqueueRequest, PathInfo, Store};

/// A source entry of the header, checked.
#[derive(Debug)]
struct SourcePlan {
    path: StorePath,
    nar_hash: NixHash,
    nar_size: u64,
    references: BTreeSet<StorePath>,
    /// Already registered here (same NarHash): its NAR is read and checked but not stored.
    registered: bool,
}

/// The header, checked.
#[derive(Debug)]
struct Plan {
    requested: Vec<StorePath>,
    drv_paths: Vec<StorePath>,
    sources: Vec<SourcePlan>,
}

/// Check and store one upload read from `body` (see the module docs for the order of checks).
/// `content_length` is the HTTP `Content-Length` when the client sent one; `now` is Unix ms.
/// On error nothing of the upload is in the store.
pub fn accept(
    ctx: &SubmitContext,
    body: &mut dyn Read,
    content_length: Option<u64>,
    now: u64,
) -> Result<SubmitResponse, SubmitError> {
    accept_inner(ctx, body, content_length, now, true, None).map(|(r, _)| r)
}

/// An upload that queued builds, as recorded for its submitter (the `submitter_uploads` row
/// written in the same transaction as the builds; [`crate::scheduler::SubmitterLedger`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpload {
    /// Its id in `submitter_uploads` (grows with every upload).
    pub id: u64,
    /// The bytes of its body.
    pub bytes: u64,
    /// The derivations it queued.
    pub drvs: BTreeSet<StorePath>,
}

/// [`accept`] of an upload by `submitter`, also recording it durably for that submitter when it
/// queued builds (`None` when it queued nothing: it is finished already).
pub fn accept_queued(
    ctx: &SubmitContext,
    body: &mut dyn Read,
    content_length: Option<u64>,
    now: u64,
    submitter: &str,
) -> Result<(SubmitResponse, Option<QueuedUpload>), SubmitError> {
    let mut recorded = None;
    let (response, _) = accept_inner(ctx, body, content_length, now, true, Some((submitter, &mut recorded)))?;
    Ok((response, recorded))
}

/// What a mesh node hands to the mesh after [`accept_for_mesh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPlan {
    /// The derivations to build, dependencies first: `(drv, outputs wanted (empty = all), its
    /// input derivations that are built in the same plan)`.
    pub jobs: Vec<(StorePath, BTreeSet<String>, Vec<StorePath>)>,
    /// The requested priority.
    pub priority: i32,
    /// The requested replication factor (0 = the node's default).
    pub replicas: u32,
}

/// [`accept`] for a mesh node: the same checks and the same single transaction storing the
/// `.drv` files and sources, but nothing is queued locally; the derivations to build come back
/// as a [`MeshPlan`] for the mesh.
pub fn accept_for_mesh(
    ctx: &SubmitContext,
    body: &mut dyn Read,
    content_length: Option<u64>,
    now: u64,
) -> Result<(SubmitResponse, MeshPlan), SubmitError> {
    accept_inner(ctx, body, content_length, now, false, None)
}

fn accept_inner(
    ctx: &SubmitContext,
    body: &mut dyn Read,
    content_length: Option<u64>,
    now: u64,
    enqueue: bool,
    record_for: Option<(&str, &mut Option<QueuedUpload>)>,
) -> Result<(SubmitResponse, MeshPlan), SubmitError> {
    let sd = &ctx.store_dir;
    let limits = &ctx.limits;
    let store = &ctx.store;
    let mut r = BodyReader::new(body);

    // 1. Header.
    let header = r.read_header(limits.max_header_bytes)?;
    let plan = check_header(&header, sd, limits, store, r.bytes_read(), content_length)?;
    let span = tracing::info_span!(
        "submit",
        requested = plan.requested.len(),
        drvs = plan.drv_paths.len(),
        sources = plan.sources.len()
    );
    let _enter = span.enter();

    // 2. Derivations.
    let mut set = DrvSet::new(sd.clone());
    let mut uploaded: Vec<(StorePath, Vec<u8>)> = Vec::with_capacity(header.drvs.len());
    for (entry, declared) in header.drvs.iter().zip(&plan.drv_paths) {
        let bytes = r.read_drv(entry)?;
        let malformed = |error| SubmitError::MalformedDrv { path: entry.path.clone(), error };
        let drv = Derivation::parse(&bytes, sd).map_err(malformed)?;
        let name = drv.name().map_err(malformed)?;
        let computed = set.insert(name, drv).map_err(malformed)?;
        if &computed != declared {
            return Err(SubmitError::DrvPathMismatch { declared: entry.path.clone(), computed: sd.display(&computed) });
        }
        uploaded.push((computed, bytes));
    }

    // 3. Closure of derivations: load the stored ones that are needed.
    let mut needed: Vec<(Option<StorePath>, StorePath)> = Vec::new();
    for p in &plan.requested {
        needed.push((None, p.clone()));
    }
    for (p, _) in &uploaded {
        if let Some((_, drv)) = set.get(p) {
            needed.extend(drv.input_drvs.keys().map(|i| (Some(p.clone()), i.clone())));
        }
    }
    let mut closure_drvs: Vec<StorePath> = uploaded.iter().map(|(p, _)| p.clone()).collect();
    while let Some((by, p)) = needed.pop() {
        if set.get(&p).is_some() {
            continue;
        }
        let Some(bytes) = store.get_drv(&p)? else {
            return Err(match by {
                None => SubmitError::UnknownRequested { path: sd.display(&p) },
                Some(by) => SubmitError::MissingInputDrv { drv: sd.display(&by), input: sd.display(&p) },
            });
        };
        let corrupt = |reason: String| SubmitError::CorruptStoredDrv { path: sd.display(&p), reason };
        let drv = Derivation::parse(&bytes, sd).map_err(|e| corrupt(e.to_string()))?;
        let name = drv.name().map_err(|e| corrupt(e.to_string()))?;
        let inputs: Vec<StorePath> = drv.input_drvs.keys().cloned().collect();
        let computed = set.insert(name, drv).map_err(|e| corrupt(e.to_string()))?;
        if computed != p {
            return Err(corrupt(format!("its contents have store path {}", sd.display(&computed))));
        }
        needed.extend(inputs.into_iter().map(|i| (Some(p.clone()), i)));
        closure_drvs.push(p);
    }
    for (p, _) in &uploaded {
        let Some((name, drv)) = set.get(p) else { continue };
        let (name, mut drv) = (name.to_string(), drv.clone());
        set.fill_in(&mut drv, &name).map_err(|error| SubmitError::OutputPaths { drv: sd.display(p), error })?;
    }

    // An upload never becomes an output: no source may sit at an output path of the closure.
    if !plan.sources.is_empty() {
        let sources: BTreeSet<&StorePath> = plan.sources.iter().map(|s| &s.path).collect();
        for d in &closure_drvs {
            let outputs =
                set.member_output_paths(d).map_err(|error| SubmitError::OutputPaths { drv: sd.display(d), error })?;
            for (name, path) in outputs {
                if let Some(path) = path.filter(|p| sources.contains(p)) {
                    return Err(SubmitError::SourceIsOutput {
                        path: sd.display(&path),
                        drv: sd.display(d),
                        output: name,
                    });
                }
            }
        }
    }

    // 4. Sources.
    let declared: BTreeMap<&StorePath, &SourcePlan> = plan.sources.iter().map(|s| (&s.path, s)).collect();
    let mut registered_cache: HashMap<StorePath, bool> = HashMap::new();
    let mut is_available = |p: &StorePath| -> Result<bool, SubmitError> {
        if declared.contains_key(p) {
            return Ok(true);
        }
        if let Some(&known) = registered_cache.get(p) {
            return Ok(known);
        }
        let known = store.has_path(p)?;
        registered_cache.insert(p.clone(), known);
        Ok(known)
    };
    for (p, _) in &uploaded {
        let Some((_, drv)) = set.get(p) else { continue };
        for src in &drv.input_srcs {
            if !is_available(src)? {
                return Err(SubmitError::MissingSource { needed_by: sd.display(p), path: sd.display(src) });
            }
        }
    }
    for s in &plan.sources {
        for r in &s.references {
            if r != &s.path && !is_available(r)? {
                return Err(SubmitError::MissingSource { needed_by: sd.display(&s.path), path: sd.display(r) });
            }
        }
    }

    // 5. NARs: parsed and hashed while spooled to disk.
    let spool_bytes = plan.sources.iter().filter(|s| !s.registered).map(|s| s.nar_size).sum();
    let mut spool = Spool::create(limits, spool_bytes)?;
    let mut spooled: Vec<Option<(Slice, Option<String>)>> = Vec::with_capacity(plan.sources.len());
    for (entry, s) in header.sources.iter().zip(&plan.sources) {
        let mut sha = sha2::Sha256::new();
        let nar_limits = limits.nar_limits(s.nar_size);
        let slice = if s.registered {
            r.copy_checked_nar(entry, &mut io::sink(), &mut |c| sha.update(c), nar_limits)?;
            None
        } else {
            Some(spool.append(|out| r.copy_checked_nar(entry, out, &mut |c| sha.update(c), nar_limits))?)
        };
        let digest: [u8; 32] = sha.finalize().into();
        let actual = NixHash::sha256(digest);
        if actual != s.nar_hash {
            return Err(SubmitError::NarHashMismatch {
                path: entry.path.clone(),
                expected: s.nar_hash.to_string(),
                actual: actual.to_string(),
            });
        }
        spooled.push(match slice {
            Some(slice) => {
                let nar = spool.reader(slice)?;
                let ca =
                    crate::content_address::of_nar(sd, &s.path, s.references.iter().cloned(), &digest, s.nar_size, nar)
                        .map_err(|source| SubmitError::Spool { source })?;
                // Only a path that its bytes certify may be added: anything else (an output
                // path, a made-up name) would become "contents of that path" on the node's word.
                let Some(ca) = ca else {
                    return Err(SubmitError::NotContentAddressed { path: entry.path.clone() });
                };
                Some((slice, Some(ca)))
            }
            None => None,
        });
    }
    r.finish()?;
    let body_bytes = r.bytes_read();

    // Which derivations need building (reads only).
    let builds = plan_builds(&mut set, &plan.requested, store, sd, &ctx.trust)?;

    // 6. Blobs, then one transaction.
    let mut new_paths: Vec<PathInfo> = Vec::new();
    for (s, spooled_nar) in plan.sources.iter().zip(spooled) {
        let Some((slice, ca)) = spooled_nar else { continue };
        let blob = match store.blob_by_nar_hash(&s.nar_hash)? {
            Some(b) if b.nar_size == s.nar_size => b.blake3,
            _ => store.put_nar_expecting(&mut spool.reader(slice)?, &s.nar_hash, s.nar_size)?.blake3,
        };
        new_paths.push(path_info(s, blob, ca, now));
    }
    let queued: BTreeSet<StorePath> = builds.to_build.iter().filter(|_| enqueue).map(|(d, _)| d.clone()).collect();
    let (drvs_stored, sources_registered, upload_id) = store.write(|w| {
        let mut drvs_stored = 0u64;
        for (p, bytes) in &uploaded {
            drvs_stored += u64::from(w.put_drv(p, bytes)?);
        }
        let mut sources_registered = 0u64;
        for info in &new_paths {
            sources_registered += u64::from(w.register_path(info)?);
        }
        for (drv, wanted) in builds.to_build.iter().filter(|_| enqueue) {
            let req = EnqueueRequest {
                drv: drv.clone(),
                priority: header.priority,
                wanted_outputs: wanted.clone(),
                replicas: header.replicas.max(1),
            };
            let outcome = w.enqueue(&req, now)?;
            if matches!(outcome.record().state, BuildState::Failed | BuildState::Cancelled) {
                w.retry(drv)?;
            }
        }
        // Who queued them, in the same transaction ([`crate::store::UploadRow`]).
        let upload_id = match &record_for {
            Some((who, _)) if !queued.is_empty() => {
                Some(w.put_upload(&crate::store::UploadRow::new(who, body_bytes, &queued))?)
            }
            _ => None,
        };
        Ok((drvs_stored, sources_registered, upload_id))
    })?;
    if let (Some((_, out)), Some(id)) = (record_for, upload_id) {
        *out = Some(QueuedUpload { id, bytes: body_bytes, drvs: queued });
    }
    tracing::info!(
        queued = builds.to_build.len(),
        drvs_stored,
        sources_registered,
        already_built = builds.already_built.len(),
        "accepted a submission"
    );
    let planned: BTreeSet<&StorePath> = builds.to_build.iter().map(|(d, _)| d).collect();
    let mesh_plan = MeshPlan {
        jobs: builds
            .to_build
            .iter()
            .rev()
            .map(|(d, wanted)| {
                let inputs = inputs_of(&set, d).into_iter().filter(|i| planned.contains(i)).collect();
                (d.clone(), wanted.clone(), inputs)
            })
            .collect(),
        priority: header.priority,
        replicas: header.replicas,
    };
    let response = SubmitResponse {
        accepted: plan.requested.iter().map(|p| sd.display(p)).collect(),
        queued: builds.to_build.len() as u64,
        already_built: builds.already_built.iter().map(|p| sd.display(p)).collect(),
        outputs: builds.outputs,
        drvs_stored,
        sources_registered,
    };
    Ok((response, mesh_plan))
}

fn path_info(s: &SourcePlan, blob: ArtifactHash, ca: Option<String>, now: u64) -> PathInfo {
    PathInfo {
        path: s.path.clone(),
        nar_hash: s.nar_hash.clone(),
        nar_size: s.nar_size,
        references: s.references.clone(),
        deriver: None,
        ca,
        blob,
        registered_at: now,
    }
}

/// Check the header against the limits and the store dir, parse every path, and check the body
/// length (bytes of the header already read: `prefix_len`).
fn check_header(
    header: &SubmitHeader,
    sd: &StoreDir,
    limits: &SubmitLimits,
    store: &Store,
    prefix_len: u64,
    content_length: Option<u64>,
) -> Result<Plan, SubmitError> {
    if header.store_dir != sd.as_str() {
        return Err(SubmitError::StoreDirMismatch { ours: sd.to_string(), theirs: header.store_dir.clone() });
    }
    if header.requested.is_empty() {
        return Err(SubmitError::BadHeader { reason: "no derivation requested".to_string() });
    }
    if header.drvs.len() > limits.max_drvs {
        return Err(SubmitError::TooMany { what: "derivations", count: header.drvs.len(), max: limits.max_drvs });
    }
    if header.sources.len() > limits.max_sources {
        return Err(SubmitError::TooMany { what: "sources", count: header.sources.len(), max: limits.max_sources });
    }
    let parse =
        |p: &str| sd.parse_path(p).map_err(|e| SubmitError::BadPath { path: p.to_string(), reason: e.to_string() });
    let parse_drv = |p: &str| {
        let path = parse(p)?;
        if !path.is_derivation() {
            return Err(SubmitError::BadPath { path: p.to_string(), reason: "not a .drv store path".to_string() });
        }
        Ok(path)
    };
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    let mut total = prefix_len;
    let mut drv_total = 0u64;
    let mut drv_paths = Vec::with_capacity(header.drvs.len());
    for d in &header.drvs {
        let path = parse_drv(&d.path)?;
        let max = buildmesh_protocol::derivation::MAX_DRV_SIZE as u64;
        if d.size > max {
            return Err(SubmitError::TooLarge { what: "derivation", path: d.path.clone(), size: d.size, max });
        }
        if !seen.insert(path.clone()) {
            return Err(SubmitError::Duplicate { path: d.path.clone() });
        }
        drv_total += d.size;
        if drv_total > limits.max_drv_bytes {
            return Err(SubmitError::TooLarge {
                what: "sum of",
                path: "all derivations".to_string(),
                size: drv_total,
                max: limits.max_drv_bytes,
            });
        }
        drv_paths.push(path);
    }
    total = total.checked_add(drv_total).ok_or(SubmitError::SizeOverflow)?;
    let mut sources = Vec::with_capacity(header.sources.len());
    for s in &header.sources {
        let path = parse(&s.path)?;
        let bad = |reason: String| SubmitError::BadPath { path: s.path.clone(), reason };
        let nar_hash = NixHash::parse(&s.nar_hash, None).map_err(|e| bad(format!("bad NarHash: {e}")))?;
        if nar_hash.algo() != HashAlgo::Sha256 {
            return Err(bad(format!("NarHash {} is not SHA-256", s.nar_hash)));
        }
        if s.nar_size == 0 {
            return Err(bad("NarSize is 0".to_string()));
        }
        if s.nar_size > limits.max_nar_size {
            return Err(SubmitError::TooLarge {
                what: "source NAR",
                path: s.path.clone(),
                size: s.nar_size,
                max: limits.max_nar_size,
            });
        }
        if !seen.insert(path.clone()) {
            return Err(SubmitError::Duplicate { path: s.path.clone() });
        }
        let references = s.references.iter().map(|r| parse(r)).collect::<Result<BTreeSet<_>, _>>()?;
        total = total.checked_add(s.nar_size).ok_or(SubmitError::SizeOverflow)?;
        let registered = match store.path_info(&path)? {
            Some(info) if info.nar_hash != nar_hash => {
                return Err(SubmitError::SourceConflict {
                    path: s.path.clone(),
                    registered: info.nar_hash.to_string(),
                    offered: nar_hash.to_string(),
                });
            }
            Some(_) => true,
            None => false,
        };
        sources.push(SourcePlan { path, nar_hash, nar_size: s.nar_size, references, registered });
    }
    if total > limits.max_total_bytes {
        return Err(SubmitError::TooLarge {
            what: "body",
            path: "of the upload".to_string(),
            size: total,
            max: limits.max_total_bytes,
        });
    }
    if let Some(cl) = content_length
        && cl != total
    {
        return Err(SubmitError::LengthMismatch { content_length: cl, declared: total });
    }
    let mut requested = Vec::with_capacity(header.requested.len());
    for p in &header.requested {
        let path = parse_drv(p)?;
        if !requested.contains(&path) {
            requested.push(path);
        }
    }
    Ok(Plan { requested, drv_paths, sources })
}

/// Builds the closure needs.
#[derive(Debug, Default)]
struct BuildPlan {
    /// Derivations to enqueue, with the outputs wanted (empty = all: the requested ones).
    to_build: Vec<(StorePath, BTreeSet<String>)>,
    /// Requested derivations whose outputs are all registered.
    already_built: Vec<StorePath>,
    /// Their outputs.
    outputs: BTreeMap<String, BTreeMap<String, OutputInfo>>,
}

/// Walk the closure from the requested derivations, dependents before dependencies: a derivation
/// is built when one of its wanted outputs (all for requested ones, the used ones for inputs) is
/// not registered (or not known before building); then its inputs are wanted in turn.
fn plan_builds(
    set: &mut DrvSet,
    requested: &[StorePath],
    store: &Store,
    sd: &StoreDir,
    trust: &buildmesh_protocol::mesh::TrustConfig,
) -> Result<BuildPlan, SubmitError> {
    // Reverse post-order of a DFS from the requested derivations.
    let mut order: Vec<StorePath> = Vec::new();
    let mut visited: BTreeSet<StorePath> = BTreeSet::new();
    for root in requested {
        if !visited.insert(root.clone()) {
            continue;
        }
        let mut stack: Vec<(StorePath, Vec<StorePath>)> = vec![(root.clone(), inputs_of(set, root))];
        while let Some((node, children)) = stack.last_mut() {
            match children.pop() {
                Some(c) => {
                    if visited.insert(c.clone()) {
                        let grandchildren = inputs_of(set, &c);
                        stack.push((c, grandchildren));
                    }
                }
                None => {
                    order.push(node.clone());
                    stack.pop();
                }
            }
        }
    }
    order.reverse();

    let mut plan = BuildPlan::default();
    let mut wanted: HashMap<StorePath, Option<BTreeSet<String>>> =
        requested.iter().map(|p| (p.clone(), None)).collect();
    for drv_path in &order {
        let Some(want) = wanted.get(drv_path).cloned() else { continue };
        let outputs = set
            .member_output_paths(drv_path)
            .map_err(|error| SubmitError::OutputPaths { drv: sd.display(drv_path), error })?;
        let mut missing = false;
        let mut infos = BTreeMap::new();
        for (name, path) in &outputs {
            if want.as_ref().is_some_and(|w| !w.contains(name)) {
                continue;
            }
            match path {
                Some(p) => match built_output(store, sd, trust, p)? {
                    Some((nar_hash, nar_size)) => {
                        infos.insert(
                            name.clone(),
                            OutputInfo { path: sd.display(p), nar_hash: nar_hash.to_string(), nar_size },
                        );
                    }
                    None => missing = true,
                },
                None => missing = true,
            }
        }
        if !missing {
            if want.is_none() {
                plan.already_built.push(drv_path.clone());
                plan.outputs.insert(sd.display(drv_path), infos);
            }
            continue;
        }
        plan.to_build.push((drv_path.clone(), want.unwrap_or_default()));
        if let Some((_, drv)) = set.get(drv_path) {
            for (input, outs) in &drv.input_drvs {
                // `None`: requested itself, all outputs wanted already.
                if let Some(w) = wanted.entry(input.clone()).or_insert_with(|| Some(BTreeSet::new())) {
                    w.extend(outs.iter().cloned());
                }
            }
        }
    }
    Ok(plan)
}

/// The accepted NarHash and NarSize of the output `p` when it counts as built: the trust rule
/// accepts a NarHash for it (this node's own build on a standalone node, the quorum on a mesh
/// node) and that NAR is stored here. A registration alone (an upload, a fetched copy) is not
/// enough.
fn built_output(
    store: &Store,
    sd: &StoreDir,
    trust: &buildmesh_protocol::mesh::TrustConfig,
    p: &StorePath,
) -> Result<Option<(NixHash, u64)>, SubmitError> {
    let judgement = crate::trust::judge(store, sd, trust, p).map_err(|e| match e {
        crate::trust::TrustError::Store(e) => SubmitError::Store(e),
        other => SubmitError::Internal(other.to_string()),
    })?;
    let Some(nar_hash) = judgement.nar_hash() else { return Ok(None) };
    Ok(store.blob_by_nar_hash(&nar_hash)?.map(|b| (nar_hash, b.nar_size)))
}

fn inputs_of(set: &DrvSet, p: &StorePath) -> Vec<StorePath> {
    set.get(p).map(|(_, d)| d.input_drvs.keys().cloned().collect()).unwrap_or_default()
}
