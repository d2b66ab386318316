//! Issue 10, finding 4: anonymous clients cancelled and requeued another user's running build,
//! and could submit, trigger mesh retries and block or unblock peers. Replayed on real
//! `buildmesh node` processes: every state-changing route without a token, with a wrong one and
//! with a malformed header answers 401 (`{"error"}`, `WWW-Authenticate: Bearer`) and changes
//! nothing; with the node's `DATA/api.token` it works; the file is mode 0600 and stable across
//! restarts; an exposed file stops the node; the CLI finds the token through `BUILDMESH_TOKEN`,
//! `--token-file`, `--data-dir` and the default data dir.

mod mesh_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use mesh_support::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);
const WRONG: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A request with a method, optional `Authorization` value and body; (status, challenge, JSON).
fn request(method: &str, url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, String, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = http().request(method.clone(), url).body(body);
    if let Some(a) = auth {
        r = r.header(reqwest::header::AUTHORIZATION, a);
    }
    let r = r.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let challenge =
        r.headers().get(reqwest::header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = r.bytes().unwrap();
    let json =
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, challenge, json)
}

/// Every way of not holding the token: none, a wrong one, a malformed header.
fn refused_everywhere(method: &str, url: &str, body: &[u8]) {
    for auth in [None, Some(format!("Bearer {WRONG}")), Some("Basic dXNlcjpwYXNz".to_string())] {
        let (status, challenge, json) = request(method, url, auth.as_deref(), body.to_vec());
        assert_eq!(status, 401, "{method} {url} with {auth:?} must be refused: {json}");
        assert!(challenge.starts_with("Bearer"), "{method} {url}: WWW-Authenticate {challenge:?}");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("token")), "{method} {url}: {json}");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_standalone_node_changes_state_only_for_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    // The node's data dir is the CLI's default data dir when XDG_DATA_HOME is `xdg`.
    let xdg = tmp.path().join("xdg");
    let data = xdg.join("buildmesh");
    std::fs::create_dir_all(&xdg).unwrap();
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    drvs.add("victims-sleeper", "sleep 60; echo z > $out", &[]);
    drvs.add("victims-failure", "exit 3", &[]);
    drvs.add("attackers-job", "echo pwned > $out", &[]);
    // An upload larger than what a node reads of a refused body.
    let big_src = tmp.path().join("big-src");
    std::fs::create_dir_all(&big_src).unwrap();
    let contents = vec![b'x'; 12 << 20];
    let big = buildmesh_protocol::store_path::make_text_path(&sd(), "big.txt", &contents, []).unwrap();
    let mut w = buildmesh_protocol::nar::NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    std::fs::write(big_src.join(format!("{big}.nar")), w.finish().unwrap()).unwrap();
    let (big_job, _) = drvs.add_with_sources("attackers-big-job", "cat $src0 > $out", &[], &[big]);
    let node = NodeProc::start(&data, &["--slots", "2"]);
    let url = node.url.clone();

    // The token: created at first start, mode 0600, 64 hex digits.
    let token_file = data.join("api.token");
    assert_eq!(mode(&token_file), 0o600);
    let token = node.token();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");

    // The victim's builds (submitted with the token): one running, one failed.
    submit(&url, &drvs.dir, &[drvs.drv("victims-sleeper"), drvs.drv("victims-failure")], 0);
    let sleeper = drvs.drv("victims-sleeper");
    let failure = drvs.drv("victims-failure");
    wait_state(&url, &sleeper, "running", LONG);
    wait_state(&url, &failure, "failed", LONG);
    let failed_attempts = build_json(&url, &failure)["attempts"].clone();

    // The attack: cancel the running build, requeue the failed one, submit, on every route.
    refused_everywhere("POST", &format!("{url}/api/v1/builds/{sleeper}/cancel"), b"");
    refused_everywhere("POST", &format!("{url}/api/v1/builds/{failure}/retry"), b"");
    refused_everywhere("POST", &format!("{url}/api/v1/submit"), b"BMSUBMT1 anything");
    // Any method but GET and HEAD, on any route, known or not.
    refused_everywhere("PUT", &format!("{url}/api/v1/builds/{sleeper}/cancel"), b"");
    refused_everywhere("DELETE", &format!("{url}/api/v1/builds/{sleeper}"), b"");
    refused_everywhere("POST", &format!("{url}/api/v1/some-route-added-later"), b"{}");
    refused_everywhere("PATCH", &format!("{url}/nix-cache-info"), b"");
    // A large refused body still gets its 401 as JSON.
    refused_everywhere("POST", &format!("{url}/api/v1/submit"), &vec![0u8; 4 << 20]);

    // The CLI without a token (nothing in the environment, no node data dir of its own).
    let elsewhere = tmp.path().join("elsewhere");
    let no_home = [("HOME", elsewhere.to_str().unwrap()), ("XDG_DATA_HOME", elsewhere.to_str().unwrap())];
    let full_sleeper = sd().display(&sleeper);
    let (st, _, err) = cli_env(&["cancel", &full_sleeper, "--api", &url], &no_home);
    assert!(!st.success() && err.contains("401") && err.contains("BUILDMESH_TOKEN"), "{err}");
    let (st, _, err) = cli_env(&["retry", &failure.to_string(), "--api", &url], &no_home);
    assert!(!st.success() && err.contains("401"), "{err}");
    let attacker = sd().display(&drvs.drv("attackers-job"));
    let submit_args = ["submit", "--api", &url, "--from", drvs.dir.to_str().unwrap(), attacker.as_str()];
    let (st, _, err) = cli_env(&submit_args, &no_home);
    assert!(!st.success() && err.contains("401"), "{err}");
    // A large upload (more than the node reads of a refused body) is refused as clearly.
    let big_job = sd().display(&big_job);
    let big_args = [
        "submit",
        "--api",
        &url,
        "--from",
        drvs.dir.to_str().unwrap(),
        "--sources",
        big_src.to_str().unwrap(),
        &big_job,
    ];
    let (st, _, err) = cli_env(&big_args, &no_home);
    assert!(!st.success() && err.contains("401") && err.contains("BUILDMESH_TOKEN"), "{err}");
    let wrong = [
        ("HOME", elsewhere.to_str().unwrap()),
        ("XDG_DATA_HOME", elsewhere.to_str().unwrap()),
        ("BUILDMESH_TOKEN", WRONG),
    ];
    let (st, _, err) = cli_env(&submit_args, &wrong);
    assert!(!st.success() && err.contains("401") && err.contains("not this node's"), "{err}");

    // Nothing changed: still running, still failed with the same attempts, nothing submitted.
    assert_eq!(build_state(&url, &sleeper).as_deref(), Some("running"));
    let f = build_json(&url, &failure);
    assert_eq!((f["state"].as_str(), &f["attempts"]), (Some("failed"), &failed_attempts), "{f}");
    assert_eq!(build_state(&url, &drvs.drv("attackers-job")), None, "the anonymous upload was stored");
    assert_eq!(build_state(&url, &drvs.drv("attackers-big-job")), None, "the anonymous upload was stored");
    let (s, builds) = get_json(&format!("{url}/api/v1/builds"));
    assert_eq!((s, builds.as_array().unwrap().len()), (200, 2), "{builds}");
    refused_everywhere("POST", &format!("{url}/api/v1/auth/check"), b"");

    // What stays public: the binary cache and the read-only API.
    assert_eq!(get(&format!("{url}/nix-cache-info")).0, 200);
    assert_eq!(get(&format!("{url}/api/v1/node")).0, 200);
    assert_eq!(get(&format!("{url}/api/v1/builds/{sleeper}")).0, 200);
    assert_eq!(get(&format!("{url}/{}.narinfo", sleeper.to_string().split('-').next().unwrap())).0, 404);
    let head = http().head(format!("{url}/nix-cache-info")).send().unwrap();
    assert_eq!(head.status().as_u16(), 200);

    // With the token it works, through every way the CLI finds it.
    let (st, out, err) = cli_env(
        &["retry", &failure.to_string(), "--api", &url],
        &[("BUILDMESH_TOKEN", &token), no_home[0], no_home[1]],
    );
    assert!(st.success(), "BUILDMESH_TOKEN: {out}{err}");
    let copy = tmp.path().join("token-copy");
    std::fs::write(&copy, format!("{token}\n")).unwrap();
    let (st, out, err) =
        cli_env(&["cancel", &full_sleeper, "--api", &url, "--token-file", copy.to_str().unwrap()], &no_home);
    assert!(st.success() && out.contains("running -> cancelled"), "--token-file: {out}{err}");
    assert_eq!(build_state(&url, &sleeper).as_deref(), Some("cancelled"));
    let default_dir = [("HOME", elsewhere.to_str().unwrap()), ("XDG_DATA_HOME", xdg.to_str().unwrap())];
    let (st, out, err) = cli_env(&["retry", &full_sleeper, "--api", &url], &default_dir);
    assert!(st.success(), "default data dir: {out}{err}");
    wait_state(&url, &sleeper, "running", LONG);
    let (st, out, err) =
        cli_env(&["cancel", &full_sleeper, "--api", &url, "--data-dir", data.to_str().unwrap()], &no_home);
    assert!(st.success(), "--data-dir: {out}{err}");
    let (st, out, err) = cli_env(&submit_args, &default_dir);
    assert!(st.success(), "submit with the default data dir's token: {out}{err}");
    let (st, out, err) = cli_env(&big_args, &[("BUILDMESH_TOKEN", &token), no_home[0], no_home[1]]);
    assert!(st.success(), "a large submit with the token: {out}{err}");
    let check = format!("{url}/api/v1/auth/check");
    let (status, _, json) = request("POST", &check, Some(&format!("Bearer {token}")), vec![]);
    assert_eq!(status, 204, "{json}");
    wait_state(&url, &drvs.drv("attackers-job"), "done", LONG);
    // The default data dir is used for a node on this machine only.
    let remote = url.replace("127.0.0.1", "localhost");
    let (st, _, err) = cli_env(&["retry", &full_sleeper, "--api", &remote], &default_dir);
    assert!(st.success(), "localhost is this machine: {err}");
    let (status, _, json) =
        request("POST", &format!("{url}/api/v1/builds/{sleeper}/cancel"), Some(&format!("Bearer {token}")), vec![]);
    assert_eq!(status, 200, "{json}");

    // The token survives restarts unchanged, and still works.
    wait_state(&url, &failure, "failed", LONG);
    let mut node = node;
    node.stop(Signal::SIGTERM, Duration::from_secs(15));
    let node = NodeProc::start(&data, &["--slots", "2"]);
    assert_eq!(node.token(), token);
    assert_eq!(mode(&token_file), 0o600);
    let (status, _, json) = request(
        "POST",
        &format!("{}/api/v1/builds/{failure}/retry", node.url),
        Some(&format!("Bearer {token}")),
        vec![],
    );
    assert_eq!(status, 200, "{json}");
    refused_everywhere("POST", &format!("{}/api/v1/builds/{failure}/retry", node.url), b"");

    // A token file others may read stops the node with a clear error; it is not rewritten.
    let mut node = node;
    node.stop(Signal::SIGTERM, Duration::from_secs(15));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (msg, log) = NodeProc::try_start(&data, &[]).err().expect("a node with an exposed api.token must not start");
    assert!(log.contains("api.token") && log.contains("0644") && log.contains("chmod 600"), "{msg}\n{log}");
    assert_eq!(token_of(&data).as_deref(), Some(token.as_str()));
}

#[test]
fn mesh_routes_need_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 2, &[]);
    let (url, peer) = (c.urls[0].clone(), c.peer_ids[1].clone());
    let token = c.token(0);
    assert_ne!(token, c.token(1), "every node has its own token");
    let bearer = format!("Bearer {token}");

    // Anonymous block, retry on another node, unblock: refused.
    refused_everywhere("POST", &format!("{url}/api/v1/peers/{peer}/block"), b"");
    let retry = serde_json::json!({"drv": "0123456789abcdfghijklmnpqrsvwxy0-x.drv", "on": peer}).to_string();
    refused_everywhere("POST", &format!("{url}/api/v1/mesh/retry"), retry.as_bytes());
    let elsewhere = tmp.path().join("elsewhere");
    let no_home = [("HOME", elsewhere.to_str().unwrap()), ("XDG_DATA_HOME", elsewhere.to_str().unwrap())];
    let (st, _, err) =
        cli_env(&["retry", "0123456789abcdfghijklmnpqrsvwxy0-x.drv", "--on", &peer, "--api", &url], &no_home);
    assert!(!st.success() && err.contains("401"), "{err}");

    // Nothing changed: the peer is still connected, and blocking it now is a change.
    std::thread::sleep(Duration::from_secs(1));
    let (_, peers) = get_json(&format!("{url}/api/v1/peers"));
    let p = peers.as_array().unwrap().iter().find(|p| p["peer_id"] == peer.as_str()).expect("peer listed");
    assert_eq!(p["connected"], true, "{p}");
    let (status, _, json) = request("POST", &format!("{url}/api/v1/peers/{peer}/block"), Some(&bearer), vec![]);
    assert_eq!((status, &json["changed"]), (200, &serde_json::json!(true)), "{json}");

    // Anonymous unblock of the blocked peer: refused, it stays blocked.
    refused_everywhere("POST", &format!("{url}/api/v1/peers/{peer}/unblock"), b"");
    let (status, _, json) = request("POST", &format!("{url}/api/v1/peers/{peer}/unblock"), Some(&bearer), vec![]);
    assert_eq!((status, &json["changed"]), (200, &serde_json::json!(true)), "{json}");

    // With the token the mesh retry reaches the handler (the derivation is unknown there).
    let (status, _, json) = request("POST", &format!("{url}/api/v1/mesh/retry"), Some(&bearer), retry.into_bytes());
    assert_ne!(status, 401, "{json}");
    // The other node's token is not this node's.
    let other = format!("Bearer {}", c.token(1));
    let (status, _, _) = request("POST", &format!("{url}/api/v1/peers/{peer}/block"), Some(&other), vec![]);
    assert_eq!(status, 401);
    // The read-only mesh API stays public.
    assert_eq!(get(&format!("{url}/api/v1/mesh")).0, 200);
    assert_eq!(get(&format!("{url}/metrics")).0, 200);
}
