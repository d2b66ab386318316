//! Fixed-seed scenarios of the simulator. Each runs in well under a second in debug builds.
//!
//! The first group must hold without violations; the last group breaks something on purpose and
//! checks that the checkers notice, so a checker that silently passes everything would fail here.

use buildmesh_sim::{Report, SimConfig, run};

fn small(seed: u64) -> SimConfig {
    SimConfig { seed, nodes: 12, drvs: 80, ..SimConfig::default() }
}

fn assert_clean(r: &Report) {
    assert_eq!(r.violations, 0, "seed {}: {:#?}\n{r}", r.seed, r.violation_log);
    assert!(r.completion_ms.is_some(), "seed {} did not finish\n{r}", r.seed);
    assert_eq!(r.drvs_complete + r.drvs_failed, r.drvs, "every derivation resolved\n{r}");
}

#[test]
fn fault_free_mesh_builds_everything_exactly_k_times() {
    for seed in 1..=3 {
        let r = run(small(seed)).unwrap();
        assert_clean(&r);
        assert_eq!(r.duplicated_builds, 0, "{r}");
        assert!(r.max_claims <= 2, "{r}");
        assert!(r.drvs_complete >= r.drvs * 9 / 10, "{r}");
        // Each derivation is attested k times (unreproducible ones too; broken ones never).
        assert!(r.attestations >= 2 * r.drvs_complete as u64, "{r}");
    }
}

#[test]
fn the_central_baseline_faces_the_same_builds_and_is_not_beaten() {
    for seed in 1..=3 {
        let r = run(SimConfig { flaky: 0.2, ..small(seed) }).unwrap();
        assert_clean(&r);
        // Without faults the mesh starts no extra build, so the nth build of every derivation is
        // the same build in both runs: same transient failures (shared draws, `draws.rs`), hence
        // the same retries.
        assert!(r.central.build_failures > 10, "{r}");
        assert_eq!(r.builds_started, r.central.builds_started, "{r}");
        // Same durations: the omniscient list scheduler is not slower than the mesh, and the
        // mesh stays within its overhead (warm-up, gossip latency) of it.
        let ratio = r.makespan_ratio().unwrap();
        assert!((1.0..1.3).contains(&ratio), "ratio {ratio}\n{r}");
    }
}

#[test]
fn churn_partitions_and_loss() {
    for seed in 1..=3 {
        let cfg = SimConfig {
            seed,
            nodes: 20,
            drvs: 100,
            churn: 2.0,
            partitions: 2,
            loss: 0.02,
            fault_window_ms: 1_800_000,
            ..SimConfig::default()
        };
        let r = run(cfg).unwrap();
        assert_clean(&r);
        assert!(r.crashes > 0 && r.partitions > 0, "faults were injected\n{r}");
    }
}

#[test]
fn three_replicas_with_owner_diversity() {
    let cfg = SimConfig { seed: 5, nodes: 18, drvs: 60, replicas: 3, ..SimConfig::default() };
    let r = run(cfg).unwrap();
    assert_clean(&r);
    assert!(r.max_claims <= 3, "{r}");
    assert_eq!(r.duplicated_builds, 0, "{r}");
}

#[test]
fn byzantine_builders_never_get_a_forged_output_accepted() {
    let cfg = SimConfig { seed: 3, nodes: 15, drvs: 60, byzantine: 0.3, ..SimConfig::default() };
    let r = run(cfg).unwrap();
    assert_clean(&r);
    // Their attestations do not count towards k, so honest builders build more.
    assert!(r.duplicated_builds > 0, "{r}");
}

#[test]
fn sharded_mesh_with_churn_and_forgetting_is_clean_and_replays() {
    // 60 nodes in 3 shards of about 20; each keeps 16 finished jobs.
    let cfg = |seed| {
        let mut c =
            SimConfig { seed, nodes: 60, drvs: 150, churn: 1.0, loss: 0.01, shard_size: 20, ..SimConfig::default() };
        c.mesh.max_finished_drvs = 16;
        c
    };
    let a = run(cfg(2)).unwrap();
    assert_clean(&a);
    assert_eq!(a.shards, 3, "{a}");
    assert!(a.crashes > 0, "{a}");
    assert_eq!(a, run(cfg(2)).unwrap(), "replaying a sharded run gave another run");
}

#[test]
fn same_seed_same_trace() {
    let cfg = |seed| SimConfig { seed, nodes: 10, drvs: 40, churn: 3.0, loss: 0.05, ..SimConfig::default() };
    let a = run(cfg(7)).unwrap();
    let b = run(cfg(7)).unwrap();
    assert_eq!(a, b, "replaying seed 7 gave another run");
    let c = run(cfg(8)).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

// ---- the checkers must be able to fail ----

#[test]
fn checker_catches_forged_outputs_under_an_unsafe_trust_policy() {
    // Trusting every builder lets the colluding liars reach the quorum on their own.
    let cfg =
        SimConfig { seed: 3, nodes: 15, drvs: 60, byzantine: 0.4, trust_honest_only: false, ..SimConfig::default() };
    let r = run(cfg).unwrap();
    assert!(r.violations > 0, "{r}");
    assert!(r.violation_log.iter().any(|v| v.contains("forged")), "{:#?}", r.violation_log);
}

#[test]
fn checker_catches_overlapping_claims_when_leases_are_shorter_than_the_network() {
    // Renewals arrive after the lease ran out: other builders take over although the claimant
    // is alive and in the view, so more than k build at once in a stable view.
    let mut cfg = SimConfig { seed: 2, nodes: 10, drvs: 30, latency_ms: (4_000, 6_000), ..SimConfig::default() };
    cfg.mesh.renew_interval_ms = 2_000;
    cfg.mesh.lease_ms = 3_000;
    cfg.mesh.claim_timeout_ms = 2_500;
    cfg.max_virtual_ms = 6 * 3_600_000;
    let r = run(cfg).unwrap();
    assert!(r.violations > 0, "{r}");
    assert!(r.violation_log.iter().any(|v| v.contains("live claims")), "{:#?}", r.violation_log);
}

#[test]
fn checker_reports_liveness_when_time_runs_out() {
    let cfg = SimConfig { seed: 1, nodes: 10, drvs: 40, max_virtual_ms: 10 * 60_000, ..SimConfig::default() };
    let r = run(cfg).unwrap();
    assert!(r.completion_ms.is_none());
    assert!(r.violation_log.iter().any(|v| v.contains("liveness")), "{:#?}", r.violation_log);
}

#[test]
fn bad_config_is_refused() {
    let cfg = SimConfig { loss: 1.5, ..SimConfig::default() };
    let err = run(cfg).unwrap_err().to_string();
    assert!(err.contains("loss"), "{err}");
    let mut cfg = SimConfig::default();
    cfg.mesh.lease_ms = 1;
    assert!(run(cfg).is_err());
}
