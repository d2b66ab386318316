//! Issue 15 item 7, replayed against real `buildmesh node` processes: while a 3-node mesh builds
//! a job and a job that needs it (closures and NARs fetched between the honest nodes), four
//! attackers (bare libp2p peers, `mesh_support::intruder`) misbehave towards node 0:
//!
//! - a request flood (waves of 200 closure requests at once; the node allows 10/s here) is cut
//!   to the per-peer rate, and the
//!   flooder is graylisted (its later requests are refused outright);
//! - oversized request frames (200 KB closure requests; the cap is 64 KB) are refused and
//!   graylist their sender;
//! - invalid gossip graylists its sender;
//! - 40 raw TCP connections from one IP address: the node keeps at most
//!   `max_connections_per_ip` (12 here) inbound connections from it and closes the rest at once.
//!
//! Each attacker shows up in node 0's `GET /api/v1/peers` with `conduct.graylisted` (and its
//! refused requests or oversized frames), and the node's log names it (`peer_graylisted`). The
//! honest nodes finish both jobs, each attested by two of them, and none of them is graylisted
//! or refused anywhere.

mod mesh_support;

use std::io::Read as _;
use std::net::TcpStream;
use std::time::Duration;

use buildmesh::mesh::rpc::{self, ClosureRequest};
use buildmesh::net::RequestProtocol;
use buildmesh_protocol::identity::NodeKey;
use libp2p::PeerId;
use libp2p::futures::future::join_all;
use mesh_support::intruder::Intruder;
use mesh_support::*;

/// Inbound connections per IP address node 0 accepts in this test.
const PER_IP: usize = 12;

/// Node `i`'s view of `peer` in `GET /api/v1/peers`, if it lists it.
fn peer_entry(c: &Cluster, i: usize, peer: &PeerId) -> Option<serde_json::Value> {
    let (_, list) = get_json(&format!("{}/api/v1/peers", c.urls[i]));
    list.as_array()?.iter().find(|p| p["peer_id"] == peer.to_base58()).cloned()
}

fn conduct(c: &Cluster, i: usize, peer: &PeerId) -> serde_json::Value {
    peer_entry(c, i, peer).map(|p| p["conduct"].clone()).unwrap_or_default()
}

fn wait_graylisted(c: &Cluster, peer: &PeerId, what: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let k = conduct(c, 0, peer);
        if k["graylisted"] == true {
            return k;
        }
        assert!(std::time::Instant::now() < deadline, "{what} not graylisted on node 0 within 30 s: {k}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` closure requests of `len` bytes each, sent to `to` at once; returns how many were answered.
fn closure_requests(intruder: &Intruder, to: PeerId, n: usize, len: usize) -> usize {
    let body = if len == 0 {
        rpc::encode(&ClosureRequest { drv: "mh08qwc103ql42f2zc4ka9nhz976z7m8-nothing.drv".into() })
    } else {
        vec![0u8; len]
    };
    let net = intruder.net.clone();
    let answers = intruder.rt.block_on(async {
        join_all((0..n).map(|_| net.send_request(to, RequestProtocol::Closure, body.clone()))).await
    });
    let errors: std::collections::BTreeSet<String> =
        answers.iter().filter_map(|a| a.as_ref().err()).map(|e| e.to_string()).take(5).collect();
    eprintln!(
        "{n} requests of {len} bytes: {} answered, errors {errors:?}",
        answers.iter().filter(|a| a.is_ok()).count()
    );
    answers.iter().filter(|a| a.is_ok()).count()
}

/// Whether the other side closed `s` (an open, idle connection times out the read instead).
fn closed_by_peer(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 64];
    let mut s = s;
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn misbehaving_peers_are_bounded_and_honest_nodes_keep_building() {
    let tmp = tempfile::tempdir().unwrap();
    // Closure requests: 20 at once, then 10/s per peer (the honest nodes ask two closures each).
    let mesh = FAST_MESH.replace(
        "max_connections_per_ip = 0",
        &format!("max_connections_per_ip = {PER_IP}\npeer_closure_requests_per_sec = 10"),
    );
    assert_ne!(mesh, FAST_MESH);
    let c = Cluster::start_with_mesh(tmp.path(), 3, &[], &mesh);
    let node0: PeerId = c.peer_ids[0].parse().unwrap();

    // Honest work, running while node 0 is attacked: `b` needs `a`, so its builders fetch a's
    // closure and output from the others.
    let mut d = Drvs::new(&tmp.path().join("drvs"));
    let (drv_a, out_a) = d.add("under-attack-a", "sleep 2; echo a > $out", &[]);
    let (drv_b, out_b) = d.add("under-attack-b", "cat $input0 > $out; echo b >> $out", &["under-attack-a"]);
    c.submit(0, &d.dir, &[sd().display(&drv_a), sd().display(&drv_b)], 2);

    // 1. A request flood: 600 closure requests at once.
    let flooder = Intruder::join(&c, NodeKey::from_seed("flooder", [61; 32]).unwrap());
    // Waves of 200 requests at once (a connection carries at most 256 streams) outrun 10/s.
    for _ in 0..20 {
        closure_requests(&flooder, node0, 200, 0);
        if conduct(&c, 0, &flooder.net.local_peer_id())["requests_refused"].as_u64().unwrap_or(0) >= 100 {
            break;
        }
    }
    let k = wait_graylisted(&c, &flooder.net.local_peer_id(), "the flooder");
    assert!(k["requests_refused"].as_u64().unwrap() >= 60, "refusals not counted: {k}");
    // Graylisted: even one request is refused now.
    assert_eq!(closure_requests(&flooder, node0, 3, 0), 0, "a graylisted peer's request was answered");

    // 2. Oversized request frames (node 0's closure cap is 64 KiB).
    let bloater = Intruder::join_with(&c, NodeKey::from_seed("bloater", [62; 32]).unwrap(), |cfg| {
        cfg.closure_limits.max_request = 1 << 20;
    });
    assert_eq!(closure_requests(&bloater, node0, 3, 200_000), 0, "an oversized request was answered");
    let k = wait_graylisted(&c, &bloater.net.local_peer_id(), "the bloater");
    assert!(k["oversized_frames"].as_u64().unwrap() >= 3, "{k}");

    // 3. Invalid gossip.
    let forger = Intruder::join(&c, NodeKey::from_seed("forger", [63; 32]).unwrap());
    for i in 0..6u8 {
        forger.publish_raw("buildmesh/attest/1", vec![i; 200]);
    }
    let k = wait_graylisted(&c, &forger.net.local_peer_id(), "the forger");
    assert!(k["gossip_score"].as_f64().unwrap() < -80.0, "{k}");

    // 4. A connection flood from one IP address: raw TCP connections that never handshake.
    let addr: libp2p::Multiaddr = c.bootstrap.parse().unwrap();
    let port = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let socks: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert_eq!(socks.len(), 40, "the OS accepts every TCP connection");
    std::thread::sleep(Duration::from_secs(2));
    let closed = socks.iter().filter(|s| closed_by_peer(s)).count();
    assert!(closed >= 40 - PER_IP, "only {closed} of 40 connections from one address were refused");
    drop(socks);
    let logs = c.logs();
    assert!(c.node(0).log_text().contains("connections_per_ip_refused"), "the refusal is logged");

    // The honest nodes finish both jobs, each attested by two of them, and treat each other well.
    for (drv, out) in [(&drv_a, &out_a), (&drv_b, &out_b)] {
        wait_for("the job done on the submitter", Duration::from_secs(90), || {
            match build_state(&c.urls[0], drv).as_deref() {
                Some("done") => Some(()),
                Some("failed") => {
                    panic!("an honest job failed under attack: {}\n{}", build_json(&c.urls[0], drv), logs)
                }
                _ => None,
            }
        });
        let attesters: std::collections::BTreeSet<String> =
            c.attesters(0, &sd().display(out)).into_values().flatten().collect();
        assert!(attesters.len() >= 2, "{out} attested by {attesters:?}");
    }
    for i in 0..3 {
        for (j, id) in c.peer_ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let k = conduct(&c, i, &id.parse().unwrap());
            assert_ne!(k["graylisted"], true, "node {i} graylisted honest node {j}: {k}");
            assert_eq!(k["requests_refused"].as_u64().unwrap_or(0), 0, "node {i} refused node {j}: {k}");
        }
    }
    let logs = c.node(0).log_text();
    for who in [&flooder, &bloater, &forger] {
        let id = who.net.local_peer_id().to_base58();
        assert!(
            logs.lines().any(|l| l.contains("peer_graylisted") && l.contains(&id)),
            "node 0's log does not name {id} as graylisted"
        );
    }
    for who in [flooder, bloater, forger] {
        who.shutdown();
    }
}
