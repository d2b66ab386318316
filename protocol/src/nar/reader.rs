//! The strict streaming NAR reader.

use std::io::{self, BufRead};

use super::error::{NarReadError, NarReadErrorKind, show_bytes};
use super::{MAX_NAME_LEN, MAX_TARGET_LEN, NAR_MAGIC, padding_len, show_path, validate_name, validate_target};

/// Longest structural tag (`nix-archive-1`); a longer tag field is rejected before it is read.
const MAX_TAG_LEN: u64 = 13;
/// How much of a wrong tag is read to show it in an error (`got 'AAAAAAAA'`).
const MAX_SHOWN_TAG_LEN: u64 = 64;

/// Bounds on what a [`NarReader`] accepts, for archives from untrusted sources.
///
/// Structural limits that hold for every archive (names ≤ 255 bytes, symlink targets ≤ 4095
/// bytes) are always enforced; these are the adjustable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarLimits {
    /// Largest archive, in bytes (NarSize). Default: unlimited.
    pub max_total_size: u64,
    /// Largest regular file, in bytes. Default: unlimited.
    pub max_file_size: u64,
    /// Deepest directory nesting (the root directory is depth 1). Default: 1024.
    pub max_depth: u32,
    /// Most directory entries in the whole archive. Default: 16,777,216.
    pub max_entries: u64,
}

impl Default for NarLimits {
    fn default() -> Self {
        NarLimits { max_total_size: u64::MAX, max_file_size: u64::MAX, max_depth: 1024, max_entries: 1 << 24 }
    }
}

/// One step of an archive, in archive order.
///
/// A directory is `DirectoryStart`, then for each entry an `Entry` followed by the entry's own node
/// events, then `DirectoryEnd`. The root node has no `Entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarEvent<'a> {
    /// A regular file of `len` bytes starts; read its contents with [`NarReader::read_contents`]
    /// or [`NarReader::contents`] (or call [`NarReader::next`] to skip them).
    Regular {
        /// Whether the file is executable.
        executable: bool,
        /// Contents length in bytes.
        len: u64,
    },
    /// A symlink.
    Symlink {
        /// The target (1 to 4095 bytes, no NUL; may be absolute or contain `..`).
        target: &'a [u8],
    },
    /// A directory starts.
    DirectoryStart,
    /// The next node is the directory entry `name` (already validated and order-checked).
    Entry {
        /// The entry name.
        name: &'a [u8],
    },
    /// The innermost open directory ends.
    DirectoryEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    Node,
    Contents { remaining: u64, len: u64 },
    AfterNode,
    Directory,
    Done,
    Poisoned,
}

#[derive(Debug)]
struct Frame {
    /// Length of `path` at this directory (entries append `/name`).
    base_len: usize,
    /// The previous entry's name (for the order check); `None` before the first entry.
    prev: Option<Vec<u8>>,
}

/// A strict, streaming NAR decoder over any [`BufRead`].
///
/// It reads exactly the archive's bytes and nothing more, so the input may continue after it (see
/// [`allow_trailing`](Self::allow_trailing) and [`into_inner`](Self::into_inner)). Memory use is
/// bounded by the nesting depth times 255 bytes plus one symlink target; file contents are never
/// buffered here. After an error, every further call fails with [`NarReadErrorKind::Poisoned`].
///
/// ```
/// use buildmesh_protocol::nar::{NarEvent, NarReader};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nar = buildmesh_protocol::nar::tree::Node::Symlink { target: b"x".to_vec() }.to_nar()?;
/// let mut reader = NarReader::new(&nar[..]);
/// while let Some(event) = reader.next()? {
///     if let NarEvent::Symlink { target } = event { assert_eq!(target, b"x"); }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NarReader<R> {
    r: R,
    limits: NarLimits,
    allow_trailing: bool,
    state: State,
    offset: u64,
    entries: u64,
    frames: Vec<Frame>,
    path: Vec<u8>,
    scratch: Vec<u8>,
}

impl<R: BufRead> NarReader<R> {
    /// A reader with default [`NarLimits`] that rejects bytes after the archive.
    pub fn new(r: R) -> Self {
        NarReader {
            r,
            limits: NarLimits::default(),
            allow_trailing: false,
            state: State::Magic,
            offset: 0,
            entries: 0,
            frames: Vec::new(),
            path: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Use these limits.
    pub fn with_limits(mut self, limits: NarLimits) -> Self {
        self.limits = limits;
        self
    }

    /// When `true`, stop exactly at the end of the archive and leave what follows unread (for a
    /// NAR embedded in a larger stream). Default `false`: anything after the root node is
    /// [`NarReadErrorKind::TrailingData`].
    pub fn allow_trailing(mut self, allow: bool) -> Self {
        self.allow_trailing = allow;
        self
    }

    /// Bytes of the archive consumed so far (after the last event: its NarSize).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Path of the current node inside the archive: empty for the root, else `/a/b`.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// Depth of directory nesting at the current position (0 outside any directory).
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// Whether the whole archive has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The underlying reader, positioned just after the bytes consumed so far.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// The next event, or `None` once the root node is complete (and, unless trailing data is
    /// allowed, the input is at its end). Unread contents of the current file are skipped.
    #[allow(clippy::should_implement_trait)] // lending iterator: events borrow the reader
    pub fn next(&mut self) -> Result<Option<NarEvent<'_>>, NarReadError> {
        match self.step() {
            Ok(Some(ev)) => Ok(Some(self.materialize(ev))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.state = State::Poisoned;
                Err(e)
            }
        }
    }

    /// Read contents of the current regular file into `buf`; `Ok(0)` at its end (or when the last
    /// event was not a regular file). Padding and the closing tag are checked by the next
    /// [`next`](Self::next).
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarReadError> {
        let State::Contents { remaining, len } = self.state else {
            return Ok(0);
        };
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => {
                    let e = self.err(NarReadErrorKind::UnexpectedEof, self.offset);
                    self.state = State::Poisoned;
                    return Err(e);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = self.err(NarReadErrorKind::Io(e), self.offset);
                    self.state = State::Poisoned;
                    return Err(e);
                }
            }
        };
        self.offset += n as u64;
        self.state = State::Contents { remaining: remaining - n as u64, len };
        Ok(n)
    }

    /// The current regular file's remaining contents as an [`io::Read`] (empty if the last event
    /// was not a regular file). Errors come out as `io::Error` wrapping the [`NarReadError`].
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { reader: self }
    }

    /// Bytes of the current file's contents not yet read.
    pub fn contents_remaining(&self) -> u64 {
        match self.state {
            State::Contents { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Read every remaining event (skipping contents), i.e. check the rest of the archive.
    pub fn skip_to_end(&mut self) -> Result<(), NarReadError> {
        while self.next()?.is_some() {}
        Ok(())
    }

    fn materialize(&self, ev: Step) -> NarEvent<'_> {
        match ev {
            Step::Regular { executable, len } => NarEvent::Regular { executable, len },
            Step::Symlink => NarEvent::Symlink { target: &self.scratch },
            Step::DirectoryStart => NarEvent::DirectoryStart,
            Step::Entry => {
                let name = self.frames.last().and_then(|f| f.prev.as_deref()).unwrap_or_default();
                NarEvent::Entry { name }
            }
            Step::DirectoryEnd => NarEvent::DirectoryEnd,
        }
    }

    fn step(&mut self) -> Result<Option<Step>, NarReadError> {
        loop {
            match self.state {
                State::Poisoned => return Err(self.err(NarReadErrorKind::Poisoned, self.offset)),
                State::Done => return Ok(None),
                State::Magic => {
                    let start = self.offset;
                    let ok = self.read_tag(MAX_TAG_LEN)?.is_some_and(|t| t == NAR_MAGIC);
                    if !ok {
                        let got = self.shown_scratch();
                        return Err(self.err(NarReadErrorKind::BadMagic { got }, start));
                    }
                    self.state = State::Node;
                }
                State::Node => return self.read_node().map(Some),
                State::Contents { remaining, len } => {
                    self.skip(remaining)?;
                    self.read_padding(len)?;
                    self.expect_tag(b")", "')'")?;
                    self.state = State::AfterNode;
                }
                State::AfterNode => {
                    let Some(frame) = self.frames.last() else {
                        if !self.allow_trailing {
                            self.check_eof()?;
                        }
                        self.state = State::Done;
                        return Ok(None);
                    };
                    let base = frame.base_len;
                    self.expect_tag(b")", "')'")?;
                    self.path.truncate(base);
                    self.state = State::Directory;
                }
                State::Directory => return self.read_directory_item().map(Some),
            }
        }
    }

    fn read_node(&mut self) -> Result<Step, NarReadError> {
        self.expect_tag(b"(", "'('")?;
        self.expect_tag(b"type", "'type'")?;
        let start = self.offset;
        let ty = self.read_tag(MAX_TAG_LEN)?;
        match ty {
            Some(b"regular") => {
                let start = self.offset;
                let executable = match self.read_tag(MAX_SHOWN_TAG_LEN)? {
                    Some(b"executable") => {
                        self.expect_tag(b"", "''")?;
                        self.expect_tag(b"contents", "'contents'")?;
                        true
                    }
                    Some(b"contents") => false,
                    _ => {
                        let got = self.shown_scratch();
                        let kind = NarReadErrorKind::UnexpectedTag { expected: "'contents' or 'executable'", got };
                        return Err(self.err(kind, start));
                    }
                };
                let start = self.offset;
                let len = self.read_u64()?;
                if len > self.limits.max_file_size {
                    let kind = NarReadErrorKind::FileTooLarge { len, max: self.limits.max_file_size };
                    return Err(self.err(kind, start));
                }
                // The contents, their padding and the closing tag (16 bytes) must fit the limit.
                // (Saturating: with no limit, an impossible length fails as truncated input.)
                let end = self.offset.saturating_add(len).saturating_add(padding_len(len) as u64 + 16);
                if end > self.limits.max_total_size {
                    return Err(self.err(NarReadErrorKind::TooLarge { max: self.limits.max_total_size }, start));
                }
                self.state = State::Contents { remaining: len, len };
                Ok(Step::Regular { executable, len })
            }
            Some(b"symlink") => {
                self.expect_tag(b"target", "'target'")?;
                let start = self.offset;
                let len = self.read_u64()?;
                if len > MAX_TARGET_LEN as u64 {
                    let kind = NarReadErrorKind::InvalidTarget {
                        target: format!("<{len} bytes>"),
                        reason: super::InvalidTargetReason::TooLong,
                    };
                    return Err(self.err(kind, start));
                }
                self.read_string_body(len)?;
                if let Err(reason) = validate_target(&self.scratch) {
                    let target = show_bytes(&self.scratch);
                    return Err(self.err(NarReadErrorKind::InvalidTarget { target, reason }, start));
                }
                // The target stays in `scratch`: the closing tag is compared without reading it
                // into scratch.
                self.expect_tag_keep_scratch(b")", "')'")?;
                self.state = State::AfterNode;
                Ok(Step::Symlink)
            }
            Some(b"directory") => {
                if self.frames.len() >= self.limits.max_depth as usize {
                    return Err(self.err(NarReadErrorKind::TooDeep { max: self.limits.max_depth }, start));
                }
                self.frames.push(Frame { base_len: self.path.len(), prev: None });
                self.state = State::Directory;
                Ok(Step::DirectoryStart)
            }
            _ => {
                let got = self.shown_scratch();
                Err(self.err(NarReadErrorKind::UnknownType { got }, start))
            }
        }
    }

    fn read_directory_item(&mut self) -> Result<Step, NarReadError> {
        let start = self.offset;
        match self.read_tag(MAX_SHOWN_TAG_LEN)? {
            Some(b"entry") => {}
            Some(b")") => {
                self.frames.pop();
                self.state = State::AfterNode;
                return Ok(Step::DirectoryEnd);
            }
            _ => {
                let got = self.shown_scratch();
                return Err(self.err(NarReadErrorKind::UnexpectedTag { expected: "'entry' or ')'", got }, start));
            }
        }
        self.expect_tag(b"(", "'('")?;
        self.expect_tag(b"name", "'name'")?;
        let start = self.offset;
        let len = self.read_u64()?;
        if len > MAX_NAME_LEN as u64 {
            let kind = NarReadErrorKind::InvalidName {
                name: format!("<{len} bytes>"),
                reason: super::InvalidNameReason::TooLong,
            };
            return Err(self.err(kind, start));
        }
        self.read_string_body(len)?;
        if let Err(reason) = validate_name(&self.scratch) {
            let name = show_bytes(&self.scratch);
            return Err(self.err(NarReadErrorKind::InvalidName { name, reason }, start));
        }
        if self.entries >= self.limits.max_entries {
            return Err(self.err(NarReadErrorKind::TooManyEntries { max: self.limits.max_entries }, start));
        }
        let Some(frame) = self.frames.last_mut() else {
            return Err(self.err(NarReadErrorKind::Poisoned, start));
        };
        if let Some(prev) = &frame.prev {
            match prev.as_slice().cmp(self.scratch.as_slice()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    let name = show_bytes(&self.scratch);
                    return Err(self.err(NarReadErrorKind::DuplicateEntry { name }, start));
                }
                std::cmp::Ordering::Greater => {
                    let (prev, name) = (show_bytes(prev), show_bytes(&self.scratch));
                    return Err(self.err(NarReadErrorKind::UnsortedEntry { prev, name }, start));
                }
            }
        }
        let prev = frame.prev.get_or_insert_with(Vec::new);
        prev.clear();
        prev.extend_from_slice(&self.scratch);
        let base = frame.base_len;
        self.entries += 1;
        self.path.truncate(base);
        self.path.push(b'/');
        self.path.extend_from_slice(&self.scratch);
        self.expect_tag(b"node", "'node'")?;
        self.state = State::Node;
        Ok(Step::Entry)
    }

    // --- primitives -------------------------------------------------------------------------

    fn err(&self, kind: NarReadErrorKind, offset: u64) -> NarReadError {
        NarReadError { kind, offset, path: show_path(&self.path) }
    }

    fn shown_scratch(&self) -> String {
        show_bytes(&self.scratch)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarReadError> {
        let end = self.offset.saturating_add(buf.len() as u64);
        if end > self.limits.max_total_size {
            return Err(self.err(NarReadErrorKind::TooLarge { max: self.limits.max_total_size }, self.offset));
        }
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => return Err(self.err(NarReadErrorKind::UnexpectedEof, self.offset + done as u64)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(NarReadErrorKind::Io(e), self.offset + done as u64)),
            }
        }
        self.offset = end;
        Ok(())
    }

    fn read_u64(&mut self) -> Result<u64, NarReadError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_padding(&mut self, len: u64) -> Result<(), NarReadError> {
        let n = padding_len(len);
        if n == 0 {
            return Ok(());
        }
        let start = self.offset;
        let mut pad = [0u8; 8];
        self.read_exact(&mut pad[..n])?;
        if pad[..n].iter().any(|&b| b != 0) {
            return Err(self.err(NarReadErrorKind::NonZeroPadding, start));
        }
        Ok(())
    }

    /// Read `len` bytes plus padding into `scratch` (`len` already bounded by the caller).
    fn read_string_body(&mut self, len: u64) -> Result<(), NarReadError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(len as usize, 0);
        let r = self.read_exact(&mut buf);
        self.scratch = buf;
        r?;
        self.read_padding(len)
    }

    /// Read a tag string into `scratch`. Returns `None` (with `scratch` describing its length) when
    /// its length exceeds `max`, without reading it.
    fn read_tag(&mut self, max: u64) -> Result<Option<&[u8]>, NarReadError> {
        let len = self.read_u64()?;
        if len > max {
            self.scratch.clear();
            self.scratch.extend_from_slice(format!("<{len} bytes>").as_bytes());
            return Ok(None);
        }
        self.read_string_body(len)?;
        Ok(Some(&self.scratch))
    }

    fn expect_tag(&mut self, tag: &'static [u8], expected: &'static str) -> Result<(), NarReadError> {
        let start = self.offset;
        if self.read_tag(MAX_SHOWN_TAG_LEN)? == Some(tag) {
            return Ok(());
        }
        let got = self.shown_scratch();
        Err(self.err(NarReadErrorKind::UnexpectedTag { expected, got }, start))
    }

    /// Like `expect_tag` for a tag of at most 8 bytes, without touching `scratch`.
    fn expect_tag_keep_scratch(&mut self, tag: &'static [u8], expected: &'static str) -> Result<(), NarReadError> {
        let start = self.offset;
        let mut buf = [0u8; 16];
        self.read_exact(&mut buf)?;
        let len = u64::from_le_bytes([buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]]);
        let body = &buf[8..];
        let ok = len == tag.len() as u64 && &body[..tag.len()] == tag;
        if ok && body[tag.len()..].iter().all(|&b| b == 0) {
            return Ok(());
        }
        if ok {
            return Err(self.err(NarReadErrorKind::NonZeroPadding, start + 8 + tag.len() as u64));
        }
        let got = if len <= 8 { show_bytes(&body[..len as usize]) } else { format!("<{len} bytes>") };
        Err(self.err(NarReadErrorKind::UnexpectedTag { expected, got }, start))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), NarReadError> {
        while n > 0 {
            let avail = match self.r.fill_buf() {
                Ok([]) => return Err(self.err(NarReadErrorKind::UnexpectedEof, self.offset)),
                Ok(b) => b.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err(NarReadErrorKind::Io(e), self.offset)),
            };
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(avail);
            self.r.consume(k);
            self.offset += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    fn check_eof(&mut self) -> Result<(), NarReadError> {
        loop {
            match self.r.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(_) => return Err(self.err(NarReadErrorKind::TrailingData, self.offset)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(NarReadErrorKind::Io(e), self.offset)),
            }
        }
    }
}

/// Events without borrowed data (what `step` produces before `next` attaches the slices).
#[derive(Debug, Clone, Copy)]
enum Step {
    Regular { executable: bool, len: u64 },
    Symlink,
    DirectoryStart,
    Entry,
    DirectoryEnd,
}

/// The remaining contents of the current regular file, as an [`io::Read`] (from
/// [`NarReader::contents`]).
#[derive(Debug)]
pub struct Contents<'a, R> {
    reader: &'a mut NarReader<R>,
}

impl<R: BufRead> io::Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_contents(buf).map_err(NarReadError::into_io)
    }
}
