//! Per-build resource limits (issue 15 item 6) on a real `buildmesh node` with small limits:
//! a derivation that allocates without bound, one that forks without bound and one that fills
//! its build directory, all made by a real `nix-instantiate`, fail with signed failures that say
//! "out of memory (limit N bytes)", "too many processes (limit N)" and "build directory too
//! large (limit N bytes)", while an ordinary build on the same node succeeds and the
//! node stays healthy. A build that spins on the CPU under `--build-cpu-max` is throttled by the
//! kernel (its cgroup's `cpu.stat` counts throttled periods) and still succeeds.

mod mesh_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_support::*;

const MEMORY: u64 = 64 << 20;
const PIDS: u64 = 48;
const DIR: u64 = 4 << 20;
/// `--build-cpu-max`: a fifth of one core.
const CPU: &str = "0.2";

/// The most throttled periods in the `cpu.stat` of any build cgroup of the node with process id
/// `pid` (cgroup v1 `cpu` hierarchy or v2), 0 when there is none (yet).
fn throttled_periods(pid: i32) -> u64 {
    let node = format!("buildmesh-{pid}");
    let mut best = 0;
    let mut stack = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&node) {
                // The node's build cgroups (v2: below `<node>-builds`).
                for build in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let stat = std::fs::read_to_string(build.path().join("cpu.stat")).unwrap_or_default();
                    for line in stat.lines() {
                        if let Some(n) = line.strip_prefix("nr_throttled ") {
                            best = best.max(n.trim().parse().unwrap_or(0));
                        }
                    }
                }
            } else if depth < 4 {
                stack.push((path, depth + 1));
            }
        }
    }
    best
}

fn nix_instantiate(dir: &Path, name: &str, script: &str) -> String {
    let expr = dir.join(format!("{name}.nix"));
    std::fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "{name}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" ''{script}'' ]; PATH = "/usr/bin:/bin"; }}"#
        ),
    )
    .unwrap();
    let o = Command::new("nix-instantiate").arg(&expr).output().expect("nix-instantiate is installed");
    assert!(o.status.success(), "nix-instantiate: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The reasons of the signed failures node 0 holds for `drv` (from `buildmesh explain`).
fn failure_reasons(c: &Cluster, drv: &str) -> Vec<String> {
    let (_, out, err) = cli(&["explain", drv, "--api", &c.urls[0], "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain: {e}: {out}\n{err}"));
    v["failures"].as_array().unwrap().iter().map(|f| f["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn a_memory_hog_and_a_fork_bomb_fail_with_signed_reasons_and_the_node_carries_on() {
    buildmesh_tests::require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let memory = MEMORY.to_string();
    let pids = PIDS.to_string();
    let dir = DIR.to_string();
    let c = Cluster::start(
        tmp.path(),
        1,
        &[
            "--build-memory-max",
            &memory,
            "--build-pids-max",
            &pids,
            "--build-dir-max-bytes",
            &dir,
            "--build-cpu-max",
            CPU,
        ],
    );
    assert!(c.node(0).log_text().contains("per-build resource limits"), "{}", c.logs());

    // Doubles a shell string until the kernel kills it.
    let hog = nix_instantiate(tmp.path(), "limits-memory-hog", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done");
    // Forks without end (each call forks two more, in the background).
    let bomb = nix_instantiate(tmp.path(), "limits-fork-bomb", "bomb() { bomb | bomb & }; bomb; sleep 600");
    // Writes 20 MB into its build directory, then waits.
    let filler = nix_instantiate(tmp.path(), "limits-disk-filler", "head -c 20000000 /dev/zero > big; sleep 600");
    let fine = nix_instantiate(tmp.path(), "limits-fine", "echo fine > $out");
    // Spins on the CPU for 4 s of wall time (one process: the shell), then succeeds.
    let spinner = nix_instantiate(
        tmp.path(),
        "limits-cpu-spinner",
        "end=$(( $(date +%s) + 4 )); i=0; while [ $(( i += 1 )) -gt 0 ]; do if [ $(( i % 20000 )) = 0 ] && [ $(date +%s) -ge $end ]; then break; fi; done; echo $i > $out",
    );
    c.submit(0, tmp.path(), &[hog.clone(), bomb.clone(), filler.clone(), fine.clone(), spinner.clone()], 1);

    let url = c.urls[0].clone();
    let states = |c: &Cluster| {
        [&hog, &bomb, &filler, &fine]
            .iter()
            .map(|d| format!("{d}: {:?}\n", get_json(&format!("{}/api/v1/builds/{}", c.urls[0], base(d))).1))
            .collect::<String>()
    };
    // Built and attested (one node cannot reach the cluster's quorum of 2, so the build record
    // ends `failed` for the trust policy, with the output this node built and signed).
    let built = |drv: &str| {
        let (s, j) = get_json(&format!("{url}/api/v1/builds/{}", base(drv)));
        s == 200 && j["outputs"]["out"]["nar_hash"].is_string()
    };
    let done = (0..240).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        built(&fine)
    });
    assert!(done, "the ordinary build did not finish:\n{}\n{}", states(&c), c.logs());
    // The spinner is throttled by the kernel while it runs, and succeeds.
    let pid = c.node(0).pid();
    let mut throttled = 0;
    let spun = (0..600).any(|_| {
        throttled = throttled.max(throttled_periods(pid));
        if built(&spinner) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(spun, "the CPU spinner did not finish:\n{}\n{}", states(&c), c.logs());
    assert!(throttled > 0, "the spinner was never throttled under --build-cpu-max {CPU}:\n{}", c.logs());
    for (drv, want) in [
        (&hog, format!("out of memory (limit {MEMORY} bytes)")),
        (&bomb, format!("too many processes (limit {PIDS})")),
        (&filler, format!("build directory too large (limit {DIR} bytes)")),
    ] {
        let reasons = (0..240)
            .find_map(|_| {
                let r = failure_reasons(&c, drv);
                if r.is_empty() {
                    std::thread::sleep(Duration::from_millis(500));
                    None
                } else {
                    Some(r)
                }
            })
            .unwrap_or_else(|| panic!("no signed failure of {drv}:\n{}\n{}", states(&c), c.logs()));
        assert!(reasons.iter().any(|r| r == &want), "{drv}: {reasons:?}\n{}", c.logs());
    }
    // The node is healthy and builds on.
    assert_eq!(get(&format!("{url}/health")).0, 200);
    let after = nix_instantiate(tmp.path(), "limits-after", "echo after > $out");
    c.submit(0, tmp.path(), std::slice::from_ref(&after), 1);
    assert!(
        (0..120).any(|_| {
            std::thread::sleep(Duration::from_millis(500));
            built(&after)
        }),
        "a build after the limits: {}",
        c.logs()
    );
}
