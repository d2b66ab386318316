//! NarHash (sha256), NarSize and the blake3 content id, computed in one pass.

use std::io::{self, BufRead, Read, Write};

use sha2::Digest as _;

use crate::hash::NixHash;

/// What a NAR hashes to: Nix's NarHash and NarSize, and buildmesh's blake3 content id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NarDigest {
    /// SHA-256 of the archive bytes; displays as `sha256:<nix32>`.
    pub nar_hash: NixHash,
    /// Length of the archive in bytes.
    pub nar_size: u64,
    /// BLAKE3 of the archive bytes (the content id of a stored NAR blob).
    pub blake3: [u8; 32],
}

impl NarDigest {
    /// The blake3 content id as lowercase hex.
    pub fn blake3_hex(&self) -> String {
        hex::encode(self.blake3)
    }
}

/// A [`Write`] sink that feeds sha256 and blake3 and counts bytes; [`finish`](Self::finish) gives
/// the [`NarDigest`]. Writes never fail.
#[derive(Debug, Clone, Default)]
pub struct NarHasher {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    len: u64,
}

impl NarHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.blake3.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> NarDigest {
        NarDigest {
            nar_hash: NixHash::sha256(self.sha256.finalize().into()),
            nar_size: self.len,
            blake3: *self.blake3.finalize().as_bytes(),
        }
    }

    /// The digest of `bytes` (for a NAR already in memory).
    pub fn digest_of(bytes: &[u8]) -> NarDigest {
        let mut h = NarHasher::new();
        h.update(bytes);
        h.finish()
    }
}

impl Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A [`Write`] adapter that passes bytes to `W` and hashes exactly the bytes `W` accepted (for
/// storing a NAR while computing its digest).
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: NarHasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: NarHasher::new() }
    }

    /// Bytes passed through so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing passed through yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner writer (not flushed) and the digest of what passed through.
    pub fn finish(self) -> (W, NarDigest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`BufRead`] adapter that hashes exactly the bytes its consumer consumes. Put it under a
/// [`NarReader`](super::NarReader) to validate and hash an incoming archive in one pass: after the
/// reader finished, [`finish`](Self::finish) gives the archive's digest.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: NarHasher,
}

impl<R: BufRead> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: NarHasher::new() }
    }

    /// Bytes consumed so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing was consumed yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner reader and the digest of the consumed bytes.
    pub fn finish(self) -> (R, NarDigest) {
        (self.inner, self.hasher.finish())
    }
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        if let Ok(buf) = self.inner.fill_buf() {
            let amt = amt.min(buf.len());
            self.hasher.update(&buf[..amt]);
        }
        self.inner.consume(amt);
    }
}
