//! The binary-cache routes over real HTTP against a real `buildmesh node` process (issue 11
//! item 5): `HEAD` answers like `GET` without a body on every route, `Cache-Control` (long for
//! found, short for missing), the configured `/nix-cache-info` `Priority`, `/health` with the
//! version, `Range` on `.nar` and `.nar.zst` (206, 416, several ranges = whole body), and a
//! damaged blob that never yields a complete `.nar` answer, ranged or not.

mod node_support;
mod server_support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use node_support::NodeProc;
use server_support::*;

/// One answer read to the end of a `Connection: close` exchange: everything after the head is
/// the body as sent (so a `HEAD` that sent a body would show it).
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// Whether the connection ended in an error (reset) rather than a clean close.
    cut: bool,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }

    fn content_length(&self) -> usize {
        self.header("content-length").parse().expect("content-length")
    }
}

fn raw(url: &str, method: &str, path: &str, extra: &[(&str, &str)]) -> Raw {
    let mut s = TcpStream::connect(addr_of(url)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut all = Vec::new();
    let cut = s.read_to_end(&mut all).is_err();
    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Cut before the head was sent.
        return Raw { status: 0, headers: BTreeMap::new(), body: Vec::new(), cut: true };
    };
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "date")
        .collect();
    Raw { status, headers, body: all[end + 4..].to_vec(), cut }
}

/// The node's blob file of `nar` (named by its blake3).
fn blob_file(data: &Path, nar: &[u8]) -> PathBuf {
    let id = blake3::hash(nar).to_hex().to_string();
    data.join("blobs").join(&id[..2]).join(format!("{id}.nar.zst"))
}

/// A `source` path (a NAR of one file, `fixed:r:sha256:<NarHash>`) registered in the store of
/// `data`: the trust rule accepts it from its NarHash alone, without reading the blob (a `text`
/// path is re-hashed on every request, which would hide the blob reader's own check).
fn seed_source(data: &Path, name: &str, contents: &[u8]) -> Seeded {
    use buildmesh::store::{PathInfo, Store};
    use buildmesh_protocol::nar::NarWriter;
    use buildmesh_protocol::nixbase32;
    use buildmesh_protocol::store_path::{StoreDir, make_store_path};
    let store = Store::open(data).expect("open store");
    let mut w = NarWriter::new(Vec::new()).expect("nar writer");
    w.regular(false, contents.len() as u64, &mut &contents[..]).expect("nar file");
    let nar = w.finish().expect("nar");
    let blob = store.put_nar(&mut &nar[..]).expect("put nar");
    let sha: [u8; 32] = blob.nar_hash.digest().try_into().expect("sha256");
    let path = make_store_path(&StoreDir::nix(), "source", &sha, name).expect("source path");
    store
        .register_path(&PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash.clone(),
            nar_size: blob.nar_size,
            references: Default::default(),
            deriver: None,
            ca: Some(format!("fixed:r:sha256:{}", nixbase32::encode(&sha))),
            blob: blob.blake3,
            registered_at: 1,
        })
        .expect("register");
    let base = path.to_string();
    Seeded {
        nar_url: format!("/nar/{}.nar", nixbase32::encode(&sha)),
        narinfo_url: format!("/{}.narinfo", &base[..32]),
        nar_size: blob.nar_size,
        path,
    }
}

/// A content-addressed text path and a `source` path of ~900 KiB of noise (several body
/// chunks) in a node with `[cache] priority = 7`, `want_mass_query = false`.
fn node(tmp: &Path) -> (NodeProc, Vec<Seeded>) {
    let data = tmp.join("data");
    let mut seeded = seed(&data, &[("small.txt", b"hello, world\n".to_vec())]);
    seeded.push(seed_source(&data, "big", &noise(900 * 1024 + 17, 3)));
    let args = config_args(&data, "[cache]\npriority = 7\nwant_mass_query = false\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (NodeProc::start(&data, &args), seeded)
}

#[test]
fn head_answers_like_get_and_cache_headers_priority_and_health_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, seeded) = node(tmp.path());
    let url = &n.url;
    let missing_narinfo = format!("/{}.narinfo", "0".repeat(32));
    let missing_nar = format!("/nar/{}.nar", "0".repeat(52));
    let big = &seeded[1];
    let routes = [
        ("/nix-cache-info", 200),
        ("/health", 200),
        (seeded[0].narinfo_url.as_str(), 200),
        (big.narinfo_url.as_str(), 200),
        (big.nar_url.as_str(), 200),
        (&format!("{}.zst", big.nar_url), 200),
        (&missing_narinfo, 404),
        (&missing_nar, 404),
        (&format!("{missing_nar}.zst"), 404),
        ("/not-a-hash.narinfo", 400),
        ("/nar/short.nar", 400),
    ];
    for (path, status) in routes {
        let get = raw(url, "GET", path, &[]);
        let head = raw(url, "HEAD", path, &[]);
        assert_eq!(get.status, status, "GET {path}: {get:?}");
        assert!(!get.cut, "GET {path} was cut");
        assert_eq!(get.content_length(), get.body.len(), "GET {path}");
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(head.headers, get.headers, "HEAD {path} must have GET's headers");
        assert!(head.body.is_empty(), "HEAD {path} sent a body of {} bytes", head.body.len());
    }

    // Cache-Control: long for what was found, short for what is missing.
    let cc = |path: &str| raw(url, "GET", path, &[]).header("cache-control").to_string();
    assert_eq!(cc(&big.narinfo_url), "public, max-age=86400");
    assert_eq!(cc(&missing_narinfo), "public, max-age=60");
    assert_eq!(cc(&big.nar_url), "public, max-age=31536000, immutable");
    assert_eq!(cc(&format!("{}.zst", big.nar_url)), "public, max-age=31536000, immutable");
    assert_eq!(cc(&missing_nar), "public, max-age=60");
    assert_eq!(raw(url, "GET", &big.nar_url, &[]).header("accept-ranges"), "bytes");

    // The configured Priority and WantMassQuery.
    let info = raw(url, "GET", "/nix-cache-info", &[]);
    assert_eq!(String::from_utf8(info.body).unwrap(), "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 7\n");
    assert_eq!(info.headers["content-type"], "text/x-nix-cache-info");

    // /health names the version.
    let health: serde_json::Value = serde_json::from_slice(&raw(url, "GET", "/health", &[]).body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn ranges_on_nar_and_nar_zst() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, seeded) = node(tmp.path());
    let url = &n.url;
    let big = &seeded[1];
    let nar = raw(url, "GET", &big.nar_url, &[]).body;
    assert_eq!(nar.len() as u64, big.nar_size);
    let zst_url = format!("{}.zst", big.nar_url);
    let zst = std::fs::read(blob_file(&n.data, &nar)).unwrap();
    assert_eq!(raw(url, "GET", &zst_url, &[]).body, zst);

    for (path, whole) in [(&big.nar_url, &nar), (&zst_url, &zst)] {
        let size = whole.len();
        let cases = [
            ("bytes=0-9".to_string(), 0, 9),
            // Across several 256 KiB chunks.
            ("bytes=300000-600000".to_string(), 300_000, 600_000),
            ("bytes=-100".to_string(), size - 100, size - 1),
            (format!("bytes={}-", size - 5), size - 5, size - 1),
            (format!("bytes=10-{}", size * 2), 10, size - 1),
        ];
        for (range, first, last) in cases {
            let a = raw(url, "GET", path, &[("Range", &range)]);
            assert_eq!(a.status, 206, "{path} {range}");
            assert!(!a.cut, "{path} {range} was cut");
            assert_eq!(a.header("content-range"), format!("bytes {first}-{last}/{size}"), "{path} {range}");
            assert_eq!(a.content_length(), last - first + 1, "{path} {range}");
            assert!(a.body == whole[first..=last], "{path} {range}: other bytes");
            assert_eq!(a.header("accept-ranges"), "bytes");
        }
        // Nothing satisfiable: 416 with the size.
        let a = raw(url, "GET", path, &[("Range", &format!("bytes={size}-"))]);
        assert_eq!(a.status, 416, "{path}");
        assert_eq!(a.header("content-range"), format!("bytes */{size}"));
        // Several ranges, a malformed one, or one under If-Range: the whole body.
        for extra in [
            vec![("Range", "bytes=0-1,5-6")],
            vec![("Range", "bytes=9-1")],
            vec![("Range", "pages=1-2")],
            vec![("Range", "bytes=0-9"), ("If-Range", "\"x\"")],
        ] {
            let a = raw(url, "GET", path, &extra);
            assert_eq!(a.status, 200, "{path} {extra:?}");
            assert!(a.body == *whole, "{path} {extra:?}");
            assert!(!a.headers.contains_key("content-range"));
        }
        // HEAD ignores Range (RFC 9110 §14.2).
        let a = raw(url, "HEAD", path, &[("Range", "bytes=0-9")]);
        assert_eq!((a.status, a.content_length()), (200, size));
    }
}

#[test]
fn a_damaged_blob_never_yields_a_complete_nar_ranged_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, seeded) = node(tmp.path());
    let url = &n.url;
    let big = &seeded[1];
    let nar = raw(url, "GET", &big.nar_url, &[]).body;
    assert_eq!(nar.len() as u64, big.nar_size);
    let file = blob_file(&n.data, &nar);
    let mut blob = std::fs::read(&file).unwrap();
    // Flip one byte in the middle of the file on disk (noise is stored in raw zstd blocks, so
    // this changes the content, not the framing).
    let at = blob.len() / 2;
    blob[at] ^= 0x01;
    std::fs::write(&file, &blob).unwrap();

    for range in [None, Some("bytes=0-9"), Some("bytes=300000-600000"), Some("bytes=-100")] {
        let extra: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
        let a = raw(url, "GET", &big.nar_url, &extra);
        let complete = !a.cut && a.headers.get("content-length").and_then(|l| l.parse().ok()) == Some(a.body.len());
        // The answer starts (the record and the trust rule are fine) and is cut by the blob
        // reader's check, or is cut before its head.
        assert!([0, 200, 206].contains(&a.status), "{range:?}: {a:?}");
        assert!(
            !complete || a.status == 0,
            "a damaged blob was served completely ({range:?}: status {}, {} bytes)",
            a.status,
            a.body.len()
        );
    }
    // The node still serves the other path.
    let a = raw(url, "GET", &seeded[0].nar_url, &[]);
    assert_eq!((a.status, a.cut), (200, false));
}

/// A large `.nar` (at least `buildmesh::store::plain::PLAIN_MIN`) is sent from the node's plain
/// (uncompressed) copy once a complete, checked download made it; a damaged blob never gets one,
/// so it is cut on every download; a restarted node does not trust the copies of the old one.
#[test]
fn a_large_nar_is_sent_from_its_plain_copy_only_after_a_checked_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let contents = noise(buildmesh::store::plain::PLAIN_MIN as usize + 100_000, 9);
    let big = seed_source(&data, "large", &contents);
    let plain_dir = data.join("blobs").join(".plain");
    let plain_files = || std::fs::read_dir(&plain_dir).map(|d| d.count()).unwrap_or(0);
    let complete = |a: &Raw| !a.cut && a.status == 200 && a.body.len() == a.content_length();
    let mut n = NodeProc::start(&data, &[]);

    // Damaged before its first download: cut every time, and no copy is made of it.
    let nar = {
        let mut w = buildmesh_protocol::nar::NarWriter::new(Vec::new()).unwrap();
        w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
        w.finish().unwrap()
    };
    let file = blob_file(&data, &nar);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&file, &bad).unwrap();
    for _ in 0..2 {
        let a = raw(&n.url, "GET", &big.nar_url, &[]);
        assert!(!complete(&a), "a damaged blob was served completely: {} bytes", a.body.len());
        assert_eq!(plain_files(), 0, "a damaged blob got a plain copy");
    }
    // Repaired: the first download is checked and makes the copy; the next ones send the copy
    // (they complete with the blob file gone), whole or ranged.
    std::fs::write(&file, &good).unwrap();
    let a = raw(&n.url, "GET", &big.nar_url, &[]);
    assert!(complete(&a) && a.body == nar);
    assert_eq!(plain_files(), 1);
    std::fs::rename(&file, file.with_extension("moved")).unwrap();
    let a = raw(&n.url, "GET", &big.nar_url, &[]);
    assert!(complete(&a) && a.body == nar, "not sent from the plain copy: {} bytes", a.body.len());
    let a = raw(&n.url, "GET", &big.nar_url, &[("Range", "bytes=1000-1999")]);
    assert_eq!((a.status, &a.body[..]), (206, &nar[1000..2000]));
    // A new node process deletes the old copies and checks the (now damaged) blob again.
    drop(n);
    std::fs::write(&file, &bad).unwrap();
    n = NodeProc::start(&data, &[]);
    assert_eq!(plain_files(), 0);
    let a = raw(&n.url, "GET", &big.nar_url, &[]);
    assert!(!complete(&a), "a restarted node served a damaged blob completely");
}

/// wrk's `Transfer/sec` in bytes per second (wrk's units are binary: 1 MB = 2^20 bytes).
fn wrk_bytes_per_sec(url: &str, conns: u32, secs: u32) -> f64 {
    let threads = conns.min(2);
    let out = std::process::Command::new("wrk")
        .args([format!("-c{conns}"), format!("-t{threads}"), format!("-d{secs}s"), url.to_string()])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk got errors from {url}:\n{text}");
    let v = text.lines().find_map(|l| l.trim().strip_prefix("Transfer/sec:")).unwrap_or_else(|| panic!("{text}"));
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let mult = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("wrk unit {other}"),
    };
    num.parse::<f64>().expect("wrk number") * mult
}

/// `.nar` (and `.nar.zst`) streaming speed of a real node on 1 and 4 connections, side by side
/// with the servers at the URLs of `NARSERVE_AGAINST` (comma-separated, e.g. harmonia's URL of
/// the same NAR). The NAR (`NARSERVE_NAR_MIB`, default 256 MiB, half noise and half text in
/// alternating 64 KiB blocks like `buildmesh bench gateway`) is a `source` path, so the trust
/// rule accepts it from its NarHash alone; it is written to `NARSERVE_NAR_OUT` when set (to give
/// the other server the same bytes). The node's first cell includes its first, checked download
/// of the blob, which also writes the plain copy later downloads send (`store::plain`). Run with
/// `cargo test --release -p buildmesh-tests --test cache_http -- --ignored --nocapture
/// nar_streaming_speed`.
#[test]
#[ignore = "benchmark: prints a table"]
fn nar_streaming_speed() {
    use buildmesh::store::{PathInfo, Store};
    use buildmesh_protocol::nar::NarWriter;
    use buildmesh_protocol::store_path::{StoreDir, make_store_path};

    let mib: u64 = std::env::var("NARSERVE_NAR_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let secs: u32 = std::env::var("NARSERVE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let nar_file = std::env::var("NARSERVE_NAR_OUT").map(PathBuf::from).unwrap_or_else(|_| tmp.path().join("big.nar"));
    {
        let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&nar_file).unwrap());
        let mut w = NarWriter::new(f).unwrap();
        let size = mib << 20;
        w.begin_regular(false, size).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 64 * 1024];
        for k in 0..size / block.len() as u64 {
            if k % 2 == 0 {
                for c in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes());
                }
            } else {
                for (j, b) in block.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"[(j + k as usize) % 55];
                }
            }
            w.write_contents(&block).unwrap();
        }
        w.end_regular().unwrap();
        w.finish().unwrap().flush().unwrap();
    }
    let nar_hash = {
        let store = Store::open(&data).unwrap();
        let blob = store.put_nar(&mut std::fs::File::open(&nar_file).unwrap()).unwrap();
        let sha: [u8; 32] = blob.nar_hash.digest().try_into().unwrap();
        let path = make_store_path(&StoreDir::nix(), "source", &sha, "bench-big").unwrap();
        let ca = format!("fixed:r:sha256:{}", buildmesh_protocol::nixbase32::encode(&sha));
        store
            .register_path(&PathInfo {
                path,
                nar_hash: blob.nar_hash.clone(),
                nar_size: blob.nar_size,
                references: Default::default(),
                deriver: None,
                ca: Some(ca),
                blob: blob.blake3,
                registered_at: 1,
            })
            .unwrap();
        buildmesh_protocol::nixbase32::encode(&sha)
    };
    let n = NodeProc::start(&data, &["--slots", "1"]);
    let nar_url = format!("{}/nar/{nar_hash}.nar", n.url);
    let a = raw(&n.url, "HEAD", &format!("/nar/{nar_hash}.nar"), &[]);
    assert_eq!((a.status, a.content_length() as u64), (200, std::fs::metadata(&nar_file).unwrap().len()));
    let mut targets = vec![
        ("buildmesh `.nar`".to_string(), nar_url.clone()),
        ("buildmesh `.nar.zst`".into(), format!("{nar_url}.zst")),
    ];
    for u in std::env::var("NARSERVE_AGAINST").unwrap_or_default().split(',').filter(|u| !u.is_empty()) {
        targets.push((u.to_string(), u.to_string()));
    }
    println!("\n{mib} MiB NAR, wrk {secs} s per cell, loopback, GB/s (10^9 bytes/s)\n");
    println!("| server | 1 connection | 4 connections |");
    println!("|---|---:|---:|");
    for (name, url) in &targets {
        let one = wrk_bytes_per_sec(url, 1, secs) / 1e9;
        let four = wrk_bytes_per_sec(url, 4, secs) / 1e9;
        println!("| {name} | {one:.2} | {four:.2} |");
    }
}
