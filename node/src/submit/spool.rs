//! Where the NARs of one upload wait, on disk, until the whole upload is checked.
//!
//! Every NAR of an upload goes into ONE unnamed temp file (`O_TMPFILE` in
//! [`SubmitLimits::spool_dir`], gone when the upload ends, even after a crash) at its own offset:
//! the node's memory does not grow with the number or the size of the NARs, and an upload of
//! 100,000 sources holds one file descriptor, not 100,000.
//!
//! Before the first NAR byte is read, [`Spool::create`] checks that the spool directory's
//! filesystem has room for twice the NAR bytes the upload declares (the spooled copy, then the
//! blob) plus [`SubmitLimits::min_free_disk`], counting what the other uploads of this process
//! have reserved and not yet finished; otherwise the upload is refused with
//! [`SubmitError::NoSpace`] (HTTP 507).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{SubmitError, SubmitLimits};

/// Bytes the running uploads of this process have reserved on the spool filesystems.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// Where one NAR lies in the spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    offset: u64,
    len: u64,
}

/// The spool file of one upload, with its disk reservation (released on drop).
#[derive(Debug)]
pub struct Spool {
    file: File,
    len: u64,
    reserved: u64,
}

impl Drop for Spool {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.reserved, Ordering::AcqRel);
    }
}

/// The directory spool files go to: [`SubmitLimits::spool_dir`], or the system temp dir.
pub fn spool_dir(limits: &SubmitLimits) -> PathBuf {
    limits.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// Bytes available to unprivileged users on the filesystem of `dir`.
fn available(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let (blocks, size) = (u64::from(st.blocks_available()), u64::from(st.fragment_size()));
    Ok(blocks.saturating_mul(size))
}

impl Spool {
    /// A spool for an upload that will spool `nar_bytes` bytes of NARs, after checking (and
    /// reserving) the disk space for them (see the module docs).
    pub fn create(limits: &SubmitLimits, nar_bytes: u64) -> Result<Spool, SubmitError> {
        let dir = spool_dir(limits);
        let spool_err = |source| SubmitError::Spool { source };
        let need = nar_bytes.saturating_mul(2);
        let reserved = RESERVED.fetch_add(need, Ordering::AcqRel).saturating_add(need);
        // From here on `spool` releases the reservation when dropped, also on the errors below.
        let file = match tempfile::tempfile_in(&dir) {
            Ok(f) => f,
            Err(source) => {
                RESERVED.fetch_sub(need, Ordering::AcqRel);
                return Err(spool_err(source));
            }
        };
        let spool = Spool { file, len: 0, reserved: need };
        if need > 0 {
            let available = available(&dir).map_err(spool_err)?;
            if available < reserved.saturating_add(limits.min_free_disk) {
                return Err(SubmitError::NoSpace {
                    need,
                    available,
                    others: reserved - need,
                    keep_free: limits.min_free_disk,
                });
            }
        }
        Ok(spool)
    }

    /// Append one NAR: `write` gets the spool file (positioned at its end) and returns how many
    /// bytes it wrote.
    pub fn append(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> Result<u64, SubmitError>,
    ) -> Result<Slice, SubmitError> {
        let offset = self.len;
        self.file.seek(SeekFrom::Start(offset)).map_err(|source| SubmitError::Spool { source })?;
        let mut counting = Counting { inner: &mut self.file, count: 0 };
        let result = write(&mut counting);
        let written = counting.count;
        self.len += written;
        let len = result?;
        if len != written {
            return Err(SubmitError::Internal(format!("spooled {written} bytes of a NAR of {len}")));
        }
        Ok(Slice { offset, len })
    }

    /// Read one spooled NAR back.
    pub fn reader(&mut self, slice: Slice) -> Result<impl Read + '_, SubmitError> {
        self.file.seek(SeekFrom::Start(slice.offset)).map_err(|source| SubmitError::Spool { source })?;
        Ok(BufReader::with_capacity(256 * 1024, (&mut self.file).take(slice.len)))
    }

    /// Bytes spooled so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is spooled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A writer that counts what it wrote.
struct Counting<'a> {
    inner: &'a mut File,
    count: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nars_share_one_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SubmitLimits { spool_dir: Some(dir.path().into()), min_free_disk: 0, ..SubmitLimits::default() };
        let mut spool = Spool::create(&limits, 10).unwrap();
        let a = spool
            .append(|w| w.write_all(b"hello").map(|()| 5).map_err(|source| SubmitError::Spool { source }))
            .unwrap();
        let b = spool
            .append(|w| w.write_all(b"world").map(|()| 5).map_err(|source| SubmitError::Spool { source }))
            .unwrap();
        let mut s = String::new();
        spool.reader(b).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "world");
        s.clear();
        spool.reader(a).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the spool file has no name");
    }

    #[test]
    fn an_upload_larger_than_the_free_space_is_refused_and_releases_its_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SubmitLimits { spool_dir: Some(dir.path().into()), ..SubmitLimits::default() };
        let free = available(dir.path()).unwrap();
        let e = Spool::create(&limits, free).unwrap_err();
        assert!(matches!(e, SubmitError::NoSpace { .. }), "{e}");
        assert_eq!(e.status(), 507);
        drop(Spool::create(&limits, 1).unwrap());
    }
}
