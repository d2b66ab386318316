//! The standard export for auditors (issue 14): attestations as in-toto Statements v1 with a SLSA
//! provenance v1 predicate, each in a DSSE envelope signed by **its builder's** key.
//!
//! **Whose envelopes.** A builder signs the statement of its attestation when it attests and the
//! signed statement travels inside the attestation ([`buildmesh_protocol::intoto`] explains the
//! format and the checks every receiver makes). So a node exports every stored attestation that
//! carries its builder's provenance, whoever built it, as that builder signed it: the exporting
//! node adds nothing but the DSSE JSON framing (`keyid` = the builder's Nix public key).
//!
//! **What is not exported.** An attestation of another builder without a provenance (made before
//! builders signed one, by an older node, or whose statement was too large) is skipped and
//! counted ([`Census::without_envelope`]): a node never signs a statement about someone else's
//! build. The node's own attestations without one are signed at export time with its key, as
//! before (their statement also names the attestation's message id as `invocationId`).
//!
//! The HTTP export (`?format=in-toto`) reports the count in the `x-buildmesh-not-exported` header,
//! from a first pass over the store ([`census`]); `buildmesh export` prints it on stderr. The
//! export then stops at the last attestation the census saw ([`Census::through_seq`]), so the
//! headers count exactly the body even while attestations arrive.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::identity::NodeKey;
pub use buildmesh_protocol::intoto::{BUILD_TYPE, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae, rfc3339_ms};
use buildmesh_protocol::intoto::{Provenance, Statement, builder_id};
use buildmesh_protocol::signed::Verified;
use buildmesh_protocol::wire::Attestation;
use serde::{Deserialize, Serialize};

use super::{AuditError, for_each_stored, verify_stored};
use crate::store::Store;

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DsseEnvelope {
    /// [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The statement's JSON bytes, base64.
    pub payload: String,
    /// The signatures (one: the builder's).
    pub signatures: Vec<DsseSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseSignature {
    /// The signer's Nix public key (`<name>:<base64>`).
    pub keyid: String,
    /// ed25519 over [`pae`], base64.
    pub sig: String,
}

/// The envelope of a builder's provenance, as the builder signed it.
pub fn builder_envelope(att: &Attestation, p: &Provenance) -> DsseEnvelope {
    DsseEnvelope {
        payload_type: PAYLOAD_TYPE.to_string(),
        payload: BASE64.encode(&p.payload),
        signatures: vec![DsseSignature { keyid: builder_id(att).unwrap_or_default(), sig: BASE64.encode(p.signature) }],
    }
}

/// An envelope signed by `key` now, for an attestation of this node that carries no provenance
/// (made before builders signed one); `drv`: the parsed derivation when the node has it.
pub fn own_envelope(key: &NodeKey, att: &Verified<Attestation>, drv: Option<&Derivation>) -> DsseEnvelope {
    let key_id = key.nix_public_key().to_string();
    let invocation = Some(hex::encode(att.id().as_bytes()));
    let body = Statement::of(att.value(), drv, &key_id, invocation).to_bytes();
    let sig = key.sign_nix(&pae(PAYLOAD_TYPE, &body));
    DsseEnvelope {
        payload_type: PAYLOAD_TYPE.to_string(),
        payload: BASE64.encode(&body),
        signatures: vec![DsseSignature { keyid: key_id, sig: BASE64.encode(sig.bytes()) }],
    }
}

/// What an in-toto export of a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Attestations exported: those with their builder's provenance, and this node's own.
    pub exported: u64,
    /// Other builders' attestations without a provenance: not exported.
    pub without_envelope: u64,
    /// The local sequence number of the last attestation counted (`None`: none stored).
    pub through_seq: Option<u64>,
}

/// The envelope to export for `att`, if any (see the module docs).
fn envelope_of(store: &Store, key: &NodeKey, att: &Verified<Attestation>) -> Result<Option<DsseEnvelope>, AuditError> {
    let a = att.value();
    if let Some(p) = &a.provenance {
        return Ok(Some(builder_envelope(a, p)));
    }
    if a.builder != key.node_id() {
        return Ok(None);
    }
    let drv = store.get_drv(&a.drv)?.and_then(|b| Derivation::parse(&b, &a.store_dir).ok());
    Ok(Some(own_envelope(key, att, drv.as_ref())))
}

/// Count what [`export_in_toto`] would write and leave out (one pass over the store; this node's
/// own attestations are exported whatever they carry, so only the others are decoded and
/// verified here, as the export does).
pub fn census(store: &Store, key: &NodeKey) -> Result<Census, AuditError> {
    let me = key.node_id();
    let mut c = Census::default();
    for_each_stored(store, None, |stored| {
        if stored.entry.builder == me || verify_stored(stored)?.value().provenance.is_some() {
            c.exported += 1;
        } else {
            c.without_envelope += 1;
        }
        c.through_seq = Some(stored.seq);
        Ok(())
    })?;
    Ok(c)
}

/// Write one DSSE envelope per line for every attestation with its builder's provenance, and for
/// this node's own (see the module docs), up to sequence number `through` when given (a
/// [`Census::through_seq`]). Returns what was written and left out.
pub fn export_in_toto(
    store: &Store,
    key: &NodeKey,
    through: Option<u64>,
    out: &mut dyn Write,
) -> Result<Census, AuditError> {
    let mut c = Census::default();
    for_each_stored(store, through, |stored| {
        let att = verify_stored(stored)?;
        match envelope_of(store, key, &att)? {
            Some(env) => {
                serde_json::to_writer(&mut *out, &env).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
                c.exported += 1;
            }
            None => c.without_envelope += 1,
        }
        c.through_seq = Some(stored.seq);
        Ok(())
    })?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use buildmesh_protocol::id::ArtifactHash;
    use buildmesh_protocol::signed::Signed;
    use buildmesh_protocol::store_path::{StoreDir, StorePath};
    use buildmesh_protocol::wire::{BuildMode, Encode as _, OutputAttestation};

    use super::*;
    use crate::store::AttestationEntry;

    /// `key` attests `out` (NarHash bytes `h`), with its provenance or without, into `store`.
    fn attest(store: &Store, key: &NodeKey, out: &str, h: u8, provenance: bool) {
        let sd = StoreDir::nix();
        let drv = StorePath::new([h; 20], &format!("{out}.drv")).unwrap();
        let path = StorePath::new([h; 20], out).unwrap();
        let o = OutputAttestation::new_signed(
            key,
            &sd,
            path,
            [h; 32],
            8,
            BTreeSet::new(),
            ArtifactHash::from_bytes([h; 32]),
            Some(drv.clone()),
        )
        .unwrap();
        let mut a = Attestation {
            builder: key.node_id(),
            store_dir: sd,
            drv,
            mode: BuildMode::Native,
            started_at_ms: 1_000,
            finished_at_ms: 2_000,
            outputs: BTreeMap::from([("out".to_string(), o)]),
            log: None,
            provenance: None,
        };
        if provenance {
            a.provenance = Provenance::sign(key, &a, None);
        }
        let v = Signed::sign(key, &a).unwrap().verify().unwrap();
        store.insert_attestation(&AttestationEntry::of(v.id(), &v, v.envelope().to_bytes(), 3_000)).unwrap();
    }

    /// Decode an exported line and check its DSSE signature with ed25519 under `key`'s bytes,
    /// independently of the protocol crate. Returns the statement.
    fn check_line(line: &str, key: &NodeKey) -> serde_json::Value {
        let env: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(env["payloadType"], PAYLOAD_TYPE);
        assert_eq!(env["signatures"][0]["keyid"], key.nix_public_key().to_string());
        let payload = BASE64.decode(env["payload"].as_str().unwrap()).unwrap();
        let sig = BASE64.decode(env["signatures"][0]["sig"].as_str().unwrap()).unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(key.node_id().as_bytes()).unwrap();
        let mut pae = format!("DSSEv1 28 application/vnd.in-toto+json {} ", payload.len()).into_bytes();
        pae.extend_from_slice(&payload);
        vk.verify_strict(&pae, &ed25519_dalek::Signature::from_slice(&sig).unwrap()).unwrap();
        serde_json::from_slice(&payload).unwrap()
    }

    /// Another builder's provenance is exported as it signed it; another builder's attestation
    /// without one is counted, not signed; this node's own old one is signed at export time.
    #[test]
    fn the_export_carries_each_builders_own_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (me, b, old) = (
            NodeKey::from_seed("me-1", [1; 32]).unwrap(),
            NodeKey::from_seed("b-1", [2; 32]).unwrap(),
            NodeKey::from_seed("old-1", [3; 32]).unwrap(),
        );
        attest(&store, &b, "by-b", 0x0b, true);
        attest(&store, &old, "by-old", 0x0c, false);
        attest(&store, &me, "mine-old", 0x0d, false);
        attest(&store, &me, "mine-new", 0x0e, true);
        let counted = census(&store, &me).unwrap();
        assert_eq!((counted.exported, counted.without_envelope), (3, 1));
        // Stored after the census: left out of the export the census describes.
        attest(&store, &b, "by-b-later", 0x0f, true);
        let mut out = Vec::new();
        let c = export_in_toto(&store, &me, counted.through_seq, &mut out).unwrap();
        assert_eq!(c, counted, "the export is what its census counted");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let by = |name: &str| *lines.iter().find(|l| check_line_subject(l).contains(name)).unwrap();
        let st = check_line(by("-by-b"), &b);
        assert_eq!(st["subject"][0]["digest"]["sha256"], hex::encode([0x0b; 32]));
        assert_eq!(st["predicate"]["runDetails"]["builder"]["id"], b.nix_public_key().to_string());
        assert!(st["predicate"]["runDetails"]["metadata"].get("invocationId").is_none());
        let st = check_line(by("-mine-old"), &me);
        assert!(st["predicate"]["runDetails"]["metadata"]["invocationId"].is_string(), "signed at export time");
        check_line(by("-mine-new"), &me);
        assert!(!text.contains("by-old"), "never signed on another builder's behalf");
    }

    fn check_line_subject(line: &str) -> String {
        let env: serde_json::Value = serde_json::from_str(line).unwrap();
        let payload = BASE64.decode(env["payload"].as_str().unwrap()).unwrap();
        let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        st["subject"][0]["name"].as_str().unwrap().to_string()
    }
}
