//! The scheduler in a real `buildmesh node` process with the real `local` executor: builds in
//! dependency order, SIGTERM and `kill -9` in the middle of builds (restart finishes the queue,
//! nothing lost), `buildmesh cancel` / `buildmesh retry`, failures propagating to dependents,
//! logs and attestations through the API.

mod node_support;

use std::time::Duration;

use buildmesh::store::{BuildState, Store};
use nix::sys::signal::Signal;
use node_support::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn sigterm_and_kill_9_mid_build_then_restart_finishes_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    // a -> b -> c (c needs b needs a), a and b slow; d independent and fast.
    drvs.add("slow-a", "sleep 2; echo a > $out", &[]);
    drvs.add("slow-b", "sleep 2; cat $input0 > $out; echo b >> $out", &["slow-a"]);
    drvs.add("fast-c", "cat $input0 > $out; echo c >> $out", &["slow-b"]);
    drvs.add("fast-d", "echo d > $out", &[]);
    let all: Vec<_> = ["slow-a", "slow-b", "fast-c", "fast-d"].iter().map(|n| drvs.drv(n)).collect();

    let mut node = NodeProc::start(&data, &["--slots", "1"]);
    // d has the higher priority, so a's build starts after d's.
    submit(&node.url, &drvs.dir, &[drvs.drv("fast-d")], 5);
    submit(&node.url, &drvs.dir, &[drvs.drv("fast-c")], 0);
    wait_state(&node.url, &drvs.drv("slow-a"), "running", LONG);
    assert_eq!(build_state(&node.url, &drvs.drv("fast-d")).as_deref(), Some("done"), "priority first");

    // SIGTERM in the middle of a's build: quick, clean exit; a stays "running" on disk.
    let status = node.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", node.log_text());
    {
        let store = Store::open(&data).unwrap();
        assert_eq!(store.get_build(&drvs.drv("slow-a")).unwrap().unwrap().state, BuildState::Running);
    }

    // Restart: a is requeued and built; kill -9 while b builds.
    let mut node = NodeProc::start(&data, &["--slots", "1"]);
    wait_state(&node.url, &drvs.drv("slow-b"), "running", LONG);
    assert_eq!(build_state(&node.url, &drvs.drv("slow-a")).as_deref(), Some("done"));
    wait_for("b's work dir", LONG, || std::fs::read_dir(data.join("builds")).unwrap().next().map(|_| ()));
    node.stop(Signal::SIGKILL, Duration::from_secs(5));

    // Restart again: the work dir leftovers are removed and the queue finishes.
    let node = NodeProc::start(&data, &["--slots", "1"]);
    for d in &all {
        wait_state(&node.url, d, "done", LONG);
    }
    let a = build_json(&node.url, &drvs.drv("slow-a"));
    let b = build_json(&node.url, &drvs.drv("slow-b"));
    let c = build_json(&node.url, &drvs.drv("fast-c"));
    assert_eq!(a["attempts"], 2, "{a}");
    assert_eq!(b["attempts"], 2, "{b}");
    assert_eq!(c["attempts"], 1, "{c}");
    assert!(b["error"].is_null());
    let out_c = &c["outputs"]["out"];
    assert_eq!(out_c["path"], sd().display(&drvs.out("fast-c")).as_str());
    assert!(out_c["nar_hash"].as_str().unwrap().starts_with("sha256:"));
    // The output is served as a NAR and holds what the chain wrote.
    let nar_hash = out_c["nar_hash"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    let (s, nar) = get(&format!("{}/nar/{nar_hash}.nar", node.url));
    assert_eq!(s, 200);
    assert!(nar.windows(6).any(|w| w == b"a\nb\nc\n"), "{}", String::from_utf8_lossy(&nar));
    // Every built derivation has exactly one attestation by this node (none lost, none doubled).
    for d in &all {
        let (s, atts) = get_json(&format!("{}/api/v1/attestations?drv={d}", node.url));
        assert_eq!(s, 200);
        let atts = atts.as_array().unwrap();
        assert_eq!(atts.len(), 1, "{d}: {atts:?}");
        assert_eq!(atts[0]["peer_id"], node.peer_id.as_str());
    }
    let (s, info) = get_json(&format!("{}/api/v1/node", node.url));
    assert_eq!(s, 200);
    assert_eq!(info["builds"]["done"], 4, "{info}");
    assert_eq!(info["builds"]["failed"], 0);
    assert!(std::fs::read_dir(data.join("builds")).unwrap().next().is_none(), "no leftover work dirs");
}

#[test]
fn cancel_retry_failures_and_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    drvs.add("breaks", "echo 'something went wrong' >&2; exit 3", &[]);
    drvs.add("needs-broken", "cat $input0 > $out", &["breaks"]);
    drvs.add("sleeper", "sleep 30; echo z > $out", &[]);
    drvs.add("after-sleeper", "cat $input0 > $out", &["sleeper"]);
    let node = NodeProc::start(&data, &["--slots", "2"]);
    let url = node.url.clone();
    submit(&url, &drvs.dir, &[drvs.drv("needs-broken"), drvs.drv("after-sleeper")], 0);

    // A builder failure fails the build (not transient: one attempt) and its dependent.
    wait_state(&url, &drvs.drv("needs-broken"), "failed", LONG);
    let broken = build_json(&url, &drvs.drv("breaks"));
    assert_eq!((broken["state"].as_str(), broken["attempts"].as_u64()), (Some("failed"), Some(1)), "{broken}");
    assert!(broken["error"].as_str().unwrap().contains("exit status 3"), "{broken}");
    let dep = build_json(&url, &drvs.drv("needs-broken"));
    let why = dep["error"].as_str().unwrap();
    assert!(why.contains(&drvs.drv("breaks").to_string()) && why.contains("failed"), "{why}");
    let (s, log) = get(&format!("{url}/api/v1/builds/{}/log", drvs.drv("breaks")));
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&log).contains("something went wrong"));
    let (s, failed) = get_json(&format!("{url}/api/v1/builds?state=failed"));
    assert_eq!(s, 200);
    assert_eq!(failed.as_array().unwrap().len(), 2);

    // Cancel the running sleeper from the CLI; its dependent fails.
    wait_state(&url, &drvs.drv("sleeper"), "running", LONG);
    let full = sd().display(&drvs.drv("sleeper"));
    let (st, out, err) = cli(&["cancel", &full, "--api", &url]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("running -> cancelled"), "{out}");
    assert_eq!(build_state(&url, &drvs.drv("sleeper")).as_deref(), Some("cancelled"));
    wait_state(&url, &drvs.drv("after-sleeper"), "failed", LONG);
    let why = build_json(&url, &drvs.drv("after-sleeper"))["error"].as_str().unwrap().to_string();
    assert!(why.contains("cancelled"), "{why}");
    wait_for("the sleeper's slot to free", LONG, || {
        let (_, info) = get_json(&format!("{url}/api/v1/node"));
        (info["builds"]["running"] == 0).then_some(())
    });

    // Retry of the dependent also queues its failed input; both fail again (same builder).
    let (st, out, err) = cli(&["retry", &drvs.drv("needs-broken").to_string(), "--api", &url]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains(&drvs.drv("breaks").to_string()), "names the requeued input: {out}");
    wait_for("both to fail again", LONG, || {
        let b = build_json(&url, &drvs.drv("breaks"));
        let d = build_json(&url, &drvs.drv("needs-broken"));
        (b["state"] == "failed" && b["attempts"] == 2 && d["state"] == "failed").then_some(())
    });

    // Wrong states are refused with a clear message: retrying a queued/running/done build, or
    // cancelling a failed one.
    let (st, _, err) = cli(&["cancel", &drvs.drv("breaks").to_string(), "--api", &url]);
    assert!(!st.success());
    assert!(err.contains("failed") && err.contains("409"), "{err}");
    let (st, _, err) = cli(&["retry", "0123456789abcdfghijklmnpqrsvwxy0-nope.drv", "--api", &url]);
    assert!(!st.success());
    assert!(err.contains("404"), "{err}");

    // Signed failures are recorded: the JSON export is empty (no attestations), the node
    // reports the failed builds.
    let (s, info) = get_json(&format!("{url}/api/v1/node"));
    assert_eq!(s, 200);
    assert_eq!(info["builds"]["cancelled"], 1, "{info}");
}

#[test]
fn timeout_fails_the_build_after_max_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    drvs.add("too-slow", "sleep 60; echo z > $out", &[]);
    let node = NodeProc::start(&tmp.path().join("data"), &["--build-timeout-secs", "1", "--max-attempts", "1"]);
    let t = std::time::Instant::now();
    submit(&node.url, &drvs.dir, &[drvs.drv("too-slow")], 0);
    wait_state(&node.url, &drvs.drv("too-slow"), "failed", LONG);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let b = build_json(&node.url, &drvs.drv("too-slow"));
    assert!(b["error"].as_str().unwrap().contains("timed out"), "{b}");
    assert_eq!(b["attempts"], 1);
}
