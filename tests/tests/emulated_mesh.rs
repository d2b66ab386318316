//! A mesh of real nodes where some emulate a foreign system and one does not (issue 16,
//! docs/emulation.md): who is designated for an aarch64-linux derivation, what `buildmesh status
//! --json` and `explain` count per system, `quorum_needs_native` refusing an output that only
//! emulated builders attested, and `no_emulation_for` refusing one of that system only. Needs QEMU registered with the `F` flag (`scripts/emulation.sh
//! setup`, which `scripts/test.sh` runs).

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_support::*;

const LONG: Duration = Duration::from_secs(120);

fn require_emulation() -> &'static Path {
    let entry = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    assert!(
        entry.starts_with("enabled") && entry.lines().any(|l| l.starts_with("flags:") && l.contains('F')),
        "qemu-aarch64 is not registered with the F flag: run scripts/emulation.sh setup (scripts/test.sh does)"
    );
    let dir = Path::new("/var/cache/buildmesh/busybox/arm64");
    assert!(dir.join("busybox").exists(), "no aarch64 busybox: run scripts/emulation.sh setup");
    let arm = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-arm").unwrap_or_default();
    assert!(arm.starts_with("enabled"), "qemu-arm is not registered: run scripts/emulation.sh setup");
    assert!(dir.with_file_name("armhf").join("busybox").exists(), "no armhf busybox: run scripts/emulation.sh setup");
    dir
}

fn nix_instantiate(expr: &Path) -> String {
    let o = Command::new("nix-instantiate").arg(expr).output().expect("nix-instantiate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A derivation for `system` that writes `uname -m`, built by the static busybox of the Debian
/// architecture `arch` in `busybox_dir` (added to the store as a source).
fn instantiate(tmp: &Path, busybox_dir: &Path, arch: &str, system: &str) -> String {
    let expr = tmp.join(format!("emu-{arch}.nix"));
    std::fs::write(
        &expr,
        format!(
            r#"let bb = builtins.path {{ path = {}; name = "busybox-{arch}"; }}; in
derivation {{ name = "emu-mesh-{arch}-{}"; system = "{system}"; builder = "${{bb}}/busybox"; args = [ "sh" "-c" "uname -m > $out" ]; }}
"#,
            busybox_dir.display(),
            std::process::id()
        ),
    )
    .unwrap();
    nix_instantiate(&expr)
}

#[test]
fn emulating_and_plain_nodes_place_count_and_trust_by_mode() {
    let busybox = require_emulation();
    let tmp = tempfile::tempdir().unwrap();
    // Nodes 0 and 1 emulate what binfmt_misc offers; node 2 emulates nothing and wants a native
    // builder among the agreeing ones before it accepts an output; node 3 emulates nothing and
    // does not count emulated aarch64-linux builds.
    let c = Cluster::start_each(
        tmp.path(),
        &[
            &[],
            &[],
            &["--emulated-system", "none", "--quorum-needs-native"],
            &["--emulated-system", "none", "--no-emulation-for", "aarch64-linux"],
        ],
    );

    // The builders view counts per system, by mode (this node and the member peers).
    let (st, out, err) = cli(&["status", "--api", &c.urls[2], "--json"]);
    assert!(st.success(), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["systems"]["aarch64-linux"], serde_json::json!({"native": 0, "emulated": 2}), "{status}");
    assert_eq!(status["systems"]["x86_64-linux"], serde_json::json!({"native": 4, "emulated": 0}), "{status}");

    let drv = instantiate(tmp.path(), busybox, "arm64", "aarch64-linux");
    let (st, out, err) = cli(&["submit", "--api", &c.urls[2], "--replicas", "2", "--json", &drv]);
    assert!(st.success(), "{out}\n{err}");

    // Built by the two emulating nodes only, both attesting `emulated`.
    let atts = wait_for("two attestations on node 2", LONG, || {
        let (s, j) = get_json(&format!("{}/api/v1/attestations?drv={drv}", c.urls[2]));
        (s == 200 && j.as_array().is_some_and(|a| a.len() >= 2)).then_some(j)
    });
    let builders: BTreeSet<&str> = atts.as_array().unwrap().iter().map(|a| a["peer_id"].as_str().unwrap()).collect();
    assert_eq!(builders, BTreeSet::from([c.peer_ids[0].as_str(), c.peer_ids[1].as_str()]), "{atts}\n{}", c.logs());
    assert!(atts.as_array().unwrap().iter().all(|a| a["emulated"] == true), "{atts}");
    let path = atts[0]["path"].as_str().unwrap().to_string();
    let hash = path.strip_prefix("/nix/store/").unwrap().split('-').next().unwrap().to_string();

    // `explain` on the plain node: no native builder, two emulated, both designated.
    let (s, ex) = get_json(&format!("{}/api/v1/explain?drv={drv}", c.urls[2]));
    assert_eq!(s, 200, "{ex}");
    assert_eq!((ex["eligible"]["native"].as_u64(), ex["eligible"]["emulated"].as_u64()), (Some(0), Some(2)), "{ex}");
    assert!(ex["eligible"]["members"].as_array().unwrap().iter().all(|m| m["mode"] == "emulated"), "{ex}");

    // Node 0 (default trust) serves the output two emulated builders agree on; node 2
    // (`--quorum-needs-native`) does not.
    wait_for("node 0 serves the emulated output", LONG, || {
        (get(&format!("{}/{hash}.narinfo", c.urls[0])).0 == 200).then_some(())
    });
    let (s, body) = get(&format!("{}/{hash}.narinfo", c.urls[2]));
    assert_ne!(
        s,
        200,
        "node 2 must not serve an output only emulated builders attested: {}",
        String::from_utf8_lossy(&body)
    );

    // Node 3 (`--no-emulation-for aarch64-linux`) keeps and shows the emulated attestations but
    // does not serve the output; an armv7l-linux output of the same two emulating builders it
    // serves (it fetches that `.drv` to learn its system: it neither submitted nor built it).
    let armv7 = instantiate(tmp.path(), &busybox.with_file_name("armhf"), "armhf", "armv7l-linux");
    let (st, out, err) = cli(&["submit", "--api", &c.urls[2], "--replicas", "2", "--json", &armv7]);
    assert!(st.success(), "{out}\n{err}");
    let emulated_on_3 = |drv: &str| {
        let (s, j) = get_json(&format!("{}/api/v1/attestations?drv={drv}", c.urls[3]));
        s == 200 && j.as_array().is_some_and(|a| a.len() >= 2 && a.iter().all(|a| a["emulated"] == true))
    };
    wait_for("node 3 stores both emulated aarch64 attestations", LONG, || emulated_on_3(&drv).then_some(()));
    let (s, body) = get(&format!("{}/{hash}.narinfo", c.urls[3]));
    assert_ne!(s, 200, "node 3 must not count emulated aarch64 builds: {}", String::from_utf8_lossy(&body));
    wait_for("node 3 serves the emulated armv7l output", LONG, || {
        let (s, j) = get_json(&format!("{}/api/v1/attestations?drv={armv7}", c.urls[3]));
        let path = j[0]["path"].as_str().filter(|_| s == 200 && emulated_on_3(&armv7))?.to_string();
        let hash = path.strip_prefix("/nix/store/")?.split('-').next()?.to_string();
        (get(&format!("{}/{hash}.narinfo", c.urls[3])).0 == 200).then_some(())
    });

    // Each emulating node measured its slowdown (a busybox run natively and under QEMU) and
    // announced it: the plain node sees it in /api/v1/peers (and `status --json` under `peers`).
    let peers = wait_for("the emulating peers' slowdown on node 2", LONG, || {
        let (s, j) = get_json(&format!("{}/api/v1/peers", c.urls[2]));
        let measured = |id: &str| {
            j.as_array()
                .into_iter()
                .flatten()
                .any(|p| p["peer_id"] == id && p["slowdown"]["aarch64-linux"].as_f64().is_some_and(|x| x > 1.0))
        };
        (s == 200 && measured(&c.peer_ids[0]) && measured(&c.peer_ids[1])).then_some(j)
    });
    let plain = peers.as_array().unwrap().iter().find(|p| p["peer_id"] == c.peer_ids[2].as_str());
    assert!(plain.is_none_or(|p| p["slowdown"].as_object().is_none_or(|m| m.is_empty())), "{peers}");
    let (st, out, err) = cli(&["status", "--api", &c.urls[2], "--json"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("\"slowdown\""), "{out}");
}
