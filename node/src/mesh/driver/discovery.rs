//! Shard-aware peer discovery (issue 18): the members of a shard find and connect to each other.
//!
//! Gossipsub forwards a topic only through peers subscribed to it, so a shard's gossip reaches
//! its members only if they are connected among themselves. The node's ordinary dialling
//! (bootstrap, Kademlia routing table and remembered peers up to `target_peers`) does not see
//! shards: in a large mesh two members of one shard may never meet. So, with `mesh_shards` > 1:
//!
//! - each node provides a Kademlia record for its own shard ([`shard_key`]); it provides it again
//!   1, 2, 4, ... s after start and then every [`MAX_REPROVIDE`] (a first provide often runs
//!   before the routing table holds anyone to store it at);
//! - while it has fewer than `shard_peers` connections to members of a shard it hears (its own
//!   and those it observes; a peer's shard follows from its key, `shard::node_shard`), it looks
//!   the shard's providers up; the network task dials the providers found (at most 8 per lookup,
//!   each within the usual redial interval). A lookup that finds nobody new waits twice as long
//!   before the next one (1 s up to `redial_interval_ms`, at most [`MAX_BACKOFF`]); once the
//!   count is reached, the wait is 1 s again for when it drops.
//!
//! Only dialling changes: connection admission (peer limits, per-IP limits, blocked peers) is the
//! network task's as for any dial, and the node prunes no connections, so same-shard
//! connections are never closed in favour of others.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::*;
use buildmesh_protocol::mesh::shard;

/// Longest wait between two provider records of the own shard.
const MAX_REPROVIDE: Duration = Duration::from_secs(600);
/// Longest wait between two lookups of one shard that found nobody new.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// First wait (re-provide and lookup backoff).
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The Kademlia key of the provider records of shard `shard` of `shards`.
pub(crate) fn shard_key(shard: u32, shards: u32) -> Vec<u8> {
    format!("buildmesh/shard/1/{shard}-of-{shards}").into_bytes()
}

/// The shard of the node behind `peer` (`None` for a peer id that is not an Ed25519 node key).
pub(super) fn peer_shard(peer: &PeerId, shards: u32) -> Option<u32> {
    node_of(peer).map(|n| shard::node_shard(&n, shards))
}

#[derive(Debug)]
struct Lookup {
    next_at: Instant,
    backoff: Duration,
    in_flight: bool,
    /// Connections to the shard when the lookup started.
    had: usize,
}

/// The discovery state of a running driver.
#[derive(Debug)]
pub(super) struct Discovery {
    /// `shard_peers`: connections wanted to each heard shard (0: discovery off).
    want: usize,
    /// Longest wait between two lookups of one shard.
    max_backoff: Duration,
    provide_at: Instant,
    provide_wait: Duration,
    lookups: HashMap<u32, Lookup>,
    done_tx: mpsc::Sender<u32>,
    done_rx: mpsc::Receiver<u32>,
}

impl Discovery {
    /// Discovery looking for `want` connections per heard shard, looking a shard up at least
    /// every `max_backoff` (capped at [`MAX_BACKOFF`]) while short of them.
    pub(super) fn new(want: usize, max_backoff: Duration) -> Discovery {
        let (done_tx, done_rx) = mpsc::channel(64);
        Discovery {
            want,
            max_backoff: max_backoff.clamp(FIRST_WAIT, MAX_BACKOFF),
            provide_at: Instant::now(),
            provide_wait: FIRST_WAIT,
            lookups: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Which shards to look up now, given the connections per shard `have` and the heard
    /// shards; marks them in flight.
    fn due(&mut self, now: Instant, heard: &BTreeSet<u32>, have: &BTreeMap<u32, usize>) -> Vec<u32> {
        while let Ok(s) = self.done_rx.try_recv() {
            if let Some(l) = self.lookups.get_mut(&s) {
                l.in_flight = false;
            }
        }
        self.lookups.retain(|s, _| heard.contains(s));
        if self.want == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for s in heard {
            let n = have.get(s).copied().unwrap_or(0);
            let l = self.lookups.entry(*s).or_insert(Lookup {
                next_at: now,
                backoff: FIRST_WAIT,
                in_flight: false,
                had: 0,
            });
            if n >= self.want {
                l.backoff = FIRST_WAIT;
                continue;
            }
            if l.in_flight || now < l.next_at {
                continue;
            }
            // Nobody new since the last lookup: wait longer next time.
            l.backoff = if n > l.had { FIRST_WAIT } else { (l.backoff * 2).min(self.max_backoff) };
            l.had = n;
            l.next_at = now + l.backoff;
            l.in_flight = true;
            out.push(*s);
        }
        out
    }

    /// Whether the own shard's record is due again (and the next time set).
    fn provide_due(&mut self, now: Instant) -> bool {
        if self.want == 0 || now < self.provide_at {
            return false;
        }
        self.provide_at = now + self.provide_wait;
        self.provide_wait = (self.provide_wait * 2).min(MAX_REPROVIDE);
        true
    }
}

impl Driver {
    /// Connections to members of each shard (by the peers' keys).
    pub(super) fn shard_peers(&self) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        if self.shards.count() <= 1 {
            return out;
        }
        for (p, _) in self.known.iter().filter(|(_, k)| k.connected) {
            if let Some(s) = peer_shard(p, self.shards.count()) {
                *out.entry(s).or_insert(0) += 1;
            }
        }
        out
    }

    /// Every second: provide the own shard's record when due, look up the heard shards with too
    /// few connections (see the module docs).
    pub(super) fn discover(&mut self) {
        let shards = self.shards.count();
        if shards <= 1 {
            return;
        }
        let now = Instant::now();
        if self.discovery.provide_due(now) {
            let (net, key) = (self.ctx.net.clone(), shard_key(self.shards.own(), shards));
            tokio::spawn(
                async move {
                    if let Err(e) = net.start_providing(key).await {
                        tracing::debug!(cause = %e, "shard provider record not published");
                    }
                }
                .in_current_span(),
            );
        }
        let have = self.shard_peers();
        for s in self.discovery.due(now, self.shards.heard(), &have) {
            let (net, done) = (self.ctx.net.clone(), self.discovery.done_tx.clone());
            let had = have.get(&s).copied().unwrap_or(0);
            tokio::spawn(
                async move {
                    match net.get_providers(shard_key(s, shards)).await {
                        Ok(found) => {
                            tracing::debug!(target: EVENTS, event = "shard_lookup", shard = s, found = found.len(), had);
                        }
                        Err(e) => tracing::debug!(shard = s, cause = %e, "shard lookup failed"),
                    }
                    let _ = done.send(s).await;
                }
                .in_current_span(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_back_off_while_nobody_new_is_found_and_stop_at_the_target() {
        let mut d = Discovery::new(2, Duration::from_secs(30));
        let t0 = Instant::now();
        let heard = BTreeSet::from([0, 1]);
        let mut have = BTreeMap::from([(0, 0), (1, 2)]);
        assert_eq!(d.due(t0, &heard, &have), vec![0], "shard 1 has enough");
        assert!(d.due(t0 + Duration::from_secs(10), &heard, &have).is_empty(), "one lookup in flight per shard");
        d.done_tx.try_send(0).unwrap();
        let first = d.lookups[&0].next_at;
        assert!(d.due(first - Duration::from_millis(1), &heard, &have).is_empty(), "not before its time");
        assert_eq!(d.due(first, &heard, &have), vec![0]);
        let wait = d.lookups[&0].backoff;
        assert!(wait > FIRST_WAIT, "nothing new found: waits longer ({wait:?})");
        d.done_tx.try_send(0).unwrap();
        have.insert(0, 1);
        let at = d.lookups[&0].next_at;
        assert_eq!(d.due(at, &heard, &have), vec![0]);
        assert_eq!(d.lookups[&0].backoff, FIRST_WAIT, "a new peer: back to the first wait");
        // A shard no longer heard is forgotten; discovery off looks up nothing.
        d.done_tx.try_send(0).unwrap();
        assert!(d.due(at + MAX_BACKOFF, &BTreeSet::from([1]), &have).is_empty());
        assert!(!d.lookups.contains_key(&0));
        let mut off = Discovery::new(0, MAX_BACKOFF);
        assert!(off.due(t0, &heard, &BTreeMap::new()).is_empty() && !off.provide_due(t0));
    }

    #[test]
    fn the_own_record_is_provided_again_at_doubling_intervals() {
        let mut d = Discovery::new(4, MAX_BACKOFF);
        let t0 = d.provide_at;
        assert!(d.provide_due(t0));
        assert!(!d.provide_due(t0));
        assert!(d.provide_due(t0 + Duration::from_secs(1)));
        assert!(!d.provide_due(t0 + Duration::from_secs(2)));
        assert!(d.provide_due(t0 + Duration::from_secs(3)));
        assert_eq!(shard_key(1, 4), b"buildmesh/shard/1/1-of-4");
    }
}
