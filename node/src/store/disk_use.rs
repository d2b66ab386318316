//! How much disk the store takes (`buildmesh_store_disk_bytes` in `/metrics`, issue 14): the
//! database file and every file under the blob directory, walked (callers cache the answer).

use std::path::Path;

use super::Store;

/// The store's disk use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes of the database file.
    pub database_bytes: u64,
    /// Bytes of the blob files (zstd NARs and their plain copies).
    pub blob_bytes: u64,
    /// Number of blob files.
    pub blob_files: u64,
}

fn walk(dir: &Path, out: &mut DiskUse, depth: u32) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() && depth < 8 {
            walk(&e.path(), out, depth + 1)?;
        } else if t.is_file() {
            out.blob_bytes += e.metadata()?.len();
            out.blob_files += 1;
        }
    }
    Ok(())
}

impl Store {
    /// Walk the store's files (blocking; linear in the number of blobs).
    pub fn disk_use(&self) -> std::io::Result<DiskUse> {
        let mut out = DiskUse {
            database_bytes: std::fs::metadata(&self.inner.db_path).map(|m| m.len()).unwrap_or(0),
            ..DiskUse::default()
        };
        let root = self.inner.blobs.root();
        if root.exists() {
            walk(root, &mut out, 0)?;
        }
        Ok(out)
    }
}
