//! [`Strike`]: an observer's signed record that a member's claim ran out without a result.

use super::codec::{Decode, DecodeError, Encode, Reader, Sink, put_u32, put_u64};
use super::{Kind, MAX_LEASE_MS, Payload, read_drv, read_store_dir};
use crate::id::{JobId, NodeId};
use crate::store_path::{StoreDir, StorePath};

/// "The claim of `struck` on `drv` (attempt, claimed at, lease to) ran out here at
/// `observed_at_ms` without a renewal, an attestation or a failure", signed by `observer`.
///
/// A strike is a statement, not a proof: a lease that was not renewed cannot be shown by bytes.
/// So the mesh counts it only from observers it trusts to say so (the `builders` policy's keys,
/// else the trusted keys), and only when `strike_quorum` distinct observers struck the same
/// member on the same derivation (see `protocol::mesh` `strike_book.rs`). Every node, the struck
/// member included, then applies the same rule to the same records.
///
/// Why the claim's signature is not carried: claims travel in signed batches (one signature over
/// many items), so a single claim has no signature of its own to quote.
///
/// Idempotence and replays: keyed by (`struck`, `drv`, `observer`); a second record of the same
/// observer is a duplicate (the later lease wins). A record is forgotten when the longest penalty
/// it can cause has run out, and refused as stale after that.
///
/// Encoding: `observer` ‖ `struck` ‖ `job` ‖ `store_dir` ‖ `drv` ‖ `attempt` u32 ‖
/// `claimed_at_ms` u64 ‖ `lease_expires_at_ms` u64 ‖ `observed_at_ms` u64. Rules: observer ≠
/// struck; attempt ≥ 1; the lease lasts more than 1 ms (a 1 ms lease is a release, which is no
/// failure to deliver) and at most [`MAX_LEASE_MS`]; `observed_at_ms` ≥ `lease_expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strike {
    /// Who observed it (must be the signer).
    pub observer: NodeId,
    /// The member whose lease ran out.
    pub struck: NodeId,
    /// The job its claim served.
    pub job: JobId,
    /// The store directory of `drv`.
    pub store_dir: StoreDir,
    /// The derivation.
    pub drv: StorePath,
    /// The claim's attempt number.
    pub attempt: u32,
    /// When the struck claim was made (its signed `claimed_at_ms`).
    pub claimed_at_ms: u64,
    /// When its lease ended (its signed `lease_expires_at_ms`).
    pub lease_expires_at_ms: u64,
    /// When the observer found the lease run out (unix millis).
    pub observed_at_ms: u64,
}

impl Encode for Strike {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.observer.encode(out);
        self.struck.encode(out);
        self.job.encode(out);
        self.store_dir.encode(out);
        self.drv.encode(out);
        put_u32(out, self.attempt);
        put_u64(out, self.claimed_at_ms);
        put_u64(out, self.lease_expires_at_ms);
        put_u64(out, self.observed_at_ms);
    }
}

impl Payload for Strike {
    const KIND: Kind = Kind::Strike;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let observer = NodeId::decode(r, "strike.observer")?;
        let offset = r.offset();
        let struck = NodeId::decode(r, "strike.struck")?;
        if struck == observer {
            return Err(Reader::invalid("strike.struck", offset, "a member cannot strike itself"));
        }
        let job = JobId::decode(r, "strike.job")?;
        let store_dir = read_store_dir(r)?;
        let drv = read_drv(r, "strike.drv")?;
        let offset = r.offset();
        let attempt = r.u32("strike.attempt")?;
        if attempt == 0 {
            return Err(Reader::invalid("strike.attempt", offset, "attempts count from 1"));
        }
        let claimed_at_ms = r.u64("strike.claimed_at_ms")?;
        let offset = r.offset();
        let lease_expires_at_ms = r.u64("strike.lease_expires_at_ms")?;
        match lease_expires_at_ms.checked_sub(claimed_at_ms) {
            Some(d) if d > 1 && d <= MAX_LEASE_MS => {}
            _ => {
                return Err(Reader::invalid(
                    "strike.lease_expires_at_ms",
                    offset,
                    format!(
                        "the struck lease must last more than 1 ms (a release) and at most {MAX_LEASE_MS} ms \
                         (claimed at {claimed_at_ms}, expires at {lease_expires_at_ms})"
                    ),
                ));
            }
        }
        let offset = r.offset();
        let observed_at_ms = r.u64("strike.observed_at_ms")?;
        if observed_at_ms < lease_expires_at_ms {
            return Err(Reader::invalid(
                "strike.observed_at_ms",
                offset,
                format!("observed at {observed_at_ms}, before the lease ended at {lease_expires_at_ms}"),
            ));
        }
        Ok(Strike {
            observer,
            struck,
            job,
            store_dir,
            drv,
            attempt,
            claimed_at_ms,
            lease_expires_at_ms,
            observed_at_ms,
        })
    }

    fn author(&self) -> &NodeId {
        &self.observer
    }
}
