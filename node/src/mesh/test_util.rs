//! Helpers shared by the mesh module's unit tests.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, OutputAttestation};

/// A signed-for-Nix attestation by `key` that `path` has NarHash bytes `hash`.
pub(crate) fn att(key: &NodeKey, path: &StorePath, hash: u8) -> Attestation {
    let sd = StoreDir::nix();
    let o = OutputAttestation::new_signed(
        key,
        &sd,
        path.clone(),
        [hash; 32],
        10,
        BTreeSet::new(),
        ArtifactHash::from_bytes([0; 32]),
        None,
    )
    .unwrap();
    Attestation {
        builder: key.node_id(),
        store_dir: sd,
        drv: StorePath::from_basename("mh08qwc103ql42f2zc4ka9nhz976z7m8-x.drv").unwrap(),
        mode: BuildMode::Native,
        started_at_ms: 1,
        finished_at_ms: 2,
        outputs: BTreeMap::from([("out".to_string(), o)]),
    }
}
