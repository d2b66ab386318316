//! Per-key storage quotas for received signed records (issue 10, finding 6d).
//!
//! Every attestation and failure a node receives is stored before it is used or forwarded
//! (durable before forwarded). Without a bound, one key could fill the disk with valid messages.
//! So the store counts, per signing key, the records and envelope bytes it holds
//! ([`crate::store::SignerUsage`]), and a received record whose signer would go beyond its
//! [`SignerLimit`] is dropped: not stored, not given to the state machine, not forwarded.
//!
//! | signer | limit (`[mesh]` settings) |
//! |---|---|
//! | this node | none (its own results are always kept) |
//! | a trusted key | `trusted_key_records` (10,000,000), `trusted_key_bytes` (16 GiB) |
//! | any other key | `untrusted_key_records` (100,000), `untrusted_key_bytes` (256 MiB) |
//!
//! Gossip verdict for a message over quota ([`over_quota_verdict`]): `Reject` when the peer that
//! sent it is its signer (gossipsub lowers that peer's score, and a flood soon gets it
//! graylisted), `Ignore` when the peer only relays it (a relay may have counted differently and
//! is not at fault). Anti-entropy skips such records (counted in [`super::sync::SyncReport`]).
//!
//! Job submissions are not stored for other nodes; the state machine bounds the active jobs of
//! an untrusted submitter instead (`max_active_jobs_per_untrusted_submitter`), which also bounds
//! the closures this node fetches for them.

use std::sync::Arc;

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::signed::Verified;
use buildmesh_protocol::wire::Message;
use libp2p::PeerId;

use super::MeshSettings;
use super::fetch::node_of;
use super::sync::{Entry, entry_of};
use crate::net::MessageAcceptance;
use crate::store::{SignerLimit, Store, StoreError, StoreWriter};

/// The storage limits by signer.
#[derive(Debug, Clone)]
pub struct Quotas {
    me: NodeId,
    trust: TrustConfig,
    trusted: SignerLimit,
    untrusted: SignerLimit,
    /// Whose revision headers are kept (`submitters`; `None`: any key). A header of another
    /// submitter is not stored at all, not even within a quota (issue 15).
    submitters: Option<std::collections::BTreeSet<NodeId>>,
}

impl Quotas {
    /// The limits of node `me` under `trust`, from its `[mesh]` settings.
    pub fn new(me: NodeId, trust: TrustConfig, s: &MeshSettings) -> Quotas {
        Quotas {
            me,
            trust,
            trusted: SignerLimit { records: s.trusted_key_records, bytes: s.trusted_key_bytes },
            untrusted: SignerLimit { records: s.untrusted_key_records, bytes: s.untrusted_key_bytes },
            submitters: None,
        }
    }

    /// Keep revision headers of these submitters only (`None`: any; this node's own always).
    pub fn with_submitters(mut self, submitters: Option<std::collections::BTreeSet<NodeId>>) -> Quotas {
        self.submitters = submitters;
        self
    }

    /// Whether revision headers of `submitter` are kept here.
    pub fn accepts_submitter(&self, submitter: &NodeId) -> bool {
        *submitter == self.me || self.submitters.as_ref().is_none_or(|s| s.contains(submitter))
    }

    /// The limit of `signer` (`None`: this node, no limit).
    pub fn limit_for(&self, signer: &NodeId) -> Option<&SignerLimit> {
        if *signer == self.me {
            None
        } else if self.trust.trusted.as_ref().is_some_and(|t| t.contains(signer)) {
            Some(&self.trusted)
        } else {
            Some(&self.untrusted)
        }
    }
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Newly stored.
    New,
    /// Already stored (nothing written).
    Known,
    /// Its signer is at its quota: nothing written.
    OverQuota,
    /// Not a kind the store keeps.
    NotKept,
}

/// Store `v` in a write transaction if its signer's quota allows.
pub fn insert(w: &mut StoreWriter<'_>, v: &Verified<Message>, quotas: &Quotas) -> Result<Stored, StoreError> {
    let inserted = match entry_of(v) {
        Some(Entry::Attestation(e)) => w.insert_attestation_within(&e, quotas.limit_for(&e.builder))?,
        Some(Entry::Failure(e)) => w.insert_failure_within(&e, quotas.limit_for(&e.builder))?,
        None => return Ok(Stored::NotKept),
    };
    Ok(match inserted {
        None => Stored::OverQuota,
        Some(i) if i.new => Stored::New,
        Some(_) => Stored::Known,
    })
}

/// Commit a verified attestation or failure within its signer's quota (blocking). A record
/// already stored costs a read, not a write transaction.
pub fn commit(store: &Store, v: &Verified<Message>, quotas: &Quotas) -> Result<Stored, StoreError> {
    let known = match v.value() {
        Message::Attestation(_) => store.has_attestation(&v.id())?,
        Message::BuildFailure(_) => store.get_failure(&v.id())?.is_some(),
        _ => return Ok(Stored::NotKept),
    };
    if known {
        return Ok(Stored::Known);
    }
    store.write(|w| insert(w, v, quotas))
}

/// Store a received record off the async runtime: what happened, or `None` when it could not be
/// stored (logged; the caller must not forward it). Other kinds than attestations and failures
/// answer [`Stored::NotKept`] at once.
pub async fn store_received(store: &Store, quotas: &Arc<Quotas>, v: &Verified<Message>) -> Option<Stored> {
    if !matches!(v.value(), Message::Attestation(_) | Message::BuildFailure(_)) {
        return Some(Stored::NotKept);
    }
    let (store, q, v) = (store.clone(), quotas.clone(), v.clone());
    match tokio::task::spawn_blocking(move || commit(&store, &v, &q)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::error!(cause = %e, "cannot commit a received message; not forwarding it");
            None
        }
        Err(e) => {
            tracing::error!(cause = %e, "commit task failed");
            None
        }
    }
}

/// The gossip verdict on a message whose signer is over its quota (see the module docs).
pub fn over_quota_verdict(signer: &NodeId, source: &PeerId) -> MessageAcceptance {
    if node_of(source).as_ref() == Some(signer) { MessageAcceptance::Reject } else { MessageAcceptance::Ignore }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use buildmesh_protocol::identity::NodeKey;

    use super::*;

    #[test]
    fn limits_by_signer() {
        let me = NodeKey::from_seed("me", [1; 32]).unwrap().node_id();
        let friend = NodeKey::from_seed("f", [2; 32]).unwrap().node_id();
        let stranger = NodeKey::from_seed("s", [3; 32]).unwrap();
        let trust = TrustConfig {
            trusted: Some(BTreeSet::from([me, friend])),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        };
        let s = MeshSettings { untrusted_key_records: 5, trusted_key_records: 50, ..MeshSettings::default() };
        let q = Quotas::new(me, trust, &s);
        assert_eq!(q.limit_for(&me), None);
        assert_eq!(q.limit_for(&friend).map(|l| l.records), Some(50));
        assert_eq!(q.limit_for(&stranger.node_id()).map(|l| l.records), Some(5));
        // Reject the signer itself, ignore a relay.
        let own_peer = crate::net::keypair_from_seed(stranger.seed()).public().to_peer_id();
        assert_eq!(over_quota_verdict(&stranger.node_id(), &own_peer), MessageAcceptance::Reject);
        assert_eq!(over_quota_verdict(&stranger.node_id(), &PeerId::random()), MessageAcceptance::Ignore);
        assert!(q.accepts_submitter(&stranger.node_id()), "submitters = any by default");
        let q = q.with_submitters(Some(BTreeSet::from([friend])));
        assert!(q.accepts_submitter(&friend) && q.accepts_submitter(&me));
        assert!(!q.accepts_submitter(&stranger.node_id()));
    }
}
