//! Volunteers behind home NAT routers (network namespaces, nftables masquerade): a relay on the
//! "public" network and four homes with one node each, three behind a port-preserving NAT (which
//! hole punching gets through) and one behind a symmetric NAT (`masquerade fully-random`, which
//! it does not). Every home node learns it is `private` (AutoNAT), reserves a slot on the relay
//! (`--relay`), advertises its relayed address and joins through the relay node. Nodes behind
//! port-preserving NATs punch a direct connection to each other (DCUtR); the symmetric one stays
//! on relayed connections. A DAG with k = 2 whose steps need features of different homes makes
//! builders on both sides fetch each other's outputs: over the punched connections (no NAR byte
//! through the relay) and, for the symmetric home, through the relay; it completes everywhere.
//! Needs root, iproute2 and nftables (`scripts/install-deps.sh`).

mod mesh_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh_support::natns::{NatKind, NatNet, NatNodes, RelayAddr};
use mesh_support::*;

/// The `[nat]` timers of the test: AutoNAT probes after 1 s and every 2 s while unsure.
const FAST_NAT: &str = "\n[nat]\nautonat_boot_delay_ms = 1000\nautonat_retry_interval_ms = 2000\n\
                        autonat_refresh_interval_ms = 20000\n";

struct Nodes {
    /// The nodes and their namespaces (removed on drop).
    n: NatNodes,
}

impl Nodes {
    fn url(&self, i: usize) -> &str {
        &self.n.procs[i].url
    }

    fn peer(&self, i: usize) -> String {
        self.n.procs[i].peer_id.clone()
    }

    fn node(&self, i: usize) -> serde_json::Value {
        get_json(&format!("{}/api/v1/node", self.url(i))).1
    }

    /// Node `i`'s entries of `/api/v1/peers`, by peer id.
    fn peers(&self, i: usize) -> BTreeMap<String, serde_json::Value> {
        let (_, peers) = get_json(&format!("{}/api/v1/peers", self.url(i)));
        peers
            .as_array()
            .map(|a| a.iter().map(|p| (p["peer_id"].as_str().unwrap_or("").to_string(), p.clone())).collect())
            .unwrap_or_default()
    }

    /// Node `i`'s view of each peer: peer id -> `connection`.
    fn connections(&self, i: usize) -> BTreeMap<String, String> {
        self.peers(i).into_iter().map(|(k, p)| (k, p["connection"].as_str().unwrap_or("").to_string())).collect()
    }

    /// Node `i`'s `buildmesh_nat_response_bytes_total` for `protocol` over `connection`.
    fn response_bytes(&self, i: usize, protocol: &str, connection: &str) -> f64 {
        let (p, c) = (format!("protocol=\"{protocol}\""), format!("connection=\"{connection}\""));
        self.n.metric(i, "buildmesh_nat_response_bytes_total{", &[&p, &c])
    }

    /// Bytes node `i` received over `transport` (`udp/quic-v1` or `tcp`), all connections
    /// (libp2p's `…bandwidth_bytes_total{protocols="/ip4/udp/quic-v1…",direction="Inbound"}`).
    fn received_over(&self, i: usize, transport: &str) -> f64 {
        let (_, body) = get(&format!("{}/metrics", self.url(i)));
        // The label is the connection's address's protocol stack: `/ip4/udp/quic-v1`, with
        // `/p2p` on a connection dialled with the peer id.
        let t = format!("protocols=\"/ip4/{transport}");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.contains("bandwidth_bytes_total{") && l.contains(&t) && l.contains("direction=\"Inbound\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    fn logs(&self) -> String {
        self.n.logs(40)
    }
}

/// Start the relay (host 0) and one node per home, given the relay's `relay` address; home
/// nodes offer `features[h]`, and every node has quorum `quorum`.
fn start(dir: &std::path::Path, homes: &[NatKind], features: &[&str], relay: RelayAddr, quorum: usize) -> Nodes {
    let net = NatNet::new(1, homes);
    let n = NatNodes::start(dir, net, "nat", &format!("{FAST_MESH}{FAST_NAT}"), relay, |i, args| {
        let args = args.quorum(quorum);
        if i == 0 { args } else { args.args(["--feature", features[i - 1]]) }
    });
    Nodes { n }
}

#[test]
fn homes_behind_nat_punch_through_or_fall_back_to_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    // Homes 0, 1, 2: port-preserving NAT; home 3: symmetric. Hosts: 0 = relay, 1 + h = home h.
    let homes = [NatKind::Cone, NatKind::Cone, NatKind::Cone, NatKind::Symmetric];
    let (a1, a2, b, c) = (1usize, 2usize, 3usize, 4usize);
    let nodes = start(tmp.path(), &homes, &["side-a", "side-a", "side-b", "side-b"], RelayAddr::Tcp, 2);
    let peer = |i: usize| nodes.peer(i);

    // Everyone is a member; the relay is public, every home node private with a relayed address.
    for i in 0..5 {
        let url = nodes.url(i).to_string();
        wait_for(&format!("node {i} to see 5 members"), Duration::from_secs(60), || {
            (get_json(&format!("{url}/api/v1/mesh")).1["members"] == 5).then_some(())
        });
    }
    let reach = |i: usize| nodes.node(i)["reachability"].as_str().unwrap_or("").to_string();
    let mut last = Vec::new();
    let verdicts = std::time::Instant::now();
    wait_for("AutoNAT: the relay public, every home private", Duration::from_secs(90), || {
        let now = (0..5).map(reach).collect::<Vec<String>>();
        if now != last {
            eprintln!("AutoNAT verdicts {now:?} after {:?}", verdicts.elapsed());
            last = now;
        }
        (last == ["public", "private", "private", "private", "private"]).then_some(())
    });
    eprintln!("AutoNAT verdicts {last:?} after {:?}", verdicts.elapsed());
    for i in 1..5 {
        let addrs = nodes.node(i)["addresses"].clone();
        let relayed = format!("/p2p/{}/p2p-circuit/p2p/{}", peer(0), peer(i));
        assert!(
            addrs.as_array().unwrap().iter().any(|a| a.as_str().unwrap_or("").ends_with(&relayed)),
            "node {i} advertises its relayed address: {addrs}"
        );
    }

    // Hole punching: the port-preserving homes reach each other directly; the symmetric home
    // only through the relay. (This was flaky until a node stopped dialling the NAT address of
    // a peer it reaches through a relay: docs/nat.md, "Why a punch failed here".)
    let punched = (0..1200).any(|_| {
        let ok = [(a1, a2), (a1, b), (a2, b), (b, a1), (b, a2)]
            .iter()
            .all(|&(x, y)| nodes.connections(x).get(&peer(y)).map(String::as_str) == Some("direct"));
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(punched, "no direct connection between the punchable homes within 60 s{}", nodes.logs());
    wait_for("relayed connections to the symmetric home", Duration::from_secs(60), || {
        let ok = [a1, a2, b].iter().all(|&x| nodes.connections(c).get(&peer(x)).map(String::as_str) == Some("relayed"));
        ok.then_some(())
    });
    for x in [a1, a2, b, c] {
        assert_eq!(nodes.connections(x).get(&peer(0)).map(String::as_str), Some("direct"), "node {x} to the relay");
    }

    // The DAG (k = 2): x on side A (homes 0, 1), y on side B (home 2 and the symmetric home 3)
    // needs x, z on side A needs y.
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (_, x_out) = d.add_requiring("nat-x", "echo x > $out", &[], &["side-a"]);
    let (_, y_out) = d.add_requiring("nat-y", "cat $input0 > $out; echo y >> $out", &["nat-x"], &["side-b"]);
    let (z, z_out) = d.add_requiring("nat-z", "cat $input0 > $out; echo z >> $out", &["nat-y"], &["side-a"]);
    submit(&nodes, a1, &d, &dir, &["nat-x", "nat-y", "nat-z"], 2);
    wait_state(nodes.url(a1), &z, "done", Duration::from_secs(90));

    // Every output attested by both builders of its side, on every node.
    let expect = [(&x_out, [a1, a2]), (&y_out, [b, c]), (&z_out, [a1, a2])];
    for i in 0..5 {
        for (out, builders) in &expect {
            let path = sd().display(out);
            let want: BTreeSet<String> = builders.iter().map(|&b| peer(b)).collect();
            let url = nodes.url(i).to_string();
            wait_for(&format!("node {i} to hold both attestations of {path}"), Duration::from_secs(30), || {
                let (_, j) = get_json(&format!("{url}/api/v1/attestations?path={path}"));
                let got: BTreeSet<String> =
                    j.as_array()?.iter().filter_map(|a| a["peer_id"].as_str().map(String::from)).collect();
                (got == want).then_some(())
            });
        }
    }

    // The NARs crossed the NATs: over the punched connections between the punchable homes, and
    // through the relay for the symmetric home.
    let direct_b = nodes.response_bytes(b, "nar", "direct");
    let relayed_b = nodes.response_bytes(b, "nar", "relayed");
    assert!(
        direct_b > 0.0 && relayed_b == 0.0,
        "home 2 fetched x directly: {direct_b} direct, {relayed_b} relayed{}",
        nodes.logs()
    );
    let relayed_c = nodes.response_bytes(c, "nar", "relayed");
    let direct_c = nodes.response_bytes(c, "nar", "direct");
    assert!(
        relayed_c > 0.0 && direct_c == 0.0,
        "the symmetric home fetched x through the relay: {relayed_c} relayed, {direct_c} direct"
    );
    for a in [a1, a2] {
        let total = nodes.response_bytes(a, "nar", "direct") + nodes.response_bytes(a, "nar", "relayed");
        assert!(total > 0.0, "home node {a} fetched y from side B");
    }
    // The relay relayed circuits and no home node became a relay.
    let (_, metrics) = get(&format!("{}/metrics", nodes.url(0)));
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("buildmesh_nat_relay_served_total{kind=\"circuit\"}"), "the relay relayed circuits");
    assert_eq!(nodes.n.keys.len(), 5);
}

/// Two cone homes and a relay; the homes are given the relay's `relay` address. Each home
/// reaches the relay over QUIC (with its TCP address, as well: identify told the home the
/// relay's QUIC listen address), and they punch through both NAT routers over QUIC (QUIC first:
/// `node/src/net/punch.rs`): every direct connection between them is a UDP one, to the other
/// home's router (its NAT address). A 4 MiB NAR built in one home crosses it to the other (no
/// NAR byte relayed, the bytes received over QUIC).
fn quic_punch(relay: RelayAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (1usize, 2usize);
    let nodes = start(tmp.path(), &[NatKind::Cone, NatKind::Cone], &["quic-a", "quic-b"], relay, 1);
    let peer = |i: usize| nodes.peer(i);
    let over = if relay == RelayAddr::Quic { "QUIC" } else { "TCP" };
    assert_eq!(nodes.n.relay.contains("/quic-v1/"), relay == RelayAddr::Quic, "{}", nodes.n.relay);

    // Node x's direct connections to node y: their remote addresses (`/api/v1/peers`).
    let direct_to = |x: usize, y: usize| -> Option<Vec<String>> {
        let p = nodes.peers(x).remove(&peer(y))?;
        let addrs: Vec<String> =
            p["direct_addresses"].as_array()?.iter().filter_map(|a| a.as_str().map(String::from)).collect();
        (p["connection"] == "direct" && !addrs.is_empty()).then_some(addrs)
    };
    // The relay sees each home over QUIC (the home's router's UDP mapping), also when the home
    // was given its TCP address.
    for h in [a, b] {
        let router = format!("/ip4/{}/udp/", nodes.n.net.router_ip(h - 1));
        wait_for(&format!("the relay to reach home node {h} over QUIC"), Duration::from_secs(15), || {
            direct_to(0, h)?.iter().any(|d| d.starts_with(&router) && d.contains("/quic-v1")).then_some(())
        });
    }
    let direct = wait_for("the homes punched through to each other", Duration::from_secs(25), || {
        Some((direct_to(a, b)?, direct_to(b, a)?))
    });
    eprintln!("relay given over {over}: punched connections {direct:?}");
    for (x, y, addrs) in [(a, b, &direct.0), (b, a, &direct.1)] {
        let router = format!("/ip4/{}/", nodes.n.net.router_ip(y - 1));
        assert!(
            addrs.iter().all(|d| d.starts_with(&router) && d.contains("/udp/") && d.contains("/quic-v1")),
            "home node {x} reaches home node {y} (relay given over {over}) over QUIC through {router}: {addrs:?}{}",
            nodes.logs()
        );
    }

    // x (4 MiB of incompressible bytes) is built in home A; y, built in home B, needs it: home B
    // fetches x's NAR over the punched QUIC connection.
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let script = "head -c 4194304 /dev/zero | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
                  -iv 00000000000000000000000000000000 -nosalt > $out";
    d.add_requiring("quic-x", script, &[], &["quic-a"]);
    let (y, _) = d.add_requiring("quic-y", "wc -c < $input0 > $out", &["quic-x"], &["quic-b"]);
    let (quic_before, tcp_before) = (nodes.received_over(b, "udp/quic-v1"), nodes.received_over(b, "tcp"));
    submit(&nodes, a, &d, &dir, &["quic-x", "quic-y"], 1);
    wait_state(nodes.url(a), &y, "done", Duration::from_secs(60));

    let (direct_b, relayed_b) = (nodes.response_bytes(b, "nar", "direct"), nodes.response_bytes(b, "nar", "relayed"));
    let quic = nodes.received_over(b, "udp/quic-v1") - quic_before;
    let tcp = nodes.received_over(b, "tcp") - tcp_before;
    eprintln!(
        "relay given over {over}: home B got {direct_b} NAR bytes direct, {relayed_b} relayed; {quic} B over QUIC, {tcp} B over TCP"
    );
    assert!(direct_b > 4e6 && relayed_b == 0.0, "home B fetched x directly: {direct_b} direct, {relayed_b} relayed");
    assert!(quic > 4e6 && tcp < 1e6, "x crossed over QUIC: {quic} B over QUIC, {tcp} B over TCP{}", nodes.logs());
}

#[test]
fn homes_punch_over_quic_when_they_reach_the_relay_over_quic() {
    quic_punch(RelayAddr::Quic);
}

#[test]
fn homes_given_the_relay_tcp_address_still_punch_over_quic() {
    quic_punch(RelayAddr::Tcp);
}

/// A relay restarts (same key, same ports): the homes, given its TCP address, reach it over TCP
/// again (their reservations) and dial its QUIC address again too (`net/event_loop/relay_quic.rs`),
/// so the restarted relay reaches each home over QUIC at its router's address again, and their
/// punches keep a UDP candidate. Homes used to dial a relay's QUIC address once per process.
#[test]
fn homes_reach_a_restarted_relay_over_quic_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start(tmp.path(), &[NatKind::Cone, NatKind::Cone], &["rq-a", "rq-b"], RelayAddr::Tcp, 1);
    // Whether the relay has a QUIC connection to home node `h` at its router's address.
    let over_quic = |nodes: &Nodes, h: usize| -> Option<()> {
        let router = format!("/ip4/{}/udp/", nodes.n.net.router_ip(h - 1));
        let p = nodes.peers(0).remove(&nodes.peer(h))?;
        let addrs = p["direct_addresses"].as_array()?.clone();
        addrs.iter().filter_map(|a| a.as_str()).any(|a| a.starts_with(&router) && a.contains("/quic-v1")).then_some(())
    };
    for h in [1, 2] {
        wait_for(&format!("the relay to reach home node {h} over QUIC"), Duration::from_secs(30), || {
            over_quic(&nodes, h)
        });
    }
    nodes.n.restart(0);
    let restarted = std::time::Instant::now();
    for h in [1, 2] {
        let what = format!("the restarted relay to reach home node {h} over QUIC again");
        let got = (0..600).any(|_| {
            let ok = over_quic(&nodes, h).is_some();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        assert!(got, "{what} within 60 s{}", nodes.logs());
    }
    eprintln!("the restarted relay reached both homes over QUIC after {:?}", restarted.elapsed());
}

/// `buildmesh submit --json` of the derivations `names` of `d` (stored in `dir`) to node `i`
/// with `replicas` builders each; asserts that it succeeded.
fn submit(nodes: &Nodes, i: usize, d: &Drvs, dir: &std::path::Path, names: &[&str], replicas: u32) {
    let mut args: Vec<String> = vec!["submit".into(), "--api".into(), nodes.url(i).into(), "--from".into()];
    args.extend([dir.display().to_string(), "--replicas".into(), replicas.to_string(), "--json".into()]);
    args.extend(names.iter().map(|n| sd().display(&d.drv(n))));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, out, err) = cli(&refs);
    assert!(st.success(), "submit: {out}\n{err}{}", nodes.logs());
}
