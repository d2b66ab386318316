//! `sim --sybil-table`: what Sybil members (`--sybil-members`, `world/sybil_members.rs`) do to
//! the completion time of a mesh, with and without the `builders` policy and the no-delivery
//! penalty (issue 15 item 3). One row per scenario and seed; the delay is relative to the same
//! seed without Sybils.

use std::fmt::Write as _;

use crate::{SimConfig, run};

/// The scenarios: name, Sybil members, builders policy, no-delivery penalty (ms; 1 = none).
fn scenarios(sybils: usize, penalty_ms: u64) -> [(&'static str, usize, bool, u64); 4] {
    [
        ("no Sybils (baseline)", 0, false, penalty_ms),
        ("open mesh, no penalty", sybils, false, 1),
        ("open mesh, penalty", sybils, false, penalty_ms),
        ("builders policy", sybils, true, penalty_ms),
    ]
}

/// Run every scenario for every seed from `base` and render the table.
pub fn table(base: &SimConfig, sybils: usize, seeds: std::ops::Range<u64>) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} honest nodes, {sybils} Sybil members, {} derivations, k = {}, seeds {} to {}",
        base.nodes,
        base.drvs,
        base.replicas,
        seeds.start,
        seeds.end.saturating_sub(1).max(seeds.start)
    );
    let _ = writeln!(
        out,
        "| scenario | seed | completion (virtual min) | delay vs baseline | builds started | violations |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for seed in seeds {
        let mut baseline = None;
        for (name, n, policy, penalty) in scenarios(sybils, base.mesh.no_delivery_penalty_ms) {
            let mut cfg = base.clone();
            cfg.seed = seed;
            cfg.sybil_members = n;
            cfg.builders_policy = policy;
            cfg.mesh.no_delivery_penalty_ms = penalty;
            let r = run(cfg)?;
            let done = r.completion_ms;
            if n == 0 {
                baseline = done;
            }
            let delay = match (done, baseline) {
                (Some(d), Some(b)) if b > 0 => format!("{:+.1}%", (d as f64 / b as f64 - 1.0) * 100.0),
                (None, _) => "did not complete".to_string(),
                _ => "-".to_string(),
            };
            let minutes = done.map_or("-".to_string(), |d| format!("{:.1}", d as f64 / 60_000.0));
            let _ =
                writeln!(out, "| {name} | {seed} | {minutes} | {delay} | {} | {} |", r.builds_started, r.violations);
        }
    }
    Ok(out)
}
