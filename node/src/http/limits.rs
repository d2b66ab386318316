//! Per-client limits of the HTTP server: how many connections and NAR downloads one client
//! address may hold, and how many all clients together may.
//!
//! A client is its IPv4 address, or the /64 prefix of its IPv6 address (one host usually gets a
//! whole /64, so counting single IPv6 addresses would let it open as many connections as it
//! likes). IPv4-mapped IPv6 addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit per-client limits count: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts open connections per client; [`ConnCounter::try_open`] refuses a client at its limit.
#[derive(Debug)]
pub struct ConnCounter {
    per_client: usize,
    open: Mutex<HashMap<ClientKey, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    counter: Arc<ConnCounter>,
    key: ClientKey,
}

impl ConnCounter {
    /// A counter allowing `per_client` connections per client (0: no limit).
    pub fn new(per_client: usize) -> Arc<ConnCounter> {
        Arc::new(ConnCounter { per_client, open: Mutex::new(HashMap::new()) })
    }

    /// Count a new connection of `ip`, or `None` when its client is at the limit.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let key = ClientKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if self.per_client > 0 && *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(ConnSlot { counter: self.clone(), key })
    }

    /// Connections open from the client of `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    /// Clients with at least one open connection.
    pub fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Why a download got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadBusy {
    /// The client's own downloads took all of its slots for the whole wait.
    #[error("{client} already has {limit} NAR downloads running; try again later")]
    Client {
        /// The client.
        client: String,
        /// Its limit.
        limit: usize,
    },
    /// All download slots stayed taken for the whole wait.
    #[error("the node is streaming its maximum of {limit} NAR downloads; try again later")]
    Node {
        /// The node-wide limit.
        limit: usize,
    },
}

/// Limits concurrent NAR downloads, per client and in all. A download over a limit waits (at most
/// `wait`) for a slot instead of failing at once, so a client that opens more parallel
/// connections than its share (Nix opens up to 25) is slowed down, not broken.
#[derive(Debug)]
pub struct DownloadLimiter {
    all: Arc<Semaphore>,
    limit: usize,
    per_client: usize,
    wait: Duration,
    clients: Mutex<HashMap<ClientKey, Arc<Semaphore>>>,
}

/// A download's slots; released when dropped (when the response body is done or dropped).
#[derive(Debug)]
pub struct DownloadSlot {
    _all: OwnedSemaphorePermit,
    client: Option<(Arc<DownloadLimiter>, ClientKey, OwnedSemaphorePermit)>,
}

impl DownloadLimiter {
    /// `limit` downloads in all, `per_client` per client (0: no per-client limit), each waiting at
    /// most `wait` for a slot.
    pub fn new(limit: usize, per_client: usize, wait: Duration) -> Arc<DownloadLimiter> {
        let limit = limit.max(1);
        Arc::new(DownloadLimiter {
            all: Arc::new(Semaphore::new(limit)),
            limit,
            per_client,
            wait,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Wait for a download slot for a client at `ip` (`None`: unknown address, only the
    /// node-wide limit applies).
    pub async fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<DownloadSlot, DownloadBusy> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let client = match ip {
            Some(ip) if self.per_client > 0 => {
                let key = ClientKey::of(ip);
                let sem = {
                    let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
                    clients.entry(key).or_insert_with(|| Arc::new(Semaphore::new(self.per_client))).clone()
                };
                let permit = tokio::time::timeout_at(deadline, sem.acquire_owned()).await;
                match permit {
                    Ok(Ok(p)) => Some((self.clone(), key, p)),
                    _ => {
                        self.forget_idle(key);
                        return Err(DownloadBusy::Client { client: key.to_string(), limit: self.per_client });
                    }
                }
            }
            _ => None,
        };
        // On failure `client` is dropped here, which releases the client's permit.
        match tokio::time::timeout_at(deadline, self.all.clone().acquire_owned()).await {
            Ok(Ok(all)) => Ok(DownloadSlot { _all: all, client }),
            _ => Err(DownloadBusy::Node { limit: self.limit }),
        }
    }

    /// Downloads running now.
    pub fn running(&self) -> usize {
        self.limit - self.all.available_permits()
    }

    /// Clients with a download running or waiting.
    pub fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Drop the semaphore of `key` when nobody holds or waits for it (the map holds the only
    /// reference), so the map never grows past the clients that are active.
    fn forget_idle(&self, key: ClientKey) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.get(&key).is_some_and(|s| Arc::strong_count(s) == 1 && s.available_permits() == self.per_client) {
            clients.remove(&key);
        }
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        if let Some((limiter, key, permit)) = self.client.take() {
            drop(permit);
            limiter.forget_idle(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of("10.0.0.1".parse().unwrap()));
        assert_eq!(ClientKey::of(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn conn_counter_limits_each_client_and_forgets_closed_ones() {
        let c = ConnCounter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.try_open(a).unwrap();
        let s2 = c.try_open(a).unwrap();
        assert!(c.try_open(a).is_none());
        let s3 = c.try_open(b).unwrap();
        assert_eq!(c.open_from(a), 2);
        drop(s1);
        let s4 = c.try_open(a).unwrap();
        drop((s2, s3, s4));
        assert_eq!(c.clients(), 0);
    }

    #[tokio::test]
    async fn downloads_wait_for_a_slot_then_give_up() {
        let l = DownloadLimiter::new(3, 2, Duration::from_millis(300));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.acquire(Some(a)).await.unwrap();
        let _a2 = l.acquire(Some(a)).await.unwrap();
        // a is at its limit: waits, then gets a1's slot when it is released.
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(Some(a)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(a1);
        let a3 = waiter.await.unwrap().unwrap();
        // Without a release the wait ends with an error naming the client.
        let e = l.acquire(Some(a)).await.unwrap_err();
        assert!(matches!(e, DownloadBusy::Client { limit: 2, .. }), "{e}");
        let _b1 = l.acquire(Some(b)).await.unwrap();
        assert_eq!(l.running(), 3);
        let e = l.acquire(Some(b)).await.unwrap_err();
        assert!(matches!(e, DownloadBusy::Node { limit: 3 }), "{e}");
        drop(a3);
        drop(_a2);
        drop(_b1);
        assert_eq!(l.running(), 0);
        assert_eq!(l.clients(), 0);
    }
}
