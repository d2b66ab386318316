//! The streaming NAR writer.

use std::io::{self, Read, Write};

use super::error::{NarWriteError, show_bytes};
use super::{NAR_MAGIC, padding_len, show_path, validate_name, validate_target};

/// Buffer size for copying file contents from a [`Read`].
const COPY_BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A node (the root or an entry's) must come next.
    Node,
    /// Inside a directory: an entry or the directory's end must come next.
    Directory,
    /// Inside a regular file's contents.
    Contents { declared: u64, written: u64 },
    /// The root node is complete.
    Done,
    /// A write failed; the archive is incomplete.
    Failed,
}

#[derive(Debug)]
struct Frame {
    base_len: usize,
    prev: Option<Vec<u8>>,
}

/// A streaming NAR encoder into any [`Write`].
///
/// Calls mirror the archive's structure and are checked against it: one root node, entries
/// strictly increasing by name bytes with valid names, each entry followed by exactly one node,
/// file contents exactly as long as declared. Small tokens are written with one `write_all` per
/// node header, so give it a buffered sink (`BufWriter`, a hasher, a `Vec`).
///
/// ```
/// use buildmesh_protocol::nar::NarWriter;
/// let mut w = NarWriter::new(Vec::new())?;
/// w.directory()?;
/// w.entry(b"bin")?;
/// w.directory()?;
/// w.entry(b"hello")?;
/// w.regular(true, 3, &mut &b"hi\n"[..])?;
/// w.end_directory()?;
/// w.entry(b"lib")?;
/// w.symlink(b"bin")?;
/// w.end_directory()?;
/// let nar: Vec<u8> = w.finish()?;
/// # assert_eq!(nar.len() % 8, 0);
/// # Ok::<_, buildmesh_protocol::nar::NarWriteError>(())
/// ```
#[derive(Debug)]
pub struct NarWriter<W> {
    w: W,
    state: State,
    frames: Vec<Frame>,
    path: Vec<u8>,
    offset: u64,
    scratch: Vec<u8>,
}

fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
    buf.extend_from_slice(&[0u8; 8][..padding_len(s.len() as u64)]);
}

impl<W: Write> NarWriter<W> {
    /// Start an archive: writes the magic string. The root node comes next.
    pub fn new(w: W) -> Result<Self, NarWriteError> {
        let mut nw =
            NarWriter { w, state: State::Node, frames: Vec::new(), path: Vec::new(), offset: 0, scratch: Vec::new() };
        nw.scratch.clear();
        push_str(&mut nw.scratch, NAR_MAGIC);
        nw.flush_scratch()?;
        Ok(nw)
    }

    /// Bytes written so far (after [`finish`](Self::finish): the NarSize).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Path of the current node: empty for the root, else `/a/b`.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// The sink (for example to inspect a hasher mid-way). Writing to it directly corrupts the
    /// archive.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// A regular file of exactly `len` bytes read from `contents` (further bytes are not read).
    pub fn regular(&mut self, executable: bool, len: u64, contents: &mut impl Read) -> Result<(), NarWriteError> {
        self.begin_regular(executable, len)?;
        let mut buf = vec![0u8; COPY_BUF.min(usize::try_from(len).unwrap_or(COPY_BUF)).max(1)];
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = match contents.read(&mut buf[..want]) {
                Ok(0) => {
                    self.state = State::Failed;
                    return Err(NarWriteError::ContentsLength {
                        path: show_path(&self.path),
                        declared: len,
                        actual: len - left,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            };
            self.write_contents(&buf[..n])?;
            left -= n as u64;
        }
        self.end_regular()
    }

    /// Start a regular file of `len` bytes; supply them with [`write_contents`](Self::write_contents)
    /// and close it with [`end_regular`](Self::end_regular).
    pub fn begin_regular(&mut self, executable: bool, len: u64) -> Result<(), NarWriteError> {
        self.expect(State::Node, "regular")?;
        self.scratch.clear();
        push_str(&mut self.scratch, b"(");
        push_str(&mut self.scratch, b"type");
        push_str(&mut self.scratch, b"regular");
        if executable {
            push_str(&mut self.scratch, b"executable");
            push_str(&mut self.scratch, b"");
        }
        push_str(&mut self.scratch, b"contents");
        self.scratch.extend_from_slice(&len.to_le_bytes());
        self.flush_scratch()?;
        self.state = State::Contents { declared: len, written: 0 };
        Ok(())
    }

    /// Append bytes to the current regular file's contents.
    pub fn write_contents(&mut self, data: &[u8]) -> Result<(), NarWriteError> {
        let State::Contents { declared, written } = self.state else {
            return Err(self.wrong_state("write_contents"));
        };
        let total = written.saturating_add(data.len() as u64);
        if total > declared {
            self.state = State::Failed;
            return Err(NarWriteError::ContentsLength { path: show_path(&self.path), declared, actual: total });
        }
        if let Err(e) = self.w.write_all(data) {
            return Err(self.io_err(e));
        }
        self.offset += data.len() as u64;
        self.state = State::Contents { declared, written: total };
        Ok(())
    }

    /// Let `fill` write the next piece of the current file's contents straight into the sink, for
    /// sinks with buffers of their own (no intermediate copy). `fill` gets the sink and the number
    /// of bytes still due; it must write at most that many, and return how many it wrote (`0` when
    /// its source is exhausted). Returns that number.
    pub fn write_contents_with(
        &mut self,
        fill: impl FnOnce(&mut W, u64) -> io::Result<usize>,
    ) -> Result<usize, NarWriteError> {
        let State::Contents { declared, written } = self.state else {
            return Err(self.wrong_state("write_contents_with"));
        };
        let n = match fill(&mut self.w, declared - written) {
            Ok(n) => n,
            Err(e) => return Err(self.io_err(e)),
        };
        let total = written.saturating_add(n as u64);
        if total > declared {
            self.state = State::Failed;
            return Err(NarWriteError::ContentsLength { path: show_path(&self.path), declared, actual: total });
        }
        self.offset += n as u64;
        self.state = State::Contents { declared, written: total };
        Ok(n)
    }

    /// End the current regular file (its contents must be complete).
    pub fn end_regular(&mut self) -> Result<(), NarWriteError> {
        let State::Contents { declared, written } = self.state else {
            return Err(self.wrong_state("end_regular"));
        };
        if written != declared {
            self.state = State::Failed;
            return Err(NarWriteError::ContentsLength { path: show_path(&self.path), declared, actual: written });
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0u8; 8][..padding_len(declared)]);
        push_str(&mut self.scratch, b")");
        self.end_node()
    }

    /// A symlink to `target` (1 to 4095 bytes, no NUL).
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarWriteError> {
        self.expect(State::Node, "symlink")?;
        if let Err(reason) = validate_target(target) {
            return Err(NarWriteError::InvalidTarget {
                path: show_path(&self.path),
                target: show_bytes(target),
                reason,
            });
        }
        self.scratch.clear();
        push_str(&mut self.scratch, b"(");
        push_str(&mut self.scratch, b"type");
        push_str(&mut self.scratch, b"symlink");
        push_str(&mut self.scratch, b"target");
        push_str(&mut self.scratch, target);
        push_str(&mut self.scratch, b")");
        self.end_node()
    }

    /// Start a directory; add [`entry`](Self::entry)s, then [`end_directory`](Self::end_directory).
    pub fn directory(&mut self) -> Result<(), NarWriteError> {
        self.expect(State::Node, "directory")?;
        self.scratch.clear();
        push_str(&mut self.scratch, b"(");
        push_str(&mut self.scratch, b"type");
        push_str(&mut self.scratch, b"directory");
        self.flush_scratch()?;
        self.frames.push(Frame { base_len: self.path.len(), prev: None });
        self.state = State::Directory;
        Ok(())
    }

    /// Start the entry `name` of the current directory; its node comes next. Names must be valid
    /// and strictly greater (by bytes) than the previous entry's.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarWriteError> {
        self.expect(State::Directory, "entry")?;
        if let Err(reason) = validate_name(name) {
            return Err(NarWriteError::InvalidName { name: show_bytes(name), path: show_path(&self.path), reason });
        }
        let Some(frame) = self.frames.last_mut() else {
            return Err(self.wrong_state("entry"));
        };
        if let Some(prev) = &frame.prev
            && prev.as_slice() >= name
        {
            let (prev, name) = (show_bytes(prev), show_bytes(name));
            return Err(NarWriteError::Unsorted { path: show_path(&self.path), prev, name });
        }
        let prev = frame.prev.get_or_insert_with(Vec::new);
        prev.clear();
        prev.extend_from_slice(name);
        self.path.truncate(frame.base_len);
        self.path.push(b'/');
        self.path.extend_from_slice(name);
        self.scratch.clear();
        push_str(&mut self.scratch, b"entry");
        push_str(&mut self.scratch, b"(");
        push_str(&mut self.scratch, b"name");
        push_str(&mut self.scratch, name);
        push_str(&mut self.scratch, b"node");
        self.flush_scratch()?;
        self.state = State::Node;
        Ok(())
    }

    /// End the innermost directory.
    pub fn end_directory(&mut self) -> Result<(), NarWriteError> {
        self.expect(State::Directory, "end_directory")?;
        let Some(frame) = self.frames.pop() else {
            return Err(self.wrong_state("end_directory"));
        };
        self.path.truncate(frame.base_len);
        self.scratch.clear();
        push_str(&mut self.scratch, b")");
        self.end_node()
    }

    /// Finish the archive (the root node must be complete), flush and return the sink.
    pub fn finish(mut self) -> Result<W, NarWriteError> {
        self.expect(State::Done, "finish")?;
        if let Err(e) = self.w.flush() {
            return Err(self.io_err(e));
        }
        Ok(self.w)
    }

    /// Write `scratch` (the node's closing bytes) and move to the parent: inside a directory, the
    /// entry's `)` follows.
    fn end_node(&mut self) -> Result<(), NarWriteError> {
        match self.frames.last() {
            None => self.state = State::Done,
            Some(frame) => {
                push_str(&mut self.scratch, b")");
                self.path.truncate(frame.base_len);
                self.state = State::Directory;
            }
        }
        self.flush_scratch()
    }

    fn flush_scratch(&mut self) -> Result<(), NarWriteError> {
        if let Err(e) = self.w.write_all(&self.scratch) {
            return Err(self.io_err(e));
        }
        self.offset += self.scratch.len() as u64;
        Ok(())
    }

    fn expect(&mut self, want: State, call: &'static str) -> Result<(), NarWriteError> {
        if self.state == want { Ok(()) } else { Err(self.wrong_state(call)) }
    }

    fn wrong_state(&self, call: &'static str) -> NarWriteError {
        let expected = match self.state {
            State::Node => "a node (regular, symlink or directory)",
            State::Directory => "an entry or end_directory",
            State::Contents { .. } => "file contents or end_regular",
            State::Done => "nothing more: the archive is complete",
            State::Failed => "nothing: an earlier call failed",
        };
        NarWriteError::WrongState { call, expected, path: show_path(&self.path) }
    }

    fn io_err(&mut self, source: io::Error) -> NarWriteError {
        self.state = State::Failed;
        NarWriteError::Io { path: show_path(&self.path), source }
    }
}
