//! Typed errors of the NAR reader and writer.

use std::fmt;
use std::io;

use thiserror::Error;

/// Show untrusted bytes in an error message: quoted, non-printable bytes escaped, at most 64 bytes.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    if bytes.len() > MAX {
        format!("'{}'... ({} bytes)", bytes[..MAX].escape_ascii(), bytes.len())
    } else {
        format!("'{}'", bytes.escape_ascii())
    }
}

/// Why a directory entry name is not allowed in a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidNameReason {
    /// The name is empty.
    Empty,
    /// The name is `.`.
    Dot,
    /// The name is `..`.
    DotDot,
    /// The name contains `/`.
    Slash,
    /// The name contains a NUL byte.
    Nul,
    /// The name is longer than [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes.
    TooLong,
}

impl fmt::Display for InvalidNameReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidNameReason::Empty => "it is empty",
            InvalidNameReason::Dot => "it is '.'",
            InvalidNameReason::DotDot => "it is '..'",
            InvalidNameReason::Slash => "it contains '/'",
            InvalidNameReason::Nul => "it contains a NUL byte",
            InvalidNameReason::TooLong => "it is longer than 255 bytes",
        })
    }
}

/// Why a symlink target is not allowed in a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTargetReason {
    /// The target is empty (no filesystem can hold such a symlink).
    Empty,
    /// The target contains a NUL byte.
    Nul,
    /// The target is longer than [`MAX_TARGET_LEN`](super::MAX_TARGET_LEN) bytes.
    TooLong,
}

impl fmt::Display for InvalidTargetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidTargetReason::Empty => "it is empty",
            InvalidTargetReason::Nul => "it contains a NUL byte",
            InvalidTargetReason::TooLong => "it is longer than 4095 bytes",
        })
    }
}

/// What is wrong with an archive the [`NarReader`](super::NarReader) rejected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NarReadErrorKind {
    /// The archive does not start with `str("nix-archive-1")`.
    #[error("not a NAR: expected magic 'nix-archive-1', got {got}")]
    BadMagic {
        /// What was found instead (escaped).
        got: String,
    },
    /// A structural tag other than the one the grammar requires here.
    #[error("expected tag {expected}, got {got}")]
    UnexpectedTag {
        /// The tag or tags allowed here, quoted.
        expected: &'static str,
        /// What was found (escaped, or its length when it is too long to be any tag).
        got: String,
    },
    /// A node type other than `regular`, `symlink` or `directory`.
    #[error("unknown node type {got}")]
    UnknownType {
        /// What was found (escaped).
        got: String,
    },
    /// A directory entry name that could escape the target or is not a file name.
    #[error("invalid file name {name}: {reason}")]
    InvalidName {
        /// The name (escaped).
        name: String,
        /// Why it is rejected.
        reason: InvalidNameReason,
    },
    /// An entry name equal to the previous one in the same directory.
    #[error("duplicate entry {name} (NAR directory is not sorted)")]
    DuplicateEntry {
        /// The name (escaped).
        name: String,
    },
    /// An entry name that sorts before the previous one in the same directory.
    #[error("entry {name} comes after {prev} (NAR directory is not sorted)")]
    UnsortedEntry {
        /// The previous name (escaped).
        prev: String,
        /// This name (escaped).
        name: String,
    },
    /// An invalid symlink target.
    #[error("invalid symlink target {target}: {reason}")]
    InvalidTarget {
        /// The target (escaped, possibly shortened).
        target: String,
        /// Why it is rejected.
        reason: InvalidTargetReason,
    },
    /// A padding byte after a string is not zero.
    #[error("non-zero padding")]
    NonZeroPadding,
    /// The input ended inside the archive.
    #[error("unexpected end of input (truncated NAR)")]
    UnexpectedEof,
    /// A regular file's declared length exceeds [`NarLimits::max_file_size`](super::NarLimits).
    #[error("file contents of {len} bytes exceed the limit of {max} bytes")]
    FileTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The archive would grow beyond [`NarLimits::max_total_size`](super::NarLimits).
    #[error("archive exceeds the size limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Directories nest deeper than [`NarLimits::max_depth`](super::NarLimits).
    #[error("directories nest deeper than the limit of {max}")]
    TooDeep {
        /// The limit.
        max: u32,
    },
    /// More directory entries than [`NarLimits::max_entries`](super::NarLimits).
    #[error("more than {max} directory entries")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// Bytes follow the root node (and the reader was told to reject them).
    #[error("trailing data after the end of the archive")]
    TrailingData,
    /// The reader was used after it returned an error.
    #[error("the reader already failed; it cannot continue")]
    Poisoned,
    /// Reading the input failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

/// A NAR the reader rejected: what is wrong ([`kind`](Self::kind)), at which byte offset of the
/// archive, and at which path inside it (`/` is the root, `/a/b` an entry).
#[derive(Debug, Error)]
#[error("bad archive at byte {offset} (path {path}): {kind}")]
pub struct NarReadError {
    /// What is wrong.
    pub kind: NarReadErrorKind,
    /// Offset from the start of the archive of the field that is wrong.
    pub offset: u64,
    /// Path of the node being read (`/` for the root), lossily decoded.
    pub path: String,
}

impl NarReadError {
    /// Turn this error into an `io::Error` (for `Read` adapters); the original is its source.
    pub fn into_io(self) -> io::Error {
        let kind = match &self.kind {
            NarReadErrorKind::Io(e) => e.kind(),
            NarReadErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Why the [`NarWriter`](super::NarWriter) refused a call or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NarWriteError {
    /// An entry name that is not allowed (path `path` is the directory).
    #[error("invalid file name {name} in {path}: {reason}")]
    InvalidName {
        /// The name (escaped).
        name: String,
        /// The directory's path.
        path: String,
        /// Why.
        reason: InvalidNameReason,
    },
    /// Entries must be added in strictly increasing byte order.
    #[error("entry {name} in {path} is not after the previous entry {prev} (entries must be strictly increasing)")]
    Unsorted {
        /// The directory's path.
        path: String,
        /// The previous name (escaped).
        prev: String,
        /// This name (escaped).
        name: String,
    },
    /// An invalid symlink target.
    #[error("invalid symlink target {target} at {path}: {reason}")]
    InvalidTarget {
        /// The symlink's path.
        path: String,
        /// The target (escaped).
        target: String,
        /// Why.
        reason: InvalidTargetReason,
    },
    /// A call that the archive's grammar does not allow in the writer's current state.
    #[error("{call} is not allowed here: the writer expects {expected} (at {path})")]
    WrongState {
        /// The call made.
        call: &'static str,
        /// What the writer expected.
        expected: &'static str,
        /// The current path.
        path: String,
    },
    /// A regular file's contents were longer or shorter than the declared length.
    #[error("file {path} was declared with {declared} bytes but {actual} bytes were supplied")]
    ContentsLength {
        /// The file's path.
        path: String,
        /// The declared length.
        declared: u64,
        /// What was supplied (for a short source: how much it had before end of input).
        actual: u64,
    },
    /// Writing to the sink (or reading a file's contents) failed.
    #[error("I/O error at {path}: {source}")]
    Io {
        /// The node being written.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}
