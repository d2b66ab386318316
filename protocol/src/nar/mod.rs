//! Nix ARchive (NAR): a streaming writer, a strict streaming reader, and NarHash/NarSize with a
//! blake3 content id computed in the same pass.
//!
//! # Format
//! ```text
//! str(s) = u64le(len(s)) ‖ s ‖ 0x00 * ((8 - len % 8) % 8)      padding must be zero
//! nar    = str("nix-archive-1") node
//! node   = str("(") str("type") ( str("regular") [str("executable") str("")] str("contents") str(<bytes>)
//!                               | str("symlink") str("target") str(<target>)
//!                               | str("directory") { str("entry") str("(") str("name") str(<name>)
//!                                                    str("node") node str(")") } )
//!          str(")")
//! ```
//! Entry names are non-empty, not `.` or `..`, contain no `/` or NUL, are at most 255 bytes, and
//! are strictly increasing in byte order within a directory. Symlink targets are 1 to 4095 bytes
//! without NUL. NarHash is the SHA-256 of the whole byte stream, NarSize its length.
//!
//! # Pieces
//! - [`NarWriter`]: emits an archive into any [`std::io::Write`], checking the grammar, names and
//!   order as it goes; file contents stream from any [`std::io::Read`].
//! - [`NarReader`]: pulls [`NarEvent`]s out of any [`std::io::BufRead`]; file contents are read in
//!   caller-sized chunks (or skipped), never held in memory. Every violation is a [`NarReadError`]
//!   with the byte offset and the path inside the archive. [`NarLimits`] bounds size, depth and
//!   entry count for untrusted input.
//! - [`NarHasher`] / [`HashingWriter`] / [`HashingReader`]: sha256 + blake3 + byte count in one
//!   pass, giving a [`NarDigest`].
//! - [`tree`]: an in-memory tree ([`tree::Node`]) for small archives and tests.

mod digest;
mod error;
mod reader;
pub mod tree;
mod writer;

pub use digest::{HashingReader, HashingWriter, NarDigest, NarHasher};
pub use error::{InvalidNameReason, InvalidTargetReason, NarReadError, NarReadErrorKind, NarWriteError};
pub use reader::{Contents, NarEvent, NarLimits, NarReader};
pub use writer::NarWriter;

/// The magic string every archive starts with.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name accepted, in bytes (NAME_MAX on Linux).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target accepted, in bytes (PATH_MAX - 1 on Linux).
pub const MAX_TARGET_LEN: usize = 4095;

/// Check that `name` may be a directory entry name in a NAR.
pub fn validate_name(name: &[u8]) -> Result<(), InvalidNameReason> {
    if name.is_empty() {
        Err(InvalidNameReason::Empty)
    } else if name == b"." {
        Err(InvalidNameReason::Dot)
    } else if name == b".." {
        Err(InvalidNameReason::DotDot)
    } else if name.len() > MAX_NAME_LEN {
        Err(InvalidNameReason::TooLong)
    } else if name.contains(&b'/') {
        Err(InvalidNameReason::Slash)
    } else if name.contains(&0) {
        Err(InvalidNameReason::Nul)
    } else {
        Ok(())
    }
}

/// Check that `target` may be a symlink target in a NAR.
pub fn validate_target(target: &[u8]) -> Result<(), InvalidTargetReason> {
    if target.is_empty() {
        Err(InvalidTargetReason::Empty)
    } else if target.len() > MAX_TARGET_LEN {
        Err(InvalidTargetReason::TooLong)
    } else if target.contains(&0) {
        Err(InvalidTargetReason::Nul)
    } else {
        Ok(())
    }
}

/// Number of zero bytes that pad a string of `len` bytes to a multiple of 8.
pub(crate) const fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Display a path inside an archive: `/` for the root, `/a/b` for entries (lossy UTF-8).
pub(crate) fn show_path(path: &[u8]) -> String {
    if path.is_empty() { "/".to_string() } else { String::from_utf8_lossy(path).into_owned() }
}

#[cfg(test)]
mod tests;
