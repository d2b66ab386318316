//! Auditor views over real signed attestations in a real store: query verdicts, audit classes and
//! per-builder statistics, and the JSONL export re-verified offline (tampering is caught).

use std::collections::{BTreeMap, BTreeSet};

use buildmesh::audit::{self, ExportLine};
use buildmesh::store::{AttestationEntry, AttestedOutput, Store};
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::verdict::Verdict;
use buildmesh_protocol::wire::{Attestation, BuildMode, Encode, OutputAttestation};

fn path(hash_char: char, name: &str) -> StorePath {
    StorePath::from_basename(&format!("{}-{name}", hash_char.to_string().repeat(32))).unwrap()
}

/// Signs an attestation by `key` that `drv` produced `out` with NAR hash byte `h`, and stores it.
fn attest(store: &Store, key: &NodeKey, drv: &StorePath, out: &StorePath, h: u8, emulated: bool) {
    let dir = StoreDir::nix();
    let nar = vec![h; 8];
    let output = OutputAttestation::new_signed(
        key,
        &dir,
        out.clone(),
        [h; 32],
        1000 + u64::from(h),
        BTreeSet::new(),
        ArtifactHash::of(&nar),
        Some(drv.clone()),
    )
    .unwrap();
    let att = Attestation {
        builder: key.node_id(),
        store_dir: dir,
        drv: drv.clone(),
        mode: if emulated { BuildMode::Emulated } else { BuildMode::Native },
        started_at_ms: 1_000,
        finished_at_ms: 2_000,
        outputs: BTreeMap::from([("out".to_string(), output)]),
        log: None,
        provenance: None,
    };
    let signed = Signed::sign(key, &att).unwrap();
    let verified = signed.verify().unwrap();
    let o = &verified.value().outputs["out"];
    let entry = AttestationEntry {
        id: verified.id(),
        drv: drv.clone(),
        builder: key.node_id(),
        outputs: vec![AttestedOutput { path: out.clone(), nar_hash: o.nar_hash(), nar_size: o.nar_size }],
        received_at: 3_000,
        envelope: verified.envelope().to_bytes(),
    };
    store.insert_attestation(&entry).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    keys: Vec<NodeKey>,
    drvs: Vec<StorePath>,
    outs: Vec<StorePath>,
}

/// Output 0: two builders agree (match). Output 1: two disagree (mismatch). Output 2: one builder
/// (single). Builder 0 attests output 0 twice (counts once).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let keys: Vec<NodeKey> =
        (0..3).map(|i| NodeKey::from_seed(&format!("builder-{i}"), [i + 1; 32]).unwrap()).collect();
    let drvs = vec![path('a', "same.drv"), path('b', "unrepro-x.drv"), path('c', "lonely.drv")];
    let outs = vec![path('d', "same"), path('f', "unrepro-x"), path('g', "lonely")];
    attest(&store, &keys[0], &drvs[0], &outs[0], 1, false);
    attest(&store, &keys[1], &drvs[0], &outs[0], 1, true);
    attest(&store, &keys[0], &drvs[1], &outs[1], 2, false);
    attest(&store, &keys[2], &drvs[1], &outs[1], 3, false);
    attest(&store, &keys[2], &drvs[2], &outs[2], 4, false);
    Fixture { _dir: dir, store, keys, drvs, outs }
}

#[test]
fn query_reports_every_attestation_and_the_verdict() {
    let f = fixture();
    let q = audit::query_path(&f.store, &f.outs[0]).unwrap();
    assert_eq!(q.verdict, Verdict::Match);
    assert_eq!(q.path, format!("/nix/store/{}", f.outs[0]));
    assert_eq!(q.attestations.len(), 2);
    let keys: BTreeSet<String> = q.attestations.iter().map(|a| a.builder_key.clone()).collect();
    let want: BTreeSet<String> = f.keys[..2].iter().map(|k| k.nix_public_key().to_string()).collect();
    assert_eq!(keys, want);
    assert!(q.attestations.iter().any(|a| a.emulated));
    for a in &q.attestations {
        assert!(a.signature.starts_with("builder-"), "{}", a.signature);
        assert!(a.nar_hash.starts_with("sha256:"));
    }
    assert_eq!(audit::query_path(&f.store, &f.outs[1]).unwrap().verdict, Verdict::Mismatch);
    assert_eq!(audit::query_path(&f.store, &f.outs[2]).unwrap().verdict, Verdict::Single);
    assert_eq!(audit::query_path(&f.store, &path('h', "unknown")).unwrap().verdict, Verdict::None);
    let by_drv = audit::query_drv(&f.store, &f.drvs[1]).unwrap();
    assert_eq!(by_drv.len(), 1);
    assert_eq!(by_drv[0].verdict, Verdict::Mismatch);
    // The JSON shape scripts rely on.
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["verdict"], "match");
    for field in ["builder_key", "nar_hash", "nar_size", "emulated", "signature"] {
        assert!(json["attestations"][0].get(field).is_some(), "missing {field}: {json}");
    }
}

#[test]
fn audit_classes_outputs_and_counts_per_builder() {
    let f = fixture();
    let r = audit::audit(&f.store).unwrap();
    assert_eq!(r.outputs.len(), 3);
    assert_eq!((r.totals["match"], r.totals["mismatch"], r.totals["inconclusive"]), (1, 1, 1));
    let b2 = r.builders.iter().find(|b| b.builder_key == f.keys[2].nix_public_key().to_string()).unwrap();
    assert_eq!((b2.outputs, b2.mismatched, b2.single, b2.matched), (2, 1, 1, 0));
}

#[test]
fn export_verifies_offline_and_tampering_is_caught() {
    let f = fixture();
    let mut out = Vec::new();
    assert_eq!(audit::export_jsonl(&f.store, &mut out).unwrap(), 5);
    let report = audit::verify_export(&mut out.as_slice()).unwrap();
    assert_eq!((report.lines, report.valid, report.bad.len()), (5, 5, 0));
    assert_eq!(report.audit.totals["mismatch"], 1);

    // Change a readable field: caught by comparison with the envelope.
    let text = String::from_utf8(out.clone()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut l: ExportLine = serde_json::from_str(&lines[0]).unwrap();
    let first = l.outputs.keys().next().unwrap().clone();
    l.outputs.insert(first, "sha256:0000000000000000000000000000000000000000000000000000".into());
    lines[0] = serde_json::to_string(&l).unwrap();
    // Flip one byte inside the envelope's signed payload: the signature no longer verifies.
    let mut l2: ExportLine = serde_json::from_str(&lines[1]).unwrap();
    use base64::Engine as _;
    let mut env = base64::engine::general_purpose::STANDARD.decode(&l2.envelope).unwrap();
    let mid = env.len() / 2;
    env[mid] ^= 1;
    l2.envelope = base64::engine::general_purpose::STANDARD.encode(env);
    lines[1] = serde_json::to_string(&l2).unwrap();
    let tampered = lines.join("\n");
    let report = audit::verify_export(&mut tampered.as_bytes()).unwrap();
    assert_eq!(report.valid, 3);
    let bad: Vec<u64> = report.bad.iter().map(|b| b.line).collect();
    assert_eq!(bad, vec![1, 2], "{:?}", report.bad);
    assert!(report.bad[0].reason.contains("outputs"), "{}", report.bad[0].reason);
}
