//! What the collector must keep: the pinned roots and everything they reference.
//!
//! Roots:
//! - the operator's pins (`buildmesh pin PATH`, durable in the store);
//! - every unfinished build (queued or running): its outputs, its input sources and the outputs
//!   of its input derivations (so a running build never loses an input, and a queued one finds
//!   them);
//! - the outputs of every derivation of the latest revision of every branch this node holds a
//!   revision of (`channel`, `branch`: the newest header), whose manifest is here;
//! - registrations kept in the quarantine (evidence of a poisoning attempt).
//!
//! A root that is registered keeps its whole reference closure.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use crate::build::realize;
use crate::qa::QaContext;
use crate::store::{BuildFilter, BuildState, PathInfo, Store, StoreError};

/// The roots, by reason (for the log and tests).
#[derive(Debug, Default)]
pub(crate) struct Roots {
    /// Pinned store paths (each keeps its reference closure).
    pub(crate) paths: BTreeSet<StorePath>,
    /// Pinned blobs that no path names (the quarantine's old registrations).
    pub(crate) blobs: BTreeSet<ArtifactHash>,
}

impl Roots {
    fn add(&mut self, p: StorePath) {
        self.paths.insert(p);
    }
}

/// Collect the roots.
pub(crate) fn roots(store: &Store, store_dir: &StoreDir, qa: Option<&QaContext>) -> Result<Roots, StoreError> {
    let mut roots = Roots::default();
    for p in store.pinned_paths()? {
        roots.add(p);
    }
    let unfinished = store.list_builds(&BuildFilter {
        states: vec![BuildState::Queued, BuildState::Running],
        after: None,
        limit: 0,
    })?;
    for b in unfinished {
        match realize::load_drv(store, store_dir, &b.drv) {
            Ok(drv) => {
                drv.outputs.values().filter_map(|o| o.path.clone()).for_each(|p| roots.add(p));
                match realize::input_paths(store, store_dir, &drv) {
                    Ok(inputs) => inputs.into_iter().for_each(|p| roots.add(p)),
                    Err(e) => {
                        // Be conservative: what can be named is kept.
                        tracing::debug!(drv = %b.drv, cause = %e, "inputs of an unfinished build not all known");
                        drv.input_srcs.iter().cloned().for_each(|p| roots.add(p));
                    }
                }
            }
            Err(e) => tracing::debug!(drv = %b.drv, cause = %e, "unfinished build without its derivation"),
        }
    }
    if let Some(qa) = qa {
        revision_roots(qa, &mut roots);
    }
    for q in store.quarantined(0)? {
        roots.blobs.insert(q.old.blob);
    }
    Ok(roots)
}

/// The outputs of the newest revision of every (channel, branch).
fn revision_roots(qa: &QaContext, roots: &mut Roots) {
    let revisions = match qa.list(None, None) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cause = %e, "revisions not read; their outputs are not pinned in this run");
            return;
        }
    };
    let mut newest: BTreeMap<(String, String), crate::qa::Revision> = BTreeMap::new();
    for r in revisions {
        let key = (r.header.channel.clone(), r.header.branch.clone());
        let newer = newest.get(&key).is_none_or(|n| r.header.created_at_ms > n.header.created_at_ms);
        if newer {
            newest.insert(key, r);
        }
    }
    for rev in newest.values() {
        match qa.manifest(rev) {
            Ok(m) => {
                for d in &m.drvs {
                    d.outputs.iter().for_each(|o| roots.add(o.path.clone()));
                }
            }
            Err(e) => tracing::debug!(revision = %rev.header.id(), cause = %e, "manifest not here; nothing pinned"),
        }
    }
}

/// Every registered path reachable from `roots` through references, given all registrations.
pub(crate) fn closure(roots: &Roots, registered: &BTreeMap<StorePath, PathInfo>) -> BTreeSet<StorePath> {
    let mut keep = BTreeSet::new();
    let mut todo: Vec<&StorePath> = roots.paths.iter().collect();
    while let Some(p) = todo.pop() {
        if !keep.insert(p.clone()) {
            continue;
        }
        if let Some(info) = registered.get(p) {
            todo.extend(info.references.iter().filter(|r| !keep.contains(*r)));
        }
    }
    keep
}
