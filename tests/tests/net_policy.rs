//! Issue 15 items 1-3 replayed against real `buildmesh node` processes over real HTTP and libp2p:
//!
//! - `submit.max_outstanding_jobs`: an upload over the submitter's outstanding jobs is a 429
//!   naming the limit;
//! - the public listener serves the cache and the read-only API but refuses every control route
//!   (403 naming the admin listener, with or without the token); the admin listener serves them
//!   behind the token; the CLI finds the admin listener by itself (`submit`, `cancel`);
//! - `submitters`: a stranger's job gossiped by an intruder, and a job of a real node whose key is
//!   not allowed, are not built by the mesh's nodes, and `buildmesh explain` names the refused
//!   submitter, also when a claim opened the derivation before its refused job arrived;
//! - `builders`: an intruder announcing itself does not become a member of a mesh whose nodes
//!   list their builders, and does in an open mesh.

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use buildmesh_protocol::id::JobId;
use buildmesh_protocol::store_path::StoreDir;
use buildmesh_protocol::wire::{Announcement, Claim, JobSubmission, Message};
use mesh_support::intruder::{Intruder, now_ms, throwaway};
use mesh_support::*;

fn post(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = post_with(url, token);
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn control_routes_live_on_the_admin_listener_only() {
    let dir = tempfile::tempdir().unwrap();
    // A public address and no `admin_http`: the admin listener defaults to loopback.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[submit]\nmax_outstanding_jobs = 1\n").unwrap();
    let node = NodeProc::start_with(
        &dir.path().join("n"),
        &[],
        "0.0.0.0:0",
        "/ip4/127.0.0.1/tcp/0",
        &["--config", config.to_str().unwrap()],
    );
    let public = node.url.replace("0.0.0.0", "127.0.0.1");
    let (s, info) = get_json(&format!("{public}/api/v1/node"));
    assert_eq!(s, 200);
    let admin_addr: std::net::SocketAddr = info["admin_http"].as_str().unwrap().parse().unwrap();
    assert!(admin_addr.ip().is_loopback(), "{info}");
    assert_ne!(admin_addr.to_string(), info["http"].as_str().unwrap(), "a separate listener");
    let admin = format!("http://{admin_addr}");
    let token = node.token();

    // The public port: cache and read-only API yes, control routes no (whoever asks).
    assert_eq!(get(&format!("{public}/nix-cache-info")).0, 200);
    assert_eq!(get(&format!("{public}/api/v1/builds")).0, 200);
    for route in ["/api/v1/builds/x.drv/cancel", "/api/v1/builds/x.drv/retry", "/api/v1/submit", "/api/v1/auth/check"] {
        for t in [None, Some(token.as_str())] {
            let (s, body) = post(&format!("{public}{route}"), t);
            assert_eq!(s, 403, "{route} on the public port: {body}");
            let e = body["error"].as_str().unwrap();
            assert!(e.contains("admin_http") && e.contains(&admin_addr.to_string()), "{e}");
        }
    }
    let r = http().delete(format!("{public}/api/v1/builds/x.drv")).bearer_auth(&token).send().unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // The admin port: everything, control routes behind the token.
    assert_eq!(get(&format!("{admin}/nix-cache-info")).0, 200);
    assert_eq!(post(&format!("{admin}/api/v1/auth/check"), None).0, 401);
    assert_eq!(post(&format!("{admin}/api/v1/auth/check"), Some(&token)).0, 204);
    // Served (not refused as a control route elsewhere): `x.drv` is not a store path, so 400.
    let (s, body) = post(&format!("{admin}/api/v1/builds/x.drv/cancel"), Some(&token));
    assert!(matches!(s, 400 | 404), "{s} {body}");

    // The CLI pointed at the public port finds the admin listener (GET /api/v1/node) and works.
    let drvs_dir = dir.path().join("drvs");
    let mut drvs = Drvs::new(&drvs_dir);
    let (drv, _) = drvs.add("admin-split", "sleep 30; echo hi > $out", &[]);
    let (st, out, err) = cli_env(
        &["submit", "--api", &public, "--from", drvs_dir.to_str().unwrap(), "--json", &sd().display(&drv)],
        &[("BUILDMESH_TOKEN", &token)],
    );
    assert!(st.success(), "submit through the public URL: {out}\n{err}");
    // Item 4: one outstanding job is this submitter's limit; the next upload is refused, 429.
    let (other, _) = drvs.add("over-quota", "echo no > $out", &[]);
    let (st, out, err) = cli_env(
        &["submit", "--api", &public, "--from", drvs_dir.to_str().unwrap(), &sd().display(&other)],
        &[("BUILDMESH_TOKEN", &token)],
    );
    assert!(!st.success(), "{out}");
    assert!(err.contains("429") && err.contains("submit.max_outstanding_jobs") && err.contains("is 1"), "{err}");
    let (st, out, err) = cli_env(&["cancel", "--api", &public, &sd().display(&drv)], &[("BUILDMESH_TOKEN", &token)]);
    assert!(st.success() && out.contains("cancelled"), "cancel through the public URL: {out}\n{err}");

    // Explicitly one listener: `--admin-http` equal to `--http`.
    let one = NodeProc::start(&dir.path().join("one"), &[]);
    let (_, info) = get_json(&format!("{}/api/v1/node", one.url));
    assert_eq!(info["admin_http"], info["http"], "a loopback http serves everything");
    assert_eq!(post(&format!("{}/api/v1/auth/check", one.url), Some(&one.token())).0, 204);
}

fn job(submitter: &buildmesh_protocol::identity::NodeKey, drv: &str) -> Message {
    Message::JobSubmission(JobSubmission {
        job: JobId::from_bytes(*blake3::hash(drv.as_bytes()).as_bytes()),
        submitter: submitter.node_id(),
        submitted_at_ms: now_ms(),
        store_dir: StoreDir::nix(),
        drv: sd().parse_path(drv).unwrap(),
        outputs: BTreeSet::new(),
        system: "x86_64-linux".into(),
        required_features: BTreeSet::new(),
        priority: 0,
        replicas: 2,
    })
}

fn claim(claimant: &buildmesh_protocol::identity::NodeKey, drv: &str) -> Message {
    let now = now_ms();
    Message::Claim(Claim {
        job: JobId::from_bytes(*blake3::hash(drv.as_bytes()).as_bytes()),
        claimant: claimant.node_id(),
        store_dir: StoreDir::nix(),
        drv: sd().parse_path(drv).unwrap(),
        attempt: 1,
        claimed_at_ms: now,
        lease_expires_at_ms: now + 6000,
    })
}

fn explain(url: &str, drv: &str) -> serde_json::Value {
    let (st, out, err) = cli(&["explain", "--api", url, "--json", drv]);
    assert!(st.success(), "explain: {out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn jobs_of_keys_that_are_not_submitters_are_refused_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 2, &[]);

    // 1. A stranger gossips a job (signed with its own key): validated, then refused.
    let stranger = throwaway(31);
    let intruder = Intruder::join(&c, stranger.clone());
    let drv = "/nix/store/00000000000000000000000000000031-stranger.drv";
    // Repeated: a single publication right after joining can go out before the gossip mesh
    // formed (gossipsub then drops it); a stranger keeps trying anyway.
    let signer = stranger.clone();
    intruder.repeat(stranger.clone(), Duration::from_millis(500), move || job(&signer, drv));
    for i in 0..2 {
        let e = wait_for("explain names the stranger", Duration::from_secs(20), || {
            let e = explain(&c.urls[i], drv);
            (e["mesh_state"] == "refused").then_some(e)
        });
        let who = e["refused_submitter"].as_str().unwrap();
        assert!(who.contains(&stranger.node_id().to_string()), "{e}");
        assert!(e["reasons"][0].as_str().unwrap().contains("submitters"), "{e}");
    }

    // 1b. The race the outsider below can hit: its claim reaches the cluster before its job
    // (the job topic's gossip mesh was not formed yet), so a claim opened the derivation's entry.
    // The refusal of the job that follows must still be what explain says.
    let raced = "/nix/store/00000000000000000000000000000032-raced.drv";
    let signer = stranger.clone();
    intruder.repeat(stranger.clone(), Duration::from_millis(500), move || announcement(&signer));
    let signer = stranger.clone();
    intruder.repeat(stranger.clone(), Duration::from_millis(500), move || claim(&signer, raced));
    for i in 0..2 {
        wait_for("a claim opens the raced derivation", Duration::from_secs(20), || {
            (explain(&c.urls[i], raced)["mesh_state"] == "active").then_some(())
        });
    }
    let signer = stranger.clone();
    intruder.repeat(stranger.clone(), Duration::from_millis(500), move || job(&signer, raced));
    for i in 0..2 {
        let e = wait_for("explain names the stranger after its claim", Duration::from_secs(20), || {
            let e = explain(&c.urls[i], raced);
            (e["mesh_state"] == "refused").then_some(e)
        });
        assert!(e["refused_submitter"].as_str().unwrap().contains(&stranger.node_id().to_string()), "{e}");
    }
    intruder.shutdown();

    // 2. A real node whose key the cluster does not allow submits a real job with k = 2.
    let outsider = NodeProc::start(
        &dir.path().join("outsider"),
        &["--config", c.config.to_str().unwrap(), "--bootstrap", &c.bootstrap, "--slots", "2", "--quorum", "1"],
    );
    c.wait_members(3, Duration::from_secs(30));
    let drvs_dir = dir.path().join("drvs");
    let mut drvs = Drvs::new(&drvs_dir);
    let (d, out) = drvs.add("outsider-job", "echo outsider > $out", &[]);
    let (st, o, err) = cli(&[
        "submit",
        "--api",
        &outsider.url,
        "--from",
        drvs_dir.to_str().unwrap(),
        "--replicas",
        "2",
        &sd().display(&d),
    ]);
    assert!(st.success(), "{o}\n{err}");
    for i in 0..2 {
        let e = wait_for("the cluster refuses the outsider's job", Duration::from_secs(30), || {
            let e = explain(&c.urls[i], &sd().display(&d));
            (e["mesh_state"] == "refused").then_some(e)
        });
        let outsider_id = hex_node_id(&outsider.public_key);
        assert!(e["refused_submitter"].as_str().unwrap().contains(&outsider_id), "{e}");
    }
    // Long enough for several claim timeouts (3 s): nobody of the cluster builds it.
    std::thread::sleep(Duration::from_secs(8));
    for i in 0..2 {
        // The outsider's own attestation may arrive by gossip (stored, not trusted); no node of
        // the cluster attested it.
        let by: BTreeSet<String> = c.attesters(i, &sd().display(&out)).into_values().flatten().collect();
        assert!(c.peer_ids.iter().all(|p| !by.contains(p)), "node {i}: a cluster node attested it: {by:?}");
        let (s, _) = get(&format!("{}/api/v1/builds/{}-{}", c.urls[i], d.hash_part(), d.name()));
        assert_eq!(s, 404, "node {i} has no build of the outsider's job");
    }
    let (_, attested) = get_json(&format!("{}/api/v1/attestations?drv={}-{}", outsider.url, d.hash_part(), d.name()));
    let keys: BTreeSet<String> = attested
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["builder_key"].as_str().map(str::to_string))
        .collect();
    assert!(keys.iter().all(|k| *k == outsider.public_key), "only the outsider built it: {keys:?}");
}

/// The node id (hex) of a Nix public key `name:base64`.
fn hex_node_id(public_key: &str) -> String {
    use base64::Engine as _;
    let b64 = public_key.split_once(':').unwrap().1;
    hex::encode(base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
}

fn announcement(node: &buildmesh_protocol::identity::NodeKey) -> Message {
    Message::Announcement(Announcement {
        node: node.node_id(),
        seq: now_ms(),
        timestamp_ms: now_ms(),
        version: "sybil".into(),
        owner: String::new(),
        native_systems: BTreeSet::from(["x86_64-linux".to_string()]),
        emulated_systems: BTreeSet::new(),
        features: BTreeSet::new(),
        mandatory_features: BTreeSet::new(),
        slots: 2,
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    })
}

#[test]
fn only_listed_builders_become_members() {
    let dir = tempfile::tempdir().unwrap();
    // Open mesh first: the Sybil joins the view.
    std::fs::create_dir_all(dir.path().join("open")).unwrap();
    std::fs::create_dir_all(dir.path().join("closed")).unwrap();
    let open = Cluster::start(&dir.path().join("open"), 2, &[]);
    let sybil = throwaway(41);
    let intruder = Intruder::join(&open, sybil.clone());
    intruder.repeat(sybil.clone(), Duration::from_millis(500), {
        let s = sybil.clone();
        move || announcement(&s)
    });
    open.wait_members(3, Duration::from_secs(20));
    intruder.shutdown();
    drop(open);

    // With `--builder` listing the two nodes, the same Sybil never becomes a member.
    let keys: Vec<String> = (0..2)
        .map(|i| {
            buildmesh_protocol::identity::NodeKey::from_seed(
                &format!("mesh-test-{i}"),
                key_seed(&dir.path().join("closed"), i),
            )
            .unwrap()
            .nix_public_key()
            .to_string()
        })
        .collect();
    let extra: Vec<&str> = keys.iter().flat_map(|k| ["--builder", k.as_str()]).collect();
    let closed = Cluster::start(&dir.path().join("closed"), 2, &extra);
    let intruder = Intruder::join(&closed, sybil.clone());
    intruder.repeat(sybil.clone(), Duration::from_millis(500), {
        let s = sybil.clone();
        move || announcement(&s)
    });
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..2 {
        assert_eq!(closed.mesh(i)["members"].as_u64(), Some(2), "node {i}: the Sybil is no member");
    }
    intruder.shutdown();
}
