//! `buildmesh node` as a process: start, the JSON API and binary-cache basics, the node key
//! created once and reused, a clean shutdown on SIGTERM/SIGINT, the data dir lock, and
//! `buildmesh check-config`.

mod node_support;

use std::time::{Duration, Instant};

use buildmesh_protocol::identity::NodeKey;
use nix::sys::signal::Signal;
use node_support::*;

#[test]
fn serves_the_api_and_the_cache_protocol_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut node = NodeProc::start(&data, &["--slots", "3"]);
    let url = node.url.clone();

    // The key was created on first start, in the format `buildmesh key generate` writes.
    let key_text = std::fs::read_to_string(data.join("node.key")).unwrap();
    let key = NodeKey::parse_file(&key_text).unwrap();
    assert_eq!(key.nix_public_key().to_string(), node.public_key);
    assert_eq!(key.peer_id(), node.peer_id);

    let (s, info) = get_json(&format!("{url}/api/v1/node"));
    assert_eq!(s, 200);
    assert_eq!(info["peer_id"], node.peer_id.as_str());
    assert!(node.peer_id.starts_with("12D3KooW"));
    assert_eq!(info["public_key"], node.public_key.as_str());
    assert_eq!(info["key_name"], key.name());
    assert_eq!(info["store_dir"], "/nix/store");
    assert_eq!(info["executor"], "local");
    assert_eq!(info["slots"], 3);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["addresses"].is_array());
    assert!(info["systems"]["native"].as_array().unwrap().iter().any(|s| s == "x86_64-linux"), "{info}");
    assert_eq!(info["builds"]["queued"], 0);

    // Binary cache protocol.
    let (s, body) = get(&format!("{url}/nix-cache-info"));
    assert_eq!(
        (s, String::from_utf8(body).unwrap().as_str()),
        (200, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
    );
    let missing = "0123456789abcdfghijklmnpqrsvwxyz";
    assert_eq!(get(&format!("{url}/{missing}.narinfo")).0, 404);
    let head = http().head(format!("{url}/{missing}.narinfo")).send().unwrap();
    assert_eq!(head.status().as_u16(), 404);
    assert_eq!(get(&format!("{url}/{}.narinfo", &missing[..31])).0, 400);
    assert_eq!(get(&format!("{url}/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo")).0, 400, "e is not nix32");
    assert_eq!(get(&format!("{url}/something-else")).0, 404);
    let nar = "1".repeat(52);
    assert_eq!(get(&format!("{url}/nar/{nar}.nar")).0, 404);
    assert_eq!(get(&format!("{url}/nar/{nar}.nar.zst")).0, 404);
    assert_eq!(http().head(format!("{url}/nar/{nar}.nar")).send().unwrap().status().as_u16(), 404);
    assert_eq!(get(&format!("{url}/nar/{}.nar", &nar[..51])).0, 400);
    assert_eq!(get(&format!("{url}/nar/{nar}.tar")).0, 404);

    // JSON API errors are JSON and name what is wrong.
    let (s, j) = get_json(&format!("{url}/api/v1/builds"));
    assert_eq!((s, j), (200, serde_json::json!([])));
    let drv = format!("{missing}-hello.drv");
    let (s, j) = get_json(&format!("{url}/api/v1/builds/{drv}"));
    assert_eq!(s, 404);
    assert!(j["error"].as_str().unwrap().contains(&drv), "{j}");
    let (s, j) = get_json(&format!("{url}/api/v1/builds/%2Fnix%2Fstore%2F{drv}"));
    assert_eq!(s, 404, "a full path, URL-encoded, is accepted: {j}");
    let (s, j) = get_json(&format!("{url}/api/v1/builds/not-a-path"));
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("not-a-path"));
    let (s, j) = get_json(&format!("{url}/api/v1/builds/{missing}-hello"));
    assert_eq!(s, 400, "{j}");
    assert_eq!(get_json(&format!("{url}/api/v1/builds?state=bogus")).0, 400);
    assert_eq!(get_json(&format!("{url}/api/v1/builds/{drv}/log")).0, 404);
    let r = http().post(format!("{url}/api/v1/builds/{drv}/retry")).bearer_auth(node.token()).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(get_json(&format!("{url}/api/v1/attestations")).0, 400);
    let (s, j) = get_json(&format!("{url}/api/v1/attestations?path=/nix/store/{missing}-x"));
    assert_eq!((s, j), (200, serde_json::json!([])));
    let (s, body) = get(&format!("{url}/api/v1/attestations?format=jsonl"));
    assert_eq!((s, body.len()), (200, 0));
    let (s, j) = get_json(&format!("{url}/api/v1/nothing"));
    assert_eq!(s, 404);
    assert!(j["error"].is_string());

    // The data dir is locked: a second node on it fails with a clear error.
    let second = NodeProc::try_start(&data, &[]).err().expect("a second node on the same data dir must fail");
    assert!(second.1.contains("already open"), "{}", second.1);

    // SIGTERM: a clean, quick exit.
    let t = Instant::now();
    let status = node.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}\n{}", node.log_text());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(node.log_text().contains("node stopped"), "{}", node.log_text());
    assert!(get_json_err(&url), "the port is closed after shutdown");

    // Restart: the same key, so the same identity; SIGINT stops it cleanly too.
    let mut again = NodeProc::start(&data, &[]);
    assert_eq!(again.public_key, node.public_key);
    assert_eq!(again.peer_id, node.peer_id);
    assert_eq!(std::fs::read_to_string(data.join("node.key")).unwrap(), key_text);
    let status = again.stop(Signal::SIGINT, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

fn get_json_err(url: &str) -> bool {
    http().get(format!("{url}/api/v1/node")).send().is_err()
}

#[test]
fn key_file_and_name_flags() {
    let tmp = tempfile::tempdir().unwrap();
    // A key written by `buildmesh key generate` is used as it is.
    let secret = tmp.path().join("secret");
    let public = tmp.path().join("public");
    let (st, out, err) = cli(&[
        "key",
        "generate",
        "my-cache-1",
        "--secret-file",
        secret.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    assert!(st.success(), "{out}{err}");
    let data = tmp.path().join("data");
    let node = NodeProc::start(&data, &["--key", secret.to_str().unwrap()]);
    assert_eq!(node.public_key, std::fs::read_to_string(&public).unwrap());
    assert!(!data.join("node.key").exists());
    drop(node);
    // A new key gets the configured name.
    let data2 = tmp.path().join("data2");
    let node = NodeProc::start(&data2, &["--key-name", "volunteer.example.org-1"]);
    assert!(node.public_key.starts_with("volunteer.example.org-1:"), "{}", node.public_key);
    // A broken key file is a clear startup error.
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let err = NodeProc::try_start(&tmp.path().join("data3"), &["--key", bad.to_str().unwrap()]).err().unwrap();
    assert!(err.1.contains("bad.key"), "{}", err.1);
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("node.toml");
    std::fs::write(&file, "slots = 3\nquorum = 3\nhttp = \"127.0.0.1:9999\"\n").unwrap();
    let (st, out, err) =
        cli(&["check-config", "--config", file.to_str().unwrap(), "--slots", "7", "--executor", "nix"]);
    assert!(st.success(), "{err}");
    let printed = buildmesh::config::Config::from_toml(&out).expect("check-config prints valid TOML");
    assert_eq!(printed.slots, 7);
    assert_eq!(printed.quorum, 3);
    assert_eq!(printed.executor, buildmesh::config::ExecutorKind::Nix);
    assert_eq!(printed.http.port(), 9999);

    std::fs::write(&file, "slots = 3\n\nqourum = 3\n").unwrap();
    let (st, _, err) = cli(&["check-config", "--config", file.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("node.toml") && err.contains("line 3") && err.contains("qourum"), "{err}");

    std::fs::write(&file, "trusted_keys = [\"nope\"]\n").unwrap();
    let (st, _, err) = cli(&["check-config", "--config", file.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("trusted_keys") && err.contains("node.toml"), "{err}");

    let (st, _, err) = cli(&["check-config", "--config", tmp.path().join("missing.toml").to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("missing.toml"), "{err}");

    // `buildmesh node` refuses the same invalid config before doing anything.
    let (st, _, err) =
        cli(&["node", "--config", file.to_str().unwrap(), "--data-dir", tmp.path().join("d").to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("trusted_keys"), "{err}");
    assert!(!tmp.path().join("d").exists());
}
