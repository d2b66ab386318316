//! The mesh benchmark (ignored; run with
//! `cargo test -p buildmesh-tests --release --test mesh_bench -- --ignored --nocapture`). It prints:
//!
//! 1. in a 20-node local mesh (real `buildmesh node` processes on 127.0.0.1, second-scale timers),
//!    with 20 independent jobs built twice each: the attestation propagation time (build end on
//!    the builder to acceptance on every other node; median and p99) and the gossip messages and
//!    payload bytes per node per job; the gossipsub wire bytes (every copy sent or received,
//!    duplicates included, from `GET /metrics`) per node per attestation against the mean encoded
//!    size of an attestation (goal: at most 3x);
//! 2. the catch-up time of a node that missed 10,000 attestations (anti-entropy from one peer).

mod mesh_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use buildmesh::mesh::sync::{Entry, entry_of};
use buildmesh::store::Store;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, Message, OutputAttestation};
use mesh_support::*;

const NODES: usize = 20;
/// Jobs in the submission (`BUILDMESH_BENCH_JOBS` overrides; larger submissions batch more).
fn jobs() -> usize {
    std::env::var("BUILDMESH_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}
const MISSED: usize = 10_000;

/// The gossip topics (`buildmesh/<name>/1`).
const TOPICS: [&str; 5] = ["announce", "job", "claim", "attest", "failure"];

/// Node `i`'s metrics per topic, in the order of [`TOPICS`].
fn topic_metrics(c: &Cluster, i: usize) -> Vec<BTreeMap<String, f64>> {
    TOPICS.iter().map(|t| c.metrics(i, &format!("buildmesh/{t}/1"))).collect()
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn synthetic_attestations(key: &NodeKey, n: usize) -> Vec<buildmesh::store::AttestationEntry> {
    let sd = StoreDir::nix();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    (0..n)
        .map(|i| {
            let mut digest = [0u8; 20];
            digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let path = StorePath::new(digest, "bench-out").unwrap();
            digest[19] = 1;
            let drv = StorePath::new(digest, "bench.drv").unwrap();
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let o = OutputAttestation::new_signed(
                key,
                &sd,
                path,
                h,
                128,
                Default::default(),
                ArtifactHash::from_bytes(h),
                Some(drv.clone()),
            )
            .unwrap();
            let mut a = Attestation {
                builder: key.node_id(),
                store_dir: sd.clone(),
                drv,
                mode: BuildMode::Native,
                started_at_ms: now - 1000,
                finished_at_ms: now,
                outputs: BTreeMap::from([("out".to_string(), o)]),
                log: None,
                provenance: None,
            };
            // As a builder makes them now: with its signed in-toto provenance (extension 3).
            a.provenance = buildmesh_protocol::intoto::Provenance::sign(key, &a, None);
            let v = Envelope::sign(key, &Message::Attestation(a)).unwrap().verify().unwrap();
            match entry_of(&v) {
                Some(Entry::Attestation(e)) => e,
                _ => unreachable!(),
            }
        })
        .collect()
}

/// Rows of the table.
type Rows = Vec<(String, String)>;

#[test]
#[ignore = "benchmark: prints a table (MESH_BENCH_PART selects a part)"]
fn mesh_bench() {
    let part = std::env::var("MESH_BENCH_PART").unwrap_or_default();
    let mut rows = Rows::new();
    if part.is_empty() || part == "propagation" {
        propagation(&mut rows);
    }
    if part.is_empty() || part == "catch-up" {
        catch_up(&mut rows);
    }
    println!();
    println!("| mesh benchmark | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

fn propagation(rows: &mut Rows) {
    // ---- 1. propagation and overhead in a 20-node mesh ----
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // The test timers, except those that shape gossipsub itself, which keep their defaults: the
    // heartbeat (1 s; at the tests' 200 ms, lazy gossip offers each message to non-mesh peers
    // before the mesh copy arrives, so they fetch it twice) and the republish intervals (120 s;
    // they set the duplicate window to half the shorter one, and the tests' 2 s would make it
    // 1 s, shorter than lazy gossip's history). Nothing is republished during the measurement.
    let mesh = FAST_MESH
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((k @ ("resubmit_interval_ms" | "republish_interval_ms"), _)) => format!("{k} = 120000"),
            Some((k @ "heartbeat_ms", _)) => format!("{k} = 1000"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Cluster::start_with_mesh(tmp.path(), NODES, &[], &mesh);
    let startup = t0.elapsed();
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let jobs = jobs();
    let drvs: Vec<_> = (0..jobs).map(|i| d.add(&format!("bench-job-{i}"), &format!("echo {i} > $out"), &[])).collect();
    let before: Vec<serde_json::Value> = (0..NODES).map(|i| c.mesh(i)).collect();
    let metrics_before: Vec<_> = (0..NODES).map(|i| topic_metrics(&c, i)).collect();
    let t1 = Instant::now();
    let abs: Vec<String> = drvs.iter().map(|(drv, _)| sd().display(drv)).collect();
    c.submit(0, &dir, &abs, 2);
    for (drv, _) in &drvs {
        wait_state(&c.urls[0], drv, "done", Duration::from_secs(300));
    }
    let all_done = t1.elapsed();
    // Let the last attestations reach everyone.
    std::thread::sleep(Duration::from_secs(2));
    let mut delays: Vec<u64> = Vec::new();
    let (mut msgs, mut bytes, mut synced, mut batched) = (0u64, 0u64, 0u64, 0u64);
    for (i, prev) in before.iter().enumerate() {
        let (_, j) = get_json(&format!("{}/api/v1/mesh/delays", c.urls[i]));
        delays.extend(j["attestation_delay_ms"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()));
        let now = c.mesh(i);
        let diff = |k: &str| now["gossip"][k].as_u64().unwrap() - prev["gossip"][k].as_u64().unwrap();
        msgs += diff("accepted") + diff("ignored") + diff("rejected") + diff("published");
        bytes += diff("bytes_in") + diff("bytes_out");
        batched += diff("batched_items");
        synced += now["sync"]["attestations"].as_u64().unwrap() - prev["sync"]["attestations"].as_u64().unwrap();
    }
    delays.sort_unstable();
    let per = (NODES * jobs) as f64;
    let elapsed = t1.elapsed().as_secs_f64();
    // Wire-level gossip per topic: every copy of every message, duplicates included.
    let mut wire = BTreeMap::<(&str, &str), f64>::new();
    for (i, before) in metrics_before.iter().enumerate() {
        for (t, now) in TOPICS.iter().zip(topic_metrics(&c, i)) {
            for (key, metric) in [
                ("in", "gossipsub_topic_msg_recv_bytes_unfiltered_total"),
                ("out", "gossipsub_topic_msg_sent_bytes_total"),
                ("copies", "gossipsub_topic_msg_recv_counts_unfiltered_total"),
                ("published", "gossipsub_topic_msg_published_total"),
            ] {
                let prev = before[TOPICS.iter().position(|x| x == t).unwrap()].get(metric).copied().unwrap_or(0.0);
                *wire.entry((t, key)).or_default() += now.get(metric).copied().unwrap_or(0.0) - prev;
            }
        }
    }
    // Mean encoded size of the attestations these jobs produced (the signed envelope's bytes).
    let (_, export) = get(&format!("{}/api/v1/attestations?format=jsonl", c.urls[0]));
    let sizes: Vec<usize> = String::from_utf8(export)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let b64 = v["envelope"].as_str().unwrap();
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b64).unwrap().len()
        })
        .collect();
    let attestations = sizes.len() as f64;
    let att_size = sizes.iter().sum::<usize>() as f64 / attestations.max(1.0);
    let per_att = (NODES as f64) * attestations.max(1.0);
    rows.push((
        format!("mesh start ({NODES} nodes on 127.0.0.1 see each other)"),
        format!("{:.1} s", startup.as_secs_f64()),
    ));
    rows.push((
        format!("{jobs} jobs (k = 2) submitted to done on the submitter"),
        format!("{:.1} s", all_done.as_secs_f64()),
    ));
    rows.push((
        format!("attestation propagation, build end to accepted, median ({} samples)", delays.len()),
        format!("{} ms", quantile(&delays, 0.5)),
    ));
    rows.push(("attestation propagation, p99".into(), format!("{} ms", quantile(&delays, 0.99))));
    rows.push(("attestations that reached a node by anti-entropy rather than gossip".into(), format!("{synced}")));
    rows.push(("gossip messages per node per job (in + out)".into(), format!("{:.1}", msgs as f64 / per)));
    rows.push(("gossip payload bytes per node per job (in + out)".into(), format!("{:.0}", bytes as f64 / per)));
    rows.push(("job submissions and claims published inside batches (all nodes)".into(), format!("{batched}")));
    rows.push(("attestations produced / mean encoded size".to_string(), format!("{attestations} / {att_size:.0} B")));
    let w = |t: &str, k: &str| wire.get(&(t, k)).copied().unwrap_or(0.0);
    rows.push((
        "gossipsub wire bytes received per node per attestation, attestation topic (duplicates included)".into(),
        format!(
            "{:.0} B in {:.2} copies = {:.2}x the attestation (goal <= 3x)",
            w("attest", "in") / per_att,
            w("attest", "copies") / per_att,
            w("attest", "in") / per_att / att_size
        ),
    ));
    for t in ["job", "claim", "failure"] {
        rows.push((
            format!("gossipsub wire bytes received per node per job, {t} topic"),
            format!(
                "{:.0} B in {:.2} copies of {:.2} messages",
                w(t, "in") / per,
                w(t, "copies") / per,
                w(t, "published") / jobs as f64
            ),
        ));
    }
    let job_total: f64 = ["job", "claim", "attest", "failure"].iter().map(|t| w(t, "in")).sum::<f64>() / per;
    rows.push((
        "all job gossip received per node per job (job + claims + k attestations + failures)".into(),
        format!("{job_total:.0} B = {:.2}x one attestation", job_total / att_size),
    ));
    rows.push((
        "gossipsub wire bytes received per node per second, announce topic (demo timers)".into(),
        format!(
            "{:.0} B in {:.2} copies",
            w("announce", "in") / NODES as f64 / elapsed,
            w("announce", "copies") / NODES as f64 / elapsed
        ),
    ));
}

fn catch_up(rows: &mut Rows) {
    // ---- 2. catch-up after missing 10,000 attestations ----
    let tmp2 = tempfile::tempdir().unwrap();
    let mut c2 = Cluster::start(tmp2.path(), 2, &[]);
    c2.nodes[1].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    c2.nodes[1] = None;
    c2.nodes[0].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    c2.nodes[0] = None;
    let builder = NodeKey::from_seed("bench-builder", [77; 32]).unwrap();
    let entries = synthetic_attestations(&builder, MISSED);
    {
        let store = Store::open(tmp2.path().join("node0")).unwrap();
        assert_eq!(store.insert_attestations(&entries).unwrap(), MISSED);
    }
    c2.restart(0);
    let t2 = Instant::now();
    c2.restart(1);
    let url = c2.urls[1].clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m = get_json(&format!("{url}/api/v1/mesh")).1;
        if m["sync"]["attestations"].as_u64().unwrap_or(0) >= MISSED as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the lagging node did not catch up: {m}\n{}", c2.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let catch_up = t2.elapsed();
    rows.push((
        format!("catch-up of a node that missed {MISSED} attestations (restart to all synced)"),
        format!("{:.1} s", catch_up.as_secs_f64()),
    ));
}
