//! The NAR diff of a disputed output (issue 14, `buildmesh diff`, `GET /diff?path=`): what an
//! auditor does first with a mismatch, done by streaming the two NARs, never unpacking them.
//!
//! Two passes over each NAR (both read with the strict streaming reader of
//! [`buildmesh_protocol::nar`]):
//! 1. a listing of every entry (path, type, executable bit, size, symlink target, sha256 of the
//!    contents): memory grows with the number of entries, not with their sizes;
//! 2. for at most [`DiffLimits::max_detailed`] changed regular files, the first
//!    [`DiffLimits::max_file_bytes`] bytes of each side, from which a unified diff (text files,
//!    at most [`DiffLimits::max_diff_lines`] lines, with `similar`) or the first differing offset
//!    (binaries) is computed. Whatever is cut is said so in the report (`truncated`, `notes`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};

use buildmesh_protocol::nar::{NarEvent, NarReadError, NarReader};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Bounds on a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffLimits {
    /// Most entries listed per class (added, removed, changed).
    pub max_listed: usize,
    /// Most changed files whose contents are compared in memory.
    pub max_detailed: usize,
    /// Bytes of each side of one file kept in memory.
    pub max_file_bytes: usize,
    /// Lines of one unified diff.
    pub max_diff_lines: usize,
}

impl Default for DiffLimits {
    fn default() -> Self {
        DiffLimits { max_listed: 1000, max_detailed: 16, max_file_bytes: 256 << 10, max_diff_lines: 400 }
    }
}

/// Why two NARs could not be compared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// One NAR is not a valid archive.
    #[error("NAR {side}: {source}")]
    Nar {
        /// `a` or `b`.
        side: &'static str,
        /// The reader's error.
        source: NarReadError,
    },
    /// One NAR could not be read.
    #[error("NAR {side}: {source}")]
    Io {
        /// `a` or `b`.
        side: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One entry of a NAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `regular`, `symlink` or `directory`.
    pub kind: String,
    /// Regular files: the executable bit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// Regular files: the size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Symlinks: the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Regular files: sha256 of the contents (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// An entry present on one side only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneSided {
    /// Its path in the output (`/` for the root).
    pub path: String,
    /// The entry.
    pub entry: Entry,
}

/// An entry on both sides that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// Its path in the output (`/` for the root).
    pub path: String,
    /// Side `a`.
    pub a: Entry,
    /// Side `b`.
    pub b: Entry,
    /// What differs: `type`, `executable`, `size`, `contents`, `target`.
    pub what: Vec<String>,
    /// Text files: a unified diff (`--- a` / `+++ b`), cut at the line limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified_diff: Option<String>,
    /// Binary files: the first byte offset where they differ (within the bytes compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<u64>,
    /// Whether the comparison was cut (file larger than the in-memory cap, diff longer than the
    /// line limit, or not compared at all beyond the number of detailed files).
    #[serde(default)]
    pub truncated: bool,
}

/// The comparison of two NARs of one output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDiff {
    /// Entries only in `b`.
    pub added: Vec<OneSided>,
    /// Entries only in `a`.
    pub removed: Vec<OneSided>,
    /// Entries in both that differ.
    pub changed: Vec<Changed>,
    /// Entries in both that are identical.
    pub same: u64,
    /// What the limits cut, in words.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One side of a diff report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The builder's peer id.
    pub builder: String,
    /// Its signed NarHash (`sha256:<nix32>`).
    pub nar_hash: String,
    /// Its signed NarSize.
    pub nar_size: u64,
}

/// `GET /api/v1/diff?path=` and `buildmesh diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    /// The output path.
    pub path: String,
    /// The first builder's NAR.
    pub a: Side,
    /// The second builder's NAR.
    pub b: Side,
    /// The comparison (from `a` to `b`).
    pub diff: TreeDiff,
}

impl DiffReport {
    /// The report as text, for the terminal.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n", self.path);
        s += &format!("  a: {}  {}  {} bytes\n", self.a.builder, self.a.nar_hash, self.a.nar_size);
        s += &format!("  b: {}  {}  {} bytes\n", self.b.builder, self.b.nar_hash, self.b.nar_size);
        let d = &self.diff;
        s += &format!(
            "{} added, {} removed, {} changed, {} identical\n",
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.same
        );
        for e in &d.added {
            s += &format!("added    {}  {}\n", e.path, describe(&e.entry));
        }
        for e in &d.removed {
            s += &format!("removed  {}  {}\n", e.path, describe(&e.entry));
        }
        for c in &d.changed {
            s += &format!(
                "changed  {}  ({})  a: {}  b: {}\n",
                c.path,
                c.what.join(", "),
                describe(&c.a),
                describe(&c.b)
            );
            if let Some(u) = &c.unified_diff {
                s += u;
                if !u.ends_with('\n') {
                    s.push('\n');
                }
            }
            if let Some(o) = c.first_difference {
                s += &format!("  binary: first difference at byte {o}\n");
            }
            if c.truncated {
                s += "  (comparison truncated)\n";
            }
        }
        for n in &d.notes {
            s += &format!("note: {n}\n");
        }
        s
    }
}

/// An entry in a few words (`regular 12 bytes executable`, `symlink -> x`, `directory`).
pub fn describe(e: &Entry) -> String {
    match e.kind.as_str() {
        "regular" => format!("regular {} bytes{}", e.size.unwrap_or(0), if e.executable { " executable" } else { "" }),
        "symlink" => format!("symlink -> {}", e.target.as_deref().unwrap_or("")),
        k => k.to_string(),
    }
}

fn show(path: &[u8]) -> String {
    if path.is_empty() { "/".to_string() } else { String::from_utf8_lossy(path).into_owned() }
}

/// Every entry of a NAR, by path (pass 1).
fn listing<R: BufRead>(r: R, side: &'static str) -> Result<BTreeMap<Vec<u8>, Entry>, DiffError> {
    let err = |source| DiffError::Nar { side, source };
    let mut nar = NarReader::new(r);
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let owned = match nar.next().map_err(err)? {
            None => break,
            Some(NarEvent::Regular { executable, len }) => Some((0u8, executable, len, Vec::new())),
            Some(NarEvent::Symlink { target }) => Some((1, false, 0, target.to_vec())),
            Some(NarEvent::DirectoryStart) => Some((2, false, 0, Vec::new())),
            Some(_) => None,
        };
        let Some((kind, executable, len, target)) = owned else { continue };
        let path = nar.path().to_vec();
        let entry = match kind {
            0 => {
                let mut h = sha2::Sha256::new();
                loop {
                    let n = nar.read_contents(&mut buf).map_err(err)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Entry {
                    kind: "regular".into(),
                    executable,
                    size: Some(len),
                    target: None,
                    sha256: Some(hex::encode(h.finalize())),
                }
            }
            1 => Entry {
                kind: "symlink".into(),
                executable: false,
                size: None,
                target: Some(String::from_utf8_lossy(&target).into_owned()),
                sha256: None,
            },
            _ => Entry { kind: "directory".into(), executable: false, size: None, target: None, sha256: None },
        };
        out.insert(path, entry);
    }
    Ok(out)
}

/// The first `max` bytes of each of the files at `paths` (pass 2).
fn prefixes<R: BufRead>(
    r: R,
    side: &'static str,
    paths: &BTreeSet<Vec<u8>>,
    max: usize,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, DiffError> {
    let err = |source| DiffError::Nar { side, source };
    let mut nar = NarReader::new(r);
    let mut out = BTreeMap::new();
    loop {
        let regular = match nar.next().map_err(err)? {
            None => break,
            Some(NarEvent::Regular { len, .. }) => Some(len),
            Some(_) => None,
        };
        let Some(len) = regular else { continue };
        if !paths.contains(nar.path()) {
            continue;
        }
        let path = nar.path().to_vec();
        let keep = usize::try_from(len).unwrap_or(usize::MAX).min(max);
        let mut bytes = Vec::with_capacity(keep);
        (&mut nar.contents())
            .take(keep as u64)
            .read_to_end(&mut bytes)
            .map_err(|source| DiffError::Io { side, source })?;
        out.insert(path, bytes);
    }
    Ok(out)
}

fn looks_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

fn detail(c: &mut Changed, a: &[u8], b: &[u8], limits: &DiffLimits) {
    let cut = c.a.size.unwrap_or(0) > a.len() as u64 || c.b.size.unwrap_or(0) > b.len() as u64;
    c.truncated |= cut;
    if looks_text(a) && looks_text(b) {
        let (ta, tb) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
        let diff = similar::TextDiff::from_lines(ta.as_ref(), tb.as_ref());
        let text = diff.unified_diff().context_radius(3).header("a", "b").to_string();
        let mut lines = text.lines();
        let mut kept: String = lines.by_ref().take(limits.max_diff_lines).map(|l| format!("{l}\n")).collect();
        if lines.next().is_some() {
            kept += &format!("[… diff cut at {} lines]\n", limits.max_diff_lines);
            c.truncated = true;
        }
        c.unified_diff = Some(kept);
    } else {
        let first =
            a.iter().zip(b).position(|(x, y)| x != y).or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())));
        c.first_difference = first.map(|o| o as u64);
    }
}

/// Compare two NARs. `open(side)` gives a fresh reader of side `"a"` or `"b"` (each is read
/// twice: listing, then the contents of the changed files).
pub fn diff_nars<R: BufRead>(
    mut open: impl FnMut(&'static str) -> std::io::Result<R>,
    limits: &DiffLimits,
) -> Result<TreeDiff, DiffError> {
    let io = |side| move |source: std::io::Error| DiffError::Io { side, source };
    let a = listing(open("a").map_err(io("a"))?, "a")?;
    let b = listing(open("b").map_err(io("b"))?, "b")?;
    let mut d = TreeDiff::default();
    let (mut added, mut removed, mut changed) = (0usize, 0usize, 0usize);
    for (path, ea) in &a {
        match b.get(path) {
            None => {
                removed += 1;
                if d.removed.len() < limits.max_listed {
                    d.removed.push(OneSided { path: show(path), entry: ea.clone() });
                }
            }
            Some(eb) if eb == ea => d.same += 1,
            Some(eb) => {
                changed += 1;
                if d.changed.len() >= limits.max_listed {
                    continue;
                }
                let mut what = Vec::new();
                if ea.kind != eb.kind {
                    what.push("type".to_string());
                } else {
                    if ea.executable != eb.executable {
                        what.push("executable".into());
                    }
                    if ea.size != eb.size {
                        what.push("size".into());
                    }
                    if ea.sha256 != eb.sha256 {
                        what.push("contents".into());
                    }
                    if ea.target != eb.target {
                        what.push("target".into());
                    }
                }
                d.changed.push(Changed {
                    path: show(path),
                    a: ea.clone(),
                    b: eb.clone(),
                    what,
                    unified_diff: None,
                    first_difference: None,
                    truncated: false,
                });
            }
        }
    }
    for (path, eb) in &b {
        if !a.contains_key(path) {
            added += 1;
            if d.added.len() < limits.max_listed {
                d.added.push(OneSided { path: show(path), entry: eb.clone() });
            }
        }
    }
    for (n, what) in [(added, "added"), (removed, "removed"), (changed, "changed")] {
        if n > limits.max_listed {
            d.notes.push(format!("{n} entries {what}; the first {} are listed", limits.max_listed));
        }
    }
    // Pass 2: contents of the first changed regular files.
    let wanted: Vec<usize> = d
        .changed
        .iter()
        .enumerate()
        .filter(|(_, c)| c.a.kind == "regular" && c.b.kind == "regular" && c.what.iter().any(|w| w == "contents"))
        .map(|(i, _)| i)
        .collect();
    if wanted.len() > limits.max_detailed {
        d.notes.push(format!(
            "{} changed files; the contents of the first {} are compared",
            wanted.len(),
            limits.max_detailed
        ));
        for &i in &wanted[limits.max_detailed..] {
            d.changed[i].truncated = true;
        }
    }
    let detailed: Vec<usize> = wanted.into_iter().take(limits.max_detailed).collect();
    if !detailed.is_empty() {
        let paths: BTreeSet<Vec<u8>> = detailed
            .iter()
            .map(|&i| if d.changed[i].path == "/" { Vec::new() } else { d.changed[i].path.as_bytes().to_vec() })
            .collect();
        let pa = prefixes(open("a").map_err(io("a"))?, "a", &paths, limits.max_file_bytes)?;
        let pb = prefixes(open("b").map_err(io("b"))?, "b", &paths, limits.max_file_bytes)?;
        for i in detailed {
            let key = if d.changed[i].path == "/" { Vec::new() } else { d.changed[i].path.as_bytes().to_vec() };
            let (Some(xa), Some(xb)) = (pa.get(&key), pb.get(&key)) else { continue };
            detail(&mut d.changed[i], xa, xb, limits);
        }
        if d.changed.iter().any(|c| c.truncated) {
            d.notes.push(format!(
                "files are compared on their first {} bytes and diffs cut at {} lines",
                limits.max_file_bytes, limits.max_diff_lines
            ));
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::nar::tree::Node;

    use super::*;

    fn file(s: &str) -> Node {
        Node::Regular { executable: false, contents: s.as_bytes().to_vec() }
    }

    fn dir(entries: Vec<(&str, Node)>) -> Node {
        Node::Directory(entries.into_iter().map(|(n, e)| (n.as_bytes().to_vec(), e)).collect())
    }

    fn run(a: &Node, b: &Node, limits: &DiffLimits) -> TreeDiff {
        let (na, nb) = (a.to_nar().unwrap(), b.to_nar().unwrap());
        diff_nars(|side| Ok(std::io::Cursor::new(if side == "a" { na.clone() } else { nb.clone() })), limits).unwrap()
    }

    #[test]
    fn added_removed_changed_with_a_text_diff_and_a_binary_offset() {
        let a = dir(vec![
            ("bin", Node::Regular { executable: true, contents: vec![0, 1, 2, 3] }),
            ("gone", file("x")),
            ("link", Node::Symlink { target: b"bin".to_vec() }),
            ("same", file("same\n")),
            ("stamp", file("one\ntwo\nthree\n")),
        ]);
        let b = dir(vec![
            ("bin", Node::Regular { executable: true, contents: vec![0, 1, 9, 3] }),
            ("link", Node::Symlink { target: b"stamp".to_vec() }),
            ("new", file("y")),
            ("same", file("same\n")),
            ("stamp", file("one\nTWO\nthree\n")),
        ]);
        let d = run(&a, &b, &DiffLimits::default());
        assert_eq!(d.added.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["/new"]);
        assert_eq!(d.removed.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["/gone"]);
        assert_eq!(d.same, 2, "the root directory and /same");
        let by: BTreeMap<&str, &Changed> = d.changed.iter().map(|c| (c.path.as_str(), c)).collect();
        assert_eq!(by["/bin"].first_difference, Some(2));
        assert_eq!(by["/link"].what, ["target"]);
        let u = by["/stamp"].unified_diff.as_deref().unwrap();
        assert!(u.contains("-two\n") && u.contains("+TWO\n"), "{u}");
        assert!(!by["/stamp"].truncated);
    }

    #[test]
    fn limits_cut_and_say_so() {
        let big_a: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let big_b: String = (0..2000).map(|i| format!("line {}\n", i * 7)).collect();
        let a = dir(vec![
            ("f", file(&big_a)),
            ("g", file("1")),
            ("h", Node::Regular { executable: false, contents: vec![] }),
        ]);
        let b = dir(vec![
            ("f", file(&big_b)),
            ("g", file("2")),
            ("h", Node::Regular { executable: true, contents: vec![] }),
        ]);
        let limits = DiffLimits { max_listed: 10, max_detailed: 1, max_file_bytes: 1000, max_diff_lines: 20 };
        let d = run(&a, &b, &limits);
        let f = d.changed.iter().find(|c| c.path == "/f").unwrap();
        assert!(f.truncated);
        assert!(f.unified_diff.as_deref().unwrap().lines().count() <= 21);
        assert!(d.changed.iter().find(|c| c.path == "/g").unwrap().truncated, "beyond max_detailed");
        assert_eq!(d.changed.iter().find(|c| c.path == "/h").unwrap().what, ["executable"]);
        assert!(!d.notes.is_empty());
        // A regular file replaced by a directory.
        let d = run(&dir(vec![("x", file("a"))]), &dir(vec![("x", dir(vec![]))]), &limits);
        assert_eq!(d.changed[0].what, ["type"]);
    }
}
