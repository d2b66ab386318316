//! [`NetHandle`]: the cloneable front of the event loop, its commands and their typed errors.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::futures::stream::FuturesOrdered;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::pacing::Pacer;
use super::{InboundId, MessageAcceptance, MessageId, RequestProtocol};

/// A command for the event loop; each carries its reply channel.
#[derive(Debug)]
pub(crate) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, DialError>>,
    },
    AddPeerAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<bool>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
    ReportValidation {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
        reply: oneshot::Sender<bool>,
    },
    SendRequest {
        peer: PeerId,
        protocol: RequestProtocol,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    Respond {
        id: InboundId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), RespondError>>,
    },
    StartProviding {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    StopProviding {
        key: Vec<u8>,
        reply: oneshot::Sender<()>,
    },
    GetProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<BTreeSet<PeerId>, NetError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Addresses {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Malformed {
        peer: PeerId,
        what: &'static str,
    },
    Block {
        peer: PeerId,
        blocked: bool,
        reply: oneshot::Sender<bool>,
    },
}

/// Messages on the priority inbox, served before anything else.
#[derive(Debug)]
pub(crate) enum Priority {
    Shutdown,
}

/// Generic failure of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The event loop has stopped (shutdown, or it panicked).
    #[error("the network event loop has stopped")]
    Stopped,
    /// The command got no answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which command.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// A Kademlia operation failed.
    #[error("kademlia: {0}")]
    Kad(String),
    /// A gossipsub subscription failed.
    #[error("gossipsub: {0}")]
    Gossipsub(String),
}

/// Why [`NetHandle::dial`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The connection attempt failed (refused, unreachable, wrong peer id, handshake failure, limit).
    #[error("dialling {addr} failed: {reason}")]
    Failed {
        /// The dialled address.
        addr: Multiaddr,
        /// The transport's explanation.
        reason: String,
    },
    /// No connection within `dial_timeout`.
    #[error("dialling {addr} timed out after {after:?}")]
    Timeout {
        /// The dialled address.
        addr: Multiaddr,
        /// The configured timeout.
        after: Duration,
    },
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// Result of a successful [`NetHandle::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Sent to at least one subscribed peer.
    Sent(MessageId),
    /// No peer is subscribed to the topic yet: the message waits (at most `publish_queue_ttl`, at
    /// most `publish_queue_cap` messages in all) and is sent when the first subscriber appears.
    Queued(MessageId),
}

impl Published {
    /// The content-addressed message id.
    pub fn id(&self) -> &MessageId {
        match self {
            Published::Sent(id) | Published::Queued(id) => id,
        }
    }
}

/// Why [`NetHandle::publish`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload exceeds `max_gossip_size`.
    #[error("gossip payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Configured cap.
        max: usize,
    },
    /// The same bytes were published or received recently (content-addressed ids); nothing is sent.
    #[error("message {0} was already published or seen")]
    Duplicate(MessageId),
    /// No subscriber and the waiting queue is full.
    #[error("no peer subscribed to {topic:?} and the publish queue is full ({cap} messages)")]
    QueueFull {
        /// Topic name.
        topic: String,
        /// Configured cap.
        cap: usize,
    },
    /// Every recipient's send queue is full (slow peers); retry later.
    #[error("all {0} recipients' queues are full")]
    AllQueuesFull(usize),
    /// Another gossipsub failure (signing, transform).
    #[error("gossipsub publish failed: {0}")]
    Other(String),
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// Why [`NetHandle::send_request`] failed. Never a panic: size, timeout and peer failures are all
/// values of this type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request exceeds the protocol's `max_request`; nothing was sent.
    #[error("{protocol} request of {len} bytes exceeds the limit of {max} bytes")]
    RequestTooLarge {
        /// Protocol.
        protocol: RequestProtocol,
        /// Request length.
        len: usize,
        /// Configured cap.
        max: usize,
    },
    /// The peer announced a response longer than our `max_response`; the stream was dropped
    /// before reading the body.
    #[error("{protocol} response of {len} bytes exceeds the limit of {max} bytes")]
    ResponseTooLarge {
        /// Protocol.
        protocol: RequestProtocol,
        /// Announced length.
        len: u64,
        /// Configured cap.
        max: usize,
    },
    /// No response within `request_timeout`.
    #[error("{protocol} request to {peer} timed out")]
    Timeout {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
    },
    /// The peer could not be reached.
    #[error("{protocol} request: could not dial {peer}")]
    DialFailure {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
    },
    /// The connection closed before the response arrived (includes a peer that refused the
    /// request, e.g. because it was too large for it, or that never answered it).
    #[error("{protocol} request to {peer}: connection closed before a response")]
    ConnectionClosed {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
    },
    /// The peer does not speak this protocol.
    #[error("{peer} does not support {protocol}")]
    UnsupportedProtocol {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
    },
    /// Stream I/O failed (includes the peer resetting the stream after refusing the request).
    #[error("{protocol} request to {peer}: {reason}")]
    Io {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
        /// The I/O error.
        reason: String,
    },
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
    /// The peer answered this protocol only with what this build cannot read, many times in a
    /// row: it is not asked on it for a while ([`super::unread`]); nothing was sent.
    #[error("{peer} is not asked on {protocol} for a while (its answers are unreadable here)")]
    Benched {
        /// Protocol.
        protocol: RequestProtocol,
        /// The peer.
        peer: PeerId,
    },
}

/// Why [`NetHandle::respond`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// No pending request has this id (already answered, timed out, or the connection closed).
    #[error("no pending inbound request {0}")]
    UnknownRequest(InboundId),
    /// The response exceeds the protocol's `max_response`; the request was dropped unanswered.
    #[error("{protocol} response of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Protocol.
        protocol: RequestProtocol,
        /// Response length.
        len: usize,
        /// Configured cap.
        max: usize,
    },
    /// The requester went away (timed out or disconnected) before the response was handed over.
    #[error("the requester of {0} is gone")]
    ChannelClosed(InboundId),
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// Why [`NetHandle::fetch_chunked`] failed; `E` is the caller's decode error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError<E: std::error::Error + 'static> {
    /// A chunk request failed.
    #[error("chunk at offset {offset}: {source}")]
    Request {
        /// Offset of the chunk.
        offset: u64,
        /// The request failure.
        source: RequestError,
    },
    /// The caller's decoder refused a response.
    #[error("chunk at offset {offset}: decoding the response: {source}")]
    Decode {
        /// Offset of the chunk.
        offset: u64,
        /// The decoder's error.
        source: E,
    },
    /// A decoded chunk is not the requested length.
    #[error("chunk at offset {offset}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// Offset of the chunk.
        offset: u64,
        /// Requested length.
        expected: u32,
        /// Decoded length.
        got: usize,
    },
    /// Writing to the sink failed.
    #[error("chunk at offset {offset}: writing: {source}")]
    Sink {
        /// Offset of the chunk.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `chunk_size` or `window` is zero.
    #[error("chunk_size and window must be greater than zero")]
    BadPlan,
}

/// How [`NetHandle::fetch_chunked`] splits an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Total length of the object in bytes (e.g. the NarSize).
    pub total_len: u64,
    /// Bytes per request at most (at most the responder's cap, e.g.
    /// [`NAR_CHUNK_SIZE`](super::NAR_CHUNK_SIZE)).
    pub chunk_size: u32,
    /// Bytes per request at least, before the object's end: below `chunk_size`, the requests are
    /// paced to the path (`min_chunk` first, then sized so that the bytes in flight are the
    /// measured rate times the path's base delay and 1 s, with fewer than `window` of them in
    /// flight if need be; see `net/pacing.rs`); at `chunk_size` or above, every request is of
    /// `chunk_size`.
    pub min_chunk: u32,
    /// Requests in flight at once (pipelining); responses are still written in order.
    pub window: usize,
}

/// Timeouts the handle applies on top of the event loop's own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandleTimeouts {
    pub(crate) request: Duration,
    pub(crate) dial: Duration,
    pub(crate) kad: Duration,
}

/// Cloneable handle to the network event loop. Every method sends one command on a bounded
/// channel (waiting if it is full) and awaits its `oneshot` reply.
#[derive(Debug, Clone)]
pub struct NetHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) priority: mpsc::Sender<Priority>,
    pub(crate) local_peer_id: PeerId,
    pub(crate) metrics: std::sync::Arc<libp2p::metrics::Registry>,
    pub(crate) timeouts: HandleTimeouts,
    /// What the event loop holds against each peer, refreshed on its housekeeping tick.
    pub(crate) conduct: super::SharedConduct,
    /// Reachability and the kind of connection to each peer ([`super::nat`]).
    pub(crate) nat: super::nat::SharedNat,
    /// The configured size caps of the closure, NAR and sync protocols, in that order.
    pub(crate) limits: [super::RrLimits; 3],
    /// The peers whose answers this build cannot read ([`super::unread`]).
    pub(crate) unread: super::unread::SharedUnread,
}

/// Slack added to the event loop's own timeouts before the handle gives up waiting.
const REPLY_SLACK: Duration = Duration::from_secs(5);
/// Timeout for commands that the event loop answers immediately.
const QUICK_REPLY: Duration = Duration::from_secs(30);

impl NetHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The configured size caps of `protocol` (`NetConfig::closure_limits`, `nar_limits`,
    /// `sync_limits`): the codec refuses frames above them, and readers of answers decode
    /// against the same `max_response`.
    pub fn limits(&self, protocol: super::RequestProtocol) -> super::RrLimits {
        match protocol {
            super::RequestProtocol::Closure => self.limits[0],
            super::RequestProtocol::Nar => self.limits[1],
            super::RequestProtocol::Sync => self.limits[2],
        }
    }

    /// What this node holds against the peers it has a record of (gossip score, graylisting,
    /// refused requests, oversized frames), as of the event loop's last housekeeping tick
    /// (every 500 ms), and the protocols each is benched on now ([`super::unread`]). Peers
    /// without a record behaved.
    pub fn peer_conduct(&self) -> std::collections::HashMap<PeerId, super::PeerConduct> {
        let mut records = self.conduct.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for (peer, protocol) in self.benches() {
            records.entry(peer).or_default().benched.push(protocol.name().to_string());
        }
        records
    }

    /// Whether this node is publicly reachable, as AutoNAT last found it.
    pub fn reachability(&self) -> super::Reachability {
        *self.nat.reachability.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kind of connection to every connected peer (`direct` when at least one connection
    /// does not go through a relay); peers not in the map are not connected.
    pub fn connection_kinds(&self) -> std::collections::HashMap<PeerId, super::ConnectionKind> {
        self.nat.connections.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The remote addresses of the direct (not relayed) connections to every peer that has
    /// one: a punched connection shows its transport (`/tcp/…` or `/udp/…/quic-v1`) and the
    /// peer's NAT address.
    pub fn direct_addresses(&self) -> std::collections::HashMap<PeerId, Vec<libp2p::Multiaddr>> {
        self.nat.direct_addresses.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The network's counters in the Prometheus text format (OpenMetrics): gossipsub per topic
    /// (`gossipsub_topic_msg_sent_bytes_total`, `gossipsub_topic_msg_recv_bytes_unfiltered_total`
    /// with duplicates, IDONTWANTs, mesh peers, ...) and transport bytes per direction
    /// (`libp2p_bandwidth_bytes_total`). Served at `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics);
        out
    }

    async fn call<T>(
        &self,
        what: &'static str,
        after: Duration,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::Timeout { what, after }),
        }
    }

    /// Dials `addr` (with or without `/p2p/<id>`) and returns the peer id once connected (at once
    /// if already connected to that peer).
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, DialError> {
        let after = self.timeouts.dial;
        let a = addr.clone();
        match self.call("dial", after, |reply| Command::Dial { addr: a, reply }).await {
            Ok(r) => r,
            Err(NetError::Timeout { .. }) => Err(DialError::Timeout { addr, after }),
            Err(_) => Err(DialError::Stopped),
        }
    }

    /// Records an address for `peer` in the swarm and in Kademlia (no dial).
    pub async fn add_peer_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.call("add_peer_address", QUICK_REPLY, |reply| Command::AddPeerAddress { peer, addr, reply }).await
    }

    /// Subscribes to a topic (those in `NetConfig::topics` are subscribed at start). Returns
    /// `false` if already subscribed.
    pub async fn subscribe(&self, topic: impl Into<String>) -> Result<bool, NetError> {
        let topic = topic.into();
        self.call("subscribe", QUICK_REPLY, |reply| Command::Subscribe { topic, reply }).await?
    }

    /// Leaves a topic: its gossip is no longer received or forwarded, and messages still queued
    /// for it are dropped. Returns `false` if it was not subscribed.
    pub async fn unsubscribe(&self, topic: impl Into<String>) -> Result<bool, NetError> {
        let topic = topic.into();
        self.call("unsubscribe", QUICK_REPLY, |reply| Command::Unsubscribe { topic, reply }).await
    }

    /// Publishes `data` on `topic`. If no peer is subscribed yet the message is queued (see
    /// [`Published::Queued`]) instead of failing; other failures are typed.
    pub async fn publish(&self, topic: impl Into<String>, data: Vec<u8>) -> Result<Published, PublishError> {
        let topic = topic.into();
        match self.call("publish", QUICK_REPLY, |reply| Command::Publish { topic, data, reply }).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Reports the application's verdict on a received gossip message: `Accept` forwards it,
    /// `Reject` drops it and penalises `propagation_source` (and every peer that sent it),
    /// `Ignore` drops it without penalty. Returns `false` if the message was no longer cached.
    pub async fn report_validation(
        &self,
        id: MessageId,
        propagation_source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<bool, NetError> {
        self.call("report_validation", QUICK_REPLY, |reply| Command::ReportValidation {
            id,
            source: propagation_source,
            acceptance,
            reply,
        })
        .await
    }

    /// Sends one request and awaits the response (dialling the peer if needed, using any address
    /// the swarm knows for it). Bounded by `request_timeout` (+ `dial_timeout` when dialling).
    /// A peer benched on `protocol` is not asked ([`RequestError::Benched`], see [`super::unread`]).
    pub async fn send_request(
        &self,
        peer: PeerId,
        protocol: RequestProtocol,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        self.check_benched(peer, protocol)?;
        let after = self.timeouts.request + self.timeouts.dial + REPLY_SLACK;
        match self.call("send_request", after, |reply| Command::SendRequest { peer, protocol, data, reply }).await {
            Ok(r) => r,
            Err(NetError::Timeout { .. }) => Err(RequestError::Timeout { protocol, peer }),
            Err(_) => Err(RequestError::Stopped),
        }
    }

    /// Answers an inbound request. A response above the protocol's `max_response` is refused with
    /// [`RespondError::TooLarge`] and the request is dropped (the requester sees an error).
    pub async fn respond(&self, id: InboundId, data: Vec<u8>) -> Result<(), RespondError> {
        match self.call("respond", QUICK_REPLY, |reply| Command::Respond { id, data, reply }).await {
            Ok(r) => r,
            Err(_) => Err(RespondError::Stopped),
        }
    }

    /// Fetches an object of `plan.total_len` bytes from `peer` as a sequence of requests of at most
    /// `plan.chunk_size` bytes (paced to the path when `plan.min_chunk` is smaller: see
    /// [`ChunkPlan::min_chunk`]), `plan.window` of them in flight, writing the chunks to `sink` in
    /// order. `encode(offset, len)` builds the request body for a chunk; `decode(offset, len,
    /// response)` extracts the chunk's bytes from a response, which must then be exactly `len`
    /// bytes long. Returns the number of bytes written (`plan.total_len`).
    pub async fn fetch_chunked<E, Enc, Dec, W>(
        &self,
        peer: PeerId,
        protocol: RequestProtocol,
        plan: ChunkPlan,
        mut encode: Enc,
        mut decode: Dec,
        sink: &mut W,
    ) -> Result<u64, ChunkError<E>>
    where
        E: std::error::Error + 'static,
        Enc: FnMut(u64, u32) -> Vec<u8>,
        Dec: FnMut(u64, u32, Vec<u8>) -> Result<Vec<u8>, E>,
        W: Write,
    {
        if plan.chunk_size == 0 || plan.window == 0 {
            return Err(ChunkError::BadPlan);
        }
        let mut in_flight: FuturesOrdered<_> = FuturesOrdered::new();
        let mut next_offset = 0u64;
        let mut written = 0u64;
        let started = std::time::Instant::now();
        let mut pacer = Pacer::new(&plan, self.timeouts.request);
        loop {
            while in_flight.len() < pacer.window() && next_offset < plan.total_len {
                let paced = pacer.next_len();
                let len = u32::try_from((plan.total_len - next_offset).min(u64::from(paced))).unwrap_or(paced);
                pacer.sent(len, std::time::Instant::now());
                let offset = next_offset;
                let req = encode(offset, len);
                let handle = self.clone();
                in_flight.push_back(chunk_future(handle, peer, protocol, offset, len, req));
                next_offset += u64::from(len);
            }
            let Some((offset, len, result, done)) = in_flight.next().await else { break };
            let response = result.map_err(|source| ChunkError::Request { offset, source })?;
            let bytes = decode(offset, len, response).map_err(|source| ChunkError::Decode { offset, source })?;
            if bytes.len() != len as usize {
                return Err(ChunkError::WrongLength { offset, expected: len, got: bytes.len() });
            }
            sink.write_all(&bytes).map_err(|source| ChunkError::Sink { offset, source })?;
            written += bytes.len() as u64;
            pacer.answered(len, done);
        }
        tracing::debug!(
            %peer,
            bytes = written,
            requests = pacer.requests,
            smallest = pacer.smallest,
            largest = pacer.largest,
            secs = started.elapsed().as_secs_f64(),
            "chunked fetch done"
        );
        Ok(written)
    }

    /// Announces in Kademlia that this node provides `key` (a store-path hash part or a blake3 id)
    /// and waits until the record has been offered to the closest peers.
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        let after = self.timeouts.kad + REPLY_SLACK;
        self.call("start_providing", after, |reply| Command::StartProviding { key, reply }).await?
    }

    /// Stops announcing `key` (local record only; remote copies expire).
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.call("stop_providing", QUICK_REPLY, |reply| Command::StopProviding { key, reply }).await
    }

    /// Finds the peers that provide `key` (including this node if it does). Providers that are
    /// not connected are dialled while the query still knows their addresses, so a following
    /// [`send_request`](Self::send_request) can reach them. A query timeout returns what was found.
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<BTreeSet<PeerId>, NetError> {
        let after = self.timeouts.kad + REPLY_SLACK;
        self.call("get_providers", after, |reply| Command::GetProviders { key, reply }).await?
    }

    /// Peers with at least one established connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.call("connected_peers", QUICK_REPLY, |reply| Command::ConnectedPeers { reply }).await
    }

    /// Listen and confirmed external addresses, each ending in `/p2p/<our id>`.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call("addresses", QUICK_REPLY, |reply| Command::Addresses { reply }).await
    }

    /// The gossipsub score of a peer (negative after rejected messages), if known.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetError> {
        self.call("peer_score", QUICK_REPLY, |reply| Command::PeerScore { peer, reply }).await
    }

    /// Counts a malformed body `peer` sent (`what` names it in the log: "sync request", "sync
    /// page", ...) against it: one strike, like an oversized frame ([`super::PeerConduct`]).
    /// Report only bytes no honest node sends, at most once per request or response: not an
    /// error answer, nor a request variant a newer build may add. Does not wait for the event
    /// loop; a stopped loop is ignored.
    pub async fn malformed(&self, peer: PeerId, what: &'static str) {
        let _ = self.commands.send(Command::Malformed { peer, what }).await;
    }

    /// Closes every connection to `peer`. Returns `false` if it was not connected.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, NetError> {
        self.call("disconnect", QUICK_REPLY, |reply| Command::Disconnect { peer, reply }).await
    }

    /// Blocks (`true`) or unblocks (`false`) a peer: while blocked, every connection to it is
    /// closed and refused in both directions (used for bans and for partition tests). Returns
    /// whether the block list changed.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<bool, NetError> {
        self.call("set_blocked", QUICK_REPLY, |reply| Command::Block { peer, blocked, reply }).await
    }

    /// Asks the event loop to stop (served before pending commands). Pending requests fail with
    /// `Stopped`. Await the `JoinHandle` from [`spawn`](super::spawn) to know it has stopped.
    pub async fn shutdown(&self) {
        // An error means the loop is already gone, which is what we want.
        let _ = self.priority.send(Priority::Shutdown).await;
    }
}

async fn chunk_future(
    handle: NetHandle,
    peer: PeerId,
    protocol: RequestProtocol,
    offset: u64,
    len: u32,
    req: Vec<u8>,
) -> (u64, u32, Result<Vec<u8>, RequestError>, std::time::Instant) {
    // When the answer arrived (the pacer's samples), not when it is handed over in order.
    let result = handle.send_request(peer, protocol, req).await;
    (offset, len, result, std::time::Instant::now())
}
