//! Volunteers on slow uplinks (issue 18, real WAN conditions): real `buildmesh node` processes
//! whose mesh traffic crosses the emulated WAN of `mesh_support/wan.rs` with an uplink cap on the
//! "slow" region (a token bucket drained at the cap behind a bounded buffer that drops when full,
//! like a home router: [`Uplink`]), 50 ms one way between the regions.
//!
//! - `the_uplink_queue_drains_at_its_rate_and_drops_when_full` (CI, no namespace): the queue
//!   arithmetic of the emulator's uplink.
//! - `the_emulated_uplink_carries_its_cap` (CI): a bulk TCP transfer out of a capped node
//!   measures within 10% of the cap (1 Mbit/s and 512 kbit/s), and the other direction is not
//!   capped.
//! - `a_nar_crosses_a_512_kbit_uplink` (CI): a node on the fast side fetches a 2 MiB NAR from
//!   builders behind 512 kbit/s uplinks (ADSL) within 1.5 times what the link takes at its cap,
//!   complete and verified (the quorum gateway serves it only after `put_nar_expecting`).
//! - `bench_slow_uplink` (ignored; prints a table): NAR fetches over several caps and sizes, with
//!   the chunk sizes and retries of each fetch (from the fetcher's log) and the delay of an
//!   attestation made by the serving builder while its uplink is saturated. Run with
//!   `BM_NET_TAG=slow18 cargo test -p buildmesh-tests --test mesh_slow -- --ignored --nocapture bench_slow_uplink`
//!   (`BENCH_SLOW_KBIT`, `BENCH_SLOW_MB`, `BENCH_SLOW_LIMIT_S`).
//!
//! Needs root, iproute2 and `/dev/net/tun`. Each test makes its own namespaces, named after the
//! process; the tests of this binary take turns (`Netns` holds a lock while it lives).

mod mesh_support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use buildmesh_protocol::store_path::StorePath;
use mesh_support::netns::Netns;
use mesh_support::wan::{Uplink, Wan, WanModel, arrivals, uplink_departure};
use mesh_support::*;

const MIB: u64 = 1 << 20;
/// One way between the regions.
const ONE_WAY: Duration = Duration::from_millis(50);
/// The home router's buffer, in milliseconds at its rate.
const QUEUE_MS: u64 = 500;

/// Run `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let target = File::open(format!("/run/netns/{ns}")).expect("namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Send `len` bytes over TCP from namespace `from` to `to_ip` (in namespace `to`); returns the
/// receiver's goodput in bytes/s after its first 128 KiB (past slow start).
fn bulk(from: &str, to: &str, to_ip: &str, len: usize) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let ip = to_ip.to_string();
    let receiver = in_ns(to, move || {
        let l = TcpListener::bind((ip.as_str(), 0)).expect("listen");
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        let (mut got, mut mark) = (0usize, None);
        loop {
            let k = s.read(&mut buf).expect("read");
            if k == 0 {
                break;
            }
            got += k;
            if mark.is_none() && got >= 128 * 1024 {
                mark = Some((Instant::now(), got));
            }
        }
        let (t, at) = mark.expect("more than 128 KiB");
        (got - at) as f64 / t.elapsed().as_secs_f64()
    });
    let port = rx.recv().unwrap();
    let ip = to_ip.to_string();
    in_ns(from, move || {
        let mut s = TcpStream::connect((ip.as_str(), port)).expect("connect");
        s.write_all(&vec![7u8; len]).expect("send");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Wait for the receiver to close (every byte read).
        let _ = s.read(&mut [0u8; 1]);
    })
    .join()
    .unwrap();
    receiver.join().unwrap()
}

/// The uplink's queue alone: packets arriving at once leave one after the other at the rate,
/// the one that would overflow the buffer is dropped, and an idle link sends at once.
#[test]
fn the_uplink_queue_drains_at_its_rate_and_drops_when_full() {
    let u = Uplink { bytes_per_s: 100_000, queue_bytes: 4_500 };
    let now = Instant::now();
    let mut free = now;
    let mut departures = Vec::new();
    for _ in 0..4 {
        match uplink_departure(free, now, 1500, u) {
            Some(t) => {
                departures.push(t - now);
                free = t;
            }
            None => break,
        }
    }
    // 1500 B at 100 kB/s: 15 ms each; the fourth would wait behind 4500 B and is dropped.
    let ms = |d: &Duration| (d.as_secs_f64() * 1e3).round() as u64;
    assert_eq!(departures.iter().map(ms).collect::<Vec<_>>(), vec![15, 30, 45]);
    // 20 ms later one packet has left: room for one more, leaving at 60 ms.
    let later = now + Duration::from_millis(20);
    assert_eq!(uplink_departure(free, later, 1500, u).map(|t| ms(&(t - now))), Some(60));
    // Idle since long: it leaves after its own 15 ms.
    let idle = now + Duration::from_secs(1);
    assert_eq!(uplink_departure(free, idle, 1500, u).map(|t| ms(&(t - idle))), Some(15));
}

#[test]
fn the_emulated_uplink_carries_its_cap() {
    for kbit in [1000u64, 512] {
        let ns = Netns::without_mesh_link(2);
        let up = Uplink::kbit(kbit, QUEUE_MS);
        let wan = Wan::start(&ns, &[0, 1], WanModel::slow_uplink(ONE_WAY, up));
        // A second of data at the cap (at least 512 KiB).
        let len = (up.bytes_per_s as usize * 8).max(512 * 1024);
        let upload = bulk(&ns.namespace(1), &ns.namespace(0), &ns.mesh_ip(0), len);
        let download = bulk(&ns.namespace(0), &ns.namespace(1), &ns.mesh_ip(1), len);
        // TCP payload per 1500-byte IP packet: 1448 bytes (20 IP + 20 TCP + 12 timestamps).
        let cap_goodput = up.bytes_per_s as f64 * 1448.0 / 1500.0;
        let tail = wan.stats.tail_dropped.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "{kbit} kbit/s: upload {:.1} KiB/s ({:.1}% of the cap's goodput {:.1} KiB/s), download {:.1} KiB/s, \
             {tail} packets dropped at the full buffer",
            upload / 1024.0,
            upload / cap_goodput * 100.0,
            cap_goodput / 1024.0,
            download / 1024.0
        );
        assert!((upload / cap_goodput - 1.0).abs() < 0.1, "{kbit} kbit/s uplink: {upload:.0} B/s");
        assert!(download > 4.0 * cap_goodput, "the downlink is not capped: {download:.0} B/s");
        drop(wan);
    }
}

/// Builders 0 and 1 behind `uplink` (region "slow"), node 2 on the fast side, `ONE_WAY` apart.
/// Node 0 alone also offers `slow18-a` (jobs only it builds).
fn slow_mesh(dir: &Path, uplink: Uplink) -> (Cluster, Wan) {
    let model = WanModel::slow_uplink(ONE_WAY, uplink);
    eprintln!("network: {}", model.describe());
    let each: [&[&str]; 3] =
        [&["--feature", "slow18-home", "--feature", "slow18-a"], &["--feature", "slow18-home"], &[]];
    Cluster::start_in_wan_each(dir, &[1, 1, 0], model, &each, FAST_MESH)
}

/// A job whose output is `mb` MiB of incompressible bytes (AES-CTR of zeros keyed by `name`),
/// built by the two slow builders (k = 2, submitted to node 0).
fn build_nar(c: &Cluster, d: &mut Drvs, name: &str, mb: u64) -> StorePath {
    let key = blake3::hash(name.as_bytes()).to_hex()[..32].to_string();
    let script = format!(
        "head -c {} /dev/zero | openssl enc -aes-128-ctr -K {key} -iv 00000000000000000000000000000000 -nosalt > $out",
        mb * MIB
    );
    let (drv, out) = d.add_requiring(name, &script, &[], &["slow18-home"]);
    c.submit(0, &d.dir, &[sd().display(&drv)], 2);
    wait_state(&c.urls[0], &drv, "done", Duration::from_secs(120));
    let path = sd().display(&out);
    wait_for("node 2 to hold both attestations", Duration::from_secs(60), || {
        let builders: BTreeSet<String> = c.attesters(2, &path).values().flatten().cloned().collect();
        (builders.len() >= 2).then_some(())
    });
    out
}

/// Node 2 serves `out` through its quorum gateway (narinfo, then the NAR), pulling the NAR over
/// the mesh. Returns (NarSize, seconds), or what failed.
fn fetch(c: &Cluster, out: &StorePath, limit: Duration) -> Result<(u64, f64), String> {
    let client = reqwest::blocking::Client::builder().timeout(limit).build().expect("client");
    let url = &c.urls[2];
    let get = |u: String| -> Result<(u16, Vec<u8>), String> {
        let r = client.get(&u).send().map_err(|e| format!("GET {u}: {e}"))?;
        let s = r.status().as_u16();
        Ok((s, r.bytes().map_err(|e| format!("GET {u}: {e}"))?.to_vec()))
    };
    let t = Instant::now();
    let (s, narinfo) = get(format!("{url}/{}.narinfo", out.hash_part()))?;
    let narinfo = String::from_utf8_lossy(&narinfo).to_string();
    if s != 200 {
        return Err(format!("narinfo: {s} {narinfo}"));
    }
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL in the narinfo").to_string();
    let (s, nar) = get(format!("{url}/{nar_url}"))?;
    let size: u64 = narinfo.lines().find_map(|l| l.strip_prefix("NarSize: ")).and_then(|v| v.parse().ok()).unwrap();
    if s != 200 || nar.is_empty() {
        return Err(format!(
            "NAR: {s}, {} B of {size}: {}",
            nar.len(),
            String::from_utf8_lossy(&nar[..nar.len().min(300)])
        ));
    }
    Ok((size, t.elapsed().as_secs_f64()))
}

/// The seconds a NAR of `size` bytes takes at `uplink`'s cap (TCP payload of full packets).
fn at_cap(size: u64, uplink: Uplink) -> f64 {
    size as f64 / (uplink.bytes_per_s as f64 * 1448.0 / 1500.0)
}

#[test]
fn a_nar_crosses_a_512_kbit_uplink() {
    let tmp = tempfile::tempdir().unwrap();
    let uplink = Uplink::kbit(512, QUEUE_MS);
    let (c, _wan) = slow_mesh(tmp.path(), uplink);
    let mut d = Drvs::new(&tmp.path().join("drvs"));
    let out = build_nar(&c, &mut d, "slow18-adsl-2mib", 2);
    let (size, secs) = fetch(&c, &out, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let ideal = at_cap(size, uplink);
    eprintln!("{size} B NAR over a 512 kbit/s uplink in {secs:.1} s ({ideal:.1} s at the cap)");
    assert!(size > 2 * MIB, "NarSize {size}");
    assert!(secs < 1.5 * ideal, "{size} B over 512 kbit/s took {secs:.1} s, {ideal:.1} s at the cap\n{}", c.logs());
}

// ------------------------------------------------------------------------------------ benchmark

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: numbers, comma-separated")))
        .collect()
}

/// What node 2's log says about its NAR fetches since byte `from` of the log: (attempts that
/// resumed or retried, the chunk sizes of the finished fetches' requests).
fn fetch_log(dir: &Path, from: usize) -> (usize, String) {
    let log = std::fs::read_to_string(dir.join("node-2.log")).unwrap_or_default();
    // Without the colours of the log's fields (`ESC [ ... m`).
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.get(from..).unwrap_or("").chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(ch);
        }
    }
    let new = plain.as_str();
    let resumed = new.lines().filter(|l| l.contains("NAR fetch resumes")).count();
    let chunks: Vec<String> = new
        .lines()
        .filter(|l| l.contains("chunked fetch done"))
        .map(|l| {
            let field =
                |k: &str| l.split(&format!("{k}=")).nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
            format!("{} requests of {}..{} B", field("requests"), field("smallest"), field("largest"))
        })
        .collect();
    (resumed, chunks.join("; "))
}

fn log_len(dir: &Path) -> usize {
    std::fs::metadata(dir.join("node-2.log")).map(|m| m.len() as usize).unwrap_or(0)
}

#[test]
#[ignore = "benchmark: prints a table (BENCH_SLOW_KBIT, BENCH_SLOW_MB, BENCH_SLOW_LIMIT_S)"]
fn bench_slow_uplink() {
    let kbits = env_list("BENCH_SLOW_KBIT", "512,1000");
    let sizes = env_list("BENCH_SLOW_MB", "4");
    let limit = Duration::from_secs(env_list("BENCH_SLOW_LIMIT_S", "300")[0]);
    let mut rows = Vec::new();
    for &kbit in &kbits {
        let tmp = tempfile::tempdir().unwrap();
        let uplink = Uplink::kbit(kbit, QUEUE_MS);
        let (c, wan) = slow_mesh(tmp.path(), uplink);
        let mut d = Drvs::new(&tmp.path().join("drvs"));
        for &mb in &sizes {
            let out = build_nar(&c, &mut d, &format!("slow18-{kbit}-{mb}"), mb);
            let from = log_len(tmp.path());
            // While the NAR crosses the uplink: node 0 (one of the builders serving it) makes an
            // attestation 5 s into the fetch (a job only it builds, k = 1: never done at quorum
            // 2, but attested); when does node 2 get it?
            let before = c.attestation_ids(0);
            let gossip = {
                let (urls, dir) = (c.urls.clone(), d.dir.clone());
                let (drv, _) =
                    d.add_requiring(&format!("slow18-gossip-{kbit}-{mb}"), "echo hi > $out", &[], &["slow18-a"]);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(5));
                    let mut args: Vec<String> = vec!["submit".into(), "--api".into(), urls[0].clone(), "--from".into()];
                    args.extend([dir.display().to_string(), "--replicas".into(), "1".into()]);
                    args.push(sd().display(&drv));
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    let (st, o, e) = cli(&refs);
                    assert!(st.success(), "submit: {o}\n{e}");
                })
            };
            let r = fetch(&c, &out, limit);
            gossip.join().unwrap();
            let (resumed, chunks) = fetch_log(tmp.path(), from);
            // The gossip job's attestation (the one node 0 holds now and did not before): made on
            // node 0, received on node 2.
            let new = wait_for("node 0 to attest the gossip job", Duration::from_secs(120), || {
                let new: Vec<String> = c.attestation_ids(0).difference(&before).cloned().collect();
                (!new.is_empty()).then_some(new)
            });
            assert_eq!(new.len(), 1, "one new attestation on node 0: {new:?}");
            let made = arrivals(&c, 0).into_iter().find(|a| a.id == new[0]).expect("on node 0").received_at_ms;
            let delay = wait_for("node 2 to hold the gossip job's attestation", Duration::from_secs(120), || {
                let got = arrivals(&c, 2).into_iter().find(|a| a.id == new[0])?;
                Some(got.received_at_ms.saturating_sub(made))
            });
            let ideal = at_cap(mb * MIB, uplink);
            let (result, rate) = match &r {
                Ok((size, secs)) => (format!("{secs:.1} s"), format!("{:.3}", *size as f64 / MIB as f64 / secs)),
                Err(e) => (format!("failed: {e}"), "—".into()),
            };
            eprintln!("{kbit} kbit/s, {mb} MiB: {result}; {resumed} retries; {chunks}; attestation {delay} ms");
            rows.push((kbit, mb, ideal, result, rate, resumed, chunks, delay));
        }
        let (delivered, dropped) = wan.counts();
        let tail = wan.stats.tail_dropped.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{kbit} kbit/s: packets delivered {delivered}, lost {dropped}, dropped at the full buffer {tail}");
    }
    println!();
    println!(
        "| uplink (buffer {QUEUE_MS} ms), one way {} ms | NAR | at the cap | fetch | MiB/s | retries | requests (chunk sizes) | attestation from the serving builder during the fetch |",
        ONE_WAY.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kbit, mb, ideal, result, rate, resumed, chunks, delay) in rows {
        println!("| {kbit} kbit/s | {mb} MiB | {ideal:.1} s | {result} | {rate} | {resumed} | {chunks} | {delay} ms |");
    }
}
