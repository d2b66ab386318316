//! Checking gossip before anything else sees it: size, envelope, topic, signature.
//!
//! [`check_gossip`] is the whole rule (pure, unit-tested): a message is valid when its bytes are
//! at most [`MAX_MESSAGE_SIZE`], decode as an [`Envelope`] of a known protocol version, the kind
//! belongs to the topic it arrived on (with shards, the topic of its shard: see
//! [`shard_topic`]), and [`Envelope::verify`] accepts it (signature under the
//! kind's domain, payload decodes, author = signer, the kind's own checks such as an
//! attestation's Nix signatures). A revision header (`buildmesh/revision/1`) is verified as a
//! `RevisionHeader` (author = submitter, field rules). A [`Batch`] of job submissions or claims travels on its items'
//! topic and is verified as a whole (one signature, one author, every item valid); its items are
//! then judged one by one like single messages. Anything else is the sender's fault and the driver reports
//! `Reject` (gossipsub lowers the forwarding peer's score). Duplicates and stale messages are
//! judged later (the [`SeenCache`] and the state machine) and reported as `Ignore`.

use std::collections::{HashSet, VecDeque};

use buildmesh_protocol::id::MessageId;
use buildmesh_protocol::mesh::shard;
use buildmesh_protocol::revision::RevisionHeader;
use buildmesh_protocol::signed::{Envelope, SignedError, Verified};
use buildmesh_protocol::wire::{Batch, DecodeError, Kind, MAX_MESSAGE_SIZE, Message};

/// The gossip topic of each message kind.
pub fn topic_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Announcement => "buildmesh/announce/1",
        Kind::Claim => "buildmesh/claim/1",
        Kind::Attestation => "buildmesh/attest/1",
        Kind::BuildFailure => "buildmesh/failure/1",
        Kind::JobSubmission => "buildmesh/job/1",
        Kind::Revision => "buildmesh/revision/1",
        Kind::Strike => "buildmesh/strike/1",
        // `Kind` is non-exhaustive; a kind without a topic of its own goes to the job topic,
        // where receivers that do not know it reject it.
        _ => "buildmesh/job/1",
    }
}

/// The gossip topic of messages of `kind` in shard `shard` of a mesh of `shards` shards
/// (`MeshConfig::shards`): [`topic_of`] itself with one shard (the unsharded topic names), else
/// `<topic_of(kind)>/shard-<shard>-of-<shards>` ([`shard::topic`]). Revision headers are not
/// coordination messages and keep their one topic whatever the shards.
pub fn shard_topic(kind: Kind, shard: u32, shards: u32) -> String {
    if kind == Kind::Revision {
        return topic_of(kind).to_string();
    }
    shard::topic(topic_of(kind), shard, shards)
}

/// The gossip topic a coordination message is published on: its kind's topic in its shard
/// ([`shard::message_shard`]: an announcement in its author's shard, a job message in its
/// derivation's shard).
pub fn message_topic(m: &Message, shards: u32) -> String {
    shard_topic(m.kind(), shard::message_shard(m, shards), shards)
}

/// The coordination kinds, each with a topic per shard (strike records go to the struck
/// member's shard: its observers are members of that shard).
pub const SHARDED_KINDS: [Kind; 6] =
    [Kind::Announcement, Kind::Claim, Kind::Attestation, Kind::BuildFailure, Kind::JobSubmission, Kind::Strike];

/// The job kinds a node hears in a shard it only observes (no announcements: its view holds its
/// own shard's members only; no strike records: they concern that shard's members).
pub const OBSERVED_KINDS: [Kind; 4] = [Kind::Claim, Kind::Attestation, Kind::BuildFailure, Kind::JobSubmission];

/// The topics of one shard in the order of [`crate::net::DEFAULT_TOPICS`] (the revision topic,
/// which is not sharded, in its place when `with_revision`).
fn shard_topics(shard: u32, shards: u32, with_revision: bool) -> Vec<String> {
    let mut t: Vec<String> = SHARDED_KINDS[..5].iter().map(|k| shard_topic(*k, shard, shards)).collect();
    if with_revision {
        t.push(topic_of(Kind::Revision).to_string());
    }
    t.push(shard_topic(Kind::Strike, shard, shards));
    t
}

/// The topics a node of shard `shard` subscribes at start: every coordination kind's topic of
/// its shard, and the revision topic. With one shard, exactly the unsharded topics.
pub fn node_topics(shard: u32, shards: u32) -> Vec<String> {
    shard_topics(shard, shards, true)
}

/// The topics of shard `shard` that a node observing it subscribes to ([`OBSERVED_KINDS`]).
pub fn observed_topics(shard: u32, shards: u32) -> Vec<String> {
    OBSERVED_KINDS.iter().map(|k| shard_topic(*k, shard, shards)).collect()
}

/// Every coordination topic of every shard and the revision topic (gossipsub scores them all,
/// including those subscribed later).
pub fn all_topics(shards: u32) -> Vec<String> {
    (0..shards.max(1)).flat_map(|s| shard_topics(s, shards, s == 0)).collect()
}

/// Why a gossip message was rejected (each is grounds to penalise the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Longer than [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not an envelope (or an unknown version or kind).
    #[error("malformed envelope: {0}")]
    Envelope(DecodeError),
    /// A message of one kind on another kind's topic.
    #[error("{kind} message on topic {topic:?}")]
    WrongTopic {
        /// The kind claimed by the envelope.
        kind: Kind,
        /// The topic it came on.
        topic: String,
    },
    /// A message (or an item of a batch) on its kind's topic of another shard than its own: a
    /// job of one shard published where another shard's members would take it.
    #[error("{kind} message of shard {shard} on topic {topic:?} (its topic is {expected:?})")]
    WrongShard {
        /// The kind.
        kind: Kind,
        /// The message's shard.
        shard: u32,
        /// The topic it came on.
        topic: String,
        /// The topic of its shard.
        expected: String,
    },
    /// Signature, payload, author or the kind's checks failed.
    #[error(transparent)]
    Invalid(#[from] SignedError),
}

/// A gossip message that passed [`check_gossip`].
#[derive(Debug, Clone)]
pub enum Checked {
    /// One message.
    One(Verified<Message>),
    /// Several job submissions or claims by one author.
    Batch(Verified<Batch>),
    /// A revision header (issue 13; not a coordination message, see [`crate::mesh::revisions`]).
    Revision(Verified<RevisionHeader>),
}

impl Checked {
    /// The envelope's message id.
    pub fn id(&self) -> MessageId {
        match self {
            Checked::One(v) => v.id(),
            Checked::Batch(v) => v.id(),
            Checked::Revision(v) => v.id(),
        }
    }
}

/// Check one gossip message arriving on `topic` in a mesh of `shards` shards (see the module
/// docs).
pub fn check_gossip(topic: &str, data: &[u8], shards: u32) -> Result<Checked, Rejection> {
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(Rejection::TooLarge { len: data.len(), max: MAX_MESSAGE_SIZE });
    }
    let envelope = Envelope::decode(data).map_err(Rejection::Envelope)?;
    // The kind's topic (cheap, before the signature); the shard once the payload is decoded.
    let kind_matches = |kind: Kind| {
        let base = topic_of(kind);
        if shards <= 1 || kind == Kind::Revision {
            topic == base
        } else {
            topic.strip_prefix(base).is_some_and(|rest| rest.starts_with("/shard-"))
        }
    };
    let shard_matches = |m: &Message| {
        let expected = message_topic(m, shards);
        if expected == topic {
            Ok(())
        } else {
            let shard = shard::message_shard(m, shards);
            Err(Rejection::WrongShard { kind: m.kind(), shard, topic: topic.to_string(), expected })
        }
    };
    if envelope.kind() == Kind::Batch {
        let verified = envelope.verify_as::<Batch>()?;
        if !kind_matches(verified.kind()) {
            return Err(Rejection::WrongTopic { kind: verified.kind(), topic: topic.to_string() });
        }
        for m in verified.value().items() {
            shard_matches(m)?;
        }
        return Ok(Checked::Batch(verified));
    }
    if !kind_matches(envelope.kind()) {
        return Err(Rejection::WrongTopic { kind: envelope.kind(), topic: topic.to_string() });
    }
    if envelope.kind() == Kind::Revision {
        return Ok(Checked::Revision(envelope.verify_as::<RevisionHeader>()?));
    }
    let verified = envelope.verify()?;
    shard_matches(verified.value())?;
    Ok(Checked::One(verified))
}

/// The ids of the most recent messages seen, to drop replays cheaply (bounded, oldest forgotten
/// first). The state machine's own rules catch replays older than the window.
#[derive(Debug)]
pub struct SeenCache {
    order: VecDeque<MessageId>,
    set: HashSet<MessageId>,
    cap: usize,
}

impl SeenCache {
    /// A cache of at most `cap` ids (at least 1).
    pub fn new(cap: usize) -> SeenCache {
        SeenCache { order: VecDeque::new(), set: HashSet::new(), cap: cap.max(1) }
    }

    /// Record `id`; `false` if it was already there.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Forget `id` (its processing failed; a later copy should be looked at again).
    pub fn remove(&mut self, id: &MessageId) {
        if self.set.remove(id) {
            self.order.retain(|x| x != id);
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use buildmesh_protocol::id::JobId;
    use buildmesh_protocol::identity::NodeKey;
    use buildmesh_protocol::signed::Signed;
    use buildmesh_protocol::store_path::{StoreDir, StorePath};
    use buildmesh_protocol::wire::{Announcement, Claim, Encode as _};

    use super::*;

    fn check_gossip_1(topic: &str, data: &[u8]) -> Result<Checked, Rejection> {
        check_gossip(topic, data, 1)
    }

    fn announcement(key: &NodeKey, seq: u64) -> Announcement {
        Announcement {
            node: key.node_id(),
            seq,
            timestamp_ms: 1000,
            version: "buildmesh 0.1.0".into(),
            owner: String::new(),
            native_systems: BTreeSet::from(["x86_64-linux".to_string()]),
            emulated_systems: BTreeSet::new(),
            features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            slots: 2,
            load: 0,
            slowdown: Default::default(),
            disk_pressure: None,
        }
    }

    #[test]
    fn valid_message_on_its_topic_passes() {
        let key = NodeKey::from_seed("a", [1; 32]).unwrap();
        let bytes = Envelope::sign(&key, &announcement(&key, 1).into()).unwrap().to_bytes();
        let Checked::One(v) = check_gossip_1("buildmesh/announce/1", &bytes).unwrap() else {
            panic!("not one message")
        };
        assert_eq!(v.signer(), &key.node_id());
    }

    fn claims(key: &NodeKey, n: u32) -> Vec<Message> {
        (1..=n)
            .map(|attempt| {
                Message::Claim(Claim {
                    job: JobId::from_bytes([7; 32]),
                    claimant: key.node_id(),
                    store_dir: StoreDir::nix(),
                    drv: StorePath::new([attempt as u8; 20], "x.drv").unwrap(),
                    attempt,
                    claimed_at_ms: 1000,
                    lease_expires_at_ms: 2000,
                })
            })
            .collect()
    }

    #[test]
    fn batches_travel_on_their_items_topic() {
        let key = NodeKey::from_seed("a", [1; 32]).unwrap();
        let batch = Batch::new(claims(&key, 3)).unwrap();
        let bytes = Signed::sign(&key, &batch).unwrap().to_bytes();
        let Checked::Batch(v) = check_gossip_1("buildmesh/claim/1", &bytes).unwrap() else { panic!("not a batch") };
        assert_eq!(v.value().items().len(), 3);
        for topic in ["buildmesh/job/1", "buildmesh/attest/1"] {
            assert!(
                matches!(check_gossip_1(topic, &bytes), Err(Rejection::WrongTopic { kind: Kind::Claim, .. })),
                "{topic}"
            );
        }
        // A batch whose items another node wrote.
        let other = NodeKey::from_seed("b", [2; 32]).unwrap();
        let forged = Envelope::sign_raw_payload(&key, Kind::Batch, Batch::new(claims(&other, 2)).unwrap().to_bytes());
        assert!(matches!(check_gossip_1("buildmesh/claim/1", &forged.to_bytes()), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn forged_wrong_topic_oversized_and_garbage_are_rejected() {
        let key = NodeKey::from_seed("a", [1; 32]).unwrap();
        let mut bytes = Envelope::sign(&key, &announcement(&key, 1).into()).unwrap().to_bytes();
        assert!(matches!(check_gossip_1("buildmesh/attest/1", &bytes), Err(Rejection::WrongTopic { .. })));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(check_gossip_1("buildmesh/announce/1", &bytes), Err(Rejection::Invalid(_))));
        assert!(matches!(
            check_gossip_1("buildmesh/announce/1", &vec![1u8; MAX_MESSAGE_SIZE + 1]),
            Err(Rejection::TooLarge { .. })
        ));
        assert!(matches!(check_gossip_1("buildmesh/announce/1", b"\x01\x01short"), Err(Rejection::Envelope(_))));
        // Signed by one key but naming another author.
        let other = NodeKey::from_seed("b", [2; 32]).unwrap();
        let payload = announcement(&other, 1).to_bytes();
        let forged = Envelope::sign_raw_payload(&key, Kind::Announcement, payload).to_bytes();
        assert!(matches!(check_gossip_1("buildmesh/announce/1", &forged), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn revision_headers_travel_on_their_topic_and_are_verified_as_headers() {
        let key = NodeKey::from_seed("a", [1; 32]).unwrap();
        let (h, _) = crate::mesh::test_util::header(&key, "c1", 5, 2, 0);
        let bytes = Signed::sign(&key, &h).unwrap().to_bytes();
        let Checked::Revision(v) = check_gossip_1("buildmesh/revision/1", &bytes).unwrap() else {
            panic!("not a header")
        };
        assert_eq!(v.value(), &h);
        assert!(matches!(
            check_gossip_1("buildmesh/job/1", &bytes),
            Err(Rejection::WrongTopic { kind: Kind::Revision, .. })
        ));
        // Signed by another key than the submitter it names.
        let other = NodeKey::from_seed("b", [2; 32]).unwrap();
        let forged = Envelope::sign_raw_payload(&other, Kind::Revision, h.to_bytes()).to_bytes();
        assert!(matches!(check_gossip_1("buildmesh/revision/1", &forged), Err(Rejection::Invalid(_))));
        // A coordination message on the revision topic.
        let ann = Envelope::sign(&key, &announcement(&key, 1).into()).unwrap().to_bytes();
        assert!(matches!(check_gossip_1("buildmesh/revision/1", &ann), Err(Rejection::WrongTopic { .. })));
    }

    #[test]
    fn one_shard_keeps_the_unsharded_topics() {
        let want: Vec<String> = crate::net::DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect();
        assert_eq!(node_topics(0, 1), want);
        assert_eq!(all_topics(1), want);
        assert_eq!(shard_topic(Kind::Claim, 1, 4), "buildmesh/claim/1/shard-1-of-4");
        assert_eq!(shard_topic(Kind::Revision, 1, 4), "buildmesh/revision/1", "revision headers are not sharded");
        assert_eq!(all_topics(3).len(), 3 * 6 + 1);
        assert_eq!(
            observed_topics(2, 3),
            [
                "buildmesh/claim/1/shard-2-of-3",
                "buildmesh/attest/1/shard-2-of-3",
                "buildmesh/failure/1/shard-2-of-3",
                "buildmesh/job/1/shard-2-of-3"
            ]
        );
    }

    /// A claim by `key` of a derivation in shard `want` of 2.
    fn claim_in_shard(key: &NodeKey, want: u32) -> Message {
        claims(key, 40)
            .into_iter()
            .find(|m| shard::message_shard(m, 2) == want)
            .expect("some of 40 derivations in each shard")
    }

    #[test]
    fn sharded_messages_must_come_on_their_shards_topic() {
        let key = NodeKey::from_seed("a", [1; 32]).unwrap();
        let (c0, c1) = (claim_in_shard(&key, 0), claim_in_shard(&key, 1));
        let bytes = Envelope::sign(&key, &c0).unwrap().to_bytes();
        assert_eq!(message_topic(&c0, 2), "buildmesh/claim/1/shard-0-of-2");
        assert!(matches!(check_gossip("buildmesh/claim/1/shard-0-of-2", &bytes, 2), Ok(Checked::One(_))));
        // On the other shard's topic: rejected, naming the right one.
        match check_gossip("buildmesh/claim/1/shard-1-of-2", &bytes, 2) {
            Err(Rejection::WrongShard { kind: Kind::Claim, shard: 0, expected, .. }) => {
                assert_eq!(expected, "buildmesh/claim/1/shard-0-of-2")
            }
            other => panic!("{other:?}"),
        }
        // On the unsharded topic, another kind's topic or another shard count's topic.
        for topic in ["buildmesh/claim/1", "buildmesh/attest/1/shard-0-of-2", "buildmesh/claim/1x/shard-0-of-2"] {
            assert!(matches!(check_gossip(topic, &bytes, 2), Err(Rejection::WrongTopic { .. })), "{topic}");
        }
        assert!(matches!(check_gossip("buildmesh/claim/1/shard-0-of-3", &bytes, 2), Err(Rejection::WrongShard { .. })));
        // An announcement goes to its author's shard.
        let ann = Message::Announcement(announcement(&key, 1));
        let mine = shard::node_shard(&key.node_id(), 2);
        let bytes = Envelope::sign(&key, &ann).unwrap().to_bytes();
        assert!(check_gossip(&shard_topic(Kind::Announcement, mine, 2), &bytes, 2).is_ok());
        assert!(matches!(
            check_gossip(&shard_topic(Kind::Announcement, 1 - mine, 2), &bytes, 2),
            Err(Rejection::WrongShard { .. })
        ));
        // A batch is judged item by item: one item of the other shard rejects it.
        let ok = Signed::sign(&key, &Batch::new(vec![c0.clone(), c0.clone()]).unwrap()).unwrap().to_bytes();
        assert!(matches!(check_gossip("buildmesh/claim/1/shard-0-of-2", &ok, 2), Ok(Checked::Batch(_))));
        let mixed = Signed::sign(&key, &Batch::new(vec![c0, c1]).unwrap()).unwrap().to_bytes();
        for s in 0..2 {
            let topic = shard_topic(Kind::Claim, s, 2);
            assert!(matches!(check_gossip(&topic, &mixed, 2), Err(Rejection::WrongShard { .. })), "{topic}");
        }
        // Revision headers keep their one topic.
        let (h, _) = crate::mesh::test_util::header(&key, "c1", 5, 2, 0);
        let bytes = Signed::sign(&key, &h).unwrap().to_bytes();
        assert!(matches!(check_gossip("buildmesh/revision/1", &bytes, 2), Ok(Checked::Revision(_))));
    }

    #[test]
    fn seen_cache_is_bounded() {
        let mut c = SeenCache::new(2);
        let id = |b: u8| MessageId::from_bytes([b; 32]);
        assert!(c.insert(id(1)));
        assert!(!c.insert(id(1)));
        assert!(c.insert(id(2)));
        assert!(c.insert(id(3)));
        assert_eq!(c.len(), 2);
        assert!(c.insert(id(1)), "the oldest id was forgotten");
        c.remove(&id(1));
        assert!(c.insert(id(1)));
    }
}
