//! The node's watch over its store: after a database failure (see [`crate::store::Store::recover`])
//! it tries to bring the database back every [`RECOVERY_INTERVAL`], and stops the node with an
//! error when the failure lasts longer than the configured limit, so that `buildmesh node` exits
//! non-zero and a supervisor (systemd `Restart=on-failure`) restarts it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often a failed store is checked and reopened.
pub(super) const RECOVERY_INTERVAL: Duration = Duration::from_secs(2);

/// Watch `store` until `shutdown`; see the module docs. `give_up` is how long a failure may last.
pub(super) async fn watch_store(
    store: Store,
    give_up: Duration,
    failure: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RECOVERY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if store.failure().is_none() {
            failing_since = None;
            continue;
        }
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.recover()).await {
            Ok(Ok(_)) => {
                failing_since = None;
                continue;
            }
            Ok(Err(e)) => tracing::warn!(cause = %e, "the database is still failing"),
            Err(e) => tracing::error!(cause = %e, "store recovery task failed"),
        }
        if since.elapsed() >= give_up {
            let cause = store.failure().map(|f| f.error).unwrap_or_else(|| "unknown".into());
            let message = format!(
                "the database has failed for {} s and could not be reopened ({cause}); stopping so that the node can be restarted",
                since.elapsed().as_secs()
            );
            tracing::error!("{message}");
            *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
            shutdown.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::StoreOptions;
    use crate::store::test_support::{FullDiskBackend, drv};

    #[tokio::test]
    async fn a_store_that_stays_broken_stops_the_node_with_a_reason() {
        let blobs = tempfile::tempdir().unwrap();
        let backend = FullDiskBackend::new();
        let full = backend.full.clone();
        let store = Store::open_with_backend(backend, blobs.path(), StoreOptions::default()).unwrap();
        let failure = Arc::new(Mutex::new(None));
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(watch_store(store.clone(), Duration::ZERO, failure.clone(), shutdown.clone()));
        full.store(true, Ordering::SeqCst);
        assert!(store.put_log(&drv(1), b"x").is_err());
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled()).await.expect("the node was not stopped");
        watch.await.unwrap();
        let why = failure.lock().unwrap().clone().expect("a reason");
        assert!(why.contains("database") && why.contains("No space left"), "{why}");
    }
}
