//! Bounds on what one peer may ask of this node: a token bucket per (peer, protocol) for inbound
//! requests, a cap on a peer's unanswered requests, and "strikes" for misbehaviour that feed the
//! peer's gossipsub application score, so that a peer flooding requests, sending oversized
//! frames or malformed bodies ([`PeerLimits::malformed`], reported by the application through
//! [`NetHandle::malformed`](super::NetHandle::malformed)) is graylisted for gossip as well (and a
//! graylisted peer gets no answers either).
//!
//! The event loop asks [`PeerLimits::admit`] for every inbound request before it hands it to
//! the application; what is refused is dropped there (the requester sees its stream closed) and
//! counted. Nothing here allocates per request: the map holds one entry per peer that asked
//! something recently, and entries of peers that have been quiet are forgotten by
//! [`PeerLimits::decay`].

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::RequestProtocol;

/// The gossipsub application score one strike costs: the graylist threshold is -80 (see
/// `behaviour::score_thresholds`), so three strikes graylist a peer.
pub const STRIKE_SCORE: f64 = -30.0;
/// Strikes a rate-limited (refused) request costs: an honest node never outruns the buckets,
/// a flood of 20 refused requests is one strike.
const STRIKE_PER_REFUSAL: f64 = 0.05;
/// Strikes an oversized request frame costs (an honest node checks the size before sending).
const STRIKE_PER_OVERSIZED: f64 = 1.0;
/// Strikes a malformed request or response body costs (bytes an honest node never sends: the
/// application reports only those, not what a newer or older build may send, see
/// [`PeerLimits::malformed`]).
const STRIKE_PER_MALFORMED: f64 = 1.0;
/// Strikes are multiplied by this every [`PeerLimits::decay`] call (the event loop's 500 ms
/// tick): a half-life of about 6 minutes, so a peer graylisted by 10 strikes is forgiven after
/// about 25 minutes of good behaviour.
const STRIKE_DECAY: f64 = 0.999;
/// Below this many strikes an entry with full buckets and nothing pending is forgotten.
const FORGET_STRIKES: f64 = 0.01;

/// The rate of one protocol: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Bucket size: requests a peer may send at once after a quiet spell.
    pub burst: u32,
    /// Requests per second a peer may keep sending.
    pub per_sec: f64,
}

/// Per-peer limits on inbound requests (part of [`NetConfig`](super::NetConfig)). The defaults
/// are far above what an honest node asks (a builder fetches one closure per build it starts
/// and pipelines 4 NAR chunks per fetch; a refused request fails that build's preparation), and
/// bound what one peer id can make this node do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerLimitsConfig {
    /// `/buildmesh/closure/1`: one per build a peer prepares from this node's jobs.
    pub closure: RateLimit,
    /// `/buildmesh/nar/1`: one per NAR chunk (1 MiB), pipelined 4 deep per fetch.
    pub nar: RateLimit,
    /// `/buildmesh/sync/1`: anti-entropy pages, manifest chunks, retry requests.
    pub sync: RateLimit,
    /// Requests of one peer waiting for an answer at most (over all protocols).
    pub max_pending_per_peer: usize,
}

impl Default for PeerLimitsConfig {
    fn default() -> Self {
        PeerLimitsConfig {
            closure: RateLimit { burst: 256, per_sec: 128.0 },
            nar: RateLimit { burst: 1024, per_sec: 512.0 },
            sync: RateLimit { burst: 256, per_sec: 128.0 },
            max_pending_per_peer: 96,
        }
    }
}

impl PeerLimitsConfig {
    /// The rate of `protocol`.
    pub fn rate(&self, protocol: RequestProtocol) -> RateLimit {
        match protocol {
            RequestProtocol::Closure => self.closure,
            RequestProtocol::Nar => self.nar,
            RequestProtocol::Sync => self.sync,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's bucket for this protocol is empty.
    Rate,
    /// The peer already has `max_pending_per_peer` requests waiting.
    Pending,
    /// The peer is graylisted (gossipsub score below the graylist threshold).
    Graylisted,
}

impl Refusal {
    /// A short name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Pending => "pending",
            Refusal::Graylisted => "graylisted",
        }
    }
}

/// What this node holds against a peer, as `GET /api/v1/peers` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerConduct {
    /// Its gossipsub score (negative after invalid messages or strikes), when gossipsub knows it.
    pub gossip_score: Option<f64>,
    /// Whether the score is below the graylist threshold: its gossip is ignored and its requests
    /// refused.
    pub graylisted: bool,
    /// Misbehaviour counted against it (decaying): oversized frames, malformed bodies, floods of
    /// refused requests.
    pub strikes: f64,
    /// Inbound requests of it refused so far (rate, pending cap, graylist).
    pub requests_refused: u64,
    /// Inbound requests of it admitted so far.
    pub requests_admitted: u64,
    /// Oversized request frames it sent.
    pub oversized_frames: u64,
    /// Malformed request or response bodies it sent (e.g. a sync request that does not decode,
    /// a sync page with records that do not verify).
    #[serde(default)]
    pub malformed: u64,
    /// The request protocols (`/buildmesh/sync/1`, …) this node does not ask it on for now,
    /// because its last answers there were all unreadable ([`super::unread`]); empty otherwise.
    #[serde(default)]
    pub benched: Vec<String>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct PeerState {
    buckets: HashMap<RequestProtocol, Bucket>,
    pending: usize,
    strikes: f64,
    refused: u64,
    admitted: u64,
    oversized: u64,
    malformed: u64,
}

/// The per-peer request limiter and strike record. Owned by the event loop.
#[derive(Debug)]
pub struct PeerLimits {
    cfg: PeerLimitsConfig,
    peers: HashMap<PeerId, PeerState>,
}

impl PeerLimits {
    /// An empty record with limits `cfg`.
    pub fn new(cfg: PeerLimitsConfig) -> PeerLimits {
        PeerLimits { cfg, peers: HashMap::new() }
    }

    /// Whether a request of `peer` on `protocol` may go to the application now. An admitted
    /// request counts as pending until [`PeerLimits::done`].
    pub fn admit(
        &mut self,
        peer: PeerId,
        protocol: RequestProtocol,
        graylisted: bool,
        now: Instant,
    ) -> Result<(), Refusal> {
        let rate = self.cfg.rate(protocol);
        let max_pending = self.cfg.max_pending_per_peer;
        let st = self.peers.entry(peer).or_default();
        let refusal = if graylisted {
            Some(Refusal::Graylisted)
        } else if st.pending >= max_pending {
            Some(Refusal::Pending)
        } else {
            let b = st.buckets.entry(protocol).or_insert(Bucket { tokens: f64::from(rate.burst), at: now });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate.per_sec).min(f64::from(rate.burst));
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                None
            } else {
                Some(Refusal::Rate)
            }
        };
        match refusal {
            None => {
                st.pending += 1;
                st.admitted += 1;
                Ok(())
            }
            Some(r) => {
                st.refused += 1;
                if r != Refusal::Graylisted {
                    st.strikes += STRIKE_PER_REFUSAL;
                }
                Err(r)
            }
        }
    }

    /// An admitted request of `peer` was answered, refused by the application or failed.
    pub fn done(&mut self, peer: &PeerId) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.pending = st.pending.saturating_sub(1);
        }
    }

    /// `peer` sent a request frame above the protocol's cap.
    pub fn oversized(&mut self, peer: PeerId) {
        let st = self.peers.entry(peer).or_default();
        st.oversized += 1;
        st.strikes += STRIKE_PER_OVERSIZED;
    }

    /// `peer` sent a body that does not decode or records that do not verify: bytes no honest
    /// node sends. The caller reports at most one per request or response, and nothing a peer
    /// of another version may honestly send (an unknown request variant, an error answer).
    pub fn malformed(&mut self, peer: PeerId) {
        let st = self.peers.entry(peer).or_default();
        st.malformed += 1;
        st.strikes += STRIKE_PER_MALFORMED;
    }

    /// The gossipsub application score `peer` has earned here (0 without strikes).
    pub fn app_score(&self, peer: &PeerId) -> f64 {
        self.peers.get(peer).map_or(0.0, |st| st.strikes * STRIKE_SCORE)
    }

    /// Lets strikes decay and forgets quiet, blameless peers whose buckets have refilled.
    /// Returns the peers whose application score changed (to be told to gossipsub).
    pub fn decay(&mut self, now: Instant) -> Vec<(PeerId, f64)> {
        let cfg = self.cfg;
        let mut changed = Vec::new();
        self.peers.retain(|peer, st| {
            if st.strikes > 0.0 {
                st.strikes *= STRIKE_DECAY;
                if st.strikes < FORGET_STRIKES {
                    st.strikes = 0.0;
                }
                changed.push((*peer, st.strikes * STRIKE_SCORE));
            }
            let refilled = st.buckets.iter().all(|(p, b)| {
                let rate = cfg.rate(*p);
                let full_after = Duration::from_secs_f64(f64::from(rate.burst) / rate.per_sec.max(f64::MIN_POSITIVE));
                now.saturating_duration_since(b.at) >= full_after
            });
            !(st.strikes == 0.0 && st.pending == 0 && refilled)
        });
        changed
    }

    /// What is held against `peer` (score fields are filled in by the event loop).
    pub fn conduct(&self, peer: &PeerId) -> PeerConduct {
        let Some(st) = self.peers.get(peer) else { return PeerConduct::default() };
        PeerConduct {
            gossip_score: None,
            graylisted: false,
            strikes: (st.strikes * 100.0).round() / 100.0,
            requests_refused: st.refused,
            requests_admitted: st.admitted,
            oversized_frames: st.oversized,
            malformed: st.malformed,
            benched: Vec::new(),
        }
    }

    /// The peers with a record.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PeerLimitsConfig {
        PeerLimitsConfig {
            closure: RateLimit { burst: 4, per_sec: 2.0 },
            nar: RateLimit { burst: 8, per_sec: 100.0 },
            sync: RateLimit { burst: 2, per_sec: 1.0 },
            max_pending_per_peer: 6,
        }
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut l = PeerLimits::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        for _ in 0..4 {
            l.admit(p, RequestProtocol::Closure, false, t0).unwrap();
            l.done(&p);
        }
        assert_eq!(l.admit(p, RequestProtocol::Closure, false, t0), Err(Refusal::Rate));
        // Another protocol and another peer have their own buckets.
        l.admit(p, RequestProtocol::Sync, false, t0).unwrap();
        l.admit(PeerId::random(), RequestProtocol::Closure, false, t0).unwrap();
        // Half a second refills one request at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        l.admit(p, RequestProtocol::Closure, false, t1).unwrap();
        assert_eq!(l.admit(p, RequestProtocol::Closure, false, t1), Err(Refusal::Rate));
        let c = l.conduct(&p);
        assert_eq!((c.requests_admitted, c.requests_refused), (6, 2));
    }

    #[test]
    fn pending_requests_are_capped_per_peer() {
        let mut l = PeerLimits::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        for _ in 0..6 {
            l.admit(p, RequestProtocol::Nar, false, t0).unwrap();
        }
        assert_eq!(l.admit(p, RequestProtocol::Nar, false, t0), Err(Refusal::Pending));
        l.done(&p);
        l.admit(p, RequestProtocol::Nar, false, t0).unwrap();
        assert_eq!(l.admit(p, RequestProtocol::Closure, true, t0), Err(Refusal::Graylisted));
    }

    #[test]
    fn oversized_frames_and_floods_cost_score_which_decays() {
        let mut l = PeerLimits::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        for _ in 0..3 {
            l.oversized(p);
        }
        assert!(l.app_score(&p) < -80.0, "three oversized frames graylist: {}", l.app_score(&p));
        let m = PeerId::random();
        l.malformed(m);
        l.malformed(m);
        assert!(l.app_score(&m) > -80.0, "two malformed bodies do not graylist: {}", l.app_score(&m));
        l.malformed(m);
        assert!(l.app_score(&m) < -80.0, "three malformed bodies graylist: {}", l.app_score(&m));
        assert_eq!(l.conduct(&m).malformed, 3);
        let q = PeerId::random();
        for _ in 0..100 {
            if l.admit(q, RequestProtocol::Sync, false, t0).is_ok() {
                l.done(&q);
            }
        }
        let flood = l.app_score(&q);
        assert!(flood < -100.0, "98 refusals cost about 5 strikes: {flood}");
        let mut t = t0;
        for _ in 0..10_000 {
            t += Duration::from_millis(500);
            l.decay(t);
        }
        assert_eq!(l.app_score(&p), 0.0);
        assert_eq!(l.app_score(&m), 0.0);
        assert_eq!(l.peers().count(), 0, "quiet, forgiven peers are forgotten");
    }
}
