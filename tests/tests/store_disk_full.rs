//! Issue 10 finding 10, replayed on a real `buildmesh node` whose data dir is a small tmpfs: a
//! database commit fails because the disk is full; `GET /health` then answers 503 naming the
//! store; once space is freed the node reopens its database by itself and writes work again
//! (before the fix every later write failed with "Previous I/O error occurred" while the node
//! looked healthy).

mod node_support;
mod server_support;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use buildmesh_protocol::store_path::StorePath;
use node_support::{Drvs, NodeProc, bin, get, sd, wait_for};
use server_support::{Tmpfs, config_args, token};

/// `buildmesh submit` of `drvs` (from `dir`) to the node at `url`: whether it succeeded, and
/// what it said.
fn submit(url: &str, data: &Path, dir: &Path, drvs: &[StorePath]) -> (bool, String) {
    let mut c = Command::new(bin());
    c.args(["submit", "--api", url, "--from"]).arg(dir).arg("--json");
    c.args(drvs.iter().map(|d| sd().display(d)));
    if let Some(t) = token(data) {
        c.env("BUILDMESH_TOKEN", t);
    }
    let out = c.env("BUILDMESH_LOG", "warn").output().expect("run buildmesh submit");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// 24 derivations with a 16 KiB variable each (so their commit needs new database pages).
fn batch(drvs: &mut Drvs, n: usize) -> Vec<StorePath> {
    let pad = "p".repeat(16 * 1024);
    (0..24).map(|i| drvs.add(&format!("b{n}-{i}"), &format!("echo {n} {i} {pad} > $out"), &[]).0).collect()
}

/// Fill the filesystem of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let chunk = vec![0u8; 256 * 1024];
    for _ in 0..1024 {
        if f.write_all(&chunk).and_then(|_| f.sync_data()).is_err() {
            return;
        }
    }
    panic!("the tmpfs never filled up");
}

fn health(url: &str) -> (u16, serde_json::Value) {
    let (s, b) = get(&format!("{url}/health"));
    (
        s,
        serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("/health is not JSON ({e}): {}", String::from_utf8_lossy(&b))),
    )
}

#[test]
fn a_full_disk_fails_health_and_the_node_recovers_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _mount = Tmpfs::mount(&data, "16m");
    let args = config_args(&data, "store_failure_exit_secs = 120\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n = NodeProc::start(&data, &args);
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    let (s, h) = health(&n.url);
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")), "{h}");

    let before = batch(&mut drvs, 0);
    let (ok, said) = submit(&n.url, &data, &drvs.dir, &before);
    assert!(ok, "submit before the disk filled: {said}");

    fill(&data);
    // Commits that need new pages now fail; try a few batches until one does.
    let mut failed = None;
    for b in 1..=6 {
        let more = batch(&mut drvs, b);
        let (ok, said) = submit(&n.url, &data, &drvs.dir, &more);
        if !ok {
            failed = Some(said);
            break;
        }
    }
    let said = failed.expect("no submit failed on a full disk");
    eprintln!("submit on a full disk: {said}");
    let (s, h) = health(&n.url);
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["status"], "failing", "{h}");
    assert_eq!(h["failures"][0]["component"], "store", "{h}");
    assert!(h["version"].is_string(), "{h}");

    std::fs::remove_file(data.join("filler")).unwrap();
    let t = Instant::now();
    wait_for("/health to say ok after space was freed", Duration::from_secs(20), || {
        (health(&n.url).0 == 200).then_some(())
    });
    eprintln!("healthy again {:?} after space was freed", t.elapsed());
    let after = batch(&mut drvs, 99);
    let (ok, said) = submit(&n.url, &data, &drvs.dir, &after);
    assert!(ok, "submit after space was freed: {said}\n--- node log ---\n{}", n.log_text());
    for d in before.iter().chain(&after) {
        let (s, _) = get(&format!("{}/api/v1/builds/{d}", n.url));
        assert_eq!(s, 200, "build of {d} lost");
    }
    assert!(n.log_text().contains("the database works again"), "{}", n.log_text());
}
