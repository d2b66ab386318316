//! The body of `POST /api/v1/submit`: a size-prefixed JSON header, then the `.drv` files, then
//! the source NARs, back to back in header order.
//!
//! ```text
//! magic      8 bytes   "BMSUBMT1"
//! header_len u64 LE    length of the JSON header (at most SubmitLimits::max_header_bytes)
//! header     JSON      SubmitHeader
//! drvs       for each header.drvs[i]:    exactly drvs[i].size bytes (the ATerm)
//! nars       for each header.sources[i]: exactly sources[i].nar_size bytes (the NAR)
//! (end of body: any further byte is an error)
//! ```
//!
//! Every length is declared before its bytes arrive, so the receiver checks the header length,
//! the sum of the `.drv` sizes and the total against its limits before it reads (or allocates) a
//! byte of them, and a NAR longer or shorter than declared is an error at the first byte too many
//! or the end of the body. ATerms travel as raw bytes (real `.drv` files hold non-UTF-8 bytes).

use std::io::{self, BufReader, Read, Write};

use buildmesh_protocol::derivation::MAX_DRV_SIZE;
use buildmesh_protocol::nar::{NarLimits, NarReader};
use serde::{Deserialize, Serialize};

use super::SubmitError;

/// The first 8 bytes of every submit body (the trailing `1` is the format version).
pub const MAGIC: [u8; 8] = *b"BMSUBMT1";
/// The header `version` this build writes and accepts.
pub const HEADER_VERSION: u32 = 1;
/// The `Content-Type` of a submit body.
pub const CONTENT_TYPE: &str = "application/x-buildmesh-submit";

/// The JSON header of a submit body. Store paths are absolute (`/nix/store/<hash>-<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitHeader {
    /// [`HEADER_VERSION`].
    pub version: u32,
    /// The store directory every path lies in; must be the node's.
    pub store_dir: String,
    /// The `.drv` paths to build (each uploaded here or already stored on the node).
    pub requested: Vec<String>,
    /// Build priority of the requested derivations (higher first); inputs inherit it.
    #[serde(default)]
    pub priority: i32,
    /// How many independent builders are wanted.
    #[serde(default = "one")]
    pub replicas: u32,
    /// The `.drv` files that follow the header, in order.
    #[serde(default)]
    pub drvs: Vec<DrvEntry>,
    /// The input sources whose NARs follow the `.drv` files, in order.
    #[serde(default)]
    pub sources: Vec<SourceEntry>,
}

fn one() -> u32 {
    1
}

/// One `.drv` file of the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrvEntry {
    /// Its store path (the receiver recomputes it from the bytes).
    pub path: String,
    /// Its length in bytes (at most [`MAX_DRV_SIZE`]).
    pub size: u64,
}

/// One input source (a store path that is not a derivation output) of the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Its store path.
    pub path: String,
    /// NarHash, `sha256:<nix32>` (hex is accepted too).
    pub nar_hash: String,
    /// NarSize: exactly this many NAR bytes follow for it.
    pub nar_size: u64,
    /// Its references (absolute store paths; may include itself).
    #[serde(default)]
    pub references: Vec<String>,
}

impl SubmitHeader {
    /// Total length of a body with this header: magic, length, JSON, `.drv` files and NARs
    /// ([`SubmitError::SizeOverflow`] when the sum does not fit in a u64).
    pub fn body_len(&self) -> Result<u64, SubmitError> {
        let json = self.to_json()?;
        let mut total = (MAGIC.len() + 8 + json.len()) as u64;
        for d in &self.drvs {
            total = total.checked_add(d.size).ok_or(SubmitError::SizeOverflow)?;
        }
        for s in &self.sources {
            total = total.checked_add(s.nar_size).ok_or(SubmitError::SizeOverflow)?;
        }
        Ok(total)
    }

    fn to_json(&self) -> Result<Vec<u8>, SubmitError> {
        serde_json::to_vec(self).map_err(|e| SubmitError::BadHeader { reason: format!("cannot encode: {e}") })
    }

    /// The bytes before the `.drv` files: magic, header length, header JSON.
    pub fn encode_prefix(&self) -> Result<Vec<u8>, SubmitError> {
        let json = self.to_json()?;
        let mut out = Vec::with_capacity(16 + json.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }
}

/// Encode a whole body in memory (tests and small submissions): `drvs[i]` and `nars[i]` are the
/// bytes of `header.drvs[i]` and `header.sources[i]`. Their lengths must match the header.
pub fn encode_body(header: &SubmitHeader, drvs: &[&[u8]], nars: &[&[u8]]) -> Result<Vec<u8>, SubmitError> {
    if drvs.len() != header.drvs.len() || nars.len() != header.sources.len() {
        return Err(SubmitError::BadHeader { reason: "entry count differs from the bytes given".to_string() });
    }
    let mut out = header.encode_prefix()?;
    for (e, b) in header.drvs.iter().zip(drvs) {
        if e.size != b.len() as u64 {
            return Err(SubmitError::BadHeader { reason: format!("{}: size differs from the bytes given", e.path) });
        }
        out.extend_from_slice(b);
    }
    for (e, b) in header.sources.iter().zip(nars) {
        if e.nar_size != b.len() as u64 {
            return Err(SubmitError::BadHeader { reason: format!("{}: size differs from the bytes given", e.path) });
        }
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Streaming decoder of a submit body. Call [`BodyReader::read_header`], then
/// [`BodyReader::read_drv`] once per `.drv` entry, [`BodyReader::copy_nar`] once per source, and
/// [`BodyReader::finish`].
#[derive(Debug)]
pub struct BodyReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> BodyReader<R> {
    /// Wrap a reader positioned at the start of a body.
    pub fn new(inner: R) -> BodyReader<R> {
        BodyReader { inner, read: 0 }
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), SubmitError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(SubmitError::Truncated {
                        what: what(),
                        expected: buf.len() as u64,
                        got: filled as u64,
                    });
                }
                Ok(n) => {
                    filled += n;
                    self.read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(SubmitError::Body { source }),
            }
        }
        Ok(())
    }

    /// Read magic, length and JSON header; the length is checked against `max_header_bytes`
    /// before the JSON is read.
    pub fn read_header(&mut self, max_header_bytes: u64) -> Result<SubmitHeader, SubmitError> {
        let mut magic = [0u8; 8];
        self.fill(&mut magic, &|| "the body's magic bytes".to_string())?;
        if magic != MAGIC {
            return Err(SubmitError::NotASubmission { found: String::from_utf8_lossy(&magic).into_owned() });
        }
        let mut len = [0u8; 8];
        self.fill(&mut len, &|| "the header length".to_string())?;
        let len = u64::from_le_bytes(len);
        if len > max_header_bytes {
            return Err(SubmitError::HeaderTooLarge { len, max: max_header_bytes });
        }
        let mut json = vec![0u8; len as usize];
        self.fill(&mut json, &|| "the JSON header".to_string())?;
        let header: SubmitHeader =
            serde_json::from_slice(&json).map_err(|e| SubmitError::BadHeader { reason: e.to_string() })?;
        if header.version != HEADER_VERSION {
            return Err(SubmitError::UnsupportedVersion { version: header.version, supported: HEADER_VERSION });
        }
        Ok(header)
    }

    /// Read the bytes of one `.drv` entry (its size must already be checked; it is checked
    /// against [`MAX_DRV_SIZE`] again here).
    pub fn read_drv(&mut self, entry: &DrvEntry) -> Result<Vec<u8>, SubmitError> {
        if entry.size > MAX_DRV_SIZE as u64 {
            return Err(SubmitError::TooLarge {
                what: "derivation",
                path: entry.path.clone(),
                size: entry.size,
                max: MAX_DRV_SIZE as u64,
            });
        }
        let mut buf = vec![0u8; entry.size as usize];
        self.fill(&mut buf, &|| format!("derivation {}", entry.path))?;
        Ok(buf)
    }

    /// Copy exactly `entry.nar_size` bytes of one source NAR into `out`; returns the bytes
    /// copied. `observe` sees every chunk (to hash it).
    pub fn copy_nar(
        &mut self,
        entry: &SourceEntry,
        out: &mut dyn Write,
        observe: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, SubmitError> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = entry.nar_size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(SubmitError::Truncated {
                        what: format!("NAR of {}", entry.path),
                        expected: entry.nar_size,
                        got: entry.nar_size - left,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SubmitError::Body { source }),
            };
            self.read += n as u64;
            left -= n as u64;
            observe(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|source| SubmitError::Spool { source })?;
        }
        Ok(entry.nar_size)
    }

    /// Copy exactly `entry.nar_size` bytes of one source NAR into `out`, parsing them as a NAR on
    /// the way ([`NarReader`] with `limits`): bytes that are not one complete NAR of exactly that
    /// size are refused as soon as they show it ([`SubmitError::BadNar`], naming the path), so
    /// garbage is neither spooled past that point nor stored. `observe` sees every byte (to
    /// hash it). Returns the bytes copied.
    pub fn copy_checked_nar(
        &mut self,
        entry: &SourceEntry,
        out: &mut dyn Write,
        observe: &mut dyn FnMut(&[u8]),
        limits: NarLimits,
    ) -> Result<u64, SubmitError> {
        let mut tee = Tee {
            inner: (&mut self.inner).take(entry.nar_size),
            out,
            observe,
            read: 0,
            body_ended: false,
            read_error: None,
            write_error: None,
        };
        let parsed = NarReader::new(BufReader::with_capacity(NAR_CHUNK, &mut tee)).with_limits(limits).skip_to_end();
        self.read += tee.read;
        if let Some(source) = tee.write_error {
            return Err(SubmitError::Spool { source });
        }
        if let Some(source) = tee.read_error {
            return Err(SubmitError::Body { source });
        }
        if tee.body_ended {
            return Err(SubmitError::Truncated {
                what: format!("NAR of {}", entry.path),
                expected: entry.nar_size,
                got: tee.read,
            });
        }
        match parsed {
            Ok(()) if tee.read == entry.nar_size => Ok(tee.read),
            Ok(()) => Err(SubmitError::Internal(format!(
                "the NAR of {} was parsed after {} of {} bytes",
                entry.path, tee.read, entry.nar_size
            ))),
            Err(e) => Err(SubmitError::BadNar {
                path: entry.path.clone(),
                error: format!("{e} (its declared NarSize is {})", entry.nar_size),
            }),
        }
    }

    /// Check that the body ends here.
    pub fn finish(&mut self) -> Result<(), SubmitError> {
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(SubmitError::TrailingBytes { after: self.read }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(SubmitError::Body { source }),
            }
        }
    }
}

/// Buffer of the NAR parser over the body.
const NAR_CHUNK: usize = 64 * 1024;

/// A reader over one NAR of the body that copies what it reads to the spool and to an observer,
/// and remembers why it stopped (the body ended early, the body failed, the spool failed).
struct Tee<'a, R> {
    inner: io::Take<R>,
    out: &'a mut dyn Write,
    observe: &'a mut dyn FnMut(&[u8]),
    read: u64,
    body_ended: bool,
    read_error: Option<io::Error>,
    write_error: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.limit() == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    self.read_error = Some(e);
                    return Err(io::Error::new(kind, "reading the request body failed"));
                }
            }
        };
        if n == 0 {
            self.body_ended = true;
            return Ok(0);
        }
        self.read += n as u64;
        (self.observe)(&buf[..n]);
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "spooling failed"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header_and_bytes() -> impl Strategy<Value = (SubmitHeader, Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        let drvs = proptest::collection::vec(("[a-z0-9]{1,12}", proptest::collection::vec(any::<u8>(), 0..300)), 0..4);
        let nars = proptest::collection::vec(
            (
                "[a-z0-9]{1,12}",
                proptest::collection::vec(any::<u8>(), 0..600),
                proptest::collection::vec("[a-z]{1,8}", 0..3),
            ),
            0..4,
        );
        (drvs, nars, any::<i32>(), any::<u32>(), proptest::collection::vec("[ -~]{0,20}", 0..3)).prop_map(
            |(drvs, nars, priority, replicas, requested)| {
                let header = SubmitHeader {
                    version: HEADER_VERSION,
                    store_dir: "/nix/store".to_string(),
                    requested,
                    priority,
                    replicas,
                    drvs: drvs
                        .iter()
                        .map(|(p, b)| DrvEntry { path: format!("/nix/store/{p}.drv"), size: b.len() as u64 })
                        .collect(),
                    sources: nars
                        .iter()
                        .map(|(p, b, refs)| SourceEntry {
                            path: format!("/nix/store/{p}"),
                            nar_hash: format!("sha256:{}", hex::encode([b.len() as u8; 32])),
                            nar_size: b.len() as u64,
                            references: refs.clone(),
                        })
                        .collect(),
                };
                (header, drvs.into_iter().map(|d| d.1).collect(), nars.into_iter().map(|n| n.1).collect())
            },
        )
    }

    type Decoded = (SubmitHeader, Vec<Vec<u8>>, Vec<Vec<u8>>);

    fn decode(body: &[u8], max: u64) -> Result<Decoded, SubmitError> {
        let mut r = BodyReader::new(body);
        let header = r.read_header(max)?;
        let drvs = header.drvs.iter().map(|d| r.read_drv(d)).collect::<Result<Vec<_>, _>>()?;
        let mut nars = Vec::new();
        for s in &header.sources {
            let mut out = Vec::new();
            let mut seen = 0u64;
            r.copy_nar(s, &mut out, &mut |c| seen += c.len() as u64)?;
            assert_eq!(seen, out.len() as u64);
            nars.push(out);
        }
        r.finish()?;
        assert_eq!(r.bytes_read(), body.len() as u64);
        Ok((header, drvs, nars))
    }

    proptest! {
        #[test]
        fn body_roundtrips((header, drvs, nars) in arb_header_and_bytes()) {
            let d: Vec<&[u8]> = drvs.iter().map(Vec::as_slice).collect();
            let n: Vec<&[u8]> = nars.iter().map(Vec::as_slice).collect();
            let body = encode_body(&header, &d, &n).expect("encodes");
            prop_assert_eq!(header.body_len().expect("len"), body.len() as u64);
            let (h2, d2, n2) = decode(&body, 1 << 20).expect("decodes");
            prop_assert_eq!(h2, header);
            prop_assert_eq!(d2, drvs);
            prop_assert_eq!(n2, nars);
        }

        #[test]
        fn every_truncation_and_extension_is_an_error((header, drvs, nars) in arb_header_and_bytes(), cut in any::<prop::sample::Index>(), extra in any::<u8>()) {
            let d: Vec<&[u8]> = drvs.iter().map(Vec::as_slice).collect();
            let n: Vec<&[u8]> = nars.iter().map(Vec::as_slice).collect();
            let body = encode_body(&header, &d, &n).expect("encodes");
            let cut = cut.index(body.len());
            let truncated = decode(&body[..cut], 1 << 20).expect_err("truncated body accepted");
            prop_assert!(matches!(truncated, SubmitError::Truncated { .. }), "{}", truncated);
            let mut longer = body.clone();
            longer.push(extra);
            let err = decode(&longer, 1 << 20).expect_err("extended body accepted");
            prop_assert!(matches!(err, SubmitError::TrailingBytes { .. }), "{}", err);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 1 << 10);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic, 1 << 10);
        }
    }

    fn entry(nar_size: u64) -> SourceEntry {
        SourceEntry { path: "/nix/store/x-src".into(), nar_hash: String::new(), nar_size, references: vec![] }
    }

    fn copy_checked(body: &[u8], nar_size: u64) -> (Result<u64, SubmitError>, Vec<u8>, u64) {
        let mut r = BodyReader::new(body);
        let (mut out, mut seen) = (Vec::new(), 0u64);
        let limits = NarLimits { max_total_size: nar_size, ..NarLimits::default() };
        let res = r.copy_checked_nar(&entry(nar_size), &mut out, &mut |c| seen += c.len() as u64, limits);
        assert_eq!(seen, out.len() as u64);
        (res, out, r.bytes_read())
    }

    #[test]
    fn checked_nars_are_parsed_while_copied() {
        let nar = buildmesh_protocol::nar::tree::Node::Regular { executable: false, contents: b"hello".to_vec() }
            .to_nar()
            .unwrap();
        let len = nar.len() as u64;
        // A NAR of exactly the declared size, followed by the next item's bytes.
        let mut body = nar.clone();
        body.extend_from_slice(b"next");
        let (res, out, read) = copy_checked(&body, len);
        assert_eq!(res.unwrap(), len);
        assert_eq!((out, read), (nar.clone(), len));
        // Garbage is refused in the first buffer, naming the path.
        let garbage = vec![7u8; 1 << 20];
        let (res, out, _) = copy_checked(&garbage, garbage.len() as u64);
        let e = res.unwrap_err();
        assert!(matches!(&e, SubmitError::BadNar { path, .. } if path == "/nix/store/x-src"), "{e}");
        assert!(e.to_string().contains("nix-archive-1"), "{e}");
        assert!(out.len() <= NAR_CHUNK, "garbage spooled past the first buffer: {}", out.len());
        // Declared larger than the NAR: trailing data. Declared smaller: a truncated NAR.
        let e = copy_checked(&body, len + 4).0.unwrap_err();
        assert!(matches!(e, SubmitError::BadNar { .. }) && e.to_string().contains("trailing"), "{e}");
        let e = copy_checked(&nar, len - 8).0.unwrap_err();
        assert!(matches!(e, SubmitError::BadNar { .. }), "{e}");
        // The body ends inside the NAR.
        let e = copy_checked(&nar[..nar.len() - 8], len).0.unwrap_err();
        assert!(matches!(e, SubmitError::Truncated { got, .. } if got == len - 8), "{e}");
        let e = copy_checked(&nar, len + 8).0.unwrap_err();
        assert!(matches!(e, SubmitError::Truncated { .. }), "{e}");
    }

    #[test]
    fn oversized_header_is_refused_before_reading_it() {
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&(u64::MAX).to_le_bytes());
        let err = decode(&body, 1000).expect_err("huge header");
        assert!(matches!(err, SubmitError::HeaderTooLarge { len: u64::MAX, max: 1000 }), "{err}");
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let err = decode(b"GET / HTTP/1.1\r\n", 1000).expect_err("not ours");
        assert!(err.to_string().contains("GET / HT"), "{err}");
        let h = SubmitHeader {
            version: 7,
            store_dir: "/nix/store".into(),
            requested: vec![],
            priority: 0,
            replicas: 1,
            drvs: vec![],
            sources: vec![],
        };
        let body = encode_body(&h, &[], &[]).expect("encodes");
        let err = decode(&body, 1000).expect_err("version 7");
        assert!(matches!(err, SubmitError::UnsupportedVersion { version: 7, .. }), "{err}");
    }
}
