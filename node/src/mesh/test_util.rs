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
        log: None,
        provenance: None,
    }
}

/// A small valid manifest of `n` derivations (one job each), salted by `salt`, and its encoding.
pub(crate) fn manifest(n: u8, salt: u8) -> (buildmesh_protocol::revision::Manifest, Vec<u8>) {
    use buildmesh_protocol::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput};
    let drvs: Vec<ManifestDrv> = (0..n)
        .map(|i| ManifestDrv {
            drv: StorePath::new(
                [i, salt, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
                &format!("p{i}.drv"),
            )
            .unwrap(),
            system: 0,
            inputs: if i == 0 { vec![] } else { vec![0] },
            outputs: vec![ManifestOutput {
                name: "out".into(),
                path: StorePath::new([i, salt, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], &format!("p{i}"))
                    .unwrap(),
            }],
        })
        .collect();
    let mut drvs = drvs;
    drvs.sort_by(|a, b| a.drv.cmp(&b.drv));
    // Inputs point at the (sorted) index of p0.
    let p0 = drvs.iter().position(|d| d.inputs.is_empty()).unwrap() as u32;
    for d in &mut drvs {
        if !d.inputs.is_empty() {
            d.inputs = vec![p0];
        }
    }
    let mut jobs: Vec<ManifestJob> = drvs
        .iter()
        .enumerate()
        .map(|(i, d)| ManifestJob {
            drv: i as u32,
            package: d.drv.name().trim_end_matches(".drv").into(),
            version: "1".into(),
        })
        .collect();
    jobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
    let m = Manifest { store_dir: StoreDir::nix(), systems: vec!["x86_64-linux".into()], drvs, jobs };
    let bytes = m.encode_to_vec();
    (m, bytes)
}

/// A header by `key` for `manifest(n, salt)`, made at `at`, on `guix`/`master` at commit `commit`.
pub(crate) fn header(
    key: &NodeKey,
    commit: &str,
    at: u64,
    n: u8,
    salt: u8,
) -> (buildmesh_protocol::revision::RevisionHeader, Vec<u8>) {
    let (m, bytes) = manifest(n, salt);
    let h = buildmesh_protocol::revision::RevisionHeader::for_manifest(
        key.node_id(),
        at,
        "guix",
        "master",
        commit,
        2,
        &m,
        &bytes,
    )
    .unwrap();
    (h, bytes)
}
