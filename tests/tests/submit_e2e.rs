//! End to end (issue 3 item 8, the submission part): a real `buildmesh node` process with the
//! `local` executor, and `buildmesh submit --from <vectors>/drv --wait --json <every vector drv>`;
//! every output's NarHash must equal the one Nix recorded in the vectors.

mod submit_support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildmesh_protocol::derivation::Derivation;
use submit_support::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_buildmesh-under-test")
}

/// Kills the node process when the test ends, however it ends.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_node(data: &std::path::Path) -> (NodeProcess, String) {
    let port = free_port();
    let config = data.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nhttp = \"127.0.0.1:{port}\"\nexecutor = \"local\"\nslots = 2\n\
             listen = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\nbuild_timeout_secs = 120\n",
            data.join("data").display().to_string()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(data.join("node.log")).expect("log file");
    let child = Command::new(bin())
        .args(["node", "--config", config.to_str().expect("utf-8 path")])
        .env("BUILDMESH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start `buildmesh node`");
    let mut node = NodeProcess(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/api/v1/node")).send()
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = node.0.try_wait() {
            panic!(
                "`buildmesh node` exited with {status} before serving /api/v1/node:\n{}",
                std::fs::read_to_string(data.join("node.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "`buildmesh node` did not answer /api/v1/node within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (node, url)
}

#[test]
fn every_vector_is_built_by_a_real_node_with_the_recorded_nar_hash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_node, url) = start_node(tmp.path());
    let drvs: Vec<String> =
        vector_drvs().into_values().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    // The node's config tells the CLI where the node's data dir, and so its API token, is.
    let mut args = vec![
        "submit".to_string(),
        "--api".into(),
        url,
        "--config".into(),
        tmp.path().join("node.toml").display().to_string(),
        "--from".into(),
        drv_dir().display().to_string(),
        "--wait".into(),
        "--json".into(),
        "--poll-interval".into(),
        "0.2".into(),
        "--timeout".into(),
        "900".into(),
    ];
    args.extend(drvs.iter().cloned());
    let o = Command::new(bin()).args(&args).output().expect("run buildmesh submit");
    let log = std::fs::read_to_string(tmp.path().join("node.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "submit failed:\n{}\nnode log (tail):\n{}",
        String::from_utf8_lossy(&o.stderr),
        log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let nars = nar_index();
    let mut compared = 0;
    for (name, drv_path) in vector_drvs() {
        let bytes = std::fs::read(drv_dir().join(format!("{name}.drv"))).expect("drv");
        let drv = Derivation::parse(&bytes, &sd()).expect("parse");
        let outs = &got[&drv_path];
        assert!(outs.is_object(), "{name}: no outputs in {got}");
        for (o, out) in &drv.outputs {
            let path = sd().display(out.path.as_ref().expect("vector outputs have paths"));
            let built = &outs[o];
            assert_eq!(built["path"], serde_json::json!(path), "{name}.{o}");
            let hash = built["nar_hash"].as_str().unwrap_or_default();
            assert!(hash.starts_with("sha256:"), "{name}.{o}: {built}");
            if let Some(row) = nars.get(&path) {
                assert_eq!(hash, row.nar_hash, "{name}.{o}: NarHash differs from the one Nix recorded");
                assert_eq!(built["nar_size"], serde_json::json!(row.nar_size), "{name}.{o}");
                compared += 1;
            } else {
                assert!(name.starts_with("unrepro-"), "{name}.{o}: no NAR vector for {path}");
            }
        }
    }
    assert!(compared >= 60, "compared {compared} outputs");
}
