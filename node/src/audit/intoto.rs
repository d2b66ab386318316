//! The standard export for auditors (issue 14): attestations as in-toto Statements v1 with a SLSA
//! provenance v1 predicate, each in a DSSE envelope signed by the builder's key.
//!
//! **Who signs.** A DSSE signature by a builder's key can only be made by that builder. So a node
//! exports the attestations **it built itself**, signing each envelope with its node key at export
//! time (the statement is a function of the signed attestation and the derivation, so the same
//! attestation always yields the same statement); it never signs a statement about another
//! builder's build. To export the mesh, ask each builder (`buildmesh export --api <node>`); the
//! buildmesh export (`?format=jsonl`) still carries every builder's own signed envelope.
//!
//! The statement: one subject per output, `name` = the output's store path, `digest.sha256` = its
//! NarHash in hex (the sha256 of the NAR, as Nix computes it); `predicate.buildDefinition`:
//! `buildType` [`BUILD_TYPE`], `externalParameters.derivation` = the `.drv` path,
//! `internalParameters.system`, `resolvedDependencies` = the derivation's input derivations and
//! input sources (when the node holds the `.drv`); `predicate.runDetails.builder.id` = the
//! builder's Nix public key (`<name>:<base64>`), `metadata` = the attestation's message id and
//! start and end times. DSSE: `payloadType` [`PAYLOAD_TYPE`], the signature is ed25519 over
//! [`pae`] by the node key, `keyid` = the same Nix public key string.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Verified;
use buildmesh_protocol::wire::{Attestation, BuildMode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AuditError, for_each_attestation};
use crate::store::Store;

/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The build type: a Nix-style derivation built by a buildmesh node.
pub const BUILD_TYPE: &str = "https://buildmesh.invalid/buildtypes/derivation/v1";

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

/// DSSE's pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-06T19:20:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The in-toto statement of one attestation (`drv`: the parsed derivation when the node has it).
pub fn statement(att: &Verified<Attestation>, drv: Option<&Derivation>, builder_key: &str) -> serde_json::Value {
    let a = att.value();
    let sd = &a.store_dir;
    let subject: Vec<serde_json::Value> = a
        .outputs
        .values()
        .map(|o| json!({ "name": sd.display(&o.path), "digest": { "sha256": hex::encode(o.nar_hash) } }))
        .collect();
    let mut deps: Vec<serde_json::Value> = Vec::new();
    let mut internal = json!({ "emulated": a.mode == BuildMode::Emulated });
    if let Some(d) = drv {
        for p in d.input_drvs.keys() {
            deps.push(json!({ "uri": sd.display(p), "name": p.to_string() }));
        }
        for p in &d.input_srcs {
            deps.push(json!({ "uri": sd.display(p), "name": p.to_string() }));
        }
        internal["system"] = json!(String::from_utf8_lossy(&d.system));
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": { "derivation": sd.display(&a.drv) },
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": { "id": builder_key },
                "metadata": {
                    "invocationId": hex::encode(att.id().as_bytes()),
                    "startedOn": rfc3339_ms(a.started_at_ms),
                    "finishedOn": rfc3339_ms(a.finished_at_ms),
                },
            },
        },
    })
}

/// The statement's bytes in a DSSE envelope signed by `key`.
pub fn envelope(key: &NodeKey, statement: &serde_json::Value) -> DsseEnvelope {
    let body = serde_json::to_vec(statement).unwrap_or_default();
    let sig = key.sign_nix(&pae(PAYLOAD_TYPE, &body));
    DsseEnvelope {
        payload_type: PAYLOAD_TYPE.to_string(),
        payload: BASE64.encode(&body),
        signatures: vec![DsseSignature { keyid: key.nix_public_key().to_string(), sig: BASE64.encode(sig.bytes()) }],
    }
}

/// Write one DSSE envelope per line for every attestation `key` built (see the module docs for
/// why only those). Returns how many were written.
pub fn export_in_toto(store: &Store, key: &NodeKey, out: &mut dyn Write) -> Result<u64, AuditError> {
    let me = key.node_id();
    let key_id = key.nix_public_key().to_string();
    let mut n = 0u64;
    for_each_attestation(store, |_, att| {
        if att.value().builder != me {
            return Ok(());
        }
        let a = att.value();
        let drv = store.get_drv(&a.drv)?.and_then(|b| Derivation::parse(&b, &a.store_dir).ok());
        let env = envelope(key, &statement(&att, drv.as_ref(), &key_id));
        serde_json::to_writer(&mut *out, &env).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_584_800_000), "2026-12-06T19:20:00.000Z");
    }
}
