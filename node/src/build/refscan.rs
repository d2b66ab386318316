//! Nix-style reference scanning: which candidate store paths an output mentions.
//!
//! Like Nix's `RefScanSink`, the scanner looks for the 32-character nix32 hash parts of the
//! candidates in the raw bytes of the output's NAR (so file contents, symlink targets and file
//! names all count), including occurrences split across write boundaries.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use buildmesh_protocol::nixbase32::ALPHABET;
use buildmesh_protocol::store_path::HASH_PART_LEN;

/// Why a reference scan failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefScanError {
    /// A candidate is not a store path (its base name does not start with a 32-character nix32 hash).
    #[error("reference candidate {0:?} is not a store path")]
    BadCandidate(String),
    /// Reading the output failed.
    #[error(transparent)]
    Nar(#[from] crate::nar_fs::NarFsError),
}

const fn base32_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
}

static IS_BASE32: [bool; 256] = base32_table();

/// A streaming scanner: feed it bytes (it is a [`Write`]), then [`RefScanner::finish`].
#[derive(Debug)]
pub struct RefScanner {
    /// Hash part -> the candidates with that hash part (full paths as given).
    pending: HashMap<[u8; HASH_PART_LEN], Vec<String>>,
    found: BTreeSet<String>,
    /// The last `HASH_PART_LEN - 1` or fewer bytes seen.
    tail: Vec<u8>,
}

impl RefScanner {
    /// A scanner for `candidates`: store paths (`/nix/store/<hash>-<name>`) or their base names.
    pub fn new<I, S>(candidates: I) -> Result<RefScanner, RefScanError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut pending: HashMap<[u8; HASH_PART_LEN], Vec<String>> = HashMap::new();
        for c in candidates {
            let c = c.as_ref();
            let base = c.rsplit('/').next().unwrap_or(c).as_bytes();
            let hash: [u8; HASH_PART_LEN] = base
                .get(..HASH_PART_LEN)
                .and_then(|h| h.try_into().ok())
                .filter(|h: &[u8; HASH_PART_LEN]| h.iter().all(|&b| IS_BASE32[b as usize]))
                .ok_or_else(|| RefScanError::BadCandidate(c.to_string()))?;
            pending.entry(hash).or_default().push(c.to_string());
        }
        Ok(RefScanner { pending, found: BTreeSet::new(), tail: Vec::with_capacity(2 * HASH_PART_LEN) })
    }

    /// Scan the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pending.is_empty() {
            return;
        }
        // A hash part may span the previous chunk and this one.
        let head = data.len().min(HASH_PART_LEN);
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(&data[..head]);
        self.search(&joined);
        self.search(data);
        // Keep the last HASH_PART_LEN - 1 bytes of the stream.
        let keep = HASH_PART_LEN - 1;
        if joined.len() > keep {
            joined.drain(..joined.len() - keep);
        }
        if data.len() > head {
            joined.clear();
            joined.extend_from_slice(&data[data.len() - keep.min(data.len())..]);
        }
        self.tail = joined;
    }

    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        while i + HASH_PART_LEN <= s.len() {
            // Check from the end of the window; on a non-base32 byte, skip past it.
            if let Some(j) = (0..HASH_PART_LEN).rev().find(|&j| !IS_BASE32[s[i + j] as usize]) {
                i += j + 1;
                continue;
            }
            if let Some(paths) = self.pending.remove(&s[i..i + HASH_PART_LEN]) {
                self.found.extend(paths);
                if self.pending.is_empty() {
                    return;
                }
            }
            i += 1;
        }
    }

    /// The candidates whose hash part occurred, as they were given.
    pub fn finish(self) -> BTreeSet<String> {
        self.found
    }
}

impl Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The candidates referenced by the NAR serialisation of `path` (a store path's content on the
/// host), the way Nix computes an output's references. Pass the input closure and the
/// derivation's own outputs (for self-references) as candidates.
pub fn scan_references<I, S>(path: &Path, candidates: I) -> Result<BTreeSet<String>, RefScanError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let scanner = RefScanner::new(candidates)?;
    let scanner = crate::nar_fs::dump_path(path, scanner)?;
    Ok(scanner.finish())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const A: &str = "/nix/store/an8vyn8v0lxs937kjy709ghv3zp4wms6-hello-2.12.1";
    const B: &str = "/nix/store/wm32icn8hzjm0kah51xh8nv14dn4crdz-one-byte";
    const C: &str = "/nix/store/bnr93czmznql3rh3ijb3s0wvk9x6wyay-run-me-1.0";

    fn scan_chunks(data: &[u8], chunk: usize) -> BTreeSet<String> {
        let mut s = RefScanner::new([A, B, C]).unwrap();
        for c in data.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn finds_hash_parts_only() {
        let text = b"x an8vyn8v0lxs937kjy709ghv3zp4wms6 y wm32icn8hzjm0kah51xh8nv14dn4crd";
        let found = scan_chunks(text, 1 << 20);
        assert_eq!(found, BTreeSet::from([A.to_string()]));
    }

    #[test]
    fn rejects_bad_candidates() {
        assert!(matches!(RefScanner::new(["/nix/store/short"]), Err(RefScanError::BadCandidate(_))));
        assert!(matches!(
            RefScanner::new(["/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"]),
            Err(RefScanError::BadCandidate(_))
        ));
    }

    #[test]
    fn scans_a_tree_via_nar() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("f"), format!("#!{B}/bin/sh\n")).unwrap();
        std::os::unix::fs::symlink(C, out.join("link")).unwrap();
        std::fs::write(out.join("an8vyn8v0lxs937kjy709ghv3zp4wms6"), "name only").unwrap();
        let found = scan_references(&out, [A, B, C]).unwrap();
        assert_eq!(found, BTreeSet::from([A.to_string(), B.to_string(), C.to_string()]));
        let none = scan_references(&out.join("f"), [A, C]).unwrap();
        assert!(none.is_empty());
    }

    proptest! {
        /// Whatever the chunking, the result equals a one-shot scan, and an embedded hash is found.
        #[test]
        fn chunking_does_not_matter(
            prefix in proptest::collection::vec(any::<u8>(), 0..200),
            suffix in proptest::collection::vec(any::<u8>(), 0..200),
            which in 0usize..3,
            chunk in 1usize..70,
        ) {
            let hash = [A, B, C][which].rsplit('/').next().unwrap().as_bytes()[..32].to_vec();
            let mut data = prefix.clone();
            data.extend_from_slice(&hash);
            data.extend_from_slice(&suffix);
            let whole = scan_chunks(&data, usize::MAX);
            prop_assert!(whole.contains([A, B, C][which]));
            prop_assert_eq!(scan_chunks(&data, chunk), whole);
        }
    }
}
