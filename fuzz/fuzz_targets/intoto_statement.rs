//! Arbitrary bytes as the in-toto statement a builder's provenance carries (issue 14). Nothing
//! may panic: what parses prints back to a statement that parses to the same value, and the
//! bytes, signed by the builder of a fixed attestation (so that the fuzzer gets past the
//! signature), are checked against that attestation.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::intoto::{PAYLOAD_TYPE, Provenance, Statement, pae};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, OutputAttestation};
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static (NodeKey, Attestation) {
    static F: OnceLock<(NodeKey, Attestation)> = OnceLock::new();
    F.get_or_init(|| {
        let key = NodeKey::from_seed("fuzz-1", [7; 32]).expect("a key");
        let sd = StoreDir::nix();
        let drv = StorePath::new([1; 20], "seed-1.drv").expect("a path");
        let o = OutputAttestation::new_signed(
            &key,
            &sd,
            StorePath::new([2; 20], "seed-1").expect("a path"),
            [5; 32],
            112,
            BTreeSet::new(),
            ArtifactHash::from_bytes([6; 32]),
            Some(drv.clone()),
        )
        .expect("an output");
        let a = Attestation {
            builder: key.node_id(),
            store_dir: sd,
            drv,
            mode: BuildMode::Native,
            started_at_ms: 1_796_000_000_000,
            finished_at_ms: 1_796_000_000_010,
            outputs: BTreeMap::from([("out".to_string(), o)]),
            log: None,
            provenance: None,
        };
        (key, a)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = Statement::parse(data) {
        assert_eq!(Statement::parse(&st.to_bytes()).as_ref(), Ok(&st), "a parsed statement must print back");
    }
    let (key, att) = fixture();
    let p = Provenance { signature: *key.sign_nix(&pae(PAYLOAD_TYPE, data)).bytes(), payload: data.to_vec() };
    let _ = p.verify(att);
});
