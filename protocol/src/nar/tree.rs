//! An in-memory NAR tree, for small archives and tests (file contents are held in memory; use
//! [`NarReader`] and [`NarWriter`] directly for large ones).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use super::{NarEvent, NarLimits, NarReadError, NarReadErrorKind, NarReader, NarWriteError, NarWriter};

/// A node of a NAR: a regular file, a symlink, or a directory of named nodes (sorted by name
/// bytes, as in the archive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A regular file.
    Regular {
        /// Whether it is executable.
        executable: bool,
        /// Its contents.
        contents: Vec<u8>,
    },
    /// A symlink.
    Symlink {
        /// Its target.
        target: Vec<u8>,
    },
    /// A directory.
    Directory(BTreeMap<Vec<u8>, Node>),
}

/// A directory being decoded: the name it has in its parent (`None` for the root) and its entries.
type OpenDir = (Option<Vec<u8>>, BTreeMap<Vec<u8>, Node>);

impl Node {
    /// Write this node as the root of an archive into `w`.
    pub fn write_nar<W: Write>(&self, w: W) -> Result<W, NarWriteError> {
        let mut nw = NarWriter::new(w)?;
        self.write_node(&mut nw)?;
        nw.finish()
    }

    /// This node as a complete archive in memory; fails if the tree holds an invalid name or
    /// symlink target (see [`super::validate_name`] and [`super::validate_target`]).
    pub fn to_nar(&self) -> Result<Vec<u8>, NarWriteError> {
        self.write_nar(Vec::new())
    }

    /// Write this node at the writer's current position (the root, or after an `entry`).
    pub fn write_node<W: Write>(&self, nw: &mut NarWriter<W>) -> Result<(), NarWriteError> {
        match self {
            Node::Regular { executable, contents } => {
                nw.begin_regular(*executable, contents.len() as u64)?;
                nw.write_contents(contents)?;
                nw.end_regular()
            }
            Node::Symlink { target } => nw.symlink(target),
            Node::Directory(entries) => {
                nw.directory()?;
                for (name, node) in entries {
                    nw.entry(name)?;
                    node.write_node(nw)?;
                }
                nw.end_directory()
            }
        }
    }

    /// Decode a whole archive from `r` into memory, with `limits` (set
    /// [`NarLimits::max_total_size`] for untrusted input: contents are held in memory).
    pub fn read_nar<R: BufRead>(r: R, limits: NarLimits) -> Result<Node, NarReadError> {
        let mut reader = NarReader::new(r).with_limits(limits);
        // Stack of open directories and the name under which each sits in its parent.
        let mut stack: Vec<OpenDir> = Vec::new();
        let mut pending_name: Option<Vec<u8>> = None;
        let mut root = None;
        loop {
            let node = match reader.next()? {
                None => break,
                Some(NarEvent::Entry { name }) => {
                    pending_name = Some(name.to_vec());
                    continue;
                }
                Some(NarEvent::DirectoryStart) => {
                    stack.push((pending_name.take(), BTreeMap::new()));
                    continue;
                }
                Some(NarEvent::Symlink { target }) => Node::Symlink { target: target.to_vec() },
                Some(NarEvent::Regular { executable, len }) => {
                    let mut contents = Vec::with_capacity(usize::try_from(len.min(1 << 20)).unwrap_or(0));
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = reader.read_contents(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        contents.extend_from_slice(&buf[..n]);
                    }
                    Node::Regular { executable, contents }
                }
                Some(NarEvent::DirectoryEnd) => {
                    let Some((name, entries)) = stack.pop() else {
                        let path = String::new();
                        return Err(NarReadError { kind: NarReadErrorKind::Poisoned, offset: reader.offset(), path });
                    };
                    pending_name = name;
                    Node::Directory(entries)
                }
            };
            match (stack.last_mut(), pending_name.take()) {
                (Some((_, entries)), Some(name)) => {
                    entries.insert(name, node);
                }
                _ => root = Some(node),
            }
        }
        root.ok_or(NarReadError { kind: NarReadErrorKind::UnexpectedEof, offset: reader.offset(), path: "/".into() })
    }

    /// Decode an archive held in memory (default limits).
    pub fn from_nar(bytes: &[u8]) -> Result<Node, NarReadError> {
        Node::read_nar(bytes, NarLimits::default())
    }
}
