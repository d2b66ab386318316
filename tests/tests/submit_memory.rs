//! Issue 10, finding 8: one upload of 1,500 sources of 1 MB raised a node's memory from 285 MB
//! to 1.5 GB (NARs up to 1 MiB were spooled in memory), and bytes that are not a NAR were
//! spooled and stored. Replayed on a real `buildmesh node` process: an upload of many 1 MB
//! content-addressed sources in one body is accepted while the node's peak resident memory
//! (`VmHWM`) stays within 150 MiB of its idle size, and a body whose first source is not a NAR
//! is refused with an error naming that source, before anything is stored.

mod node_support;

use std::collections::VecDeque;
use std::io::Read;

use buildmesh::submit::wire::{DrvEntry, HEADER_VERSION, SourceEntry, SubmitHeader};
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StorePath, make_text_path};
use node_support::*;
use sha2::Digest as _;

/// Contents of each source: 1 MB.
const SOURCE_BYTES: usize = 1_000_000;
/// Sources in the big upload (500 MB): enough that spooling them in memory shows.
const SOURCES: usize = 500;
/// Allowed growth of the node's peak resident memory over its idle size.
const MAX_GROWTH_KIB: u64 = 150 * 1024;

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

/// A pseudo-random 1 MB block; source `i` is this block with `i` in its first 8 bytes.
fn block() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..SOURCE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn contents(block: &[u8], i: usize) -> Vec<u8> {
    let mut c = block.to_vec();
    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    c
}

fn flat_nar(contents: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    w.finish().unwrap()
}

/// One source of an upload: its header entry and how to make its bytes.
struct Source {
    entry: SourceEntry,
    path: StorePath,
    /// `Some(bytes)`: these bytes; `None`: the NAR of `contents(block, index)`.
    bytes: Option<Vec<u8>>,
    index: usize,
}

/// `count` text sources of 1 MB (their NARs are made again while streaming, not kept).
fn text_sources(block: &[u8], first: usize, count: usize) -> Vec<Source> {
    (first..first + count)
        .map(|i| {
            let c = contents(block, i);
            let path = make_text_path(&sd(), &format!("source-{i}.txt"), &c, []).unwrap();
            let nar = flat_nar(&c);
            let entry = SourceEntry {
                path: sd().display(&path),
                nar_hash: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&nar))),
                nar_size: nar.len() as u64,
                references: vec![],
            };
            Source { entry, path, bytes: None, index: i }
        })
        .collect()
}

/// A body that makes each NAR when it gets to it (the test keeps one in memory at a time).
struct Streamed {
    block: std::sync::Arc<Vec<u8>>,
    parts: VecDeque<Result<Vec<u8>, usize>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl Read for Streamed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            match self.parts.pop_front() {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = std::io::Cursor::new(bytes),
                Some(Err(i)) => self.current = std::io::Cursor::new(flat_nar(&contents(&self.block, i))),
            }
        }
    }
}

/// Upload a derivation `big` needing every source (and `blocker`, which sleeps, so that `big`
/// waits and its sources are not unpacked during the measurement); returns (status, JSON).
fn upload(node: &NodeProc, drvs: &mut Drvs, block: &[u8], sources: Vec<Source>, tag: &str) -> (u16, serde_json::Value) {
    let blocker = format!("blocker-{tag}");
    drvs.add(&blocker, "sleep 600; echo > $out", &[]);
    let paths: Vec<StorePath> = sources.iter().map(|s| s.path.clone()).collect();
    let (big, _) = drvs.add_with_sources(&format!("big-{tag}"), "exit 1", &[&blocker], &paths);
    let blocker_path = drvs.drv(&blocker);
    let drv_bytes: Vec<(StorePath, Vec<u8>)> = [(blocker_path.clone(), &blocker), (big.clone(), &format!("big-{tag}"))]
        .into_iter()
        .map(|(p, name)| (p, std::fs::read(drvs.dir.join(format!("{name}.drv"))).unwrap()))
        .collect();
    let header = SubmitHeader {
        version: HEADER_VERSION,
        store_dir: sd().to_string(),
        requested: vec![sd().display(&big)],
        priority: 0,
        replicas: 1,
        drvs: drv_bytes.iter().map(|(p, b)| DrvEntry { path: sd().display(p), size: b.len() as u64 }).collect(),
        sources: sources.iter().map(|s| s.entry.clone()).collect(),
    };
    let total = header.body_len().unwrap();
    let mut parts: VecDeque<Result<Vec<u8>, usize>> = VecDeque::new();
    parts.push_back(Ok(header.encode_prefix().unwrap()));
    for (_, b) in drv_bytes {
        parts.push_back(Ok(b));
    }
    for s in sources {
        parts.push_back(s.bytes.ok_or(s.index));
    }
    let body =
        Streamed { block: std::sync::Arc::new(block.to_vec()), parts, current: std::io::Cursor::new(Vec::new()) };
    let resp = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
        .post(format!("{}/api/v1/submit", node.url))
        .bearer_auth(node.token())
        .body(reqwest::blocking::Body::sized(body, total))
        .send()
        .expect("the upload");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().expect("the answer");
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))),
    )
}

#[test]
fn many_small_sources_in_one_body_keep_the_node_small() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&tmp.path().join("data"), &["--slots", "1"]);
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    let block = block();
    let sources = text_sources(&block, 0, SOURCES);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let idle = status_kib(node.pid(), "VmRSS:");

    let (status, json) = upload(&node, &mut drvs, &block, sources, "many");
    assert_eq!(status, 200, "{json}\n{}", node.log_text());
    assert_eq!(json["sources_registered"], SOURCES, "{json}");
    let peak = status_kib(node.pid(), "VmHWM:");
    let now = status_kib(node.pid(), "VmRSS:");
    eprintln!("idle {idle} KiB, peak {peak} KiB, after {now} KiB");
    assert!(
        peak.saturating_sub(idle) < MAX_GROWTH_KIB,
        "{SOURCES} sources of 1 MB raised the node's peak memory from {idle} KiB to {peak} KiB"
    );
    // Nothing is left in the spool directory.
    let spool = tmp.path().join("data/spool");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}

#[test]
fn bytes_that_are_not_a_nar_are_refused_naming_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&tmp.path().join("data"), &["--slots", "1"]);
    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    let block = block();
    // The first source: 1 MB of garbage under a text path, with its true SHA-256 and size.
    let garbage = contents(&block, 999_999);
    let path = make_text_path(&sd(), "garbage.txt", &garbage, []).unwrap();
    let entry = SourceEntry {
        path: sd().display(&path),
        nar_hash: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&garbage))),
        nar_size: garbage.len() as u64,
        references: vec![],
    };
    let mut sources = vec![Source { entry, path: path.clone(), bytes: Some(garbage), index: 0 }];
    sources.extend(text_sources(&block, 0, 40));

    let (status, json) = upload(&node, &mut drvs, &block, sources, "garbage");
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["path"], sd().display(&path), "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("not a valid NAR") && error.contains("nix-archive-1"), "{error}");
    // Nothing was stored.
    let (_, builds) = get_json(&format!("{}/api/v1/builds", node.url));
    assert_eq!(builds, serde_json::json!([]));
    let hash = path.to_string();
    let (s, _) = get(&format!("{}/{}.narinfo", node.url, &hash[..32]));
    assert_eq!(s, 404);
    assert!(node.log_text().contains("not a valid NAR"), "{}", node.log_text());
}
