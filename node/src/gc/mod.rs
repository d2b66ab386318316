//! Bounded disk: garbage collection of NAR blobs and realised paths (issue 15 item 5).
//!
//! The node keeps what is pinned ([`pins`]: the operator's pins, unfinished builds' inputs and
//! outputs, the latest revision of every branch, the quarantine) with its reference closure, and
//! collects the rest least recently used first (last stored, registered or served). Collecting a
//! blob removes its registrations and its realised copies (`DATA/store/<basename>`); the signed
//! attestations stay, so the output stays attested and the quorum gateway fetches it back from an
//! agreeing builder when a client asks for it (verified against the signed NarHash).
//!
//! - `buildmesh gc` (`POST /api/v1/gc`) collects everything that is not pinned; `--dry-run`
//!   only says what it would collect.
//! - The background collector ([`Collector::watch`]) runs every [`GcSettings::interval_secs`]
//!   and when the store is over `max_store_bytes`, or the filesystem of the data directory has
//!   less than `min_free_bytes` free, collects until it is under both again. When it cannot (what
//!   is left is pinned), it sets the store's disk pressure: the mesh then announces no build
//!   slots (so placement stops giving it new builds; running ones finish), and `/api/v1/node`
//!   and `explain` say why. It clears when the node is under the limits again.
//!
//! Crash safety is the store's ([`crate::store::Store::collect_blob`]): a `kill -9` at any point
//! never leaves a row naming a missing or half-deleted blob, and never touches a pinned one; an
//! unlinked-later orphan file is swept by the next run.

pub mod pins;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::store_path::{StoreDir, StorePath};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::build::realize::StoreFs;
use crate::qa::QaContext;
use crate::store::{PathInfo, Store, StoreError};

/// The `[gc]`-related knobs of the node's config (top-level fields `max_store_bytes`,
/// `min_free_bytes`; `gc_interval_secs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    /// Most bytes the store may take: compressed NAR blobs plus realised paths (0: no limit).
    pub max_store_bytes: u64,
    /// Least free bytes to leave on the data directory's filesystem (0: no limit).
    pub min_free_bytes: u64,
    /// Seconds between two checks of the limits by the background collector.
    pub interval_secs: u64,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings { max_store_bytes: 0, min_free_bytes: 0, interval_secs: 30 }
    }
}

/// What a collection did (or, dry, would do). The JSON of `buildmesh gc --json` and
/// `POST /api/v1/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Bytes freed (compressed blobs plus realised copies).
    pub freed_bytes: u64,
    /// Bytes the store takes after the collection.
    pub store_bytes: u64,
    /// Bytes of it that are pinned.
    pub pinned_bytes: u64,
    /// The store paths collected (full paths), least recently used first.
    pub collected: Vec<String>,
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The realised paths could not be listed or removed.
    #[error("realised paths: {0}")]
    Realised(String),
    /// The blocking task died.
    #[error("collection task failed: {0}")]
    Task(String),
}

/// Runs collections; cheap to clone. One collection at a time.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    store_dir: StoreDir,
    store_fs: StoreFs,
    data_dir: PathBuf,
    qa: Option<QaContext>,
    settings: GcSettings,
    running: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("settings", &self.inner.settings).finish()
    }
}

/// How much to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Everything that is not pinned (`buildmesh gc`).
    Everything,
    /// Only until the store is under the configured limits (the background collector).
    UnderLimits,
}

/// One collectable unit with its size.
struct Unit {
    blob: crate::store::GcBlob,
    /// Compressed blob plus realised copies.
    bytes: u64,
    pinned: bool,
}

impl Collector {
    /// A collector of `store` (realised paths under `data_dir/store`).
    pub fn new(
        store: Store,
        store_dir: StoreDir,
        data_dir: PathBuf,
        qa: Option<QaContext>,
        settings: GcSettings,
    ) -> Result<Collector, GcError> {
        let store_fs =
            StoreFs::open(data_dir.join(crate::build::STORE_FS_DIR)).map_err(|e| GcError::Realised(e.to_string()))?;
        Ok(Collector {
            inner: Arc::new(Inner {
                store,
                store_dir,
                store_fs,
                data_dir,
                qa,
                settings,
                running: std::sync::Mutex::new(()),
            }),
        })
    }

    /// The limits.
    pub fn settings(&self) -> &GcSettings {
        &self.inner.settings
    }

    /// Free bytes on the data directory's filesystem (`None` when it cannot be read).
    fn free_bytes(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.inner.data_dir).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Collect (blocking; see [`Goal`]). With `dry_run`, nothing is removed and the report says
    /// what would be.
    pub fn collect(&self, goal: Goal, dry_run: bool) -> Result<GcReport, GcError> {
        let _one = self.inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &self.inner;
        s.store.flush_blob_access()?;
        let mut freed = if dry_run { 0 } else { s.store.sweep_orphan_blobs()? };
        let inventory = s.store.gc_inventory()?;
        let registered: BTreeMap<StorePath, PathInfo> =
            inventory.iter().flat_map(|b| b.paths.iter().map(|p| (p.path.clone(), p.clone()))).collect();
        let roots = pins::roots(&s.store, &s.store_dir, s.qa.as_ref())?;
        let keep = pins::closure(&roots, &registered);
        let units: Vec<Unit> = inventory
            .into_iter()
            .map(|blob| {
                let realised: u64 =
                    blob.paths.iter().filter(|p| s.store_fs.is_realised(&p.path)).map(|p| p.nar_size).sum();
                let pinned = roots.blobs.contains(&blob.blob) || blob.paths.iter().any(|p| keep.contains(&p.path));
                Unit { bytes: blob.compressed_size + realised, blob, pinned }
            })
            .collect();
        let mut store_bytes: u64 = units.iter().map(|u| u.bytes).sum();
        let pinned_bytes: u64 = units.iter().filter(|u| u.pinned).map(|u| u.bytes).sum();
        let mut free = self.free_bytes();
        let mut collected = Vec::new();
        for unit in units.iter().filter(|u| !u.pinned) {
            if goal == Goal::UnderLimits && !self.over(store_bytes, free) {
                break;
            }
            let paths: Vec<StorePath> = unit.blob.paths.iter().map(|p| p.path.clone()).collect();
            if !dry_run {
                // Realised copies first: a crash after this leaves a registered path that is
                // realised again from its blob on its next use.
                for p in &paths {
                    s.store_fs.remove(p).map_err(|e| GcError::Realised(e.to_string()))?;
                }
                if !s.store.collect_blob(&unit.blob.blob, &paths)? {
                    tracing::debug!(blob = %unit.blob.blob, "registrations changed meanwhile; kept");
                    continue;
                }
            }
            store_bytes -= unit.bytes;
            freed += unit.bytes;
            free = free.map(|f| f + unit.bytes);
            collected.extend(paths.iter().map(|p| s.store_dir.display(p)));
        }
        if !dry_run && !collected.is_empty() {
            tracing::info!(collected = collected.len(), freed_bytes = freed, store_bytes, "garbage collected");
        }
        Ok(GcReport { freed_bytes: freed, store_bytes, pinned_bytes, collected })
    }

    /// Whether `store_bytes` (and the free space) break a configured limit.
    fn over(&self, store_bytes: u64, free: Option<u64>) -> bool {
        let l = &self.inner.settings;
        (l.max_store_bytes > 0 && store_bytes > l.max_store_bytes)
            || (l.min_free_bytes > 0 && free.is_some_and(|f| f < l.min_free_bytes))
    }

    /// One run of the background collector: collect under the limits, then set or clear the
    /// store's disk pressure.
    pub fn enforce(&self) -> Result<GcReport, GcError> {
        let l = &self.inner.settings;
        if l.max_store_bytes == 0 && l.min_free_bytes == 0 {
            return Ok(GcReport::default());
        }
        let report = self.collect(Goal::UnderLimits, false)?;
        let free = self.free_bytes();
        let pressure = if l.max_store_bytes > 0 && report.store_bytes > l.max_store_bytes {
            Some(format!(
                "the store takes {} bytes, over max_store_bytes {} ({} bytes pinned); not taking new builds",
                report.store_bytes, l.max_store_bytes, report.pinned_bytes
            ))
        } else {
            free.filter(|f| l.min_free_bytes > 0 && *f < l.min_free_bytes).map(|f| {
                format!(
                    "{f} bytes free on the data directory's filesystem, under min_free_bytes {}; not taking new builds",
                    l.min_free_bytes
                )
            })
        };
        let was = self.inner.store.disk_pressure();
        if pressure != was {
            match &pressure {
                Some(reason) => tracing::warn!(%reason, "over the disk limits after collecting"),
                None => tracing::info!("under the disk limits again; taking builds"),
            }
            self.inner.store.set_disk_pressure(pressure);
        }
        Ok(report)
    }

    /// [`Collector::collect`] on a blocking thread.
    pub async fn collect_async(&self, goal: Goal, dry_run: bool) -> Result<GcReport, GcError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.collect(goal, dry_run))
            .await
            .map_err(|e| GcError::Task(e.to_string()))?
    }

    /// The background collector: [`Collector::enforce`] every `interval_secs` until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.inner.settings.interval_secs.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.enforce()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(cause = %e, "background garbage collection failed"),
                Err(e) => tracing::error!(cause = %e, "background garbage collection task died"),
            }
        }
    }

    /// Pin `path` (and so its references) for the operator.
    pub fn pin(&self, path: &StorePath) -> Result<bool, GcError> {
        Ok(self.inner.store.pin_path(path)?)
    }

    /// Remove the operator's pin of `path`.
    pub fn unpin(&self, path: &StorePath) -> Result<bool, GcError> {
        Ok(self.inner.store.unpin_path(path)?)
    }

    /// The operator's pins, as full paths.
    pub fn pinned(&self) -> Result<BTreeSet<String>, GcError> {
        Ok(self.inner.store.pinned_paths()?.iter().map(|p| self.inner.store_dir.display(p)).collect())
    }
}

#[cfg(test)]
mod tests;
