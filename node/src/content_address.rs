//! Content addresses of store paths whose name proves their bytes: a `source` path (Nix
//! `addToStore` of a file tree: SHA-256 of the NAR plus references) and a `text` path
//! (`builtins.toFile`, `.drv` files: SHA-256 of a flat file's contents plus references).
//!
//! Input sources of derivations are such paths. Checking the address from the bytes, rather than
//! trusting whoever sent them, means that neither a submitter nor a peer can hand builders other
//! contents for a source path: the bytes either hash to the path or they are refused.

use std::io::{self, Read};

use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StoreDir, StorePath, make_store_path, type_with_references};
use sha2::Digest as _;

/// The NAR bytes of a non-executable regular file up to its contents length: magic, `(`,
/// `type`, `regular`, `contents` (each length-prefixed and padded to 8 bytes).
fn flat_file_prefix() -> Vec<u8> {
    let mut out = Vec::with_capacity(88);
    for s in ["nix-archive-1", "(", "type", "regular", "contents"] {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out
}

/// The content address (`fixed:r:sha256:<nix32>` or `text:sha256:<nix32>`, as in a narinfo's
/// `CA:` line) of `path` whose NAR has SHA-256 `nar_sha256`, size `nar_size` and the bytes `nar`
/// (read only when the path is not a `source` path), with `references`; `None` when the path is
/// neither a `source` nor a `text` path of these bytes. The caller has checked `nar_sha256`
/// and `nar_size` against `nar` already.
pub fn of_nar(
    sd: &StoreDir,
    path: &StorePath,
    references: impl IntoIterator<Item = StorePath>,
    nar_sha256: &[u8; 32],
    nar_size: u64,
    nar: impl Read,
) -> io::Result<Option<String>> {
    let references: Vec<StorePath> = references.into_iter().collect();
    let self_ref = references.contains(path);
    let others: Vec<&StorePath> = references.iter().filter(|r| *r != path).collect();
    let source_type = type_with_references("source", sd, others.iter().copied(), self_ref);
    if make_store_path(sd, &source_type, nar_sha256, path.name()).ok().as_ref() == Some(path) {
        return Ok(Some(format!("fixed:r:sha256:{}", nixbase32::encode(nar_sha256))));
    }
    let prefix = flat_file_prefix();
    let head_len = prefix.len() as u64 + 8;
    if self_ref || nar_size < head_len + 16 {
        return Ok(None);
    }
    let mut nar = nar;
    let mut head = vec![0u8; head_len as usize];
    nar.read_exact(&mut head)?;
    if head[..prefix.len()] != prefix[..] {
        return Ok(None);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[prefix.len()..]);
    let len = u64::from_le_bytes(len);
    if len.div_ceil(8).checked_mul(8).and_then(|p| p.checked_add(head_len + 16)) != Some(nar_size) {
        return Ok(None);
    }
    let mut sha = sha2::Sha256::new();
    let copied = io::copy(&mut nar.take(len), &mut HashWrite(&mut sha))?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "NAR shorter than its file contents"));
    }
    let content: [u8; 32] = sha.finalize().into();
    let text_type = type_with_references("text", sd, others.iter().copied(), false);
    if make_store_path(sd, &text_type, &content, path.name()).ok().as_ref() == Some(path) {
        return Ok(Some(format!("text:sha256:{}", nixbase32::encode(&content))));
    }
    Ok(None)
}

/// `io::Write` into a SHA-256 state.
struct HashWrite<'a>(&'a mut sha2::Sha256);

impl io::Write for HashWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::nar::NarWriter;
    use buildmesh_protocol::store_path::make_text_path;

    fn flat_nar(contents: &[u8]) -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new()).expect("writer");
        w.regular(false, contents.len() as u64, &mut &contents[..]).expect("file");
        w.finish().expect("finish")
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(b).into()
    }

    #[test]
    fn flat_file_prefix_matches_a_real_nar() {
        let nar = flat_nar(b"");
        assert_eq!(&nar[..88], &flat_file_prefix()[..]);
        assert_eq!(nar.len(), 88 + 8 + 16);
    }

    #[test]
    fn text_and_source_paths_are_recognised_and_other_bytes_are_not() {
        let sd = StoreDir::nix();
        let dep = make_text_path(&sd, "dep", b"x", []).unwrap();
        let contents = b"echo hello\n";
        let text = make_text_path(&sd, "script.sh", contents, [&dep]).unwrap();
        let nar = flat_nar(contents);
        let ca = of_nar(&sd, &text, [dep.clone()], &sha(&nar), nar.len() as u64, &nar[..]).unwrap();
        assert_eq!(ca, Some(format!("text:sha256:{}", nixbase32::encode(&sha(contents)))));
        // Other bytes under the same path, or the references left out: not this path.
        let other = flat_nar(b"echo evil\n");
        assert_eq!(of_nar(&sd, &text, [dep.clone()], &sha(&other), other.len() as u64, &other[..]).unwrap(), None);
        assert_eq!(of_nar(&sd, &text, [], &sha(&nar), nar.len() as u64, &nar[..]).unwrap(), None);

        let source_type = type_with_references("source", &sd, [], false);
        let source = make_store_path(&sd, &source_type, &sha(&nar), "tree").unwrap();
        let ca = of_nar(&sd, &source, [], &sha(&nar), nar.len() as u64, io::empty()).unwrap();
        assert_eq!(ca, Some(format!("fixed:r:sha256:{}", nixbase32::encode(&sha(&nar)))));
        assert_eq!(of_nar(&sd, &source, [], &sha(&other), other.len() as u64, &other[..]).unwrap(), None);
    }
}
