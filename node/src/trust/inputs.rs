//! Verify every input of a build against the trust rule before the build starts (DESIGN
//! invariant 10), even when a copy is registered here already.
//!
//! For each path of the input closure (input sources, the used outputs of input derivations and
//! everything they reference, following the *accepted* references):
//! - accepted and registered with the accepted NarHash: used;
//! - accepted, registered with another NarHash (a poisoned or non-reproducible local copy), and
//!   the accepted NAR is stored here: the registration is replaced by the accepted one, the old
//!   record goes to the quarantine (its blob stays: evidence), its realised tree is deleted;
//! - otherwise the build does not start: [`InputProblem`] names the path, the local NarHash and
//!   the accepted one (or why none is accepted).

use std::collections::BTreeSet;
use std::path::Path;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use super::{Accepted, Judgement, Refusal, TrustError, judge};
use crate::build::BuildError;
use crate::store::{PathInfo, Store, StoreError, unix_ms};

/// Why an input may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputProblem {
    /// Registered here with other bytes than the accepted ones, which are not here.
    #[error(
        "input {path} is registered here with NarHash {local}, but the trust policy accepts {accepted}; \
         the local copy is not used"
    )]
    Conflict {
        /// The path.
        path: String,
        /// The local NarHash.
        local: String,
        /// The accepted NarHash.
        accepted: String,
    },
    /// Accepted, but its bytes are not here.
    #[error("input {path}: the accepted NAR ({accepted}) is not on this node")]
    Missing {
        /// The path.
        path: String,
        /// The accepted NarHash.
        accepted: String,
    },
    /// Nothing is accepted for the path.
    #[error("input {path}{} is not used: {reason}", registered_text(.local))]
    NotAccepted {
        /// The path.
        path: String,
        /// The local NarHash, when a copy is registered.
        local: Option<String>,
        /// Why nothing is accepted.
        reason: Refusal,
    },
}

fn registered_text(local: &Option<String>) -> String {
    local.as_ref().map(|l| format!(" (registered here with NarHash {l})")).unwrap_or_default()
}

impl InputProblem {
    /// The path concerned.
    pub fn path(&self) -> &str {
        match self {
            InputProblem::Conflict { path, .. }
            | InputProblem::Missing { path, .. }
            | InputProblem::NotAccepted { path, .. } => path,
        }
    }

    /// Whether waiting may help (the accepted bytes may still be fetched, more attestations may
    /// arrive); a dispute does not resolve by waiting.
    pub fn may_resolve(&self) -> bool {
        match self {
            InputProblem::Conflict { .. } | InputProblem::Missing { .. } => true,
            InputProblem::NotAccepted { reason, .. } => reason.may_resolve(),
        }
    }
}

/// Why [`check_inputs`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// An input may not be used.
    #[error("{0}")]
    Problem(InputProblem),
    /// The trust rule could not be applied.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> Self {
        CheckError::Trust(TrustError::Store(e))
    }
}

/// How one input stands.
#[derive(Debug, Clone)]
pub enum InputState {
    /// Usable as registered; its accepted references.
    Ready(BTreeSet<StorePath>),
    /// Accepted, and the accepted NAR is stored here, but the path is not registered with it.
    Repairable(Accepted),
    /// Not usable.
    Problem(InputProblem),
}

/// How `path` stands as a build input (blocking; nothing is changed).
pub fn input_state(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    path: &StorePath,
) -> Result<InputState, TrustError> {
    let local = store.path_info(path)?;
    let shown = sd.display(path);
    Ok(match judge(store, sd, trust, path)? {
        Judgement::ContentAddressed(info, _) => InputState::Ready(info.references),
        Judgement::Attested(acc) => {
            let accepted = acc.nix_hash();
            match local {
                Some(info) if info.nar_hash == accepted && info.nar_size == acc.nar_size => {
                    InputState::Ready(acc.references())
                }
                local => {
                    let stored = store.blob_by_nar_hash(&accepted)?.is_some_and(|b| b.nar_size == acc.nar_size);
                    match (stored, local) {
                        (true, _) => InputState::Repairable(acc),
                        (false, Some(info)) => InputState::Problem(InputProblem::Conflict {
                            path: shown,
                            local: info.nar_hash.to_string(),
                            accepted: accepted.to_string(),
                        }),
                        (false, None) => {
                            InputState::Problem(InputProblem::Missing { path: shown, accepted: accepted.to_string() })
                        }
                    }
                }
            }
        }
        Judgement::Refused(reason) => InputState::Problem(InputProblem::NotAccepted {
            path: shown,
            local: local.map(|i| i.nar_hash.to_string()),
            reason,
        }),
    })
}

/// Register the accepted NAR of `acc` (stored here) as `acc.path`, replacing (and quarantining)
/// a registration with other contents, and delete the realised copy under `realised` (the
/// `DATA/store` directory) if the registration changed. Returns the replaced registration.
pub fn repair(store: &Store, realised: Option<&Path>, acc: &Accepted) -> Result<Option<PathInfo>, TrustError> {
    let accepted = acc.nix_hash();
    let Some(blob) = store.blob_by_nar_hash(&accepted)?.filter(|b| b.nar_size == acc.nar_size) else {
        return Err(TrustError::Store(StoreError::NotFound { table: "blobs", key: accepted.to_string() }));
    };
    let info = PathInfo {
        path: acc.path.clone(),
        nar_hash: accepted.clone(),
        nar_size: acc.nar_size,
        references: acc.references(),
        deriver: acc.deriver(),
        ca: None,
        blob: blob.blake3,
        registered_at: unix_ms(),
    };
    let reason = format!("disagrees with the NarHash {accepted} accepted by the trust policy");
    let old = store.replace_path(&info, &reason, unix_ms())?;
    if let Some(old) = &old {
        tracing::warn!(
            target: "buildmesh::_events",
            event = "input_quarantined",
            path = %acc.path, local = %old.nar_hash, accepted = %accepted,
            "a local registration disagreed with the accepted NarHash: replaced by the accepted bytes, the old one is quarantined"
        );
        if let Some(root) = realised {
            let tree = root.join(acc.path.to_string());
            if let Err(e) = crate::build::realize::remove_tree(&tree) {
                tracing::error!(path = %tree.display(), cause = %e, "could not delete the realised copy of a quarantined path");
            }
        }
    }
    Ok(old)
}

/// Check (and where possible repair, see the module docs) every path of the closure of `roots`
/// (blocking). Returns how many registrations were replaced.
pub fn check_inputs<'a>(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    realised: Option<&Path>,
    roots: impl IntoIterator<Item = &'a StorePath>,
) -> Result<usize, CheckError> {
    let mut todo: Vec<StorePath> = roots.into_iter().cloned().collect();
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    let mut repaired = 0;
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let refs = match input_state(store, sd, trust, &p)? {
            InputState::Ready(refs) => refs,
            InputState::Repairable(acc) => {
                if repair(store, realised, &acc)?.is_some() {
                    repaired += 1;
                }
                acc.references()
            }
            InputState::Problem(problem) => {
                tracing::warn!(
                    target: "buildmesh::_events",
                    event = "input_rejected",
                    path = %p, problem = %problem,
                    "a build input is not accepted by the trust policy; the build does not start"
                );
                return Err(CheckError::Problem(problem));
            }
        };
        todo.extend(refs.into_iter().filter(|r| r != &p && !seen.contains(r)));
    }
    Ok(repaired)
}

/// `None` when `path` (an output of an input derivation) can be used by a build (accepted as
/// registered, or the accepted NAR is here to replace the registration); else `Some(why)`,
/// with `None` inside when it is simply not registered (the scheduler's readiness check).
pub fn unusable(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    path: &StorePath,
) -> Result<Option<Option<String>>, StoreError> {
    match input_state(store, sd, trust, path) {
        Ok(InputState::Ready(_) | InputState::Repairable(_)) => Ok(None),
        Ok(InputState::Problem(InputProblem::NotAccepted { local: None, .. })) => Ok(Some(None)),
        Ok(InputState::Problem(p)) => Ok(Some(Some(p.to_string()))),
        Err(TrustError::Store(e)) => Err(e),
        Err(e) => Ok(Some(Some(e.to_string()))),
    }
}

/// [`check_inputs`] for a build of `drv` (its input sources and the used outputs of its input
/// derivations), as a build error: [`BuildError::InputRejected`] naming the input (transient
/// while waiting may help), or an executor error when the check itself failed. Returns how
/// many registrations were replaced.
pub fn check_build(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    realised: Option<&Path>,
    drv: &Derivation,
) -> Result<usize, BuildError> {
    let roots = crate::build::realize::input_paths(store, sd, drv)
        .map_err(|e| BuildError::Executor { message: format!("listing the inputs: {e}"), log: Vec::new() })?;
    let replaced = check_inputs(store, sd, trust, realised, &roots).map_err(|e| match e {
        CheckError::Problem(p) => {
            BuildError::InputRejected { path: p.path().to_string(), reason: p.to_string(), transient: p.may_resolve() }
        }
        CheckError::Trust(e) => BuildError::Executor { message: format!("checking the inputs: {e}"), log: Vec::new() },
    })?;
    if replaced > 0 {
        tracing::warn!(replaced, "inputs whose local copy disagreed with the accepted NarHash were replaced");
    }
    Ok(replaced)
}
