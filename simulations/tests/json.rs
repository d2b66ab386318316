//! `sim --json` and `sim --sweep`: the real binary, its one JSON object, and the sweep's files.

use std::process::Command;

use serde_json::Value;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sim")).args(args).output().expect("run sim")
}

#[test]
fn json_is_one_object_with_consistent_figures() {
    let o = sim(&["--nodes", "12", "--drvs", "60", "--seed", "4", "--churn", "1", "--json"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {text}"));
    for k in [
        "nodes",
        "drvs",
        "makespan_s",
        "central_makespan_s",
        "makespan_ratio",
        "duplicated_builds",
        "messages_per_node_per_job",
        "bytes_per_node_per_job",
        "violations",
        "wall_s",
        "peak_rss_bytes",
    ] {
        num(k);
    }
    assert_eq!((num("nodes"), num("drvs")), (12.0, 60.0));
    // The exit status says whether invariants held; the JSON says how many did not.
    assert_eq!(o.status.code(), Some(if num("violations") == 0.0 { 0 } else { 1 }), "{text}");
    let ratio = num("makespan_s") / num("central_makespan_s");
    assert!((num("makespan_ratio") - ratio).abs() < 1e-9, "{text}");
    // The central schedule is a lower bound of what the mesh achieves on the same workload.
    assert!(num("makespan_ratio") >= 1.0, "{text}");
    // Every message carries its signed envelope (102 bytes) around a payload of more than 100
    // bytes (announcements, the smallest here, are about 130).
    assert!(num("messages_per_node_per_job") > 1.0, "{text}");
    assert!(num("bytes_per_node_per_job") >= 202.0 * num("messages_per_node_per_job"), "{text}");
    let announce = num("announcements_per_node_per_job");
    assert!(announce > 0.0 && announce < num("messages_per_node_per_job"), "{text}");
    assert!(num("bytes_per_node_per_job") >= 102.0 * num("messages_per_node_per_job"), "{text}");
    assert!(num("peak_rss_bytes") > 1e6 && num("wall_s") > 0.0, "{text}");
    assert!(num("crashes") > 0.0, "churn 1 crashed nodes: {text}");
    // Same seed, same figures (but the host's).
    let again: Value = serde_json::from_slice(
        &sim(&["--nodes", "12", "--drvs", "60", "--seed", "4", "--churn", "1", "--json"]).stdout,
    )
    .unwrap();
    for k in ["makespan_s", "central_makespan_s", "bytes_per_node_per_job", "trace_hash"] {
        assert_eq!(v[k], again[k], "{k}");
    }
}

#[test]
fn sweep_writes_its_figures_and_charts() {
    let dir = std::env::temp_dir().join(format!("sim-sweep-test-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let o = sim(&["--sweep", "6,12", "--sweep-churn", "0,2", "--drvs", "30", "--out", out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join("sweep.json")).unwrap()).unwrap();
    let points: Vec<(u64, f64)> =
        runs.iter().map(|r| (r["nodes"].as_u64().unwrap(), r["churn"].as_f64().unwrap())).collect();
    assert_eq!(points, [(6, 0.0), (12, 0.0), (6, 2.0), (12, 2.0)]);
    assert!(runs.iter().all(|r| r["drvs"] == 30 && r["peak_rss_bytes"].as_u64().unwrap() > 0));
    for chart in ["sim-makespan-ratio.svg", "sim-messages.svg", "sim-bytes.svg", "sim-memory.svg"] {
        let svg = std::fs::read_to_string(dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("nodes (log scale)"), "{chart}");
    }
    // The charts can be drawn again from the figures alone (several sweeps merged).
    let again = dir.join("again");
    let json = dir.join("sweep.json");
    let o = sim(&["--plot", &format!("{},{}", json.display(), json.display()), "--out", again.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(again.join("sim-messages.svg")).unwrap().contains("churn 2 crashes/node/h"));
    std::fs::remove_dir_all(&dir).unwrap();
}
