//! The mesh's message types and their canonical encoding.
//!
//! ## Encoding
//! One hand-rolled canonical binary encoding ([`codec`]): fixed-width little-endian integers,
//! `u32`-length-prefixed strings, sets as strictly increasing sequences, and typed store paths.
//! Every value has exactly one encoding, and the decoder accepts only that encoding (it rejects
//! unsorted or duplicate set members, bad tags and trailing bytes), so the bytes that are signed and
//! hashed are a function of the value. Why not postcard: postcard accepts several spellings of some
//! values (unsorted maps) and its errors do not say which field failed.
//!
//! Store paths are encoded as one store directory per message ([`StoreDir`], e.g. `/nix/store` or
//! `/gnu/store`) plus, per path, the 20-byte digest and the name; decode validates the store
//! directory and every name with Nix's rules and returns a typed [`DecodeError`] naming the field.
//!
//! ## Envelope
//! Messages travel signed, in an envelope ([`crate::signed::Envelope`]):
//! ```text
//! offset 0   version   u8 = PROTOCOL_VERSION
//!        1   kind      u8 (Kind tag)
//!        2   signer    32 bytes (ed25519 public key = NodeId)
//!       34   length    u32 LE = n
//!       38   payload   n bytes (this module's encoding of the message)
//!     38+n   signature 64 bytes: ed25519 over b"buildmesh/v1/<kind name>\0" ‖ payload
//! ```
//! The whole envelope is at most [`MAX_MESSAGE_SIZE`] bytes, checked before any field is read.
//!
//! ## Times
//! Every time is a `u64` count of milliseconds since the Unix epoch, passed in by the caller.

mod announce;
mod batch;
pub mod codec;
mod job;
mod result;
mod strike;

use std::collections::BTreeSet;
use std::fmt;

pub use announce::{
    Announcement, MAX_DISK_PRESSURE_LEN, MAX_SLOWDOWN, MIN_SLOWDOWN, validate_disk_pressure, validate_slowdown,
};
pub use batch::{Batch, BatchError, MAX_BATCH_ITEMS};
pub use codec::{Decode, DecodeError, Encode, Reader, Sink};
pub use job::{Claim, JobSubmission};
pub use result::{Attestation, BuildFailure, FailureReason, LogDigest, MAX_GUIX_SIGNATURE_LEN, OutputAttestation};
pub use strike::Strike;

use crate::id::NodeId;
use crate::store_path::{StoreDir, StorePath};

/// The protocol version byte at the start of every envelope; the `v1` in the signing domains.
pub const PROTOCOL_VERSION: u8 = 1;
/// The largest envelope (header, payload and signature) accepted or produced. It leaves 1 KiB of
/// gossipsub's default 64 KiB `max_transmit_size` for gossipsub's own framing.
pub const MAX_MESSAGE_SIZE: usize = 63 * 1024;
/// Bytes of envelope around the payload: version, kind, signer, length, signature.
pub const ENVELOPE_OVERHEAD: usize = 1 + 1 + 32 + 4 + 64;
/// The largest payload.
pub const MAX_PAYLOAD_SIZE: usize = MAX_MESSAGE_SIZE - ENVELOPE_OVERHEAD;
/// Most systems per announcement list (native, emulated).
pub const MAX_SYSTEMS: usize = 32;
/// Longest system name (`x86_64-linux`).
pub const MAX_SYSTEM_LEN: usize = 64;
/// Most features per list.
pub const MAX_FEATURES: usize = 64;
/// Longest feature name.
pub const MAX_FEATURE_LEN: usize = 64;
/// Longest version string and owner label.
pub const MAX_LABEL_LEN: usize = 64;
/// Most outputs per job submission or attestation.
pub const MAX_OUTPUTS: usize = 64;
/// Most references per output.
pub const MAX_REFERENCES: usize = 2048;
/// Longest free-text message (failure reasons).
pub const MAX_TEXT_LEN: usize = 1024;
/// Highest replication factor a job may ask for.
pub const MAX_REPLICAS: u8 = 16;
/// Longest lease a claim may take (24 h); builders renew with a new claim.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;
/// Most build slots an announcement may state. Slots are self-declared and are the placement
/// weight, so an announcement above this is malformed (rejected, its sender penalised); below it,
/// placement still clamps the weight relative to the other members (see [`crate::placement`]).
pub const MAX_SLOTS: u32 = 1024;

/// The kinds of signed message. Each has a tag byte and a signing domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// [`Announcement`].
    Announcement,
    /// [`JobSubmission`].
    JobSubmission,
    /// [`Claim`].
    Claim,
    /// [`Attestation`].
    Attestation,
    /// [`BuildFailure`].
    BuildFailure,
    /// [`Batch`]: several job submissions or claims under one signature.
    Batch,
    /// [`crate::revision::RevisionHeader`]: the signed header of a revision (an evaluation of a
    /// channel at a commit). Not a [`Message`] variant: the coordination state machine never sees
    /// it; verify it with `Signed::<RevisionHeader>::verify` or [`crate::signed::Envelope::verify_as`].
    Revision,
    /// [`Strike`]: an observer's record that a member's lease ran out without a result.
    Strike,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Announcement,
        Kind::JobSubmission,
        Kind::Claim,
        Kind::Attestation,
        Kind::BuildFailure,
        Kind::Batch,
        Kind::Revision,
        Kind::Strike,
    ];

    /// The tag byte in the envelope.
    pub const fn tag(self) -> u8 {
        match self {
            Kind::Announcement => 1,
            Kind::JobSubmission => 2,
            Kind::Claim => 3,
            Kind::Attestation => 4,
            Kind::BuildFailure => 5,
            Kind::Batch => 6,
            Kind::Revision => 7,
            Kind::Strike => 8,
        }
    }

    /// The kind with this tag.
    pub fn from_tag(tag: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// The name in the signing domain (`announcement`, `job-submission`, `claim`, `attestation`,
    /// `build-failure`, `batch`, `revision`, `strike`).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Announcement => "announcement",
            Kind::JobSubmission => "job-submission",
            Kind::Claim => "claim",
            Kind::Attestation => "attestation",
            Kind::BuildFailure => "build-failure",
            Kind::Batch => "batch",
            Kind::Revision => "revision",
            Kind::Strike => "strike",
        }
    }

    /// The signing domain `b"buildmesh/v1/<name>\0"` prepended to the payload before signing.
    pub const fn domain(self) -> &'static [u8] {
        match self {
            Kind::Announcement => b"buildmesh/v1/announcement\0",
            Kind::JobSubmission => b"buildmesh/v1/job-submission\0",
            Kind::Claim => b"buildmesh/v1/claim\0",
            Kind::Attestation => b"buildmesh/v1/attestation\0",
            Kind::BuildFailure => b"buildmesh/v1/build-failure\0",
            Kind::Batch => b"buildmesh/v1/batch\0",
            Kind::Revision => b"buildmesh/v1/revision\0",
            Kind::Strike => b"buildmesh/v1/strike\0",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a build ran natively or under emulation (e.g. qemu-user for another system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// On hardware of the derivation's system.
    Native,
    /// Under emulation.
    Emulated,
}

impl BuildMode {
    pub(crate) fn tag(self) -> u8 {
        match self {
            BuildMode::Native => 0,
            BuildMode::Emulated => 1,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<BuildMode, DecodeError> {
        let offset = r.offset();
        match r.u8(field)? {
            0 => Ok(BuildMode::Native),
            1 => Ok(BuildMode::Emulated),
            tag => Err(DecodeError::InvalidTag { field, offset, tag }),
        }
    }
}

/// A message type that can be signed: its kind, who must sign it, and checks beyond decoding.
pub trait Payload: Encode + Sized {
    /// The kind (tag and signing domain).
    const KIND: Kind;

    /// Decode the payload bytes (the whole of `r`; the caller checks for trailing bytes).
    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The node that must have signed it (announcer, submitter, claimant, builder).
    fn author(&self) -> &NodeId;

    /// Checks that need more than the bytes (run after the envelope signature verified), e.g. an
    /// attestation's Nix signatures. The default accepts.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Any mesh message, for gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A node's capabilities.
    Announcement(Announcement),
    /// A build request.
    JobSubmission(JobSubmission),
    /// A builder taking a job, with a lease.
    Claim(Claim),
    /// A signed build result.
    Attestation(Attestation),
    /// A failed build.
    BuildFailure(BuildFailure),
    /// A member's lease that ran out without a result, as one observer saw it.
    Strike(Strike),
}

impl Message {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Announcement(_) => Kind::Announcement,
            Message::JobSubmission(_) => Kind::JobSubmission,
            Message::Claim(_) => Kind::Claim,
            Message::Attestation(_) => Kind::Attestation,
            Message::BuildFailure(_) => Kind::BuildFailure,
            Message::Strike(_) => Kind::Strike,
        }
    }

    /// The node that must sign it.
    pub fn author(&self) -> &NodeId {
        match self {
            Message::Announcement(m) => m.author(),
            Message::JobSubmission(m) => m.author(),
            Message::Claim(m) => m.author(),
            Message::Attestation(m) => m.author(),
            Message::BuildFailure(m) => m.author(),
            Message::Strike(m) => m.author(),
        }
    }

    /// Decode a payload of the given kind (all of `payload`; trailing bytes are an error). A
    /// [`Kind::Batch`] payload is not one message and is refused here; see [`Batch`]. A
    /// [`Kind::Revision`] payload is not a coordination message and is refused too; see
    /// [`crate::revision::RevisionHeader`].
    /// `base` is the payload's offset in the enclosing input, for error offsets.
    pub fn decode_payload(kind: Kind, payload: &[u8], base: usize) -> Result<Message, DecodeError> {
        if payload.len() > MAX_PAYLOAD_SIZE {
            return Err(DecodeError::TooLarge { len: payload.len(), max: MAX_PAYLOAD_SIZE });
        }
        let mut r = Reader::with_base(payload, base);
        let m = match kind {
            Kind::Announcement => Message::Announcement(Announcement::decode_payload(&mut r)?),
            Kind::JobSubmission => Message::JobSubmission(JobSubmission::decode_payload(&mut r)?),
            Kind::Claim => Message::Claim(Claim::decode_payload(&mut r)?),
            Kind::Attestation => Message::Attestation(Attestation::decode_payload(&mut r)?),
            Kind::BuildFailure => Message::BuildFailure(BuildFailure::decode_payload(&mut r)?),
            Kind::Strike => Message::Strike(Strike::decode_payload(&mut r)?),
            Kind::Batch => {
                return Err(Reader::invalid(
                    "kind",
                    base,
                    "a batch holds several messages; verify it as a `Batch`, not as one message",
                ));
            }
            Kind::Revision => {
                return Err(Reader::invalid(
                    "kind",
                    base,
                    "a revision header is not a coordination message; verify it as a `RevisionHeader`",
                ));
            }
        };
        r.finish()?;
        Ok(m)
    }

    /// Post-verification checks of the inner message ([`Payload::check`]).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Message::Announcement(m) => m.check(),
            Message::JobSubmission(m) => m.check(),
            Message::Claim(m) => m.check(),
            Message::Attestation(m) => m.check(),
            Message::BuildFailure(m) => m.check(),
            Message::Strike(m) => m.check(),
        }
    }
}

/// The payload encoding of the inner message (no envelope).
impl Encode for Message {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        match self {
            Message::Announcement(m) => m.encode(out),
            Message::JobSubmission(m) => m.encode(out),
            Message::Claim(m) => m.encode(out),
            Message::Attestation(m) => m.encode(out),
            Message::BuildFailure(m) => m.encode(out),
            Message::Strike(m) => m.encode(out),
        }
    }
}

macro_rules! into_message {
    ($($t:ident),*) => {$(
        impl From<$t> for Message {
            fn from(m: $t) -> Message {
                Message::$t(m)
            }
        }
    )*};
}
into_message!(Announcement, JobSubmission, Claim, Attestation, BuildFailure, Strike);

// ---- field rules shared by the message types ----

fn check_chars(s: &str, max: usize, ok: impl Fn(u8) -> bool, what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} {s:?} must be 1-{max} bytes"));
    }
    if !s.bytes().all(ok) {
        return Err(format!("{what} {s:?} contains a character outside its allowed set"));
    }
    Ok(())
}

/// A system name (`x86_64-linux`): 1–64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_system(s: &str) -> Result<(), String> {
    check_chars(s, MAX_SYSTEM_LEN, |b| b.is_ascii_alphanumeric() || b"_.-".contains(&b), "system")
}

/// A system feature (`kvm`, `big-parallel`, `gccarch-x86-64-v3`): 1–64 bytes of `[A-Za-z0-9_.+-]`.
pub fn validate_feature(s: &str) -> Result<(), String> {
    check_chars(s, MAX_FEATURE_LEN, |b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b), "feature")
}

/// A label (version string, owner): at most 64 bytes of UTF-8 without control characters; the
/// owner may be empty (unknown), the version may not.
pub fn validate_label(s: &str, allow_empty: bool) -> Result<(), String> {
    if s.is_empty() && !allow_empty {
        return Err("label must not be empty".to_string());
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!("label {s:?} is longer than {MAX_LABEL_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("label {s:?} contains a control character"));
    }
    Ok(())
}

pub(crate) fn read_system(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let offset = r.offset();
    let s = r.str(field, MAX_SYSTEM_LEN)?;
    validate_system(s).map_err(|e| Reader::invalid(field, offset, e))?;
    Ok(s.to_string())
}

pub(crate) fn read_systems(r: &mut Reader<'_>, field: &'static str) -> Result<BTreeSet<String>, DecodeError> {
    r.set(field, MAX_SYSTEMS, 5, |r| read_system(r, field))
}

pub(crate) fn read_features(r: &mut Reader<'_>, field: &'static str) -> Result<BTreeSet<String>, DecodeError> {
    r.set(field, MAX_FEATURES, 5, |r| {
        let offset = r.offset();
        let s = r.str(field, MAX_FEATURE_LEN)?;
        validate_feature(s).map_err(|e| Reader::invalid(field, offset, e))?;
        Ok(s.to_string())
    })
}

pub(crate) fn read_label(r: &mut Reader<'_>, field: &'static str, allow_empty: bool) -> Result<String, DecodeError> {
    let offset = r.offset();
    let s = r.str(field, MAX_LABEL_LEN)?;
    validate_label(s, allow_empty).map_err(|e| Reader::invalid(field, offset, e))?;
    Ok(s.to_string())
}

/// An output name: Nix's store path name rules (`out`, `dev`, `lib`).
pub(crate) fn read_output_name(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let offset = r.offset();
    let s = r.str(field, crate::store_path::MAX_NAME_LEN)?;
    crate::store_path::validate_name(s).map_err(|source| DecodeError::InvalidStorePath { field, offset, source })?;
    Ok(s.to_string())
}

pub(crate) fn read_drv(r: &mut Reader<'_>, field: &'static str) -> Result<StorePath, DecodeError> {
    let offset = r.offset();
    let p = StorePath::decode(r, field)?;
    if !p.is_derivation() {
        return Err(Reader::invalid(field, offset, format!("{p} is not a derivation (.drv) path")));
    }
    Ok(p)
}

pub(crate) fn read_store_dir(r: &mut Reader<'_>) -> Result<StoreDir, DecodeError> {
    StoreDir::decode(r, "store_dir")
}

#[cfg(test)]
mod announce_tests;
#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod strike_tests;
#[cfg(test)]
mod tests;
