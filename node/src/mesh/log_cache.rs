//! Build logs fetched from other nodes, kept on disk so the next reader does not fetch them again
//! (issue 14): `DATA/mesh/logs/<sha256 hex>`, one file per log, named by the sha256 a builder
//! signed for it.
//!
//! The cache is content-addressed and checked on both sides: a log goes in only after
//! [`super::logs::fetch_from`] matched it against the builder's signed [`LogDigest`], and comes
//! out only when a digest signed *now* for the derivation names it and its bytes still hash to
//! that digest (a file altered on disk is deleted and the log fetched again). Bounded: at most
//! [`MAX_CACHED_LOG_BYTES`] in all; the least recently read go first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use buildmesh_protocol::wire::LogDigest;

/// Most bytes the cached logs take together (a log is at most
/// [`super::logs::MAX_FETCHED_LOG`], 64 MiB, so at least four of the largest fit).
pub const MAX_CACHED_LOG_BYTES: u64 = 256 << 20;

/// The cache (see the module docs).
#[derive(Debug)]
pub struct LogCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Puts and evictions one at a time (reads need no lock: files are renamed into place).
    writing: Mutex<()>,
}

impl LogCache {
    /// A cache in `dir` (created on the first put) holding at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> LogCache {
        LogCache { dir, max_bytes, writing: Mutex::new(()) }
    }

    /// Where it keeps the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, d: &LogDigest) -> PathBuf {
        self.dir.join(hex::encode(d.sha256))
    }

    /// The cached log with digest `d`, if it is here and its bytes still match `d` (blocking).
    /// A file that does not match is deleted.
    pub fn get(&self, d: &LogDigest) -> Option<Vec<u8>> {
        let path = self.file(d);
        let len = std::fs::metadata(&path).ok()?.len();
        if len != d.size {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        if LogDigest::of(&bytes) != *d {
            tracing::warn!(file = %path.display(), "a cached build log no longer matches its signed sha256; deleted");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Its read time orders the eviction.
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Keep `bytes`, already checked to have digest `d` (blocking), then evict the least recently
    /// read logs beyond the bound. Failures are logged, never fatal: the log was served anyway.
    pub fn put(&self, d: &LogDigest, bytes: &[u8]) {
        if bytes.len() as u64 > self.max_bytes {
            return;
        }
        let _one = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.write(d, bytes) {
            tracing::warn!(dir = %self.dir.display(), cause = %e, "cannot cache a fetched build log");
            return;
        }
        if let Err(e) = self.evict() {
            tracing::warn!(dir = %self.dir.display(), cause = %e, "cannot trim the build log cache");
        }
    }

    fn write(&self, d: &LogDigest, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(bytes)?;
        tmp.persist(self.file(d)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Delete the least recently read logs until the cache is within its bound.
    fn evict(&self) -> std::io::Result<()> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_file() {
                files.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), e.path()));
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }

    /// Bytes the cached logs take now (blocking).
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_comes_back_only_while_it_matches_its_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = LogCache::new(tmp.path().join("logs"), 1 << 20);
        let log = b"building\nok\n".to_vec();
        let d = LogDigest::of(&log);
        assert_eq!(cache.get(&d), None);
        cache.put(&d, &log);
        assert_eq!(cache.get(&d), Some(log.clone()));
        // Altered on disk, same length: refused and deleted.
        std::fs::write(cache.dir().join(hex::encode(d.sha256)), b"building\nKO\n").unwrap();
        assert_eq!(cache.get(&d), None);
        assert!(!cache.dir().join(hex::encode(d.sha256)).exists());
    }

    #[test]
    fn the_least_recently_read_go_first_beyond_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = LogCache::new(tmp.path().join("logs"), 2500);
        let logs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let ds: Vec<LogDigest> = logs.iter().map(|l| LogDigest::of(l)).collect();
        cache.put(&ds[0], &logs[0]);
        cache.put(&ds[1], &logs[1]);
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        let f = std::fs::File::options().write(true).open(cache.dir().join(hex::encode(ds[0].sha256))).unwrap();
        f.set_modified(old).unwrap();
        cache.put(&ds[2], &logs[2]);
        assert!(cache.bytes() <= 2500);
        assert_eq!(cache.get(&ds[0]), None, "the oldest went");
        assert_eq!(cache.get(&ds[2]), Some(logs[2].clone()));
        cache.put(&ds[0], &vec![0; 5000]); // larger than the bound: not kept
        assert_eq!(cache.bytes(), 2000);
    }
}
