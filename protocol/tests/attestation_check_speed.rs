//! What the builder-signed provenance (in-toto, attestation extension 3) costs a receiver: decoding
//! and verifying a signed attestation with and without it, the check every node makes on gossip,
//! anti-entropy sync and start-up restore. A benchmark, not a check: it prints a table and asserts
//! nothing about time.
//!
//! `cargo test --release -p buildmesh-protocol --test attestation_check_speed -- --ignored --nocapture`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::intoto::Provenance;
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, Encode as _, OutputAttestation};

const N: usize = 2_000;

/// Attestation `i` by `key` of a derivation with `outputs` outputs, signed, as wire bytes.
fn signed(key: &NodeKey, i: usize, outputs: usize, provenance: bool) -> Vec<u8> {
    let sd = StoreDir::nix();
    let mut d = [0u8; 20];
    d[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let drv = StorePath::new(d, &format!("pkg{i}-1.0.drv")).unwrap();
    let outs = (0..outputs)
        .map(|o| {
            let name = if o == 0 { "out".to_string() } else { format!("out{o}") };
            let mut p = d;
            p[19] = o as u8 + 1;
            let path = StorePath::new(p, &format!("pkg{i}-1.0-{name}")).unwrap();
            let att = OutputAttestation::new_signed(
                key,
                &sd,
                path,
                [o as u8; 32],
                4096,
                BTreeSet::new(),
                ArtifactHash::from_bytes([7; 32]),
                Some(drv.clone()),
            )
            .unwrap();
            (name, att)
        })
        .collect();
    let mut a = Attestation {
        builder: key.node_id(),
        store_dir: sd,
        drv,
        mode: BuildMode::Native,
        started_at_ms: 1_700_000_000_000,
        finished_at_ms: 1_700_000_060_000,
        outputs: outs,
        log: None,
        provenance: None,
    };
    if provenance {
        a.provenance = Provenance::sign(key, &a, None);
        assert!(a.provenance.is_some());
    }
    Signed::sign(key, &a).unwrap().envelope().to_bytes()
}

/// Decode and verify every message (signature, outputs' signatures, and the provenance when
/// present); the best of 3 rounds.
fn verify_all(msgs: &[Vec<u8>]) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for m in msgs {
                Signed::<Attestation>::decode(m).unwrap().verify().unwrap();
            }
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
#[ignore = "benchmark: prints a table"]
fn attestation_check_speed() {
    let key = NodeKey::from_seed("bench-1", [9; 32]).unwrap();
    println!("| outputs | provenance | bytes per message | checks per second (one core) | µs per check |");
    println!("|---:|---|---:|---:|---:|");
    for outputs in [1usize, 3] {
        for provenance in [false, true] {
            let msgs: Vec<Vec<u8>> = (0..N).map(|i| signed(&key, i, outputs, provenance)).collect();
            let bytes = msgs.iter().map(Vec::len).sum::<usize>() / N;
            let took = verify_all(&msgs);
            println!(
                "| {outputs} | {} | {bytes} | {:.0} | {:.1} |",
                if provenance { "yes" } else { "no" },
                N as f64 / took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / N as f64
            );
        }
    }
}
