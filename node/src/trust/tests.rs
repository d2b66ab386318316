//! Unit tests of the trust rule on a real store.

use std::collections::BTreeSet;

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::nar::tree::Node;
use buildmesh_protocol::store_path::{make_store_path, make_text_path};

use super::inputs::{InputProblem, InputState, check_inputs, input_state};
use super::*;
use crate::store::AttestationEntry;
use buildmesh_protocol::wire::BuildMode;

fn nar(contents: &[u8]) -> Vec<u8> {
    Node::Regular { executable: false, contents: contents.to_vec() }.to_nar().unwrap()
}

fn register(store: &Store, path: &StorePath, nar: &[u8], ca: Option<String>) -> PathInfo {
    let blob = store.put_nar(&mut &nar[..]).unwrap();
    let info = PathInfo {
        path: path.clone(),
        nar_hash: blob.nar_hash,
        nar_size: blob.nar_size,
        references: BTreeSet::new(),
        deriver: None,
        ca,
        blob: blob.blake3,
        registered_at: 1,
    };
    store.register_path(&info).unwrap();
    info
}

/// Store a real signed attestation by `key` that `path` has the NAR `nar`.
fn attest(store: &Store, key: &NodeKey, path: &StorePath, nar: &[u8]) {
    let drv = StorePath::from_basename("mh08qwc103ql42f2zc4ka9nhz976z7m8-x.drv").unwrap();
    attest_as(store, key, path, nar, &drv, BuildMode::Native);
}

/// [`attest`] for the derivation `drv`, built in `mode`.
fn attest_as(store: &Store, key: &NodeKey, path: &StorePath, nar: &[u8], drv: &StorePath, mode: BuildMode) {
    use buildmesh_protocol::wire::{Encode as _, OutputAttestation};
    let sd = StoreDir::nix();
    let blob = store.put_nar(&mut &nar[..]).unwrap();
    let digest: [u8; 32] = blob.nar_hash.digest().try_into().unwrap();
    let out = OutputAttestation::new_signed(
        key,
        &sd,
        path.clone(),
        digest,
        blob.nar_size,
        BTreeSet::new(),
        blob.blake3,
        None,
    )
    .unwrap();
    let a = Attestation {
        builder: key.node_id(),
        store_dir: sd,
        drv: drv.clone(),
        mode,
        started_at_ms: 1,
        finished_at_ms: 2,
        outputs: [("out".to_string(), out)].into(),
        log: None,
        provenance: None,
    };
    let v = Signed::sign(key, &a).unwrap().verify().unwrap();
    let entry = AttestationEntry {
        id: v.id(),
        drv: drv.clone(),
        builder: key.node_id(),
        outputs: vec![crate::store::AttestedOutput {
            path: path.clone(),
            nar_hash: blob.nar_hash,
            nar_size: blob.nar_size,
        }],
        received_at: 1,
        envelope: v.envelope().to_bytes(),
    };
    store.insert_attestation(&entry).unwrap();
}

fn sd() -> StoreDir {
    StoreDir::nix()
}

#[test]
fn text_source_certifies_itself_and_other_bytes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = NodeKey::from_seed("me", [1; 32]).unwrap();
    let trust = standalone(me.node_id());
    let text = make_text_path(&sd(), "lib.sh", b"echo hi\n", []).unwrap();
    let ca = crate::content_address::of_nar(
        &sd(),
        &text,
        [],
        &sha(&nar(b"echo hi\n")),
        nar(b"echo hi\n").len() as u64,
        &nar(b"echo hi\n")[..],
    )
    .unwrap()
    .unwrap();
    register(&store, &text, &nar(b"echo hi\n"), Some(ca.clone()));
    match judge(&store, &sd(), &trust, &text).unwrap() {
        Judgement::ContentAddressed(_, c) => assert_eq!(c, ca),
        other => panic!("{other:?}"),
    }
    // A path with other bytes that claims a CA: refused.
    let fake = make_text_path(&sd(), "fake.sh", b"reviewed\n", []).unwrap();
    register(&store, &fake, &nar(b"evil\n"), Some(ca));
    assert!(matches!(judge(&store, &sd(), &trust, &fake).unwrap(), Judgement::Refused(Refusal::Unattested)));
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

#[test]
fn an_unattested_registration_is_refused_and_an_own_attested_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = NodeKey::from_seed("me", [1; 32]).unwrap();
    let other = NodeKey::from_seed("other", [2; 32]).unwrap();
    let trust = standalone(me.node_id());
    let out = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-glibc-2.38").unwrap();
    register(&store, &out, &nar(b"uploaded"), None);
    assert!(matches!(judge(&store, &sd(), &trust, &out).unwrap(), Judgement::Refused(Refusal::Unattested)));
    attest(&store, &other, &out, &nar(b"uploaded"));
    assert!(matches!(
        judge(&store, &sd(), &trust, &out).unwrap(),
        Judgement::Refused(Refusal::NoQuorum { trusted: 0, quorum: 1 })
    ));
    // This node built it with other bytes: those are accepted; the registration is a conflict
    // that can be repaired from the stored blob.
    attest(&store, &me, &out, &nar(b"built"));
    let j = judge(&store, &sd(), &trust, &out).unwrap();
    assert_eq!(j.nar_hash(), Some(NixHash::sha256(sha(&nar(b"built")))));
    assert!(matches!(input_state(&store, &sd(), &trust, &out).unwrap(), InputState::Repairable(_)));
    assert_eq!(check_inputs(&store, &sd(), &trust, None, [&out]).unwrap(), 1);
    assert_eq!(store.path_info(&out).unwrap().unwrap().nar_hash, NixHash::sha256(sha(&nar(b"built"))));
    assert_eq!(store.quarantined(0).unwrap().len(), 1);
    assert!(matches!(input_state(&store, &sd(), &trust, &out).unwrap(), InputState::Ready(_)));
    // Served NAR: only the accepted one.
    assert!(serve::nar_servable(&store, &sd(), &trust, &sha(&nar(b"built"))).unwrap());
    assert!(!serve::nar_servable(&store, &sd(), &trust, &sha(&nar(b"uploaded"))).unwrap());
}

#[test]
fn a_disputed_input_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let k: Vec<NodeKey> = (1..=2).map(|i| NodeKey::from_seed("k", [i; 32]).unwrap()).collect();
    let trust = TrustConfig {
        trusted: Some(k.iter().map(|k| k.node_id()).collect()),
        quorum: 2,
        needs_native: false,
        no_emulation_for: Default::default(),
    };
    let out = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
    attest(&store, &k[0], &out, &nar(b"one"));
    match input_state(&store, &sd(), &trust, &out).unwrap() {
        InputState::Problem(p @ InputProblem::NotAccepted { .. }) => assert!(p.may_resolve(), "{p}"),
        other => panic!("{other:?}"),
    }
    attest(&store, &k[1], &out, &nar(b"two"));
    match input_state(&store, &sd(), &trust, &out).unwrap() {
        InputState::Problem(p) => {
            assert!(!p.may_resolve(), "{p}");
            assert!(p.to_string().contains("disagree"), "{p}");
        }
        other => panic!("{other:?}"),
    }
}

/// Removes every stored blob file under `dir` (the blob of each NAR is named by its blake3).
fn remove_blob_files(dir: &std::path::Path, info: &PathInfo) -> usize {
    let name = info.blob.to_string();
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().contains(&name) {
                std::fs::remove_file(&p).unwrap();
                removed += 1;
            }
        }
    }
    removed
}

#[test]
fn a_source_path_is_checked_from_its_nar_hash_without_opening_its_blob() {
    // The NAR route runs this lookup on every request: a `source` path's address needs its
    // NarHash only, so its blob is not opened (with the blob gone the answer is the same), while
    // a `text` path's check reads the stored bytes (and fails without them).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = nar(b"source bytes\n");
    let source = make_store_path(&sd(), "source", &sha(&bytes), "src").unwrap();
    let ca = format!("fixed:r:sha256:{}", buildmesh_protocol::nixbase32::encode(&sha(&bytes)));
    let info = register(&store, &source, &bytes, Some(ca.clone()));
    let text = make_text_path(&sd(), "t.sh", b"echo t\n", []).unwrap();
    let text_nar = nar(b"echo t\n");
    let text_ca =
        crate::content_address::of_nar(&sd(), &text, [], &sha(&text_nar), text_nar.len() as u64, &text_nar[..])
            .unwrap()
            .unwrap();
    let text_info = register(&store, &text, &text_nar, Some(text_ca));
    assert!(remove_blob_files(dir.path(), &info) > 0 && remove_blob_files(dir.path(), &text_info) > 0);
    assert_eq!(content_address(&store, &sd(), &info).unwrap(), Some(ca));
    assert!(content_address(&store, &sd(), &text_info).is_err());
}

#[test]
fn no_emulation_for_keeps_emulated_builds_of_that_system_out_of_the_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let k: Vec<NodeKey> = (1..=3).map(|i| NodeKey::from_seed("k", [i; 32]).unwrap()).collect();
    let plain = TrustConfig {
        trusted: Some(k.iter().map(|k| k.node_id()).collect()),
        quorum: 2,
        needs_native: false,
        no_emulation_for: BTreeSet::new(),
    };
    let strict = TrustConfig { no_emulation_for: BTreeSet::from(["aarch64-linux".to_string()]), ..plain.clone() };
    // One derivation per system, each built by two emulating builders that agree.
    let mut outs = Vec::new();
    for (i, system) in ["aarch64-linux", "armv7l-linux"].into_iter().enumerate() {
        let out = StorePath::from_basename(&format!("an8vyn8v0lxs937kjy709ghv3zp4wms{i}-emu")).unwrap();
        let mut d = buildmesh_protocol::derivation::Derivation {
            system: system.as_bytes().to_vec(),
            builder: b"/bin/sh".to_vec(),
            ..Default::default()
        };
        d.outputs.insert("out".into(), buildmesh_protocol::derivation::Output::input_addressed(Some(out.clone())));
        let drv = StorePath::from_basename(&format!("mh08qwc103ql42f2zc4ka9nhz976z7m{i}-emu.drv")).unwrap();
        for key in &k[..2] {
            attest_as(&store, key, &out, &nar(system.as_bytes()), &drv, BuildMode::Emulated);
        }
        outs.push((out, drv, d));
    }
    let (arm64, arm64_drv, arm64_d) = &outs[0];
    let (armv7, armv7_drv, armv7_d) = &outs[1];
    // Without the setting both count; with it, while the .drv is not here the system is
    // unknown, and an unknown system's emulated results do not count.
    assert!(matches!(judge(&store, &sd(), &plain, arm64).unwrap(), Judgement::Attested(_)));
    match judge(&store, &sd(), &strict, armv7).unwrap() {
        Judgement::Refused(r @ Refusal::EmulationExcluded { excluded: 2, system: None, trusted: 0, quorum: 2 }) => {
            assert!(r.may_resolve() && r.to_string().contains("not stored here"), "{r}")
        }
        other => panic!("{other:?}"),
    }
    // With the .drv stored: aarch64 stays refused (kept and shown, but not counted), the other
    // system's emulated builds count.
    store.put_drv(arm64_drv, &arm64_d.to_aterm(&sd())).unwrap();
    store.put_drv(armv7_drv, &armv7_d.to_aterm(&sd())).unwrap();
    match judge(&store, &sd(), &strict, arm64).unwrap() {
        Judgement::Refused(r @ Refusal::EmulationExcluded { excluded: 2, trusted: 0, .. }) => {
            assert!(
                r.to_string().contains("emulation for aarch64-linux") && r.to_string().contains("no_emulation_for"),
                "{r}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.attestations_for_output(arm64).unwrap().len(), 2, "the attestations are kept");
    assert!(matches!(judge(&store, &sd(), &strict, armv7).unwrap(), Judgement::Attested(_)));
    // A native builder and an emulated one: the emulated one does not make the quorum of two;
    // a second native one does, and the NAR is served then.
    let third = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms9-emu").unwrap();
    attest_as(&store, &k[0], &third, &nar(b"x"), arm64_drv, BuildMode::Emulated);
    attest_as(&store, &k[1], &third, &nar(b"x"), arm64_drv, BuildMode::Native);
    assert!(matches!(
        judge(&store, &sd(), &strict, &third).unwrap(),
        Judgement::Refused(Refusal::EmulationExcluded { excluded: 1, trusted: 1, quorum: 2, .. })
    ));
    assert!(!serve::nar_servable(&store, &sd(), &strict, &sha(&nar(b"x"))).unwrap());
    attest_as(&store, &k[2], &third, &nar(b"x"), arm64_drv, BuildMode::Native);
    assert!(matches!(judge(&store, &sd(), &strict, &third).unwrap(), Judgement::Attested(_)));
    assert!(serve::nar_servable(&store, &sd(), &strict, &sha(&nar(b"x"))).unwrap());
}
