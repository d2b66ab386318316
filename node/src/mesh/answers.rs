//! Reading what peers answer: every answer to a request this node sent is decoded against the
//! node's *configured* cap for its protocol ([`NetHandle::limits`], the cap the codec already
//! enforced on the frame), and bytes no honest build sends cost the peer one strike
//! ([`NetHandle::malformed`], `conduct.malformed` in `GET /api/v1/peers`; 3 strikes cut it off).
//!
//! What costs a strike (one per answer, or per page of records):
//! - an answer that does not decode ([`Unreadable::Garbage`]);
//! - an answer of another kind than asked (a page to a summary request, a log chunk to a manifest
//!   request): the caller reports it with [`wrong_kind`];
//! - a record whose envelope does not decode, is of another kind than the sequence it was served
//!   in, or whose signature does not verify ([`RecordRefused::garbage`]).
//!
//! What never does, because an honest build of another version may send it:
//! - an error answer, a "not found" answer;
//! - an answer whose variant index this build does not know (a newer build appends variants;
//!   [`Unreadable::Excused`]). Such answers are counted per peer and protocol instead
//!   ([`read_noted`]): 16 in a row with no readable answer between bench the peer on that
//!   protocol for 10 minutes (it is not asked there; [`crate::net::unread`]), so a peer that
//!   answers nothing else cannot waste this node's requests forever;
//! - a record of another protocol version;
//! - a correctly signed record that fails this build's checks after its signature (its payload
//!   does not decode, names another author, or fails its kind's content checks): the record is
//!   dropped. The signer made it, not the peer that relayed it, and a later build may decode or
//!   check it differently (a relaxed check, a field read differently); older nodes striking it
//!   would cut honest new peers off.
//! - bytes that do not match a signed hash or size (a manifest, a log, a NAR, a `.drv`): they are
//!   refused and the next peer is asked, but the peer may be honest (a builder keeps only its
//!   latest log of a derivation, a disk may rot). It is skipped for that object a while instead
//!   ([`super::skips`]).

use buildmesh_protocol::signed::{Envelope, SignedError, Verified};
use buildmesh_protocol::wire::{DecodeError, Kind};
use libp2p::PeerId;
use serde::de::DeserializeOwned;

use super::rpc::{self, ClosureResponse, NarResponse, RpcError, SyncRequest, SyncResponse};
use crate::net::{NetHandle, RequestError, RequestProtocol};

/// An answer type of a request-response protocol.
pub trait Answer: DeserializeOwned {
    /// The protocol it answers on.
    const PROTOCOL: RequestProtocol;
    /// How it is named in errors and in the `malformed_body` log.
    const WHAT: &'static str;
    /// The variants this build knows (a higher variant index is a newer build's answer).
    const VARIANTS: u32;
}

impl Answer for SyncResponse {
    const PROTOCOL: RequestProtocol = RequestProtocol::Sync;
    const WHAT: &'static str = "sync response";
    const VARIANTS: u32 = SyncResponse::VARIANTS;
}

impl Answer for ClosureResponse {
    const PROTOCOL: RequestProtocol = RequestProtocol::Closure;
    const WHAT: &'static str = "closure response";
    const VARIANTS: u32 = ClosureResponse::VARIANTS;
}

impl Answer for NarResponse {
    const PROTOCOL: RequestProtocol = RequestProtocol::Nar;
    const WHAT: &'static str = "NAR response";
    const VARIANTS: u32 = NarResponse::VARIANTS;
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unreadable {
    /// Bytes no build sends: the peer gets a strike.
    #[error(transparent)]
    Garbage(RpcError),
    /// An answer of a variant this build does not know (a newer build's), or one above this
    /// node's cap (which the codec refuses first, so only when a caller's cap differs): no strike.
    #[error("{0} (an answer of a newer build?)")]
    Excused(RpcError),
}

/// Decode the answer `bytes` against `max` bytes (see [`Unreadable`] for what is garbage).
pub fn read<T: Answer>(bytes: &[u8], max: usize) -> Result<T, Unreadable> {
    rpc::decode::<T>(T::WHAT, bytes, max).map_err(|e| match e {
        RpcError::Malformed { .. } if !rpc::is_unknown_variant(bytes, T::VARIANTS) => Unreadable::Garbage(e),
        e => Unreadable::Excused(e),
    })
}

/// Decode the answer `bytes` that `peer` sent against the node's configured cap for its
/// protocol, giving `peer` a strike when it is garbage.
pub async fn read_from<T: Answer>(net: &NetHandle, peer: PeerId, bytes: &[u8]) -> Result<T, Unreadable> {
    let read = read_noted::<T>(net, peer, bytes);
    if let Err(Unreadable::Garbage(_)) = &read {
        net.malformed(peer, T::WHAT).await;
    }
    read
}

/// Decode the answer `bytes` that `peer` sent against the node's configured cap for its
/// protocol, and count it in the node's book of unreadable answers ([`crate::net::unread`]): an
/// answer of a variant this build does not know counts one more in a row (many in a row bench
/// the peer on that protocol), a readable one clears the count. No strike here (the caller of
/// [`read_from`] strikes garbage; the NAR chunk reader after its chunked fetch).
pub fn read_noted<T: Answer>(net: &NetHandle, peer: PeerId, bytes: &[u8]) -> Result<T, Unreadable> {
    let read = read::<T>(bytes, net.limits(T::PROTOCOL).max_response);
    match &read {
        Ok(_) => net.answer_read(peer, T::PROTOCOL),
        Err(Unreadable::Excused(RpcError::Malformed { .. })) => {
            net.answer_unread(peer, T::PROTOCOL);
        }
        Err(_) => {}
    }
    read
}

/// Why a request to a peer got no readable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// The request failed (no answer).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The answer could not be read (the peer was struck if it was garbage).
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
}

/// Send `req` to `peer` on `/buildmesh/sync/1` and read its answer ([`read_from`]).
pub async fn ask_sync(net: &NetHandle, peer: PeerId, req: &SyncRequest) -> Result<SyncResponse, AskError> {
    let bytes = net.send_request(peer, RequestProtocol::Sync, rpc::encode(req)).await?;
    Ok(read_from::<SyncResponse>(net, peer, &bytes).await?)
}

/// Give `peer` a strike for an answer of another kind than asked (`what` names it in the log).
pub async fn wrong_kind(net: &NetHandle, peer: PeerId, what: &'static str) {
    net.malformed(peer, what).await;
}

/// Why a record a peer served was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRefused {
    /// What is wrong with it.
    pub reason: String,
    /// Whether no honest build serves it (a strike for the page; see the module docs).
    pub garbage: bool,
}

/// The record `bytes` a peer served in its sequence of `kind`, verified by `verify`
/// ([`Envelope::verify`] or [`Envelope::verify_as`]), or why not (see the module docs for which
/// failures are garbage).
pub fn check_record<T>(
    bytes: &[u8],
    kind: Kind,
    verify: impl FnOnce(&Envelope) -> Result<Verified<T>, SignedError>,
) -> Result<Verified<T>, RecordRefused> {
    let refused = |reason: String, garbage: bool| RecordRefused { reason, garbage };
    let env = Envelope::decode(bytes)
        .map_err(|e| refused(e.to_string(), !matches!(e, DecodeError::UnsupportedVersion { .. })))?;
    if env.kind() != kind {
        return Err(refused(format!("a {} record in the {kind} sequence", env.kind()), true));
    }
    verify(&env).map_err(|e| {
        let garbage = matches!(e, SignedError::BadSignature { .. });
        refused(e.to_string(), garbage)
    })
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::identity::NodeKey;
    use buildmesh_protocol::revision::RevisionHeader;
    use buildmesh_protocol::signed::Signed;
    use buildmesh_protocol::wire::{Encode as _, Message, PROTOCOL_VERSION};

    use super::*;
    use crate::mesh::test_util::{att, header};

    fn key() -> NodeKey {
        NodeKey::from_seed("answers", [9; 32]).unwrap()
    }

    #[test]
    fn garbage_answers_are_told_apart_from_newer_ones() {
        let page = SyncResponse::Page { items: vec![], next: 0, more: false };
        assert_eq!(read::<SyncResponse>(&rpc::encode(&page), 1024), Ok(page));
        for garbage in [vec![], vec![0xff; 32], vec![1], rpc::encode(&SyncResponse::LogNotFound).repeat(2)] {
            assert!(matches!(read::<SyncResponse>(&garbage, 1024), Err(Unreadable::Garbage(_))), "{garbage:?}");
        }
        for garbage in [vec![], vec![0xff; 32], vec![0], rpc::encode(&NarResponse::NotFound).repeat(2)] {
            assert!(matches!(read::<NarResponse>(&garbage, 1024), Err(Unreadable::Garbage(_))), "{garbage:?}");
            assert!(matches!(read::<ClosureResponse>(&garbage, 1024), Err(Unreadable::Garbage(_))), "{garbage:?}");
        }
        let newer = vec![SyncResponse::VARIANTS as u8, 1, 2];
        assert!(matches!(read::<SyncResponse>(&newer, 1024), Err(Unreadable::Excused(_))));
        assert!(matches!(read::<ClosureResponse>(&[3], 1024), Err(Unreadable::Excused(_))));
        assert!(matches!(read::<NarResponse>(&[3, 0], 1024), Err(Unreadable::Excused(_))));
        // Above the cap: the codec refuses such a frame first; never struck here.
        assert!(matches!(read::<SyncResponse>(&[0xff; 64], 8), Err(Unreadable::Excused(RpcError::TooLarge { .. }))));
    }

    #[test]
    fn only_records_no_build_serves_are_garbage() {
        let k = key();
        let good = Envelope::sign(&k, &Message::Attestation(att(&k, &test_path(), 1))).unwrap().to_bytes();
        let check = |b: &[u8], kind| check_record(b, kind, Envelope::verify);
        assert!(check(&good, Kind::Attestation).is_ok());
        let garbage = |b: &[u8], kind| check(b, kind).err().map(|r| r.garbage);
        // Garbage: undecodable, another kind than the sequence, a bad signature.
        assert_eq!(garbage(&[1, 2, 3], Kind::Attestation), Some(true));
        assert_eq!(garbage(&good, Kind::BuildFailure), Some(true));
        let mut forged = good.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(garbage(&forged, Kind::Attestation), Some(true));
        // Not garbage: another protocol version, or correctly signed but failing this build's
        // checks after the signature (payload, author, content).
        let mut newer = good.clone();
        newer[0] = PROTOCOL_VERSION + 1;
        assert_eq!(garbage(&newer, Kind::Attestation), Some(false));
        let undecodable = Envelope::sign_raw_payload(&k, Kind::Attestation, vec![7; 40]).to_bytes();
        assert_eq!(garbage(&undecodable, Kind::Attestation), Some(false));
        let other = NodeKey::from_seed("other", [8; 32]).unwrap();
        let payload = Message::Attestation(att(&k, &test_path(), 1)).to_bytes();
        let not_theirs = Envelope::sign_raw_payload(&other, Kind::Attestation, payload).to_bytes();
        let r = check(&not_theirs, Kind::Attestation).unwrap_err();
        assert!(!r.garbage && r.reason.contains("author"), "{}", r.reason);
        // Signed by k as builder k, but the output's Nix signature is another key's.
        let mut a = att(&other, &test_path(), 1);
        a.builder = k.node_id();
        let unchecked =
            Envelope::sign_raw_payload(&k, Kind::Attestation, Message::Attestation(a).to_bytes()).to_bytes();
        let r = check(&unchecked, Kind::Attestation).unwrap_err();
        assert!(!r.garbage && r.reason.contains("fails its checks"), "{}", r.reason);
        // Typed: revision headers the same way.
        let (h, _) = header(&k, "c1", 1, 2, 0);
        let env = Signed::sign(&k, &h).unwrap().into_envelope().to_bytes();
        let check_rev = |b: &[u8]| check_record(b, Kind::Revision, Envelope::verify_as::<RevisionHeader>);
        assert!(check_rev(&env).is_ok());
        let mut forged = env.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(check_rev(&forged).unwrap_err().garbage);
        assert!(check_rev(&good).unwrap_err().garbage);
        let unsigned_rev = Envelope::sign_raw_payload(&k, Kind::Revision, vec![1, 2, 3]).to_bytes();
        assert!(!check_rev(&unsigned_rev).unwrap_err().garbage);
    }

    fn test_path() -> buildmesh_protocol::store_path::StorePath {
        buildmesh_protocol::store_path::StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-x").unwrap()
    }
}
