//! [`Batch`]: several job submissions, or several claims, by one author under one signature.
//!
//! Why: a submission of n derivations was n gossip messages, each with its own 102-byte envelope
//! and its own copies in flight, and a builder that took several jobs at once sent one claim per
//! job. A batch carries them together. Its items are the same values as the single messages, and
//! receivers hand each one to the state machine as if it had come alone, so placement, idempotence
//! and replay rules do not change.
//!
//! Only [`JobSubmission`]s and [`Claim`]s are batched. Attestations and failures stay single: each
//! is stored and exported as its own signed envelope, so an auditor can check it alone.
//!
//! Encoding: `kind` u8 (the items' [`Kind::tag`]) ‖ `count` u32 (1..=[`MAX_BATCH_ITEMS`]) ‖ `count`
//! payloads of that kind back to back (each payload's encoding is self-delimiting). Every item
//! must have the same author, who must sign the batch.

use thiserror::Error;

use super::codec::{DecodeError, Encode, Reader, Sink, put_u8, put_u32};
use super::{Claim, JobSubmission, Kind, MAX_PAYLOAD_SIZE, Message, Payload};
use crate::id::NodeId;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1024;

/// Bytes of batch header before the items: kind and count.
const HEADER_LEN: usize = 1 + 4;

/// Several messages of one batchable kind by one author (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    kind: Kind,
    items: Vec<Message>,
}

/// Why messages cannot form a batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// No items.
    #[error("a batch needs at least one item")]
    Empty,
    /// More than [`MAX_BATCH_ITEMS`].
    #[error("a batch holds at most {max} items, not {count}")]
    TooMany {
        /// Items given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A kind that is never batched.
    #[error("{0} messages are not batched")]
    NotBatchable(Kind),
    /// Items of different kinds.
    #[error("item {index} is a {found} message but the batch holds {expected} messages")]
    MixedKinds {
        /// The offending item.
        index: usize,
        /// The batch's kind (the first item's).
        expected: Kind,
        /// The item's kind.
        found: Kind,
    },
    /// Items by different authors.
    #[error("item {index} is by {found} but the batch is by {expected}")]
    MixedAuthors {
        /// The offending item.
        index: usize,
        /// The first item's author.
        expected: NodeId,
        /// The item's author.
        found: NodeId,
    },
    /// One item alone is larger than a batch payload may be.
    #[error("item {index} encodes to {len} bytes; a batch payload holds at most {max}")]
    ItemTooLarge {
        /// The offending item.
        index: usize,
        /// Its encoded length.
        len: usize,
        /// The room for items.
        max: usize,
    },
}

impl Batch {
    /// Whether messages of `kind` may be batched (job submissions and claims).
    pub fn is_batchable(kind: Kind) -> bool {
        matches!(kind, Kind::JobSubmission | Kind::Claim)
    }

    /// A batch of `items`: at least one, at most [`MAX_BATCH_ITEMS`], all of one batchable kind and
    /// one author. The payload size is checked when it is signed.
    pub fn new(items: Vec<Message>) -> Result<Batch, BatchError> {
        let first = items.first().ok_or(BatchError::Empty)?;
        let kind = first.kind();
        if !Batch::is_batchable(kind) {
            return Err(BatchError::NotBatchable(kind));
        }
        if items.len() > MAX_BATCH_ITEMS {
            return Err(BatchError::TooMany { count: items.len(), max: MAX_BATCH_ITEMS });
        }
        let author = *first.author();
        for (index, m) in items.iter().enumerate().skip(1) {
            if m.kind() != kind {
                return Err(BatchError::MixedKinds { index, expected: kind, found: m.kind() });
            }
            if *m.author() != author {
                return Err(BatchError::MixedAuthors { index, expected: author, found: *m.author() });
            }
        }
        Ok(Batch { kind, items })
    }

    /// Split `items` (one batchable kind, one author, in order) into as few batches as fit the
    /// payload limit and [`MAX_BATCH_ITEMS`], keeping their order. Empty input gives no batch.
    pub fn pack(items: Vec<Message>) -> Result<Vec<Batch>, BatchError> {
        let room = MAX_PAYLOAD_SIZE - HEADER_LEN;
        let mut batches = Vec::new();
        let mut current: Vec<Message> = Vec::new();
        let mut used = 0usize;
        for (index, m) in items.into_iter().enumerate() {
            let len = m.encoded_len();
            if len > room {
                return Err(BatchError::ItemTooLarge { index, len, max: room });
            }
            if !current.is_empty() && (used + len > room || current.len() == MAX_BATCH_ITEMS) {
                batches.push(Batch::new(std::mem::take(&mut current))?);
                used = 0;
            }
            used += len;
            current.push(m);
        }
        if !current.is_empty() {
            batches.push(Batch::new(current)?);
        }
        Ok(batches)
    }

    /// The items' kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The items, in order.
    pub fn items(&self) -> &[Message] {
        &self.items
    }

    /// The items, in order.
    pub fn into_items(self) -> Vec<Message> {
        self.items
    }
}

impl Encode for Batch {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        put_u8(out, self.kind.tag());
        put_u32(out, self.items.len() as u32);
        for m in &self.items {
            m.encode(out);
        }
    }
}

impl Payload for Batch {
    const KIND: Kind = Kind::Batch;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let tag = r.u8("batch.kind")?;
        let kind = Kind::from_tag(tag).filter(|k| Batch::is_batchable(*k)).ok_or(DecodeError::InvalidTag {
            field: "batch.kind",
            offset,
            tag,
        })?;
        let offset = r.offset();
        let count = r.u32("batch.count")? as usize;
        if count == 0 || count > MAX_BATCH_ITEMS {
            return Err(Reader::invalid("batch.count", offset, format!("{count} is outside 1..={MAX_BATCH_ITEMS}")));
        }
        let mut items: Vec<Message> = Vec::with_capacity(count.min(64));
        for index in 0..count {
            let offset = r.offset();
            let m = match kind {
                Kind::JobSubmission => Message::JobSubmission(JobSubmission::decode_payload(r)?),
                _ => Message::Claim(Claim::decode_payload(r)?),
            };
            if let Some(first) = items.first()
                && first.author() != m.author()
            {
                return Err(Reader::invalid(
                    "batch.items",
                    offset,
                    format!("item {index} is by {} but item 0 is by {}", m.author(), first.author()),
                ));
            }
            items.push(m);
        }
        Ok(Batch { kind, items })
    }

    fn author(&self) -> &NodeId {
        // `new` and `decode_payload` never make an empty batch.
        self.items[0].author()
    }

    fn check(&self) -> Result<(), String> {
        for (index, m) in self.items.iter().enumerate() {
            m.check().map_err(|e| format!("item {index}: {e}"))?;
        }
        Ok(())
    }
}
