//! HTTP `Range` requests on the NAR routes (RFC 9110 §14).
//!
//! The header is parsed by the `http-range-header` crate (strict RFC 9110 syntax, a bound on the
//! number of ranges and on digits, overlap checks); this module only decides what to answer:
//!
//! - no `Range`, a malformed one, one the crate rejects (too many, overlapping), or one sent with
//!   `If-Range` (the node sends no validator to compare it with): the whole body, `200`;
//! - one satisfiable range: `206 Partial Content` with `Content-Range: bytes FIRST-LAST/SIZE`;
//! - several ranges: the whole body, `200` (RFC 9110 lets a server ignore `Range`; no Nix client
//!   asks for several, and multipart answers are not worth their code);
//! - nothing satisfiable (e.g. `bytes=SIZE-`): `416` with `Content-Range: bytes */SIZE`.
//!
//! Only `GET` has range handling; `HEAD` ignores `Range` as RFC 9110 §14.2 says.
//!
//! A range of `.nar` is cut out of the decompressed stream by [`RangeReader`], which still
//! reads the blob to its end so that the blob reader checks its blake3 before the range's last
//! chunk is sent: a damaged blob never yields a complete `206` either, only a cut one (the
//! price: a range costs a read of the whole blob).

use std::io::{self, Read};
use std::ops::RangeInclusive;

use axum::http::{HeaderMap, header};
use http_range_header::RangeUnsatisfiableError;

/// What to answer to the `Range` of a request for a body of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// The whole body (`200`).
    Full,
    /// These bytes (`206`).
    Partial(RangeInclusive<u64>),
    /// `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// Decide how to answer the `Range` in `headers` for a body of `size` bytes.
pub fn decide(headers: &HeaderMap, size: u64) -> Ranged {
    let Some(value) = headers.get(header::RANGE) else { return Ranged::Full };
    if headers.contains_key(header::IF_RANGE) {
        return Ranged::Full;
    }
    let Ok(value) = value.to_str() else { return Ranged::Full };
    let Ok(parsed) = http_range_header::parse_range_header(value) else { return Ranged::Full };
    match parsed.validate(size) {
        Ok(ranges) => match <[_; 1]>::try_from(ranges) {
            Ok([one]) => Ranged::Partial(one),
            Err(_) => Ranged::Full,
        },
        Err(RangeUnsatisfiableError::Unsatisfiable) => Ranged::Unsatisfiable,
        Err(_) => Ranged::Full,
    }
}

/// `Content-Range` of a partial answer.
pub fn content_range(range: &RangeInclusive<u64>, size: u64) -> String {
    format!("bytes {}-{}/{size}", range.start(), range.end())
}

/// `Content-Range` of a `416`.
pub fn unsatisfied_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// The bytes `range` of a checked stream, which is still read to its end (discarding the rest)
/// before the range reports its own end, so the stream's end-of-stream check runs first.
#[derive(Debug)]
pub struct RangeReader<R> {
    inner: R,
    /// Bytes still to skip before the range.
    skip: u64,
    /// Bytes of the range still to yield.
    left: u64,
}

impl<R: Read> RangeReader<R> {
    /// The bytes `range` of `inner`.
    pub fn new(inner: R, range: &RangeInclusive<u64>) -> RangeReader<R> {
        RangeReader { inner, skip: *range.start(), left: range.end() - range.start() + 1 }
    }
}

impl<R: Read> Read for RangeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.skip > 0 {
            let want = buf.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            match self.inner.read(&mut buf[..want])? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended before the range")),
                n => self.skip -= n as u64,
            }
        }
        if self.left > 0 {
            let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            return match self.inner.read(&mut buf[..want])? {
                0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended within the range")),
                n => {
                    self.left -= n as u64;
                    Ok(n)
                }
            };
        }
        // The range is done: read the rest so the stream's own check at its end runs.
        io::copy(&mut self.inner, &mut io::sink())?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&HeaderMap::new(), 100), Ranged::Full);
        assert_eq!(decide(&with_range("bytes=0-9"), 100), Ranged::Partial(0..=9));
        assert_eq!(decide(&with_range("bytes=90-"), 100), Ranged::Partial(90..=99));
        assert_eq!(decide(&with_range("bytes=-10"), 100), Ranged::Partial(90..=99));
        assert_eq!(decide(&with_range("bytes=50-500"), 100), Ranged::Partial(50..=99));
        assert_eq!(decide(&with_range("bytes=100-"), 100), Ranged::Unsatisfiable);
        assert_eq!(decide(&with_range("bytes=0-1,5-6"), 100), Ranged::Full);
        assert_eq!(decide(&with_range("lines=0-1"), 100), Ranged::Full);
        assert_eq!(decide(&with_range("bytes=9-1"), 100), Ranged::Full);
        let mut h = with_range("bytes=0-9");
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"x\""));
        assert_eq!(decide(&h, 100), Ranged::Full);
        assert_eq!(content_range(&(0..=9), 100), "bytes 0-9/100");
        assert_eq!(unsatisfied_range(100), "bytes */100");
    }

    /// Yields its bytes, then fails instead of ending (a blob whose hash check fails).
    struct FailAtEnd(io::Cursor<Vec<u8>>);
    impl Read for FailAtEnd {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            match self.0.read(&mut buf[..n])? {
                0 => Err(io::Error::new(io::ErrorKind::InvalidData, "hash mismatch")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_range_is_cut_out_and_the_stream_is_still_read_to_its_checked_end() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        RangeReader::new(io::Cursor::new(data.clone()), &(100..=299)).read_to_end(&mut out).unwrap();
        assert_eq!(out, data[100..=299]);
        // The same range of a stream that fails at its end fails too, after the range's bytes.
        let mut r = RangeReader::new(FailAtEnd(io::Cursor::new(data.clone())), &(0..=9));
        let mut out = Vec::new();
        assert_eq!(r.read_to_end(&mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, data[..=9]);
    }
}
