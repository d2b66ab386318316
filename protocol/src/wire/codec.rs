//! The canonical binary encoding: building blocks.
//!
//! Hand-rolled rather than serde/postcard so that (a) every value has exactly one encoding and the
//! decoder rejects every other byte string (no varints with several spellings, no unsorted or
//! duplicate set members, no trailing bytes), and (b) a decode error names the field and the byte
//! offset where it went wrong.
//!
//! | type | bytes |
//! |---|---|
//! | `u8`, `u16`, `u32`, `u64`, `i32` | fixed width, little-endian |
//! | `bool` | `0` or `1` |
//! | byte string, UTF-8 string | `u32` length ‖ bytes (each field has its own maximum) |
//! | `Option<T>` | `0`, or `1` ‖ `T` |
//! | sequence / set | `u32` count ‖ elements; sets strictly increasing by `Ord` |
//! | [`StorePath`] | 20-byte digest ‖ name as a string (validated with Nix's name rules) |
//! | [`StoreDir`] | string (absolute, normalised) |
//! | [`NodeId`] | 32 bytes (a valid, non-weak ed25519 key) |
//! | [`JobId`], [`ArtifactHash`] | 32 bytes |
//! | [`NixHash`] | algorithm tag (`1` md5, `2` sha1, `3` sha256, `4` sha512) ‖ digest |
//! | [`NixSignature`] | key name as a string (≤ 128) ‖ 64 bytes |

use std::collections::BTreeSet;

use thiserror::Error;

use crate::hash::{HashAlgo, NixHash};
use crate::id::{ArtifactHash, JobId, NodeId};
use crate::nixkey::NixSignature;
use crate::store_path::{MAX_NAME_LEN, StoreDir, StorePath, StorePathError};

use super::Kind;

/// Why bytes are not a valid encoding. Offsets count from the start of the whole input given to
/// the decoder (for an envelope, from its first byte).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the limit; nothing was decoded.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The protocol version byte is not one this implementation speaks.
    #[error("unsupported protocol version {found} (this node speaks version {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// The version supported.
        supported: u8,
    },
    /// The message kind tag is unknown.
    #[error("unknown message kind tag {tag} at offset {offset}")]
    UnknownKind {
        /// The tag.
        tag: u8,
        /// Where.
        offset: usize,
    },
    /// A typed decoder was given a message of another kind.
    #[error("expected a {expected} message, found a {found} message")]
    WrongKind {
        /// What the caller expected.
        expected: Kind,
        /// What the bytes say.
        found: Kind,
    },
    /// The input ends inside a field.
    #[error("truncated at offset {offset}: field `{field}` needs {needed} more bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Bytes remain after the last field.
    #[error("{extra} trailing bytes at offset {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A length or count is above the field's limit.
    #[error("field `{field}` at offset {offset} has length {len}, the limit is {max}")]
    LimitExceeded {
        /// The field.
        field: &'static str,
        /// Where its length prefix starts.
        offset: usize,
        /// The length or count found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string field is not UTF-8.
    #[error("field `{field}` at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A tag byte (bool, option, enum variant) has an undefined value.
    #[error("field `{field}` at offset {offset} has invalid tag {tag}")]
    InvalidTag {
        /// The field.
        field: &'static str,
        /// Where.
        offset: usize,
        /// The tag found.
        tag: u8,
    },
    /// A set's elements are not strictly increasing (unsorted or duplicate): not canonical.
    #[error(
        "field `{field}`: element at offset {offset} is not greater than the one before (sets must be sorted, without duplicates)"
    )]
    NotCanonical {
        /// The field.
        field: &'static str,
        /// Where the offending element starts.
        offset: usize,
    },
    /// A store path or store directory is invalid.
    #[error("field `{field}` at offset {offset}: {source}")]
    InvalidStorePath {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        source: StorePathError,
    },
    /// A node id is not a valid ed25519 public key.
    #[error("field `{field}` at offset {offset}: {source}")]
    InvalidNodeId {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        source: crate::id::IdError,
    },
    /// A value breaks a rule of its field (character set, range, relation to another field).
    #[error("field `{field}` at offset {offset}: {reason}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// The rule broken.
        reason: String,
    },
}

/// Where encoded bytes go: a `Vec<u8>` or a [`Counter`].
pub trait Sink {
    /// Append bytes.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A [`Sink`] that only counts bytes; gives [`Encode::encoded_len`] exactly.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter(pub usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// A value with a canonical encoding.
pub trait Encode {
    /// Write the encoding.
    fn encode<S: Sink + ?Sized>(&self, out: &mut S);

    /// The exact length of [`Encode::encode`]'s output.
    fn encoded_len(&self) -> usize {
        let mut c = Counter(0);
        self.encode(&mut c);
        c.0
    }

    /// The encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }
}

/// A value that decodes from its canonical encoding. `field` names the field for error messages.
pub trait Decode: Sized {
    /// Read one value.
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

/// A cursor over untrusted bytes. Every read is bounds-checked; lengths are checked against the
/// field's maximum and against the bytes left before anything is allocated.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; offsets in errors start at 0.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, base: 0 }
    }

    /// A reader over `buf` that lies at `base` within a larger input (offsets in errors add `base`).
    pub fn with_base(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    /// The absolute offset of the next byte.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Read trailing tagged extensions to the end of the input: each a tag byte, strictly
    /// greater than the one before (one encoding per value), then what `on_tag` reads for it.
    /// `on_tag` gets the tag and its offset and returns `Ok(false)` for a tag it does not know,
    /// which is refused as [`DecodeError::InvalidTag`] (older messages decode unchanged; a newer
    /// one is refused rather than half-read).
    pub fn extensions(
        &mut self,
        field: &'static str,
        mut on_tag: impl FnMut(&mut Self, u8, usize) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut last = 0u8;
        while self.remaining() > 0 {
            let offset = self.offset();
            let tag = self.u8(field)?;
            if tag <= last {
                return Err(DecodeError::NotCanonical { field, offset });
            }
            last = tag;
            if !on_tag(self, tag, offset)? {
                return Err(DecodeError::InvalidTag { field, offset, tag });
            }
        }
        Ok(())
    }

    /// Fail unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { offset: self.offset(), extra }),
        }
    }

    /// Take `n` bytes.
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Take a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `i32`.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// A bool: exactly `0` or `1`.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::InvalidTag { field, offset, tag }),
        }
    }

    /// A `u32` length or count, checked against `max` and against the bytes left (each element
    /// takes at least `min_elem` bytes), so no allocation exceeds the input size.
    pub fn len(&mut self, field: &'static str, max: usize, min_elem: usize) -> Result<usize, DecodeError> {
        let offset = self.offset();
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(DecodeError::LimitExceeded { field, offset, len: n as u64, max: max as u64 });
        }
        let needed = n.saturating_mul(min_elem.max(1));
        if min_elem > 0 && needed > self.remaining() {
            return Err(DecodeError::Truncated { field, offset: self.offset(), needed, available: self.remaining() });
        }
        Ok(n)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field, max, 1)?;
        self.take(field, n)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let offset = self.offset();
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field, offset })
    }

    /// An `Option`: tag `0`, or tag `1` then the value.
    pub fn option<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.bool(field)? { f(self).map(Some) } else { Ok(None) }
    }

    /// A set: count (≤ `max`) then strictly increasing elements (canonical: sorted, no duplicates).
    pub fn set<T: Ord>(
        &mut self,
        field: &'static str,
        max: usize,
        min_elem: usize,
        mut f: impl FnMut(&mut Reader<'a>) -> Result<T, DecodeError>,
    ) -> Result<BTreeSet<T>, DecodeError> {
        let n = self.len(field, max, min_elem)?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            let offset = self.offset();
            let v = f(self)?;
            if out.last().is_some_and(|last| *last >= v) {
                return Err(DecodeError::NotCanonical { field, offset });
            }
            out.insert(v);
        }
        Ok(out)
    }

    /// An error for a value that breaks a field rule, at `offset`.
    pub fn invalid(field: &'static str, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::InvalidValue { field, offset, reason: reason.into() }
    }
}

/// Write a byte.
pub fn put_u8<S: Sink + ?Sized>(out: &mut S, v: u8) {
    out.put(&[v]);
}

/// Write a little-endian `u16`.
pub fn put_u16<S: Sink + ?Sized>(out: &mut S, v: u16) {
    out.put(&v.to_le_bytes());
}

/// Write a little-endian `u32`.
pub fn put_u32<S: Sink + ?Sized>(out: &mut S, v: u32) {
    out.put(&v.to_le_bytes());
}

/// Write a little-endian `u64`.
pub fn put_u64<S: Sink + ?Sized>(out: &mut S, v: u64) {
    out.put(&v.to_le_bytes());
}

/// Write a little-endian `i32`.
pub fn put_i32<S: Sink + ?Sized>(out: &mut S, v: i32) {
    out.put(&v.to_le_bytes());
}

/// Write a bool as `0`/`1`.
pub fn put_bool<S: Sink + ?Sized>(out: &mut S, v: bool) {
    put_u8(out, u8::from(v));
}

/// Write a `u32` length (saturating: a length above `u32::MAX` cannot pass any field limit, so the
/// value is rejected by the size checks of the signer and every decoder).
pub fn put_len<S: Sink + ?Sized>(out: &mut S, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

/// Write a length-prefixed byte string.
pub fn put_bytes<S: Sink + ?Sized>(out: &mut S, b: &[u8]) {
    put_len(out, b.len());
    out.put(b);
}

/// Write a length-prefixed UTF-8 string.
pub fn put_str<S: Sink + ?Sized>(out: &mut S, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Write an `Option`.
pub fn put_option<S: Sink + ?Sized, T>(out: &mut S, v: Option<&T>, f: impl FnOnce(&mut S, &T)) {
    match v {
        None => put_u8(out, 0),
        Some(v) => {
            put_u8(out, 1);
            f(out, v);
        }
    }
}

/// Write a set: count then elements in order.
pub fn put_set<'a, S: Sink + ?Sized, T: 'a>(
    out: &mut S,
    items: impl ExactSizeIterator<Item = &'a T>,
    mut f: impl FnMut(&mut S, &T),
) {
    put_len(out, items.len());
    for it in items {
        f(out, it);
    }
}

/// Write a set of strings.
pub fn put_str_set<S: Sink + ?Sized>(out: &mut S, set: &BTreeSet<String>) {
    put_set(out, set.iter(), |o, s: &String| put_str(o, s));
}

impl Encode for NodeId {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(self.as_bytes());
    }
}

impl Decode for NodeId {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let b = r.array::<32>(field)?;
        NodeId::from_bytes(&b).map_err(|source| DecodeError::InvalidNodeId { field, offset, source })
    }
}

impl Encode for JobId {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(self.as_bytes());
    }
}

impl Decode for JobId {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(JobId::from_bytes(r.array(field)?))
    }
}

impl Encode for ArtifactHash {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(self.as_bytes());
    }
}

impl Decode for ArtifactHash {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(ArtifactHash::from_bytes(r.array(field)?))
    }
}

impl Encode for StorePath {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(self.digest());
        put_str(out, self.name());
    }
}

impl Decode for StorePath {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let digest = r.array::<20>(field)?;
        let name = r.str(field, MAX_NAME_LEN)?;
        StorePath::new(digest, name).map_err(|source| DecodeError::InvalidStorePath { field, offset, source })
    }
}

/// The longest store directory accepted on the wire.
pub const MAX_STORE_DIR_LEN: usize = 256;

impl Encode for StoreDir {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        put_str(out, self.as_str());
    }
}

impl Decode for StoreDir {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let s = r.str(field, MAX_STORE_DIR_LEN)?;
        StoreDir::new(s).map_err(|source| DecodeError::InvalidStorePath { field, offset, source })
    }
}

fn algo_tag(a: HashAlgo) -> u8 {
    match a {
        HashAlgo::Md5 => 1,
        HashAlgo::Sha1 => 2,
        HashAlgo::Sha256 => 3,
        HashAlgo::Sha512 => 4,
    }
}

impl Encode for NixHash {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        put_u8(out, algo_tag(self.algo()));
        out.put(self.digest());
    }
}

impl Decode for NixHash {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let tag = r.u8(field)?;
        let algo = HashAlgo::ALL.into_iter().find(|a| algo_tag(*a) == tag).ok_or(DecodeError::InvalidTag {
            field,
            offset,
            tag,
        })?;
        let digest = r.take(field, algo.digest_len())?.to_vec();
        NixHash::new(algo, digest).ok_or_else(|| Reader::invalid(field, offset, "digest length"))
    }
}

/// The longest Nix key name accepted in a signature on the wire.
pub const MAX_SIG_NAME_LEN: usize = crate::identity::MAX_KEY_NAME_LEN;

impl Encode for NixSignature {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        put_str(out, self.key_name());
        out.put(self.bytes());
    }
}

impl Decode for NixSignature {
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let name = r.str(field, MAX_SIG_NAME_LEN)?;
        let bytes = r.array::<64>(field)?;
        crate::identity::validate_key_name(name).map_err(|e| Reader::invalid(field, offset, e.to_string()))?;
        NixSignature::new(name, bytes).map_err(|e| Reader::invalid(field, offset, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_errors_name_field_and_offset() {
        let mut r = Reader::with_base(&[1, 2, 3], 10);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u32("b"), Err(DecodeError::Truncated { field: "b", offset: 11, needed: 4, available: 2 }));
        let mut r = Reader::new(&[5, 0, 0, 0, b'a']);
        assert!(matches!(r.str("s", 4), Err(DecodeError::LimitExceeded { field: "s", offset: 0, len: 5, max: 4 })));
        let mut r = Reader::new(&[2, 0, 0, 0, 0xff, 0xfe]);
        assert!(matches!(r.str("s", 4), Err(DecodeError::InvalidUtf8 { field: "s", offset: 0 })));
        let mut r = Reader::new(&[2]);
        assert!(matches!(r.bool("flag"), Err(DecodeError::InvalidTag { tag: 2, .. })));
        // A count larger than the bytes left is refused before allocating.
        let mut r = Reader::new(&[0xff, 0xff, 0, 0]);
        assert!(matches!(r.len("n", usize::MAX, 1), Err(DecodeError::Truncated { .. })));
        let r = Reader::new(&[0]);
        assert!(matches!(r.finish(), Err(DecodeError::TrailingBytes { offset: 0, extra: 1 })));
    }

    #[test]
    fn sets_must_be_strictly_increasing() {
        let enc = |items: &[u8]| {
            let mut v = Vec::new();
            put_len(&mut v, items.len());
            v.extend_from_slice(items);
            v
        };
        let read = |b: &[u8]| Reader::new(b).set("s", 10, 1, |r| r.u8("s"));
        assert_eq!(read(&enc(&[1, 2, 3])).unwrap().len(), 3);
        assert!(matches!(read(&enc(&[1, 1])), Err(DecodeError::NotCanonical { offset: 5, .. })));
        assert!(matches!(read(&enc(&[2, 1])), Err(DecodeError::NotCanonical { .. })));
    }

    #[test]
    fn primitives_round_trip() {
        let sp = StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools").unwrap();
        let h = NixHash::sha256_of(b"x");
        let sig = NixSignature::new("k-1", [3; 64]).unwrap();
        let mut v = Vec::new();
        sp.encode(&mut v);
        h.encode(&mut v);
        sig.encode(&mut v);
        StoreDir::guix().encode(&mut v);
        assert_eq!(v.len(), sp.encoded_len() + h.encoded_len() + sig.encoded_len() + StoreDir::guix().encoded_len());
        let mut r = Reader::new(&v);
        assert_eq!(StorePath::decode(&mut r, "p").unwrap(), sp);
        assert_eq!(NixHash::decode(&mut r, "h").unwrap(), h);
        assert_eq!(NixSignature::decode(&mut r, "s").unwrap(), sig);
        assert_eq!(StoreDir::decode(&mut r, "d").unwrap(), StoreDir::guix());
        r.finish().unwrap();
        // A bad store path name is a typed error naming the field.
        let mut bad = Vec::new();
        bad.extend_from_slice(&[0; 20]);
        put_str(&mut bad, "a b");
        assert!(matches!(
            StorePath::decode(&mut Reader::new(&bad), "drv"),
            Err(DecodeError::InvalidStorePath { field: "drv", offset: 0, .. })
        ));
        let mut bad = Vec::new();
        put_str(&mut bad, "/nix/store/");
        assert!(matches!(StoreDir::decode(&mut Reader::new(&bad), "d"), Err(DecodeError::InvalidStorePath { .. })));
        assert!(matches!(NixHash::decode(&mut Reader::new(&[9]), "h"), Err(DecodeError::InvalidTag { tag: 9, .. })));
    }
}
