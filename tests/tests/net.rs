//! Multi-node tests of the networking layer on 127.0.0.1 (mDNS off): connection over TCP and QUIC,
//! gossip with validation, request-response (all three protocols, chunked fetch, size limits,
//! timeouts), provider records, and a throughput measurement.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use buildmesh::net::{
    ChunkError, ChunkPlan, GossipMessage, MessageAcceptance, NetConfig, NetEvent, NetHandle, Published, RequestError,
    RequestProtocol, RespondError, RrLimits, keypair_from_seed, message_id, spawn,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TOPIC: &str = "buildmesh/attest/1";
/// Upper bound for anything that should happen "soon" on loopback.
const SOON: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

fn test_cfg(transport: Transport) -> NetConfig {
    let listen: Multiaddr = match transport {
        Transport::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    };
    NetConfig {
        listen: vec![listen],
        mdns: false,
        gossip_heartbeat: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        dial_timeout: Duration::from_secs(2),
        kad_query_timeout: Duration::from_secs(5),
        redial_interval: Duration::from_millis(500),
        ..NetConfig::default()
    }
}

struct TestNode {
    handle: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    join: JoinHandle<()>,
    addr: Multiaddr,
}

impl TestNode {
    fn id(&self) -> PeerId {
        self.handle.local_peer_id()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.join.abort();
    }
}

static SEED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

async fn start(cfg: NetConfig) -> TestNode {
    let seed = [SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 32];
    let (handle, mut events, join) = spawn(keypair_from_seed(seed), cfg).unwrap();
    let addr = wait_for(&mut events, |ev| match ev {
        NetEvent::NewListenAddr { address } => Some(address.clone()),
        _ => None,
    })
    .await;
    TestNode { handle, events, join, addr }
}

async fn start_with_bootstrap(mut cfg: NetConfig, bootstrap: &[&TestNode]) -> TestNode {
    cfg.bootstrap = bootstrap.iter().map(|n| n.addr.clone()).collect();
    start(cfg).await
}

/// Waits (at most [`SOON`]) for the first event for which `f` returns `Some`, skipping others.
async fn wait_for<T>(events: &mut mpsc::Receiver<NetEvent>, mut f: impl FnMut(&NetEvent) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event channel closed");
        if let Some(t) = f(&ev) {
            return t;
        }
    }
}

/// Polls `check` until it returns true (at most [`SOON`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SOON;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a node bootstrapped to `a` and waits until `a` sees the connection (so that `a` can send
/// requests to it without knowing its address).
async fn start_connected_to(cfg: NetConfig, a: &TestNode) -> TestNode {
    let b = start_with_bootstrap(cfg, &[a]).await;
    let b_id = b.id();
    eventually("connected", || async { connected(a).await.contains(&b_id) }).await;
    b
}

async fn connected(node: &TestNode) -> HashSet<PeerId> {
    node.handle.connected_peers().await.unwrap().into_iter().collect()
}

async fn wait_subscribed(node: &mut TestNode, peer: PeerId) {
    wait_for(&mut node.events, |ev| match ev {
        NetEvent::PeerSubscribed { peer: p, topic } if *p == peer && topic == TOPIC => Some(()),
        _ => None,
    })
    .await
}

/// Waits for the gossip message with `data`, accepting (or with `verdict`) every message seen.
async fn receive_gossip(node: &mut TestNode, data: &[u8], verdict: MessageAcceptance) -> GossipMessage {
    loop {
        let msg = wait_for(&mut node.events, |ev| match ev {
            NetEvent::Gossip(m) => Some(m.clone()),
            _ => None,
        })
        .await;
        let acceptance = if msg.data == data { verdict } else { MessageAcceptance::Accept };
        node.handle.report_validation(msg.id.clone(), msg.propagation_source, acceptance).await.unwrap();
        if msg.data == data {
            return msg;
        }
    }
}

async fn three_nodes_mesh(transport: Transport) {
    let a = start(test_cfg(transport)).await;
    let mut b = start_with_bootstrap(test_cfg(transport), &[&a]).await;
    let mut c = start_with_bootstrap(test_cfg(transport), &[&a]).await;
    let expect_proto = match transport {
        Transport::Tcp => "tcp",
        Transport::Quic => "quic-v1",
    };
    assert!(a.addr.to_string().contains(expect_proto), "{}", a.addr);
    assert!(a.addr.to_string().ends_with(&format!("/p2p/{}", a.id())), "full multiaddr: {}", a.addr);

    // A sees both; kad bootstrap makes B and C find each other through A.
    eventually("full mesh", || async {
        connected(&a).await.len() == 2 && connected(&b).await.contains(&c.id()) && connected(&c).await.contains(&b.id())
    })
    .await;

    // Gossip from A reaches B and C, each sees it as needing validation.
    let mut a = a;
    wait_subscribed(&mut a, b.id()).await;
    let payload = format!("hello over {expect_proto}").into_bytes();
    let published = a.handle.publish(TOPIC, payload.clone()).await.unwrap();
    assert_eq!(published.id(), &message_id(&payload));
    let senders = [a.id(), b.id(), c.id()];
    for node in [&mut b, &mut c] {
        let msg = receive_gossip(node, &payload, MessageAcceptance::Accept).await;
        assert!(senders.contains(&msg.propagation_source), "{msg:?}");
        assert_eq!(msg.topic, TOPIC);
        assert_eq!(msg.id, message_id(&payload));
    }
    let addrs = a.handle.addresses().await.unwrap();
    assert!(addrs.contains(&a.addr), "{addrs:?}");
}

#[tokio::test]
async fn three_nodes_connect_and_gossip_over_tcp() {
    three_nodes_mesh(Transport::Tcp).await;
}

#[tokio::test]
async fn three_nodes_connect_and_gossip_over_quic() {
    three_nodes_mesh(Transport::Quic).await;
}

#[tokio::test]
async fn dial_by_address_returns_peer_id() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let b = start(test_cfg(Transport::Quic)).await;
    // Without /p2p: the peer id is learnt from the handshake.
    let mut plain = a.addr.clone();
    plain.pop();
    assert_eq!(b.handle.dial(plain).await.unwrap(), a.id());
    // Already connected: answered at once.
    assert_eq!(b.handle.dial(a.addr.clone()).await.unwrap(), a.id());
    // Refused port: a typed error, quickly.
    let dead: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    assert!(b.handle.dial(dead).await.is_err());
}

/// A node whose listening port another socket holds on another local address (here 127.0.0.2;
/// on a real machine an outgoing connection from another interface, or its TIME_WAIT) cannot
/// bind `0.0.0.0:<port>` to dial from it: it must dial from a new port instead of failing every
/// dial (it stayed out of the mesh for a minute, seen in a `trust_mesh` run).
#[tokio::test]
async fn a_node_whose_listening_port_is_taken_elsewhere_still_dials() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let holder = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut cfg = test_cfg(Transport::Tcp);
    cfg.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    let b = start_with_bootstrap(cfg, &[&a]).await;
    let (a_id, b_id) = (a.id(), b.id());
    eventually("the bootstrap dial connects", || async { connected(&b).await.contains(&a_id) }).await;
    assert!(connected(&a).await.contains(&b_id));
    // A dial by address (its reply waits for the dial from the new port).
    let c = start(test_cfg(Transport::Tcp)).await;
    assert_eq!(b.handle.dial(c.addr.clone()).await.unwrap(), c.id());
    drop(holder);
}

#[tokio::test]
async fn rejected_message_is_not_forwarded_and_penalises_sender() {
    // Line topology A - B - C, enforced with block lists so kad cannot connect A and C.
    let a = start(test_cfg(Transport::Tcp)).await;
    let mut b = start_with_bootstrap(test_cfg(Transport::Tcp), &[&a]).await;
    let c_cfg = test_cfg(Transport::Tcp);
    let mut c = start_with_bootstrap(c_cfg, &[&b]).await;
    a.handle.set_blocked(c.id(), true).await.unwrap();
    c.handle.set_blocked(a.id(), true).await.unwrap();
    eventually("line topology", || async { connected(&b).await.len() == 2 && !connected(&a).await.contains(&c.id()) })
        .await;
    wait_subscribed(&mut b, a.id()).await;
    wait_subscribed(&mut c, b.id()).await;

    // Control: an accepted message travels A -> B -> C.
    let ok1 = b"valid attestation 1".to_vec();
    a.handle.publish(TOPIC, ok1.clone()).await.unwrap();
    receive_gossip(&mut b, &ok1, MessageAcceptance::Accept).await;
    let at_c = receive_gossip(&mut c, &ok1, MessageAcceptance::Accept).await;
    assert_eq!(at_c.propagation_source, b.id());

    // B rejects the forged one: C must never see it, and A's score at B drops below zero.
    let forged = b"forged attestation".to_vec();
    a.handle.publish(TOPIC, forged.clone()).await.unwrap();
    let at_b = receive_gossip(&mut b, &forged, MessageAcceptance::Reject).await;
    assert_eq!(at_b.propagation_source, a.id());
    let score = b.handle.peer_score(a.id()).await.unwrap().unwrap();
    assert!(score < 0.0, "score of a rejected sender: {score}");

    // A later valid message still arrives at C, and the forged one never did before it.
    let ok2 = b"valid attestation 2".to_vec();
    a.handle.publish(TOPIC, ok2.clone()).await.unwrap();
    receive_gossip(&mut b, &ok2, MessageAcceptance::Accept).await;
    let mut seen = Vec::new();
    loop {
        let msg = wait_for(&mut c.events, |ev| match ev {
            NetEvent::Gossip(m) => Some(m.clone()),
            _ => None,
        })
        .await;
        c.handle.report_validation(msg.id.clone(), msg.propagation_source, MessageAcceptance::Accept).await.unwrap();
        seen.push(msg.data.clone());
        if msg.data == ok2 {
            break;
        }
    }
    // Give any stray gossip (IHAVE/IWANT) a few heartbeats to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(ev) = c.events.try_recv() {
        if let NetEvent::Gossip(m) = ev {
            seen.push(m.data);
        }
    }
    assert!(!seen.contains(&forged), "C received the rejected message");
}

#[tokio::test]
async fn publish_without_subscribers_is_queued_then_delivered() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let early = b"published before anyone listened".to_vec();
    match a.handle.publish(TOPIC, early.clone()).await.unwrap() {
        Published::Queued(id) => assert_eq!(id, message_id(&early)),
        other => panic!("expected Queued, got {other:?}"),
    }
    let mut b = start_with_bootstrap(test_cfg(Transport::Tcp), &[&a]).await;
    let msg = receive_gossip(&mut b, &early, MessageAcceptance::Accept).await;
    assert_eq!(msg.propagation_source, a.id());
    // Oversize gossip is a typed error.
    let big = vec![0u8; NetConfig::default().max_gossip_size + 1];
    assert!(matches!(a.handle.publish(TOPIC, big).await, Err(buildmesh::net::PublishError::TooLarge { .. })));
}

#[tokio::test]
async fn identical_bytes_can_be_republished_after_the_duplicate_window() {
    let window = Duration::from_millis(800);
    let cfg = || NetConfig { gossip_duplicate_cache: window, ..test_cfg(Transport::Tcp) };
    let mut a = start(cfg()).await;
    let mut b = start_with_bootstrap(cfg(), &[&a]).await;
    wait_subscribed(&mut a, b.id()).await;
    let data = b"a result republished byte for byte".to_vec();
    a.handle.publish(TOPIC, data.clone()).await.unwrap();
    receive_gossip(&mut b, &data, MessageAcceptance::Accept).await;
    // Within the window the same bytes are a duplicate ...
    assert!(matches!(a.handle.publish(TOPIC, data.clone()).await, Err(buildmesh::net::PublishError::Duplicate(_))));
    // ... after it they travel again and the receiver sees them again. (Gossipsub forgets
    // expired ids when it records the next message; a mesh always has some other traffic, such
    // as announcements.)
    tokio::time::sleep(window + Duration::from_millis(400)).await;
    let other = b"some other traffic".to_vec();
    a.handle.publish(TOPIC, other.clone()).await.unwrap();
    receive_gossip(&mut b, &other, MessageAcceptance::Accept).await;
    a.handle.publish(TOPIC, data.clone()).await.unwrap();
    receive_gossip(&mut b, &data, MessageAcceptance::Ignore).await;
}

/// Serves requests on `node` until the channel closes: `f(protocol, request)` gives the response,
/// `None` leaves the request unanswered.
fn serve(
    mut node: TestNode,
    f: impl Fn(RequestProtocol, &[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> (PeerId, NetHandle, JoinHandle<Vec<RespondError>>) {
    let id = node.id();
    let handle = node.handle.clone();
    let task = tokio::spawn(async move {
        let mut errors = Vec::new();
        while let Some(ev) = node.events.recv().await {
            if let NetEvent::InboundRequest { protocol, id, data, .. } = ev
                && let Some(resp) = f(protocol, &data)
                && let Err(e) = node.handle.respond(id, resp).await
            {
                errors.push(e);
            }
        }
        errors
    });
    (id, handle, task)
}

#[tokio::test]
async fn request_response_roundtrip_on_each_protocol() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let b = start_connected_to(test_cfg(Transport::Tcp), &a).await;
    let (b_id, _b_handle, _task) = serve(b, |protocol, req| {
        let mut resp = protocol.name().as_bytes().to_vec();
        resp.extend(req.iter().rev());
        Some(resp)
    });
    for protocol in RequestProtocol::ALL {
        let resp = a.handle.send_request(b_id, protocol, b"abc".to_vec()).await.unwrap();
        assert_eq!(resp, [protocol.name().as_bytes(), b"cba"].concat());
    }
    // Empty bodies are fine too.
    let resp = a.handle.send_request(b_id, RequestProtocol::Sync, Vec::new()).await.unwrap();
    assert_eq!(resp, b"/buildmesh/sync/1");
}

/// Test chunk request: offset u64 LE, len u32 LE.
fn encode_chunk_req(offset: u64, len: u32) -> Vec<u8> {
    [offset.to_le_bytes().as_slice(), len.to_le_bytes().as_slice()].concat()
}

fn object(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(blake3::hash(&counter.to_le_bytes()).as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

fn chunk_server(obj: Vec<u8>) -> impl Fn(RequestProtocol, &[u8]) -> Option<Vec<u8>> + Send + 'static {
    move |_, req| {
        let offset = u64::from_le_bytes(req.get(..8)?.try_into().ok()?) as usize;
        let len = u32::from_le_bytes(req.get(8..12)?.try_into().ok()?) as usize;
        let end = (offset + len).min(obj.len());
        Some(obj.get(offset..end)?.to_vec())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[tokio::test]
async fn several_mib_object_is_fetched_in_chunks() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let b = start_connected_to(test_cfg(Transport::Tcp), &a).await;
    let obj = object(5 * 1024 * 1024 + 12345);
    let (b_id, _h, _task) = serve(b, chunk_server(obj.clone()));

    let mut requests = 0;
    let mut out = Vec::new();
    let plan = ChunkPlan { total_len: obj.len() as u64, chunk_size: 1024 * 1024, min_chunk: 1024 * 1024, window: 3 };
    let n = a
        .handle
        .fetch_chunked(
            b_id,
            RequestProtocol::Nar,
            plan,
            |off, len| {
                requests += 1;
                encode_chunk_req(off, len)
            },
            |_, _, resp| Ok::<_, Never>(resp),
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(n, obj.len() as u64);
    assert_eq!(requests, 6, "5 full chunks and a short last one");
    assert_eq!(blake3::hash(&out), blake3::hash(&obj));

    // A whole-object response would exceed the NAR response cap: typed error, no panic.
    let err = a.handle.send_request(b_id, RequestProtocol::Nar, encode_chunk_req(0, obj.len() as u32)).await;
    assert!(err.is_err(), "a 5 MiB response on /buildmesh/nar/1 must be refused: {err:?}");

    // A responder that returns short chunks is caught.
    let plan =
        ChunkPlan { total_len: obj.len() as u64 + 10, chunk_size: 1024 * 1024, min_chunk: 1024 * 1024, window: 2 };
    let err = a
        .handle
        .fetch_chunked(b_id, RequestProtocol::Nar, plan, encode_chunk_req, |_, _, r| Ok::<_, Never>(r), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ChunkError::WrongLength { expected: 12355, got: 12345, .. }), "{err:?}");
}

#[tokio::test]
async fn oversize_requests_and_responses_are_refused_with_errors() {
    let a_cfg = NetConfig {
        // A accepts large requests/responses on nar, but only 1 MiB responses on sync.
        nar_limits: RrLimits { max_request: 1024 * 1024, max_response: 8 * 1024 * 1024 },
        sync_limits: RrLimits { max_request: 1024, max_response: 1024 * 1024 },
        ..test_cfg(Transport::Tcp)
    };
    let a = start(a_cfg).await;
    let b_cfg = NetConfig {
        sync_limits: RrLimits { max_request: 1024, max_response: 8 * 1024 * 1024 },
        ..test_cfg(Transport::Tcp)
    };
    let b = start_connected_to(b_cfg, &a).await;
    let (b_id, b_handle, task) = serve(b, |protocol, req| match protocol {
        // Sync: respond with as many MiB as the first byte says.
        RequestProtocol::Sync => Some(vec![7u8; usize::from(req[0]) * 1024 * 1024]),
        // Nar: B's own cap is ~1 MiB; ask it to respond with 2 MiB.
        RequestProtocol::Nar => Some(vec![1u8; 2 * 1024 * 1024]),
        RequestProtocol::Closure => Some(req.to_vec()),
    });

    // Local check: nothing is sent.
    let err = a.handle.send_request(b_id, RequestProtocol::Sync, vec![0u8; 2048]).await.unwrap_err();
    assert_eq!(err, RequestError::RequestTooLarge { protocol: RequestProtocol::Sync, len: 2048, max: 1024 });

    // Response above the requester's cap: refused on the length prefix.
    let err = a.handle.send_request(b_id, RequestProtocol::Sync, vec![3]).await.unwrap_err();
    assert_eq!(
        err,
        RequestError::ResponseTooLarge { protocol: RequestProtocol::Sync, len: 3 * 1024 * 1024, max: 1024 * 1024 }
    );
    // Within the cap it works.
    assert_eq!(a.handle.send_request(b_id, RequestProtocol::Sync, vec![1]).await.unwrap().len(), 1024 * 1024);

    // Request above the responder's cap (A allows 1 MiB nar requests, B only 4 KiB): an error.
    let started = Instant::now();
    let err = a.handle.send_request(b_id, RequestProtocol::Nar, vec![0u8; 64 * 1024]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "refused promptly: {err:?}");

    // Responder tries to answer above its own cap: respond() fails, the requester gets an error.
    let err = a.handle.send_request(b_id, RequestProtocol::Nar, vec![0u8; 16]).await.unwrap_err();
    assert!(!matches!(err, RequestError::Stopped), "{err:?}");
    drop(a);
    // The serving task ends when B's event channel closes; its respond() errors are collected.
    b_handle.shutdown().await;
    let errors = tokio::time::timeout(SOON, task).await.unwrap().unwrap();
    assert!(
        errors.iter().any(|e| matches!(e, RespondError::TooLarge { protocol: RequestProtocol::Nar, .. })),
        "{errors:?}"
    );
}

#[tokio::test]
async fn unanswered_and_dead_peers_fail_cleanly() {
    let a = start(test_cfg(Transport::Tcp)).await;
    let b = start_connected_to(test_cfg(Transport::Tcp), &a).await;
    // B never answers: A's request times out after request_timeout (2 s).
    let (b_id, b_handle, task) = serve(b, |_, _| None);
    let started = Instant::now();
    let err = a.handle.send_request(b_id, RequestProtocol::Closure, b"x".to_vec()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, RequestError::Timeout { protocol: RequestProtocol::Closure, peer: b_id });
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "{took:?}");

    // B shuts down: the request fails (connection closed or dial failure) without hanging.
    b_handle.shutdown().await;
    let _ = tokio::time::timeout(SOON, task).await.unwrap();
    eventually("B disconnected", || async { !connected(&a).await.contains(&b_id) }).await;
    let started = Instant::now();
    let err = a.handle.send_request(b_id, RequestProtocol::Closure, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, RequestError::DialFailure { .. } | RequestError::ConnectionClosed { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Commands on a stopped node fail with Stopped.
    assert!(b_handle.connected_peers().await.is_err());
}

#[tokio::test]
async fn provider_found_through_intermediate_peer() {
    let b = start(test_cfg(Transport::Tcp)).await;
    let a = start_with_bootstrap(test_cfg(Transport::Tcp), &[&b]).await;
    let c = start_with_bootstrap(test_cfg(Transport::Tcp), &[&b]).await;
    // C is connected only to B.
    c.handle.set_blocked(a.id(), true).await.unwrap();
    a.handle.set_blocked(c.id(), true).await.unwrap();
    eventually("A and C connected to B", || async {
        connected(&b).await.len() == 2 && connected(&c).await == HashSet::from([b.id()])
    })
    .await;

    let key = blake3::hash(b"some NAR").as_bytes().to_vec();
    a.handle.start_providing(key.clone()).await.unwrap();
    let providers = c.handle.get_providers(key.clone()).await.unwrap();
    assert!(providers.contains(&a.id()), "providers: {providers:?}");
    assert!(!providers.contains(&c.id()));
    assert_eq!(connected(&c).await, HashSet::from([b.id()]), "C stayed connected only to B");
    // A key nobody provides: empty set, not an error.
    let none = c.handle.get_providers(b"nobody".to_vec()).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
}

async fn throughput(transport: Transport) {
    let a = start(test_cfg(transport)).await;
    let b = start_connected_to(test_cfg(transport), &a).await;
    let obj = object(64 * 1024 * 1024);
    let expect = blake3::hash(&obj);
    let (b_id, _h, _task) = serve(b, chunk_server(obj));
    let mut hasher = blake3::Hasher::new();
    let started = Instant::now();
    let plan = ChunkPlan { total_len: 64 * 1024 * 1024, chunk_size: 1024 * 1024, min_chunk: 1024 * 1024, window: 4 };
    let n = a
        .handle
        .fetch_chunked(b_id, RequestProtocol::Nar, plan, encode_chunk_req, |_, _, r| Ok::<_, Never>(r), &mut hasher)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(n, 64 * 1024 * 1024);
    assert_eq!(hasher.finalize(), expect);
    let name = if transport == Transport::Tcp { "TCP" } else { "QUIC" };
    println!("fetched 64 MiB in 1 MiB chunks over {name} in {took:?} ({:.1} MiB/s)", 64.0 / took.as_secs_f64());
}

#[tokio::test]
async fn throughput_64_mib_in_1_mib_chunks_tcp() {
    throughput(Transport::Tcp).await;
}

#[tokio::test]
async fn throughput_64_mib_in_1_mib_chunks_quic() {
    throughput(Transport::Quic).await;
}

/// A listening on TCP and QUIC, with private ranges counted as reachable (AutoNAT probes and
/// serves on 127.0.0.1) and AutoNAT probing on `timers`.
fn autonat_cfg(timers: buildmesh::net::nat::AutonatTimers) -> NetConfig {
    let mut cfg = test_cfg(Transport::Tcp);
    cfg.listen.push("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap());
    cfg.nat =
        buildmesh::net::NatConfig { private_as_public: true, autonat: timers, ..buildmesh::net::NatConfig::default() };
    cfg
}

/// Issue 18 (the relay of `mesh_nat` turned `private`): a public node asked its one AutoNAT
/// server again and again, a server that holds two connections to it already (a home reaches
/// its relay over TCP and over QUIC), stays `public`. Each dial-back is a new connection; when
/// the server kept it, the next dial-back was the fourth connection to the same peer, refused by
/// the per-peer connection limit, and AutoNAT v1 answers any failed dial-back "dial error": the
/// client took itself for private. The server now closes its dial-back connection once it has
/// proved the address (`node/src/net/event_loop/nat.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_node_probed_again_by_a_doubly_connected_peer_stays_public() {
    use buildmesh::net::Reachability;
    use buildmesh::net::nat::AutonatTimers;
    let fast = Duration::from_millis(400);
    // A probes every 400 ms, also once sure, so that its one server is asked again and again
    // (the server's throttle follows the retry interval).
    let a = start(autonat_cfg(AutonatTimers { boot_delay: fast, retry_interval: fast, refresh_interval: fast })).await;
    // B never probes (its own dial-backs to A would add connections too).
    let hour = Duration::from_secs(3600);
    let b = start(autonat_cfg(AutonatTimers { boot_delay: hour, retry_interval: hour, refresh_interval: hour })).await;
    let deadline = Instant::now() + SOON;
    let addrs = loop {
        let addrs = a.handle.addresses().await.unwrap();
        let has = |t: &str| addrs.iter().any(|a| a.to_string().contains(t));
        if has("/tcp/") && has("/quic-v1") {
            break addrs;
        }
        assert!(Instant::now() < deadline, "A listens on TCP and QUIC: {addrs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // B reaches A twice: over TCP and over QUIC (dialled without the peer id: a second connection).
    for transport in ["/tcp/", "/quic-v1"] {
        let mut addr = addrs.iter().find(|a| a.to_string().contains(transport)).unwrap().clone();
        addr.pop();
        assert_eq!(b.handle.dial(addr).await.unwrap(), a.id());
    }
    eventually("A public", || async { a.handle.reachability() == Reachability::Public }).await;
    // 6 s: about 15 probes, every one answered by B.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(a.handle.reachability(), Reachability::Public, "A was found private by a peer that reaches it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
