//! Signed mesh messages with versioned domain separation.
//!
//! A signature is ed25519 (`verify_strict`) over `b"buildmesh/v1/<kind>\0" ‖ payload`, where
//! `payload` is the message's canonical encoding ([`crate::wire`]) and `<kind>` its
//! [`Kind::name`]. So a signature made for one kind never verifies as another, and a mesh signature
//! is never a valid Nix narinfo signature (those sign `1;…`) or libp2p signature.
//!
//! The payload is reachable only through verification: [`Envelope`] (any kind) and [`Signed<T>`]
//! (one kind) hold the signer, the payload bytes and the signature; [`Envelope::verify`] and
//! [`Signed::verify`] check the size, the signature under the expected domain, then decode the
//! payload, check that its author is the signer and run the kind's own checks (an attestation's
//! Nix signatures), and only then return a [`Verified`] value.
//!
//! ## Replays and duplicates
//! Every message is idempotent: its content names what it is about (job id, drv, attempt, sequence
//! number, timestamps supplied by the sender). A receiver
//! 1. drops a message whose [`MessageId`] it has seen (the id is blake3 over domain ‖ signer ‖
//!    payload, so it does not depend on the signature bytes and a replayed copy has the same id);
//! 2. applies the per-kind rule documented on each message type (highest announcement `seq`, claim
//!    with the latest `claimed_at_ms` per (drv, claimant, attempt), union of attestations and
//!    failures), so even a replay older than the dedup window changes nothing;
//! 3. may drop messages whose timestamp lies too far in the future (its clock is a parameter of the
//!    state machine, not of this module).

use std::marker::PhantomData;
use std::ops::Deref;

use thiserror::Error;

use crate::id::{MessageId, NodeId};
use crate::identity::NodeKey;
use crate::wire::codec::{DecodeError, Encode, Reader, Sink, put_u8, put_u32};
use crate::wire::{ENVELOPE_OVERHEAD, Kind, MAX_MESSAGE_SIZE, MAX_PAYLOAD_SIZE, Message, PROTOCOL_VERSION, Payload};

/// Why a message could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignError {
    /// The payload is larger than [`MAX_PAYLOAD_SIZE`].
    #[error("{kind} payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The kind.
        kind: Kind,
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The signing key is not the message's author.
    #[error("{kind} message names {author} as its author, but the key is {signer}")]
    NotAuthor {
        /// The kind.
        kind: Kind,
        /// The author field.
        author: NodeId,
        /// The key's node id.
        signer: NodeId,
    },
    /// The message would not decode at a receiver (a field breaks its rule).
    #[error("{kind} message is invalid: {source}")]
    Invalid {
        /// The kind.
        kind: Kind,
        /// The decoder's complaint.
        source: DecodeError,
    },
    /// The message fails its kind's checks (e.g. an attestation's Nix signature).
    #[error("{kind} message fails its checks: {reason}")]
    Check {
        /// The kind.
        kind: Kind,
        /// What failed.
        reason: String,
    },
}

/// Why a received message was rejected. Each variant is grounds to penalise the sending peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The envelope or payload is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The signature does not verify under the signer's key and the kind's domain.
    #[error("bad signature on {kind} message from {signer}")]
    BadSignature {
        /// The kind claimed.
        kind: Kind,
        /// The signer claimed.
        signer: NodeId,
    },
    /// The payload names another author than the signer.
    #[error("{kind} message signed by {signer} names {author} as its author")]
    AuthorMismatch {
        /// The kind.
        kind: Kind,
        /// Who signed.
        signer: NodeId,
        /// Who the payload says.
        author: NodeId,
    },
    /// The message fails its kind's checks.
    #[error("{kind} message from {signer} fails its checks: {reason}")]
    Check {
        /// The kind.
        kind: Kind,
        /// Who signed.
        signer: NodeId,
        /// What failed.
        reason: String,
    },
}

/// A signed message of any kind, not yet verified. Its payload is not accessible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    kind: Kind,
    signer: NodeId,
    payload: Vec<u8>,
    signature: [u8; 64],
}

fn signing_input(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let domain = kind.domain();
    let mut v = Vec::with_capacity(domain.len() + payload.len());
    v.extend_from_slice(domain);
    v.extend_from_slice(payload);
    v
}

impl Envelope {
    /// Sign any message with `key` (which must be the message's author).
    pub fn sign(key: &NodeKey, message: &Message) -> Result<Envelope, SignError> {
        match message {
            Message::Announcement(m) => Signed::sign(key, m).map(Signed::into_envelope),
            Message::JobSubmission(m) => Signed::sign(key, m).map(Signed::into_envelope),
            Message::Claim(m) => Signed::sign(key, m).map(Signed::into_envelope),
            Message::Attestation(m) => Signed::sign(key, m).map(Signed::into_envelope),
            Message::BuildFailure(m) => Signed::sign(key, m).map(Signed::into_envelope),
            Message::Strike(m) => Signed::sign(key, m).map(Signed::into_envelope),
        }
    }

    /// Sign already-encoded payload bytes under `kind`'s domain, without checking them. Only for
    /// tests of receivers (e.g. the simulator's byzantine nodes).
    pub fn sign_raw_payload(key: &NodeKey, kind: Kind, payload: Vec<u8>) -> Envelope {
        let signature = key.sign_raw(&signing_input(kind, &payload));
        Envelope { kind, signer: key.node_id(), payload, signature }
    }

    /// Parse an envelope. The length is checked against [`MAX_MESSAGE_SIZE`] before anything else;
    /// the payload is not decoded (that happens in [`Envelope::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_MESSAGE_SIZE });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version, supported: PROTOCOL_VERSION });
        }
        let offset = r.offset();
        let tag = r.u8("kind")?;
        let kind = Kind::from_tag(tag).ok_or(DecodeError::UnknownKind { tag, offset })?;
        let signer = crate::wire::Decode::decode(&mut r, "signer")?;
        let offset = r.offset();
        let len = r.u32("payload_length")? as usize;
        let expected = bytes.len().saturating_sub(ENVELOPE_OVERHEAD);
        if len != expected {
            return Err(if len > expected {
                DecodeError::Truncated { field: "payload", offset, needed: len + 64, available: r.remaining() }
            } else {
                DecodeError::TrailingBytes { offset: offset + 4 + len + 64, extra: expected - len }
            });
        }
        let payload = r.take("payload", len)?.to_vec();
        let signature = r.array::<64>("signature")?;
        r.finish()?;
        Ok(Envelope { kind, signer, payload, signature })
    }

    /// The kind the envelope claims.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The signer the envelope claims (not verified yet).
    pub fn signer_unverified(&self) -> &NodeId {
        &self.signer
    }

    /// The payload length.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// The message id: blake3 over `domain ‖ signer ‖ payload` (signature excluded, so copies with
    /// re-encoded signatures share an id). Receivers deduplicate by it.
    pub fn id(&self) -> MessageId {
        let mut h = blake3::Hasher::new();
        h.update(self.kind.domain());
        h.update(self.signer.as_bytes());
        h.update(&self.payload);
        MessageId::from_bytes(*h.finalize().as_bytes())
    }

    fn check_signature(&self) -> Result<(), SignedError> {
        if self.payload.len() > MAX_PAYLOAD_SIZE {
            return Err(
                DecodeError::TooLarge { len: self.payload.len() + ENVELOPE_OVERHEAD, max: MAX_MESSAGE_SIZE }.into()
            );
        }
        if self.signer.verify_strict(&signing_input(self.kind, &self.payload), &self.signature) {
            Ok(())
        } else {
            Err(SignedError::BadSignature { kind: self.kind, signer: self.signer })
        }
    }

    /// Verify and decode, whatever the kind.
    pub fn verify(&self) -> Result<Verified<Message>, SignedError> {
        self.check_signature()?;
        let message = Message::decode_payload(self.kind, &self.payload, 38)?;
        if *message.author() != self.signer {
            return Err(SignedError::AuthorMismatch {
                kind: self.kind,
                signer: self.signer,
                author: *message.author(),
            });
        }
        message.check().map_err(|reason| SignedError::Check { kind: self.kind, signer: self.signer, reason })?;
        Ok(Verified { id: self.id(), envelope: self.clone(), value: message })
    }

    /// Verify as the kind `T` (an envelope of another kind is refused before its signature is checked).
    pub fn verify_as<T: Payload>(&self) -> Result<Verified<T>, SignedError> {
        if self.kind != T::KIND {
            return Err(DecodeError::WrongKind { expected: T::KIND, found: self.kind }.into());
        }
        self.check_signature()?;
        let mut r = Reader::with_base(&self.payload, 38);
        let value = T::decode_payload(&mut r)?;
        r.finish()?;
        if *value.author() != self.signer {
            return Err(SignedError::AuthorMismatch { kind: self.kind, signer: self.signer, author: *value.author() });
        }
        value.check().map_err(|reason| SignedError::Check { kind: self.kind, signer: self.signer, reason })?;
        Ok(Verified { id: self.id(), envelope: self.clone(), value })
    }

    /// As a typed envelope, if it has `T`'s kind.
    pub fn into_typed<T: Payload>(self) -> Result<Signed<T>, DecodeError> {
        if self.kind != T::KIND {
            return Err(DecodeError::WrongKind { expected: T::KIND, found: self.kind });
        }
        Ok(Signed { envelope: self, _kind: PhantomData })
    }
}

/// The wire bytes of the envelope (see [`crate::wire`] for the layout).
impl Encode for Envelope {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        put_u8(out, PROTOCOL_VERSION);
        put_u8(out, self.kind.tag());
        out.put(self.signer.as_bytes());
        put_u32(out, u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        out.put(&self.payload);
        out.put(&self.signature);
    }
}

/// A signed message of kind `T`, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    envelope: Envelope,
    _kind: PhantomData<fn() -> T>,
}

impl<T: Payload> Signed<T> {
    /// Sign `value` with `key`. Fails if `key` is not the value's author, if the payload exceeds the
    /// size limit, or if a receiver would reject it (it is decoded and checked before signing).
    pub fn sign(key: &NodeKey, value: &T) -> Result<Signed<T>, SignError> {
        let kind = T::KIND;
        if *value.author() != key.node_id() {
            return Err(SignError::NotAuthor { kind, author: *value.author(), signer: key.node_id() });
        }
        let payload = value.to_bytes();
        if payload.len() > MAX_PAYLOAD_SIZE {
            return Err(SignError::TooLarge { kind, len: payload.len(), max: MAX_PAYLOAD_SIZE });
        }
        let mut r = Reader::with_base(&payload, 38);
        T::decode_payload(&mut r).and_then(|_| r.finish()).map_err(|source| SignError::Invalid { kind, source })?;
        value.check().map_err(|reason| SignError::Check { kind, reason })?;
        Ok(Signed { envelope: Envelope::sign_raw_payload(key, kind, payload), _kind: PhantomData })
    }

    /// Parse the wire bytes of a `T` message (size checked first; payload not decoded yet).
    pub fn decode(bytes: &[u8]) -> Result<Signed<T>, DecodeError> {
        Envelope::decode(bytes)?.into_typed()
    }

    /// Verify under `T`'s domain, decode, check the author and `T`'s checks.
    pub fn verify(&self) -> Result<Verified<T>, SignedError> {
        self.envelope.verify_as()
    }

    /// The untyped envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Into the untyped envelope.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.envelope.id()
    }
}

impl<T> Encode for Signed<T> {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.envelope.encode(out);
    }
}

/// A verified message: the decoded value, its signer and id, and the envelope it came in (to store
/// or forward unchanged). Only [`Envelope::verify`], [`Envelope::verify_as`] and [`Signed::verify`]
/// make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    id: MessageId,
    envelope: Envelope,
    value: T,
}

impl<T> Verified<T> {
    /// Who signed it (equal to the payload's author).
    pub fn signer(&self) -> &NodeId {
        &self.envelope.signer
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The decoded message.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The decoded message, by value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The envelope (its [`Encode::to_bytes`] are the wire bytes).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Split into the envelope and the value.
    pub fn into_parts(self) -> (Envelope, T) {
        (self.envelope, self.value)
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}
