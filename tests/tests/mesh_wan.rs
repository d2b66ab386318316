//! The mesh across a wide-area network: real `buildmesh node` processes, each in its own network
//! namespace, whose mesh traffic crosses an emulated WAN of three regions (one-way delays of 2 ms
//! inside a region, 20 ms, 140 ms and 150 ms between them, jitter, 1% packet loss; see
//! `mesh_support/wan.rs` for why it is emulated in user space rather than by `tc netem`).
//!
//! - `a_dag_completes_across_three_regions_with_loss` (CI): six nodes, two per region, build a
//!   DAG with k = 2 whose builders fetch each other's outputs across regions; every output ends
//!   attested by two builders on every node and every node holds the same attestation set (none
//!   lost), and the attestations did cross the emulated delays.
//! - `bench_wan` (ignored; prints a table): 20 nodes in the same three regions. Run with
//!   `cargo test -p buildmesh-tests --test mesh_wan -- --ignored --nocapture bench_wan`
//!   (`BENCH_WAN_*` variables below change its sizes; `BENCH_WAN_NET=lan` runs it without delay
//!   or loss, as a baseline of what the machine itself adds).

mod mesh_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use buildmesh_protocol::store_path::StorePath;
use mesh_support::wan::{Wan, WanModel, propagation, quantile};
use mesh_support::*;

/// A DAG of seven derivations three levels deep (four leaves, two joins, one root), named with
/// `tag`; every level needs the outputs of the one below. Returns (root drv, every name).
fn dag(d: &mut Drvs, tag: &str) -> (StorePath, Vec<String>) {
    let mut names = Vec::new();
    for i in 0..4 {
        let n = format!("{tag}-leaf-{i}");
        d.add(&n, &format!("echo {tag} leaf {i} > $out"), &[]);
        names.push(n);
    }
    for (j, pair) in [[0, 1], [2, 3]].iter().enumerate() {
        let n = format!("{tag}-join-{j}");
        let ins = [names[pair[0]].as_str(), names[pair[1]].as_str()];
        d.add(&n, "cat $input0 $input1 > $out", &ins);
        names.push(n);
    }
    let n = format!("{tag}-root");
    let (root, _) = d.add(&n, "cat $input0 $input1 > $out", &[&names[4], &names[5]]);
    names.push(n);
    (root, names)
}

/// Every attestation id of every running node, and whether they all hold the same set.
fn id_sets(c: &Cluster) -> (Vec<BTreeSet<String>>, bool) {
    let sets: Vec<BTreeSet<String>> = c.running().into_iter().map(|i| c.attestation_ids(i)).collect();
    let same = sets.iter().all(|s| s == &sets[0]);
    (sets, same)
}

#[test]
fn a_dag_completes_across_three_regions_with_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let regions = [0, 1, 2, 0, 1, 2];
    let (c, wan) = Cluster::start_in_wan(tmp.path(), &regions, WanModel::three_regions(0.01), &[], FAST_MESH);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (root, names) = dag(&mut d, "wan");
    // Submitted in the far region: the jobs' gossip starts 140-150 ms from most builders.
    c.submit(2, &dir, &[sd().display(&root)], 2);
    wait_for("the DAG's root to be done on the submitter", Duration::from_secs(120), || {
        match build_state(&c.urls[2], &root).as_deref() {
            Some("done") => Some(()),
            Some("failed") => panic!("the root failed: {}\n{}", build_json(&c.urls[2], &root), c.logs()),
            _ => None,
        }
    });

    // Every output attested by two distinct builders on every node, and no attestation lost:
    // every node ends with the same set.
    let want = 2 * names.len();
    let sets = wait_for("every node to hold the same attestations", Duration::from_secs(60), || {
        let (sets, same) = id_sets(&c);
        (same && sets[0].len() >= want).then_some(sets)
    });
    for name in &names {
        let out = sd().display(&d.out(name));
        for i in 0..regions.len() {
            let builders: BTreeSet<String> = c.attesters(i, &out).values().flatten().cloned().collect();
            assert!(builders.len() >= 2, "node {i}: {name} attested by {builders:?}");
        }
    }

    // The attestations crossed the emulated WAN: lossy, and none reached the far region sooner
    // than its one-way delay (140 ms from the nearer region, minus 10% jitter).
    let (delays, missing) = propagation(&c, &wan, &sets[0]);
    assert!(missing.is_empty(), "{missing:?}");
    let far: Vec<u64> = delays.iter().filter(|(_, from, to)| *from != 2 && *to == 2).map(|(d, _, _)| *d).collect();
    assert!(!far.is_empty(), "no attestation from the near regions reached the far one: {delays:?}");
    let fastest = far.iter().min().unwrap();
    assert!(*fastest >= 126, "an attestation reached the far region in {fastest} ms: {far:?}");
    let (delivered, dropped) = wan.counts();
    assert!(dropped > 0 && delivered > 100 * dropped / 2, "packets delivered {delivered}, dropped {dropped}");
}

// ------------------------------------------------------------------------------------ benchmark

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `[mesh]` timers of the benchmark: the tests' (second-scale), except those that shape
/// gossipsub itself, as `mesh_bench` explains: heartbeat 1 s (`BENCH_WAN_HEARTBEAT_MS`), the
/// republish intervals 120 s.
fn bench_mesh() -> String {
    let heartbeat = env("BENCH_WAN_HEARTBEAT_MS", 1000);
    FAST_MESH
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((k @ ("resubmit_interval_ms" | "republish_interval_ms"), _)) => format!("{k} = 120000"),
            Some((k @ "heartbeat_ms", _)) => format!("{k} = {heartbeat}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rows of the table.
type Rows = Vec<(String, String)>;

/// The sum over running nodes of `sync.attestations` (arrived by anti-entropy, not gossip).
fn synced(c: &Cluster) -> u64 {
    c.running().into_iter().map(|i| c.mesh(i)["sync"]["attestations"].as_u64().unwrap_or(0)).sum()
}

#[test]
#[ignore = "benchmark: prints a table (BENCH_WAN_NODES, _JOBS, _MISSED, _NAR_MB, _HEARTBEAT_MS, _NET=lan)"]
fn bench_wan() {
    let nodes = env("BENCH_WAN_NODES", 20);
    let jobs = env("BENCH_WAN_JOBS", 20);
    let missed_jobs = env("BENCH_WAN_MISSED", 25);
    let nar_mb = env("BENCH_WAN_NAR_MB", 16);
    let wan = WanModel::three_regions(0.01);
    // BENCH_WAN_NET=lan: the same run with no delay and no loss, to tell the WAN's share from the
    // machine's (CPU, disk) in every figure.
    let model = if std::env::var("BENCH_WAN_NET").as_deref() == Ok("lan") { wan.without_delay_or_loss() } else { wan };
    let regions: Vec<usize> = (0..nodes).map(|i| i % 3).collect();
    let mut rows = Rows::new();
    rows.push(("network".into(), model.describe()));

    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let (mut c, wan) = Cluster::start_in_wan(tmp.path(), &regions, model.clone(), &[], &bench_mesh());
    rows.push((format!("mesh start ({nodes} nodes, regions {:?})", regions_count(&wan)), secs(t0.elapsed())));
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);

    // ---- 1. attestation propagation: independent jobs, k = 2 ----
    let before = c.attestation_ids(0);
    let synced_before = synced(&c);
    let drvs: Vec<StorePath> =
        (0..jobs).map(|i| d.add(&format!("wan-bench-{i}"), &format!("echo {i} > $out"), &[]).0).collect();
    let t1 = Instant::now();
    c.submit(0, &dir, &drvs.iter().map(|p| sd().display(p)).collect::<Vec<_>>(), 2);
    for drv in &drvs {
        wait_state(&c.urls[0], drv, "done", Duration::from_secs(600));
    }
    rows.push((format!("{jobs} independent jobs (k = 2) submitted to done on the submitter"), secs(t1.elapsed())));
    let sets = wait_for("every node to hold the same attestations", Duration::from_secs(120), || {
        let (sets, same) = id_sets(&c);
        (same && sets[0].len() >= before.len() + 2 * jobs).then_some(sets)
    });
    let new: BTreeSet<String> = sets[0].difference(&before).cloned().collect();
    let (delays, missing) = propagation(&c, &wan, &new);
    push_delays(&mut rows, "attestation propagation (builder's commit to arrival at each other node)", &delays, &wan);
    rows.push((
        "attestations lost (missing on some node after the wait) / arrived by anti-entropy".into(),
        format!("{} / {}", missing.len(), synced(&c) - synced_before),
    ));

    // ---- 2. a DAG (7 derivations, 3 levels, k = 2) submitted in the far region ----
    let (root, names) = dag(&mut d, "wan-bench-dag");
    let far = wan.nodes_in(2)[0];
    let t2 = Instant::now();
    c.submit(far, &dir, &[sd().display(&root)], 2);
    wait_state(&c.urls[far], &root, "done", Duration::from_secs(600));
    rows.push((
        format!(
            "DAG of {} derivations, 3 levels, k = 2: submitted to done (submitter in {})",
            names.len(),
            model.regions[2]
        ),
        secs(t2.elapsed()),
    ));

    // ---- 3. catch-up: a node misses attestations while it is down ----
    let down = wan.nodes_in(2)[1];
    let had = c.attestation_ids(down);
    c.nodes[down].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    c.nodes[down] = None;
    let drvs: Vec<StorePath> = (0..missed_jobs)
        .map(|i| d.add(&format!("wan-missed-{i}"), &format!("echo missed {i} > $out"), &[]).0)
        .collect();
    c.submit(0, &dir, &drvs.iter().map(|p| sd().display(p)).collect::<Vec<_>>(), 2);
    for drv in &drvs {
        wait_state(&c.urls[0], drv, "done", Duration::from_secs(600));
    }
    let target = wait_for("the running nodes to agree", Duration::from_secs(120), || {
        let (sets, same) = id_sets(&c);
        (same && sets[0].len() >= had.len() + 2 * missed_jobs).then(|| sets[0].clone())
    });
    let missed = target.difference(&had).count();
    let t3 = Instant::now();
    c.restart(down);
    let url = c.urls[down].clone();
    wait_for("the restarted node to catch up", Duration::from_secs(300), || {
        let (s, _) = get(&format!("{url}/api/v1/node"));
        (s == 200 && c.attestation_ids(down).is_superset(&target)).then_some(())
    });
    rows.push((
        format!(
            "catch-up: a node in {} misses {missed} attestations while down; restart to holding them all",
            model.regions[2]
        ),
        secs(t3.elapsed()),
    ));

    // ---- 4. NAR throughput across regions, direct ----
    nar_throughput(&mut rows, &c, &wan, &mut d, nar_mb);
    rows.push((
        "NAR throughput, relayed (circuit relay v2) vs punched vs LAN".into(),
        "measured behind real NAT routers by `mesh_relay`'s `bench_relay` (docs/benchmarks.md)".into(),
    ));
    let (delivered, dropped) = wan.counts();
    rows.push(("packets through the emulated WAN: delivered / dropped".into(), format!("{delivered} / {dropped}")));

    println!();
    println!("| WAN benchmark ({nodes} nodes) | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn regions_count(wan: &Wan) -> Vec<usize> {
    (0..wan.model.regions.len()).map(|r| wan.nodes_in(r).len()).collect()
}

/// Median, p99 and max of `delays`, overall and for the farthest pair of regions.
fn push_delays(rows: &mut Rows, what: &str, delays: &[(u64, usize, usize)], wan: &Wan) {
    let mut all: Vec<u64> = delays.iter().map(|d| d.0).collect();
    all.sort_unstable();
    rows.push((
        format!("{what}: median / p99 / max ({} samples)", all.len()),
        format!("{} / {} / {} ms", quantile(&all, 0.5), quantile(&all, 0.99), all.last().copied().unwrap_or(0)),
    ));
    let far = |r: usize| wan.model.regions[r].clone();
    let mut by_pair: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
    for &(d, a, b) in delays {
        by_pair.entry((a.min(b), a.max(b))).or_default().push(d);
    }
    for ((a, b), mut v) in by_pair {
        v.sort_unstable();
        rows.push((
            format!("  between {} and {} (one way {} ms)", far(a), far(b), wan.model.one_way[a][b].as_millis()),
            format!("{} / {} / {} ms", quantile(&v, 0.5), quantile(&v, 0.99), v.last().copied().unwrap_or(0)),
        ));
    }
}

/// A job whose output is `mb` MiB of incompressible bytes (AES-CTR of zeros with a fixed key:
/// the same on every builder), built with k = 2; then a node in a region where neither builder
/// is fetches it through its quorum gateway, which pulls the NAR from a builder over the mesh.
fn nar_throughput(rows: &mut Rows, c: &Cluster, wan: &Wan, d: &mut Drvs, mb: usize) {
    let script = format!(
        "head -c {} /dev/zero | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
         -iv 00000000000000000000000000000000 -nosalt > $out",
        mb << 20
    );
    let (drv, out) = d.add(&format!("wan-nar-{mb}mib"), &script, &[]);
    // Node 0, the submitter, fetches the outputs when done: the fetcher below is another node.
    c.submit(0, &d.dir, &[sd().display(&drv)], 2);
    wait_state(&c.urls[0], &drv, "done", Duration::from_secs(600));
    let out_abs = sd().display(&out);
    let builders: BTreeSet<String> = c.attesters(0, &out_abs).values().flatten().cloned().collect();
    let builder_nodes: Vec<usize> = (0..c.peer_ids.len()).filter(|&i| builders.contains(&c.peer_ids[i])).collect();
    let builder_regions: BTreeSet<usize> = builder_nodes.iter().map(|&i| wan.region_of[i]).collect();
    // The fetcher: not a builder, not node 0 (which already fetched), preferably in a region
    // without a builder, else the region farthest from them.
    let farthest =
        |i: usize| builder_nodes.iter().map(|&b| wan.model.one_way[wan.region_of[b]][wan.region_of[i]]).min();
    let fetcher = (1..c.peer_ids.len())
        .filter(|i| !builder_nodes.contains(i) && c.nodes[*i].is_some())
        .max_by_key(|&i| farthest(i))
        .expect("a node that did not build it");
    let hash = out.hash_part();
    let url = &c.urls[fetcher];
    let t = Instant::now();
    let (s, narinfo) = get(&format!("{url}/{hash}.narinfo"));
    assert_eq!(s, 200, "narinfo on node {fetcher}: {}", String::from_utf8_lossy(&narinfo));
    let narinfo = String::from_utf8(narinfo).unwrap();
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL in the narinfo").to_string();
    let (s, nar) = get(&format!("{url}/{nar_url}"));
    assert_eq!(s, 200);
    let elapsed = t.elapsed();
    let nar_size: u64 =
        narinfo.lines().find_map(|l| l.strip_prefix("NarSize: ")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let from: Vec<&str> = builder_regions.iter().map(|&r| wan.model.regions[r].as_str()).collect();
    rows.push((
        format!(
            "NAR throughput across regions, direct: {:.0} MiB NAR from a builder in {{{}}} to a node in {} (narinfo + NAR through its gateway, {} B on the HTTP side)",
            nar_size as f64 / (1 << 20) as f64,
            from.join(", "),
            wan.model.regions[wan.region_of[fetcher]],
            nar.len()
        ),
        format!("{:.2} MiB/s ({:.1} s)", nar_size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(), elapsed.as_secs_f64()),
    ));
}
