//! Issue 18 items 1 and 4 with issue 15 item 7: floods of a real `buildmesh node` by bare libp2p
//! peers minted in this test process (many peer ids, one machine).
//!
//! - `relay_reservation_flood_stays_within_the_relay_limits`: node 0 serves as a relay with
//!   `relay_max_reservations = 6`; 20 peer ids ask it for a reservation each. It accepts 6 (its
//!   `relay_served` metric agrees) and refuses 14, both nodes keep answering and see each other;
//!   while the flood's connections are open a newcomer is refused too (the bound is global, first
//!   come first served), and once the flooders disconnect the newcomer is accepted at once.
//!   (On loopback the relay has no confirmed external address, so clients drop an accepted
//!   reservation for carrying no address: the verdicts are the relay's, read from the errors.)
//! - `identify_address_flood_stays_bounded`: one peer pushes identify 10 times with 300 new
//!   listen addresses each (3,000 in all) and 30 peer ids announce 50 addresses each. Node 0
//!   keeps at most 8 addresses of a peer in Kademlia's routing table (so a FIND_NODE answer
//!   naming the flooder stays under Kademlia's frame limit, 64 KiB on nodes, and a querier gets it), its peer
//!   store keeps at most `remember_peers` peers, and both nodes keep answering.

mod mesh_support;

use std::time::Duration;

use buildmesh::net::{ID_PROTOCOL_VERSION, KAD_PROTOCOL};
use libp2p::futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, kad, noise, relay, tcp, yamux};
use mesh_support::*;

/// A bare peer: relay client (to reserve), identify (to announce addresses), Kademlia (so the
/// node records its addresses, and to query the node).
#[derive(NetworkBehaviour)]
struct Bare {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// A bare peer with the key numbered `i`, listening on loopback.
fn bare(i: u32) -> Swarm<Bare> {
    let mut s = unlistening(i);
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    s
}

/// A bare peer with the key numbered `i` that does not listen (it only dials out).
fn unlistening(i: u32) -> Swarm<Bare> {
    let mut seed = [0x5au8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let kp = Keypair::ed25519_from_bytes(seed).unwrap();
    SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|kp, relay| {
            let id = kp.public().to_peer_id();
            let mut cfg = kad::Config::new(KAD_PROTOCOL);
            cfg.set_max_packet_size(64 * 1024);
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), cfg);
            kad.set_mode(Some(kad::Mode::Server));
            Bare {
                relay,
                identify: identify::Behaviour::new(identify::Config::new(ID_PROTOCOL_VERSION.to_string(), kp.public())),
                kad,
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// Node `i`'s libp2p address with `/p2p/<id>`.
fn node_addr(c: &Cluster, i: usize) -> Multiaddr {
    let a: Multiaddr = libp2p_address(&c.urls[i]).parse().unwrap();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a
    } else {
        a.with(Protocol::P2p(c.peer_ids[i].parse().unwrap()))
    }
}

/// Drive `swarms` for `d`, collecting the relay's verdict on each one's reservation request:
/// `Some(true)` accepted, `Some(false)` refused, `None` no answer yet. On loopback the relay has
/// no confirmed external address, so the client rejects an accepted reservation for carrying no
/// address (`NoAddressesInReservation`): that error means the relay accepted.
async fn reserve_all(swarms: &mut [Swarm<Bare>], relay: &Multiaddr, d: Duration) -> Vec<Option<bool>> {
    let circuit = relay.clone().with(Protocol::P2pCircuit);
    for s in swarms.iter_mut() {
        s.listen_on(circuit.clone()).unwrap();
    }
    let mut out = vec![None; swarms.len()];
    let deadline = tokio::time::Instant::now() + d;
    while out.iter().any(Option::is_none) && tokio::time::Instant::now() < deadline {
        for (i, s) in swarms.iter_mut().enumerate() {
            while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(5), s.next()).await {
                let verdict = match ev {
                    SwarmEvent::Behaviour(BareEvent::Relay(relay::client::Event::ReservationReqAccepted {
                        ..
                    })) => Some(true),
                    SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                        Some(format!("{e:?}").contains("NoAddressesInReservation"))
                    }
                    _ => None,
                };
                if out[i].is_none() {
                    out[i] = verdict;
                }
            }
        }
    }
    out
}

/// Keep `swarms` polled (their connections and reservations alive) for `d`.
async fn pump(swarms: &mut [Swarm<Bare>], d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        for s in swarms.iter_mut() {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(2), s.next()).await {}
        }
    }
}

fn alive(c: &Cluster, i: usize) {
    let (s, _) = get_json(&format!("{}/health", c.urls[i]));
    assert_eq!(s, 200, "node {i} /health during the flood");
    let (s, m) = get_json(&format!("{}/api/v1/mesh", c.urls[i]));
    assert_eq!(s, 200, "node {i} /api/v1/mesh during the flood");
    assert_eq!(m["members"].as_u64(), Some(2), "node {i} lost a member during the flood: {m}");
}

const RELAY_CAP: usize = 6;

/// Reservations node 0 accepted as a relay, from its `/metrics`.
fn served(c: &Cluster) -> f64 {
    c.metric_series(0)
        .iter()
        .filter(|(k, _)| k.starts_with("buildmesh_nat_relay_served") && k.contains("reservation"))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn relay_reservation_flood_stays_within_the_relay_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = format!(
        "{}\n[nat]\nrelay_server = true\nrelay_max_reservations = {RELAY_CAP}\n",
        FAST_MESH.replace("max_connections_per_ip = 0", "max_connections_per_ip = 64")
    );
    assert_ne!(mesh, FAST_MESH);
    let c = Cluster::start_with_mesh(tmp.path(), 2, &[], &mesh);
    let relay = node_addr(&c, 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut flood: Vec<Swarm<Bare>> = (0..20).map(bare).collect();
        let got = reserve_all(&mut flood, &relay, Duration::from_secs(20)).await;
        let accepted = got.iter().filter(|g| **g == Some(true)).count();
        let refused = got.iter().filter(|g| **g == Some(false)).count();
        eprintln!("flood of 20 peer ids: the relay accepted {accepted} reservations and refused {refused}");
        assert_eq!(accepted, RELAY_CAP, "the relay's bound is {RELAY_CAP} reservations: {got:?}");
        assert_eq!(refused, 20 - RELAY_CAP, "every other reservation refused: {got:?}");
        tokio::task::block_in_place(|| {
            assert_eq!(served(&c), RELAY_CAP as f64, "node 0's relay_served reservation count");
            alive(&c, 0);
            alive(&c, 1);
        });

        // The bound is global and first come, first served: while the flood holds the slots
        // (its connections are open), a newcomer is refused too...
        let mut late = vec![bare(1000)];
        let got = reserve_all(&mut late, &relay, Duration::from_secs(10)).await;
        assert_eq!(got, [Some(false)], "a newcomer reserved on a full relay");
        // ... and once the flooders disconnect, their slots are free at once.
        drop(flood);
        drop(late);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut late = vec![bare(1001)];
        let got = reserve_all(&mut late, &relay, Duration::from_secs(15)).await;
        assert_eq!(got, [Some(true)], "a newcomer could not reserve after the flood left");
    });
    assert_eq!(served(&c), (RELAY_CAP + 1) as f64, "node 0's relay_served reservation count");
    alive(&c, 0);
    alive(&c, 1);
}

const REMEMBER: u64 = 10;

#[test]
fn identify_address_flood_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = FAST_MESH
        .replace("max_connections_per_ip = 0", &format!("max_connections_per_ip = 64\nremember_peers = {REMEMBER}"));
    assert_ne!(mesh, FAST_MESH);
    let c = Cluster::start_with_mesh(tmp.path(), 2, &[], &mesh);
    let node: Multiaddr = node_addr(&c, 0);
    let node_id: PeerId = c.peer_ids[0].parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tried = rt.block_on(async {
        // One peer announcing 3,000 addresses over 10 identify pushes; it does not listen, so
        // every address of it that node 0 hands out is one it announced.
        let mut liar = vec![unlistening(2000)];
        let liar_id = *liar[0].local_peer_id();
        liar[0].dial(node.clone()).unwrap();
        pump(&mut liar, Duration::from_secs(2)).await;
        for round in 0u32..10 {
            let addrs: Vec<Multiaddr> = (0..300u32)
                .map(|k| {
                    format!("/ip4/127.{}.{}.{}/tcp/{}", 1 + round, k / 250, 1 + k % 250, 1000 + k).parse().unwrap()
                })
                .collect();
            for a in liar[0].external_addresses().cloned().collect::<Vec<_>>() {
                liar[0].remove_external_address(&a);
            }
            for a in addrs {
                liar[0].add_external_address(a);
            }
            liar[0].behaviour_mut().identify.push([node_id]);
            pump(&mut liar, Duration::from_millis(400)).await;
        }
        // Thirty peer ids announcing 50 addresses each.
        let mut many: Vec<Swarm<Bare>> = (0..30).map(|i| bare(3000 + i)).collect();
        for (i, s) in many.iter_mut().enumerate() {
            for k in 0..50u32 {
                s.add_external_address(format!("/ip4/127.200.{i}.{}/tcp/{}", 1 + k, 2000 + k).parse().unwrap());
            }
            s.dial(node.clone()).unwrap();
        }
        pump(&mut many, Duration::from_secs(4)).await;
        pump(&mut liar, Duration::from_millis(10)).await;
        tokio::task::block_in_place(|| {
            alive(&c, 0);
            alive(&c, 1);
        });

        // The flooders go away (closed ports refuse the querier's dials at once; their entries
        // stay in node 0's routing table). An honest querier asks node 0 for the peers closest
        // to the liar.
        drop(many);
        drop(liar);
        let mut q = bare(4000);
        q.behaviour_mut().kad.add_address(&node_id, node.clone());
        q.behaviour_mut().kad.get_closest_peers(liar_id);
        // The querier learns the liar only from node 0's answer, and then dials every address
        // of it that the answer names (none reaches it: it does not listen).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tried: Option<usize> = None;
        loop {
            let ev = tokio::time::timeout_at(deadline, q.next()).await.expect("the query ends within 20 s");
            match ev {
                Some(SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. }) if p == liar_id => {
                    let n = match &error {
                        libp2p::swarm::DialError::Transport(addrs) => addrs.len(),
                        other => panic!("dialling the flooding peer: {other:?}"),
                    };
                    tried = Some(tried.unwrap_or(0).max(n));
                }
                Some(SwarmEvent::Behaviour(BareEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(_),
                    step,
                    ..
                }))) if step.last => {
                    break;
                }
                _ => {}
            }
        }
        eprintln!("node 0 hands out {tried:?} addresses of the peer that announced 3,000");
        tried
    });
    // The peer store: at most `remember_peers` rows (written every 2 s).
    std::thread::sleep(Duration::from_secs(3));
    let m = c.mesh(0);
    let remembered = m["remembered_peers"].as_u64().unwrap_or(0);
    eprintln!("node 0 remembers {remembered} peers (bound {REMEMBER})");
    // Every broken bound is named at once.
    let mut broken = Vec::new();
    match tried {
        None => broken.push(
            "node 0's FIND_NODE answer did not name the flooding peer (an answer over Kademlia's frame limit is lost)"
                .to_string(),
        ),
        Some(n) if n > 8 => broken.push(format!("node 0 hands out {n} addresses of one peer, the bound is 8")),
        Some(_) => {}
    }
    if !(3..=REMEMBER).contains(&remembered) {
        broken.push(format!("node 0 remembers {remembered} peers, the bound is {REMEMBER}: {m}"));
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    alive(&c, 0);
    alive(&c, 1);
}
