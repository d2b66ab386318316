//! The answers the pages show, computed once and shared: a QA answer on a 100,000-job revision
//! takes up to a second of CPU, and 50 people watching a page must not ask for 50 of them.
//!
//! Per key (the question, e.g. `show:qa@r2`): the first asker computes while later askers of the
//! same key wait for it (one computation at a time); the answer is then kept for
//! [`ttl_for`]`(time it took)`, and when it is older, the stale answer is served at once while
//! one refresh runs in the background. Errors are not kept. At most [`CAPACITY`] keys; the least
//! recently used goes first.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::PageError;

/// Most answers kept (a 100,000-job revision status is tens of MiB).
pub const CAPACITY: usize = 24;
/// The shortest time an answer is kept.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// The longest.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// How long an answer that took `took` to compute is kept: 20 times that, within
/// [`MIN_TTL`]..[`MAX_TTL`], so refreshing costs at most a twentieth of a core per key.
pub fn ttl_for(took: Duration) -> Duration {
    (took * 20).clamp(MIN_TTL, MAX_TTL)
}

type Value = Arc<dyn Any + Send + Sync>;

struct Slot {
    value: Option<(Value, Instant, Duration)>,
    computing: Arc<tokio::sync::Mutex<()>>,
    refreshing: bool,
    used: Instant,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot { value: None, computing: Arc::default(), refreshing: false, used: now }
    }
}

/// The cache (see the module docs); cheap to clone.
#[derive(Clone, Default)]
pub struct PageCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache").finish_non_exhaustive()
    }
}

enum Found<T> {
    Fresh(Arc<T>),
    Stale(Arc<T>),
    Missing(Arc<tokio::sync::Mutex<()>>),
}

impl PageCache {
    fn lookup<T: Send + Sync + 'static>(&self, key: &str, claim_refresh: bool) -> Found<T> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if !slots.contains_key(key) && slots.len() >= CAPACITY {
            let idle = slots.iter().filter(|(_, s)| !s.refreshing).min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone());
            if let Some(k) = idle {
                slots.remove(&k);
            }
        }
        let slot = slots.entry(key.to_string()).or_insert_with(|| Slot::new(now));
        slot.used = now;
        if let Some((v, at, ttl)) = &slot.value
            && let Ok(v) = v.clone().downcast::<T>()
        {
            if now.duration_since(*at) <= *ttl {
                return Found::Fresh(v);
            }
            if claim_refresh && !slot.refreshing {
                slot.refreshing = true;
                return Found::Stale(v);
            }
            return Found::Fresh(v);
        }
        Found::Missing(slot.computing.clone())
    }

    fn store<T: Send + Sync + 'static>(&self, key: &str, value: Option<Arc<T>>, took: Duration) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let slot = slots.entry(key.to_string()).or_insert_with(|| Slot::new(now));
        slot.refreshing = false;
        if let Some(v) = value {
            slot.value = Some((v, now, ttl_for(took)));
        }
    }

    /// The answer to `key`, computed by `compute` when it is missing (see the module docs).
    pub async fn get<T, F, Fut>(&self, key: String, compute: F) -> Result<Arc<T>, PageError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, PageError>> + Send + 'static,
    {
        let lock = match self.lookup::<T>(&key, true) {
            Found::Fresh(v) => return Ok(v),
            Found::Stale(v) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = compute().await;
                    if let Err(e) = &r {
                        tracing::debug!(key, error = %e.message, "refreshing a page's answer failed; the old one stays");
                    }
                    this.store(&key, r.ok().map(Arc::new), t.elapsed());
                });
                return Ok(v);
            }
            Found::Missing(lock) => lock,
        };
        let _computing = lock.lock().await;
        if let Found::Fresh(v) | Found::Stale(v) = self.lookup::<T>(&key, false) {
            return Ok(v);
        }
        let t = Instant::now();
        let v = Arc::new(compute().await?);
        self.store(&key, Some(v.clone()), t.elapsed());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ttl_scales_with_the_cost() {
        assert_eq!(ttl_for(Duration::from_millis(1)), MIN_TTL);
        assert_eq!(ttl_for(Duration::from_millis(500)), Duration::from_secs(10));
        assert_eq!(ttl_for(Duration::from_secs(30)), MAX_TTL);
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_computation() {
        let cache = PageCache::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, runs) = (cache.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get("k".to_string(), move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<u32, PageError>(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn errors_are_not_kept() {
        let cache = PageCache::default();
        let r = cache.get("e".to_string(), || async { Err::<u32, _>(PageError::bad_request("no")) }).await;
        assert!(r.is_err());
        let r = cache.get("e".to_string(), || async { Ok::<u32, PageError>(1) }).await;
        assert_eq!(*r.unwrap(), 1);
    }

    #[tokio::test]
    async fn at_most_capacity_keys() {
        let cache = PageCache::default();
        for i in 0..CAPACITY + 10 {
            cache.get(format!("k{i}"), move || async move { Ok::<usize, PageError>(i) }).await.unwrap();
        }
        assert!(cache.slots.lock().unwrap().len() <= CAPACITY);
    }
}
