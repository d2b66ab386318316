//! `buildmesh bench gateway`: the binary-cache gateway side by side with nginx, on loopback.
//!
//! 1. A fresh data dir gets `--paths` small store paths and one `--nar-mib` MiB path (a single
//!    file, half incompressible, half text-like: about 2:1 with zstd, like real closures).
//! 2. A real `buildmesh node` process serves it; `nix copy --from http://… --to
//!    file://DIR?compression=none` (a real Nix client, checking our signatures) writes the same
//!    paths as a plain binary cache, which `nginx` serves as static files.
//! 3. `wrk` measures, against both: narinfo requests/s (rotating over every small path) and
//!    NAR throughput of the big path (`.nar`; the gateway decompresses its zstd blob on the fly
//!    and checks its blake3; nginx uses sendfile), and the gateway's `.nar.zst` as stored.
//! 4. The node's RSS (`VmRSS` in `/proc/PID/status`) is read when idle, after the load, and the
//!    peak (`VmHWM`).
//!
//! Goals: narinfo ≥ 0.5× nginx, NAR streaming ≥ 1 GB/s, idle RSS ≤ 40 MiB.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use clap::Args;

use crate::store::{PathInfo, Store, unix_ms};

/// Flags of `buildmesh bench gateway`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// wrk connections for the narinfo test.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk connections for the NAR test.
    #[arg(long, default_value_t = 4)]
    pub nar_connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Number of small paths (narinfo test).
    #[arg(long, default_value_t = 1000)]
    pub paths: u32,
    /// Size of the big path's NAR in MiB (throughput test).
    #[arg(long, default_value_t = 256)]
    pub nar_mib: u64,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// The nix binary (for `nix copy`).
    #[arg(long, default_value = "nix")]
    pub nix: PathBuf,
    /// Keep the working directory (printed) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What wrk reported.
#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    requests_per_sec: f64,
    bytes_per_sec: f64,
    errors: u64,
}

/// Run the benchmark and print the table.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("buildmesh-bench-").tempdir().context("create a temp dir")?;
    let dir = work.path().to_path_buf();
    eprintln!("bench: working in {}", dir.display());
    let store_dir = StoreDir::nix();

    // 1. The data dir.
    let data = dir.join("data");
    let t = Instant::now();
    let (small, big, big_nar) = populate(&data, args.paths, args.nar_mib << 20)?;
    eprintln!("bench: stored {} small paths and a {} MiB NAR in {:.1?}", small.len(), args.nar_mib, t.elapsed());

    // 2. The node.
    let exe = std::env::current_exe().context("cannot find the buildmesh executable")?;
    let log = std::fs::File::create(dir.join("node.log")).context("create node.log")?;
    let mut child = Command::new(&exe)
        .args(["node", "--data-dir"])
        .arg(&data)
        .args(["--http", "127.0.0.1:0", "--slots", "1"])
        .env("BUILDMESH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("start buildmesh node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let node_pid = child.id();
    let node = Guard(child);
    let (url, public_key) = read_start_lines(stdout)?;
    eprintln!("bench: node {node_pid} at {url}, key {public_key}");
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(node_pid, "VmRSS")?;

    // 3. The nginx cache, written by a real Nix client from our gateway.
    let cache = dir.join("cache");
    let t = Instant::now();
    let mut paths: Vec<String> = small.iter().map(|p| store_dir.display(p)).collect();
    paths.push(store_dir.display(&big));
    nix_copy(&args.nix, &dir, &url, &public_key, &cache, &paths)?;
    eprintln!("bench: nix copy --from {url} --to file://… took {:.1?}", t.elapsed());
    let nginx_port = free_port()?;
    let _nginx = start_nginx(&args.nginx, &dir, &cache, nginx_port)?;
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    wait_http(&format!("{nginx_url}/nix-cache-info"))?;

    // 4. Measurements.
    let script = dir.join("narinfos.lua");
    write_rotation_script(&script, &small)?;
    let d = args.duration;
    let run_wrk = |base: &str, path: Option<&str>, conns: u32, threads: u32| -> anyhow::Result<WrkResult> {
        let mut cmd = Command::new(&args.wrk);
        cmd.arg(format!("-t{threads}")).arg(format!("-c{conns}")).arg(format!("-d{d}s"));
        match path {
            Some(p) => {
                cmd.arg(format!("{base}{p}"));
            }
            None => {
                cmd.arg("-s").arg(&script).arg(format!("{base}/"));
            }
        }
        wrk(cmd)
    };
    let threads = args.threads.max(1);
    let nt = threads.min(args.nar_connections.max(1));
    eprintln!("bench: narinfo, gateway");
    let gw_narinfo = run_wrk(&url, None, args.connections, threads)?;
    eprintln!("bench: narinfo, nginx");
    let ng_narinfo = run_wrk(&nginx_url, None, args.connections, threads)?;
    eprintln!("bench: NAR, gateway (.nar)");
    let gw_nar = run_wrk(&url, Some(&format!("/nar/{big_nar}.nar")), args.nar_connections, nt)?;
    eprintln!("bench: NAR, gateway (.nar.zst)");
    let gw_zst = run_wrk(&url, Some(&format!("/nar/{big_nar}.nar.zst")), args.nar_connections, nt)?;
    eprintln!("bench: NAR, nginx (.nar)");
    let ng_nar = run_wrk(&nginx_url, Some(&format!("/nar/{big_nar}.nar")), args.nar_connections, nt)?;
    let loaded_rss = rss_kib(node_pid, "VmRSS")?;
    let peak_rss = rss_kib(node_pid, "VmHWM")?;
    std::thread::sleep(Duration::from_secs(3));
    let idle_after = rss_kib(node_pid, "VmRSS")?;
    drop(node);

    // 5. The table.
    let mib = |kib: u64| kib as f64 / 1024.0;
    let gbs = |r: &WrkResult| r.bytes_per_sec / 1e9;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nbuildmesh bench gateway: {} small paths, {} MiB NAR, wrk {d}s, {} conns (narinfo) / {} conns (NAR), loopback, {} CPUs\n",
        small.len(),
        args.nar_mib,
        args.connections,
        args.nar_connections,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(out, "| metric | buildmesh gateway | nginx (file:// cache) | gateway / nginx | goal |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".to_string() };
    let ok = |pass: bool| if pass { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "| narinfo requests/s | {:.0} | {:.0} | {} | >= 0.5x nginx: {} |",
        gw_narinfo.requests_per_sec,
        ng_narinfo.requests_per_sec,
        ratio(gw_narinfo.requests_per_sec, ng_narinfo.requests_per_sec),
        ok(gw_narinfo.requests_per_sec >= 0.5 * ng_narinfo.requests_per_sec)
    );
    let _ = writeln!(
        out,
        "| NAR `.nar` streaming GB/s | {:.2} | {:.2} | {} | >= 1 GB/s: {} |",
        gbs(&gw_nar),
        gbs(&ng_nar),
        ratio(gw_nar.bytes_per_sec, ng_nar.bytes_per_sec),
        ok(gbs(&gw_nar) >= 1.0)
    );
    let _ = writeln!(out, "| NAR `.nar.zst` as stored GB/s (compressed bytes) | {:.2} | - | - | - |", gbs(&gw_zst));
    let _ = writeln!(
        out,
        "| node RSS idle MiB | {:.1} | - | - | <= 40 MiB: {} |",
        mib(idle_rss),
        ok(mib(idle_rss) <= 40.0)
    );
    let _ =
        writeln!(out, "| node RSS under load / peak MiB | {:.1} / {:.1} | - | - | - |", mib(loaded_rss), mib(peak_rss));
    let _ = writeln!(out, "| node RSS idle after load MiB | {:.1} | - | - | - |", mib(idle_after));
    let errors = gw_narinfo.errors + ng_narinfo.errors + gw_nar.errors + gw_zst.errors + ng_nar.errors;
    if errors > 0 {
        let _ = writeln!(out, "\nwarning: wrk reported {errors} socket/HTTP errors");
    }
    print!("{out}");
    if args.keep {
        let kept = work.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    Ok(())
}

/// Store `n` small paths and one big one in a new store at `data`; returns their paths.
fn populate(data: &Path, n: u32, big_bytes: u64) -> anyhow::Result<(Vec<StorePath>, StorePath, String)> {
    let store = Store::open(data)?;
    let mut small = Vec::new();
    for i in 0..n {
        let contents = format!("buildmesh bench path {i}\n").repeat(1 + (i as usize % 7));
        let mut nar = Vec::new();
        let mut w = NarWriter::new(&mut nar)?;
        w.regular(false, contents.len() as u64, &mut contents.as_bytes())?;
        w.finish()?;
        let path = bench_path(i, &format!("bench-{i}"))?;
        register(&store, &path, &mut nar.as_slice())?;
        small.push(path);
    }
    // The big NAR, written to a file first (never held in memory).
    let file = data.join("big.nar.tmp");
    {
        let f = std::fs::File::create(&file).context("create the big NAR")?;
        let mut w = NarWriter::new(BufWriter::with_capacity(1 << 20, f))?;
        w.begin_regular(false, big_bytes)?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 64 * 1024];
        let mut left = big_bytes;
        let mut k = 0u64;
        while left > 0 {
            let take = left.min(block.len() as u64) as usize;
            if k.is_multiple_of(2) {
                for chunk in block[..take].chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let bytes = x.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
            } else {
                for (j, b) in block[..take].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"[(j + k as usize) % 55];
                }
            }
            w.write_contents(&block[..take])?;
            left -= take as u64;
            k += 1;
        }
        w.end_regular()?;
        let mut inner = w.finish()?;
        inner.flush().context("write the big NAR")?;
    }
    let big = bench_path(u32::MAX, "bench-big")?;
    let mut f = std::fs::File::open(&file).context("open the big NAR")?;
    let nar_hash = register(&store, &big, &mut f)?;
    std::fs::remove_file(&file).context("remove the big NAR")?;
    Ok((small, big, nar_hash))
}

fn bench_path(i: u32, name: &str) -> anyhow::Result<StorePath> {
    let h = blake3::hash(&i.to_le_bytes());
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&h.as_bytes()[..20]);
    Ok(StorePath::new(digest, name)?)
}

/// Store and register a NAR; returns the nix32 of its NarHash (its `/nar/<…>` name).
fn register(store: &Store, path: &StorePath, nar: &mut dyn Read) -> anyhow::Result<String> {
    let blob = store.put_nar(nar)?;
    let name = blob.nar_hash.to_nix32();
    store.register_path(&PathInfo {
        path: path.clone(),
        nar_hash: blob.nar_hash,
        nar_size: blob.nar_size,
        references: BTreeSet::new(),
        deriver: None,
        ca: None,
        blob: blob.blake3,
        registered_at: unix_ms(),
    })?;
    Ok(name)
}

/// Read `http: URL` and `public-key: KEY` from the node's stdout.
fn read_start_lines(stdout: std::process::ChildStdout) -> anyhow::Result<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut url = None;
        let mut key = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(u) = line.strip_prefix("http: ") {
                url = Some(u.to_string());
            } else if let Some(k) = line.strip_prefix("public-key: ") {
                key = Some(k.to_string());
            }
            if let (Some(u), Some(k)) = (&url, &key) {
                let _ = tx.send((u.clone(), k.clone()));
                url = None;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).context("the node did not print its address within 30 s (see node.log)")
}

fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn nix_copy(nix: &Path, dir: &Path, url: &str, key: &str, cache: &Path, paths: &[String]) -> anyhow::Result<()> {
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let out = Command::new(nix)
        .args(["--extra-experimental-features", "nix-command", "copy", "--from", url])
        .arg("--to")
        .arg(format!("file://{}?compression=none", cache.display()))
        .args(["--option", "trusted-public-keys", key])
        .args(paths)
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .output()
        .context("run nix copy")?;
    if !out.status.success() {
        bail!("nix copy failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_nginx(nginx: &Path, dir: &Path, root: &Path, port: u16) -> anyhow::Result<Guard> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let conf = format!(
        "user root;\nworker_processes {workers};\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fcgi;\n\
           uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
           types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}\n\
           server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        p = prefix.display(),
        root = root.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nginx")?;
    Ok(Guard(child))
}

fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for _ in 0..100 {
        if client.get(url).send().map(|r| r.status().is_success()).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 10 s")
}

fn write_rotation_script(path: &Path, small: &[StorePath]) -> anyhow::Result<()> {
    let mut s = String::from("paths = {\n");
    for p in small {
        let _ = writeln!(s, "  \"/{}.narinfo\",", p.hash_part());
    }
    s.push_str("}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(nil, paths[(counter % #paths) + 1])\nend\n");
    std::fs::write(path, s)?;
    Ok(())
}

fn wrk(mut cmd: Command) -> anyhow::Result<WrkResult> {
    let out = cmd.stdin(Stdio::null()).output().context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot parse wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Transfer/sec:") {
            r.bytes_per_sec = parse_size(v.trim())?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().ok()?;
        }
    }
    (r.requests_per_sec > 0.0).then_some(r)
}

/// wrk's sizes: `123.45MB` with binary units.
fn parse_size(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 4 connections\n\
            Requests/sec:  41234.56\nTransfer/sec:      1.25GB\n  Socket errors: connect 0, read 2, write 0, timeout 1\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests_per_sec, 41234.56);
        assert!((r.bytes_per_sec - 1.25 * 1024.0 * 1024.0 * 1024.0).abs() < 1.0);
        assert_eq!(r.errors, 3);
        assert_eq!(parse_size("512.00KB"), Some(512.0 * 1024.0));
        assert!(parse_wrk("garbage").is_none());
    }
}
