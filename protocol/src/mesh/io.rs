//! What goes into the state machine ([`Input`]) and what comes out ([`Output`], [`Event`]).

use std::collections::BTreeSet;

use thiserror::Error;

use super::config::{ConfigError, LocalInfo};
use crate::id::{JobId, NodeId};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{Attestation, BuildMode, FailureReason, JobSubmission, Message};

/// An input to [`crate::mesh::Mesh::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message from the mesh whose signature the driver has verified ([`crate::signed`]). This
    /// node's own messages may come back (gossip echo, sync); they are recognised and ignored,
    /// except its own attestations, which are recorded like [`Input::RestoreAttestation`].
    Message(Message),
    /// This node's capabilities changed (systems, features, slots, owner) or its load did. A change
    /// of capabilities is announced at once; a change of load only with the next announcement.
    SetLocal(LocalInfo),
    /// A user asks this node to have a derivation built. The submission is published once every
    /// derivation in `inputs` is complete (k trusted attestations) as this node sees it; if one of
    /// them fails, so does this job. List in `inputs` only derivations that must be built first
    /// (submit them too, before this one); a listed input this node has never heard of is waited
    /// for. `submitted_at_ms` is set to the time of publication.
    Submit {
        /// The job. Its submitter must be this node.
        job: JobSubmission,
        /// Derivations that must be complete before this job is published.
        inputs: BTreeSet<StorePath>,
    },
    /// Forget a local submission that has not been published yet.
    CancelSubmission {
        /// The job.
        job: JobId,
    },
    /// This node's build of a derivation succeeded. The machine records the attestation and asks
    /// for it to be published ([`Output::Publish`]).
    BuildFinished(Attestation),
    /// This node's build of `drv` failed. The machine records it and asks for a
    /// [`crate::wire::BuildFailure`] to be published.
    BuildFailed {
        /// The derivation.
        drv: StorePath,
        /// Why.
        reason: FailureReason,
        /// The digest of the build log the node stored, carried in the signed failure.
        log: Option<crate::wire::LogDigest>,
    },
    /// `buildmesh retry DRV --on PEER`: build `drv` on `on`. Given to the node `on` itself, it
    /// claims and builds the derivation whatever the placement says (forgetting its own earlier
    /// failure); given to another node, it yields [`Output::RequestRetry`] for the driver to send.
    Retry {
        /// The derivation (its job must be known to the node that builds).
        drv: StorePath,
        /// The node that should build it.
        on: NodeId,
    },
    /// After a restart: an attestation this node made and persisted earlier. Recorded, not
    /// republished.
    RestoreAttestation(Attestation),
}

/// What the machine asks its driver to do, or tells it. Drain with
/// [`crate::mesh::Mesh::poll_output`] after every call that takes `&mut self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Sign `message` with the node key and publish it to the mesh. The author is always this
    /// node. An [`Message::Attestation`] must be persisted (committed) before it is published.
    Publish(Message),
    /// Start building a derivation (fetch the `.drv` and its inputs, run it, then report
    /// [`Input::BuildFinished`] or [`Input::BuildFailed`]). The claim is already published.
    StartBuild(BuildOrder),
    /// Stop the build of `drv` (if it is still queued or running) and report nothing.
    CancelBuild {
        /// The derivation.
        drv: StorePath,
        /// Why.
        reason: CancelReason,
    },
    /// Ask `peer` (directly, not by gossip) to build `drv`: its driver turns the request into
    /// [`Input::Retry`] with `on` = itself, after checking that the requester may ask.
    RequestRetry {
        /// The node asked.
        peer: NodeId,
        /// The derivation.
        drv: StorePath,
    },
    /// Something happened that the driver, the gateway or the user may care about.
    Event(Event),
}

/// A build this node has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOrder {
    /// The job it serves (the smallest job id known for the derivation).
    pub job: JobId,
    /// The store directory.
    pub store_dir: StoreDir,
    /// The derivation.
    pub drv: StorePath,
    /// The outputs wanted (empty = all).
    pub outputs: BTreeSet<String>,
    /// The derivation's system, as the submission states it.
    pub system: String,
    /// Native or emulated.
    pub mode: BuildMode,
    /// The claim's attempt number.
    pub attempt: u32,
    /// Whether a targeted retry forced it (it does not yield to placement).
    pub forced: bool,
}

/// Why a build is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// More builders hold live claims than the job needs and this node ranks lowest among them,
    /// or a better placed builder came back.
    Yielded,
    /// Enough other builders attested the derivation.
    Complete,
    /// The job was given up.
    Failed,
}

/// Why a job was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobFailure {
    /// `failure_quorum` distinct builders failed deterministically (builder exit, hash mismatch).
    Deterministic {
        /// The builders that failed.
        builders: Vec<NodeId>,
        /// The first deterministic reason seen.
        reason: FailureReason,
    },
    /// `max_attempts` distinct builders failed.
    AttemptsExhausted {
        /// The builders that failed.
        builders: Vec<NodeId>,
    },
    /// An input of a local submission failed, so it was never published.
    InputFailed {
        /// The input that failed.
        input: StorePath,
    },
    /// A local submission's inputs completed but the derivation table was full (every entry
    /// active), so it could not be published.
    NoRoom,
}

/// A notification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A node entered the view.
    MemberJoined {
        /// The node.
        node: NodeId,
    },
    /// A node left the view (not heard from within the TTL).
    MemberLeft {
        /// The node.
        node: NodeId,
    },
    /// A local submission's inputs are complete and it was published.
    JobPublished {
        /// The job.
        job: JobId,
        /// The derivation.
        drv: StorePath,
    },
    /// k distinct trusted builders attested the derivation.
    JobComplete {
        /// The derivation.
        drv: StorePath,
        /// Every job id known for it.
        jobs: Vec<JobId>,
        /// The builders that attested it.
        builders: Vec<NodeId>,
        /// Whether every attested output is accepted under the trust policy.
        agreed: bool,
    },
    /// The job was given up.
    JobFailed {
        /// The derivation.
        drv: StorePath,
        /// Every job id known for it.
        jobs: Vec<JobId>,
        /// Why.
        failure: JobFailure,
    },
    /// An output reached the quorum: `quorum` distinct trusted builders attested this NarHash
    /// and no other NarHash did.
    OutputAccepted {
        /// The derivation.
        drv: StorePath,
        /// The output path.
        path: StorePath,
        /// The NarHash (sha256).
        nar_hash: [u8; 32],
        /// The NarSize.
        nar_size: u64,
        /// The builders that attested it.
        builders: Vec<NodeId>,
    },
    /// Builders disagree on an output (an audit finding; reported once per output).
    OutputMismatch {
        /// The derivation.
        drv: StorePath,
        /// The output path.
        path: StorePath,
    },
}

/// What became of a message given to [`crate::mesh::Mesh::handle_message`]. Only `Applied`
/// changed state; none of the others is the sender's fault, so none is grounds for a penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// The message changed this node's state.
    Applied,
    /// Already known (same job id, same attestation, same failure).
    Duplicate,
    /// Older than what is known (announcement `seq`, claim `claimed_at_ms`) or too old to matter.
    Stale,
    /// Authored by this node and not needed (echo).
    Own,
    /// Dropped for the reason given.
    Ignored(Ignored),
}

/// Why a message was dropped without effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ignored {
    /// Its timestamp lies further in the future than the allowed clock skew.
    FromTheFuture,
    /// It names another store directory than the mesh's.
    OtherStoreDir,
    /// A table is full (members, derivations, builders of one derivation, job ids of one
    /// derivation).
    TableFull,
    /// A claim of a node that is neither in the view nor trusted (it could not count).
    NotMember,
    /// A submission of an untrusted submitter that has as many active derivations as it may
    /// (`max_active_jobs_per_untrusted_submitter`), or untrusted submitters together have
    /// (`max_untrusted_active_jobs`).
    SubmitterQuota,
    /// A submission of a key this node does not accept jobs from (`submitters`).
    SubmitterRefused,
    /// An announcement of a member outside the `builders` policy: it is not admitted to the view.
    NotABuilder,
    /// A message of another shard: an announcement of a member of another shard, or a message
    /// about a derivation of another shard that this node does not observe (see `shard.rs`).
    OtherShard,
    /// A strike record signed by a key that may not strike (not a `builders` key, or not trusted
    /// when that policy is unset). The driver treats it as invalid and penalises the sender.
    NotAnObserver,
    /// A strike record of an observer that holds as many records as it may
    /// ([`crate::mesh::MAX_RECORDS_PER_OBSERVER`]).
    StrikeQuota,
}

/// Why an input was refused. The state is unchanged when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MeshError {
    /// Invalid configuration or local info.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The output queue is full: drain [`crate::mesh::Mesh::poll_output`] first.
    #[error("the mesh output queue holds {queued} outputs (limit {limit}); drain it before giving more input")]
    Backpressure {
        /// Outputs queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// A local submission or result names another author than this node.
    #[error("{what} names {author} but this node is {me}")]
    NotMine {
        /// What was given.
        what: &'static str,
        /// The author named.
        author: NodeId,
        /// This node.
        me: NodeId,
    },
    /// A local submission or result names another store directory.
    #[error("{what} uses store directory {found}, but the mesh uses {expected}")]
    OtherStoreDir {
        /// What was given.
        what: &'static str,
        /// Its store dir.
        found: String,
        /// The mesh's.
        expected: String,
    },
    /// A table is full.
    #[error("the {table} table is full ({limit} entries)")]
    TableFull {
        /// Which table.
        table: &'static str,
        /// Its limit.
        limit: usize,
    },
    /// The derivation is not known (no job submission seen for it).
    #[error("derivation {drv} is not known to this node")]
    UnknownDrv {
        /// The derivation.
        drv: StorePath,
    },
    /// `BuildFailed` for a derivation this node is not building.
    #[error("this node is not building {drv}")]
    NotBuilding {
        /// The derivation.
        drv: StorePath,
    },
    /// A local submission with this job id is already waiting or published.
    #[error("job {job} was already submitted")]
    DuplicateJob {
        /// The job.
        job: JobId,
    },
}
