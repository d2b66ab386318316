//! [`JobSubmission`] and [`Claim`].

use std::collections::BTreeSet;

use super::codec::{
    Decode, DecodeError, Encode, Reader, Sink, put_i32, put_str, put_str_set, put_u8, put_u32, put_u64,
};
use super::{Kind, MAX_LEASE_MS, MAX_OUTPUTS, MAX_REPLICAS, Payload, read_drv, read_features, read_output_name};
use super::{read_store_dir, read_system};
use crate::id::{JobId, NodeId};
use crate::store_path::{StoreDir, StorePath};

/// A request to build a derivation.
///
/// Idempotence and replays: keyed by `job`; a second submission with the same id is a duplicate.
/// `system` and `required_features` let every node place the job before it fetched the `.drv`;
/// builders check them against the `.drv` and refuse a job whose fields lie.
///
/// Encoding: `job` ‖ `submitter` ‖ `submitted_at_ms` u64 ‖ `store_dir` ‖ `drv` ‖ `outputs` (set of
/// names) ‖ `system` ‖ `required_features` ‖ `priority` i32 ‖ `replicas` u8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSubmission {
    /// The job's id.
    pub job: JobId,
    /// Who asks (must be the signer).
    pub submitter: NodeId,
    /// When (unix millis).
    pub submitted_at_ms: u64,
    /// The store directory of every path below.
    pub store_dir: StoreDir,
    /// The derivation (a `.drv` store path).
    pub drv: StorePath,
    /// The outputs wanted; empty = all outputs.
    pub outputs: BTreeSet<String>,
    /// The derivation's `system`.
    pub system: String,
    /// The derivation's `requiredSystemFeatures`.
    pub required_features: BTreeSet<String>,
    /// Higher runs sooner.
    pub priority: i32,
    /// Replication factor k: how many independent builders should build it (1..=16).
    pub replicas: u8,
}

impl Encode for JobSubmission {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.job.encode(out);
        self.submitter.encode(out);
        put_u64(out, self.submitted_at_ms);
        self.store_dir.encode(out);
        self.drv.encode(out);
        put_str_set(out, &self.outputs);
        put_str(out, &self.system);
        put_str_set(out, &self.required_features);
        put_i32(out, self.priority);
        put_u8(out, self.replicas);
    }
}

impl Payload for JobSubmission {
    const KIND: Kind = Kind::JobSubmission;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let job = JobId::decode(r, "job_submission.job")?;
        let submitter = NodeId::decode(r, "job_submission.submitter")?;
        let submitted_at_ms = r.u64("job_submission.submitted_at_ms")?;
        let store_dir = read_store_dir(r)?;
        let drv = read_drv(r, "job_submission.drv")?;
        let outputs =
            r.set("job_submission.outputs", MAX_OUTPUTS, 5, |r| read_output_name(r, "job_submission.outputs"))?;
        let system = read_system(r, "job_submission.system")?;
        let required_features = read_features(r, "job_submission.required_features")?;
        let priority = r.i32("job_submission.priority")?;
        let offset = r.offset();
        let replicas = r.u8("job_submission.replicas")?;
        if replicas == 0 || replicas > MAX_REPLICAS {
            return Err(Reader::invalid(
                "job_submission.replicas",
                offset,
                format!("{replicas} is outside 1..={MAX_REPLICAS}"),
            ));
        }
        Ok(JobSubmission {
            job,
            submitter,
            submitted_at_ms,
            store_dir,
            drv,
            outputs,
            system,
            required_features,
            priority,
            replicas,
        })
    }

    fn author(&self) -> &NodeId {
        &self.submitter
    }
}

/// A builder taking a derivation, with a lease: nobody else of the placement's top-k should start
/// it before `lease_expires_at_ms` unless this builder reports a result or failure. A builder renews
/// its lease by signing a new claim with the same `attempt` and a later `claimed_at_ms`.
///
/// Idempotence and replays: keyed by (`drv`, `claimant`, `attempt`); the claim with the latest
/// `claimed_at_ms` wins, older ones are stale. Overlaps between claimants are resolved by the state
/// machine from the placement order.
///
/// Encoding: `job` ‖ `claimant` ‖ `store_dir` ‖ `drv` ‖ `attempt` u32 ‖ `claimed_at_ms` u64 ‖
/// `lease_expires_at_ms` u64 (after `claimed_at_ms`, at most [`MAX_LEASE_MS`] later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job it serves.
    pub job: JobId,
    /// The builder (must be the signer).
    pub claimant: NodeId,
    /// The store directory of `drv`.
    pub store_dir: StoreDir,
    /// The derivation.
    pub drv: StorePath,
    /// Attempt number, from 1; a retry after a failure or an expired lease increments it.
    pub attempt: u32,
    /// When claimed (unix millis).
    pub claimed_at_ms: u64,
    /// When the lease ends (unix millis).
    pub lease_expires_at_ms: u64,
}

impl Claim {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.lease_expires_at_ms
    }
}

impl Encode for Claim {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.job.encode(out);
        self.claimant.encode(out);
        self.store_dir.encode(out);
        self.drv.encode(out);
        put_u32(out, self.attempt);
        put_u64(out, self.claimed_at_ms);
        put_u64(out, self.lease_expires_at_ms);
    }
}

impl Payload for Claim {
    const KIND: Kind = Kind::Claim;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let job = JobId::decode(r, "claim.job")?;
        let claimant = NodeId::decode(r, "claim.claimant")?;
        let store_dir = read_store_dir(r)?;
        let drv = read_drv(r, "claim.drv")?;
        let offset = r.offset();
        let attempt = r.u32("claim.attempt")?;
        if attempt == 0 {
            return Err(Reader::invalid("claim.attempt", offset, "attempts count from 1"));
        }
        let claimed_at_ms = r.u64("claim.claimed_at_ms")?;
        let offset = r.offset();
        let lease_expires_at_ms = r.u64("claim.lease_expires_at_ms")?;
        let lease = lease_expires_at_ms.checked_sub(claimed_at_ms).filter(|d| *d > 0);
        match lease {
            Some(d) if d <= MAX_LEASE_MS => {}
            _ => {
                return Err(Reader::invalid(
                    "claim.lease_expires_at_ms",
                    offset,
                    format!(
                        "lease must end after the claim and last at most {MAX_LEASE_MS} ms \
                         (claimed at {claimed_at_ms}, expires at {lease_expires_at_ms})"
                    ),
                ));
            }
        }
        Ok(Claim { job, claimant, store_dir, drv, attempt, claimed_at_ms, lease_expires_at_ms })
    }

    fn author(&self) -> &NodeId {
        &self.claimant
    }
}
