//! Real emulated builds (issue 16, docs/emulation.md): derivations for aarch64-linux and
//! armv7l-linux, instantiated by a real `nix-instantiate` with a static busybox of that system as
//! the builder (a content-addressed source from `builtins.path`), built by a real x86_64
//! `buildmesh node` through QEMU user mode (binfmt_misc with the `F` flag, registered by
//! `scripts/emulation.sh setup`) in the same sandbox as native builds. Checks what the build saw
//! (`uname -m`), that attestations and signed failures say `emulated`, and that
//! `--emulated-system` narrows what a node announces and builds.

mod node_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use node_support::*;

const LONG: Duration = Duration::from_secs(120);
const BUSYBOX_DIR: &str = "/var/cache/buildmesh/busybox";

/// (Nix system, Debian architecture of its busybox, what `uname -m` prints under it).
const SYSTEMS: [(&str, &str, &str); 3] =
    [("x86_64-linux", "amd64", "x86_64"), ("aarch64-linux", "arm64", "aarch64"), ("armv7l-linux", "armhf", "armv7l")];

fn busybox_dir(arch: &str) -> PathBuf {
    let dir = Path::new(BUSYBOX_DIR).join(arch);
    assert!(
        dir.join("busybox").exists(),
        "{}/busybox is missing: run scripts/emulation.sh setup (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn require_binfmt() {
    for name in ["qemu-aarch64", "qemu-arm"] {
        let entry = Path::new("/proc/sys/fs/binfmt_misc").join(name);
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(
            text.starts_with("enabled") && text.lines().any(|l| l.starts_with("flags:") && l.contains('F')),
            "{} is not registered with the F flag: run scripts/emulation.sh setup (scripts/test.sh does)",
            entry.display()
        );
    }
}

fn nix(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} is not installed: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `nix-instantiate` of a derivation for `system` whose builder is that system's busybox
/// running `script`; returns the `.drv` path in /nix/store.
fn instantiate(dir: &Path, name: &str, system: &str, arch: &str, script: &str) -> String {
    let expr = dir.join(format!("{name}.nix"));
    std::fs::write(
        &expr,
        format!(
            r#"let bb = builtins.path {{ path = {bb}; name = "busybox-{arch}"; }}; in
derivation {{ name = "{name}"; system = "{system}"; builder = "${{bb}}/busybox"; args = [ "sh" "-c" {script:?} ]; }}
"#,
            bb = busybox_dir(arch).display(),
        ),
    )
    .unwrap();
    nix("nix-instantiate", &[expr.to_str().unwrap()])
}

fn submit_drv(url: &str, drv: &str) {
    let (status, out, err) = cli(&["submit", "--api", url, "--json", drv]);
    assert!(status.success(), "submit {drv}: {out}\n{err}");
}

fn drv_path(drv: &str) -> buildmesh_protocol::store_path::StorePath {
    sd().parse_path(drv).unwrap()
}

#[test]
fn foreign_systems_build_under_qemu_and_say_so() {
    require_binfmt();
    let tmp = tempfile::tempdir().unwrap();
    let mut drvs = Vec::new();
    for (system, arch, machine) in SYSTEMS {
        // The build writes what the kernel says the machine is, through the emulated busybox.
        let name = format!("emu-uname-{arch}");
        let drv = instantiate(tmp.path(), &name, system, arch, "uname -m > $out");
        drvs.push((system, machine, drv));
    }
    // A build that fails (under emulation): its signed failure says emulated.
    let failing = instantiate(tmp.path(), "emu-fails-arm64", "aarch64-linux", "arm64", "uname -m; exit 3");
    // A pipeline: busybox re-executes itself as `seq` and `wc`, which needs argv[0] kept (the
    // `P` flag of the binfmt_misc entry).
    let pipeline = instantiate(tmp.path(), "emu-pipe-armhf", "armv7l-linux", "armhf", "seq 1 1000 | wc -l > $out");

    let node = NodeProc::start(&tmp.path().join("data"), &["--slots", "2"]);
    let (_, info) = get_json(&format!("{}/api/v1/node", node.url));
    let emulated: Vec<&str> =
        info["systems"]["emulated"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(emulated.contains(&"aarch64-linux") && emulated.contains(&"armv7l-linux"), "{info}");
    for (_, _, drv) in &drvs {
        submit_drv(&node.url, drv);
    }
    submit_drv(&node.url, &failing);
    submit_drv(&node.url, &pipeline);
    for (system, machine, drv) in &drvs {
        wait_state(&node.url, &drv_path(drv), "done", LONG);
        let b = build_json(&node.url, &drv_path(drv));
        let nar_hash = b["outputs"]["out"]["nar_hash"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
        let (s, nar) = get(&format!("{}/nar/{nar_hash}.nar", node.url));
        assert_eq!(s, 200);
        let want = format!("{machine}\n");
        assert!(nar.windows(want.len()).any(|w| w == want.as_bytes()), "{system}: {}", String::from_utf8_lossy(&nar));
        let is_emulated = *system != "x86_64-linux";
        // The attestation route and `buildmesh query --json` both say how it was built.
        let (s, atts) = get_json(&format!("{}/api/v1/attestations?drv={drv}", node.url));
        assert_eq!(s, 200);
        assert_eq!(atts[0]["emulated"], is_emulated, "{system}: {atts}");
        let (status, out, err) = cli(&["query", "--api", &node.url, "--json", drv]);
        assert!(status.success(), "{err}");
        let q: serde_json::Value = serde_json::from_str(&out).unwrap();
        let q = if q.is_array() { q[0].clone() } else { q };
        let first = &q["attestations"][0];
        assert_eq!(first["emulated"], is_emulated, "{system}: {q}");
    }
    wait_state(&node.url, &drv_path(&pipeline), "done", LONG);
    wait_state(&node.url, &drv_path(&failing), "failed", LONG);
    let (s, failures) = get_json(&format!("{}/api/v1/failures?drv={failing}", node.url));
    assert_eq!(s, 200);
    assert_eq!(failures[0]["emulated"], true, "{failures}");
    let base = failing.strip_prefix("/nix/store/").unwrap();
    let (_, log) = get(&format!("{}/api/v1/builds/{base}/log", node.url));
    assert!(String::from_utf8_lossy(&log).contains("aarch64"), "{}", String::from_utf8_lossy(&log));

    // A node told not to emulate announces no emulated system and refuses the foreign build.
    let plain = NodeProc::start(&tmp.path().join("plain"), &["--emulated-system", "none"]);
    let (_, info) = get_json(&format!("{}/api/v1/node", plain.url));
    assert_eq!(info["systems"]["emulated"], serde_json::json!([]), "{info}");
    let (_, _, aarch64) = &drvs[1];
    submit_drv(&plain.url, aarch64);
    wait_state(&plain.url, &drv_path(aarch64), "failed", LONG);
    let b = build_json(&plain.url, &drv_path(aarch64));
    assert!(b["error"].as_str().unwrap_or_default().contains("aarch64-linux"), "{b}");

    // One emulated system only.
    let arm_only = NodeProc::start(&tmp.path().join("arm"), &["--emulated-system", "armv7l-linux"]);
    let (_, info) = get_json(&format!("{}/api/v1/node", arm_only.url));
    assert_eq!(info["systems"]["emulated"], serde_json::json!(["armv7l-linux"]), "{info}");
}

/// The same small derivations built natively (x86_64 busybox) and under QEMU (aarch64, armv7l)
/// on one node, one build at a time: build time from the attestations (start to end, so the
/// sandbox setup is included). Prints the table in docs/benchmarks.md. Run with
/// `cargo test -p buildmesh-tests --test emulated_builds -- --ignored --nocapture bench`.
#[test]
#[ignore = "benchmark: prints a table"]
fn bench_native_vs_emulated() {
    require_binfmt();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let work = [
        ("echo", "echo hi > $out"),
        ("shell loop 20k", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i > $out"),
        ("sha256 of 32 MiB", "head -c 33554432 /dev/zero | sha256sum > $out"),
        ("gzip 1.2 MiB of text", "seq 1 200000 | gzip -c | wc -c > $out"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&tmp.path().join("data"), &["--slots", "1"]);
    // times[work][system] = build times in ms
    let mut times = vec![vec![Vec::new(); SYSTEMS.len()]; work.len()];
    for run in 0..runs {
        for (w, (label, script)) in work.iter().enumerate() {
            for (s, (system, arch, _)) in SYSTEMS.iter().enumerate() {
                let name = format!("bench-{w}-{arch}-{run}-{}", std::process::id());
                let drv = instantiate(tmp.path(), &name, system, arch, script);
                submit_drv(&node.url, &drv);
                wait_state(&node.url, &drv_path(&drv), "done", Duration::from_secs(600));
                let (_, atts) = get_json(&format!("{}/api/v1/attestations?drv={drv}", node.url));
                let ms = atts[0]["finished_at"].as_u64().unwrap() - atts[0]["started_at"].as_u64().unwrap();
                assert_eq!(atts[0]["emulated"], *system != "x86_64-linux", "{label}");
                times[w][s].push(ms);
            }
        }
    }
    println!(
        "| derivation | x86_64-linux (native) | aarch64-linux (QEMU) | armv7l-linux (QEMU) | aarch64 / native | armv7l / native |"
    );
    println!("|---|---|---|---|---|---|");
    for (w, (label, _)) in work.iter().enumerate() {
        let best = |s: usize| *times[w][s].iter().min().unwrap();
        let cell = |s: usize| {
            let v = &times[w][s];
            format!("{} ms (spread {}–{})", best(s), v.iter().min().unwrap(), v.iter().max().unwrap())
        };
        let ratio = |s: usize| format!("{:.1}×", best(s) as f64 / best(0).max(1) as f64);
        println!("| `{label}` | {} | {} | {} | {} | {} |", cell(0), cell(1), cell(2), ratio(1), ratio(2));
    }
}
