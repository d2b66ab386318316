//! Speed of the manifest codec on a synthetic revision of 100,000 jobs over a closure of 150,000
//! derivations (issue 13: decoding one of 100,000 jobs must take well under 100 ms in release).
//! A benchmark, not a check: it prints a table and asserts nothing about time.
//!
//! `cargo test --release -p buildmesh-protocol --test manifest_speed -- --ignored --nocapture`

use std::time::{Duration, Instant};

use buildmesh_protocol::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput, manifest_hash};
use buildmesh_protocol::store_path::{StoreDir, StorePath};

const DRVS: usize = 150_000;
const JOBS: usize = 100_000;
const SYSTEMS: [&str; 4] = ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"];

fn digest(i: usize, salt: u8) -> [u8; 20] {
    let h = blake3::hash(&[&(i as u64).to_le_bytes()[..], &[salt]].concat());
    let mut d = [0u8; 20];
    d.copy_from_slice(&h.as_bytes()[..20]);
    d
}

/// A manifest shaped like a distribution's: ~3 inputs per derivation (each towards an older one,
/// so acyclic), one in five with a `dev` output, names `pkgN-1.M`.
fn synthetic() -> Manifest {
    let name = |i: usize| format!("pkg{i}-1.{}", i % 100);
    let mut order: Vec<(StorePath, usize)> =
        (0..DRVS).map(|i| (StorePath::new(digest(i, 0), &format!("{}.drv", name(i))).unwrap(), i)).collect();
    order.sort();
    let mut index_of = vec![0u32; DRVS];
    for (k, (_, i)) in order.iter().enumerate() {
        index_of[*i] = k as u32;
    }
    let drvs = order
        .into_iter()
        .map(|(drv, i)| {
            let mut inputs: Vec<u32> = if i == 0 {
                vec![]
            } else {
                (0..3u8)
                    .map(|s| index_of[u64::from_le_bytes(digest(i, s + 1)[..8].try_into().unwrap()) as usize % i])
                    .collect()
            };
            inputs.sort_unstable();
            inputs.dedup();
            let mut outputs = vec![];
            if i % 5 == 0 {
                outputs.push(ManifestOutput {
                    name: "dev".into(),
                    path: StorePath::new(digest(i, 9), &format!("{}-dev", name(i))).unwrap(),
                });
            }
            outputs.push(ManifestOutput { name: "out".into(), path: StorePath::new(digest(i, 8), &name(i)).unwrap() });
            ManifestDrv { drv, system: (i % SYSTEMS.len()) as u16, inputs, outputs }
        })
        .collect();
    let mut jobs: Vec<ManifestJob> = (0..JOBS)
        .map(|i| ManifestJob {
            drv: index_of[DRVS - 1 - i],
            package: format!("pkg{}", DRVS - 1 - i),
            version: format!("1.{}", (DRVS - 1 - i) % 100),
        })
        .collect();
    jobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
    Manifest { store_dir: StoreDir::nix(), systems: SYSTEMS.map(String::from).to_vec(), drvs, jobs }
}

/// This thread's time on a CPU (ns), from `/proc/thread-self/schedstat`: on a machine shared with
/// other builds, wall time counts the waits for a core, CPU time does not.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Best and median wall time and best CPU time (ms) of `runs` runs; the result is dropped outside
/// the timed window.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64, f64) {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..runs {
        let (c, t) = (cpu_ns(), Instant::now());
        let v = std::hint::black_box(f());
        wall.push(t.elapsed());
        cpu.push(cpu_ns() - c);
        drop(v);
    }
    wall.sort();
    cpu.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(wall[0]), ms(wall[runs / 2]), cpu[0] as f64 / 1e6)
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn manifest_codec_speed() {
    let t = Instant::now();
    let m = synthetic();
    let built = t.elapsed();
    m.validate().unwrap();
    let bytes = m.encode_to_vec();
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    let zstd = zstd::encode_all(&bytes[..], 3).unwrap();
    let runs = 7;
    println!(
        "synthetic manifest: {} jobs, {} drvs, {} systems, {:.1} MiB encoded, {:.1} MiB zstd -3 (generated in {:.0} ms)",
        m.jobs.len(),
        m.drvs.len(),
        m.systems.len(),
        bytes.len() as f64 / 1048576.0,
        zstd.len() as f64 / 1048576.0,
        built.as_secs_f64() * 1e3
    );
    println!("| operation ({runs} runs) | wall best ms | wall median ms | CPU best ms |");
    println!("|---|---|---|---|");
    let row = |what: &str, (b, m, c): (f64, f64, f64)| println!("| {what} | {b:.1} | {m:.1} | {c:.1} |");
    row("encode (`encode_to_vec`)", time(runs, || m.encode_to_vec()));
    row("hash (blake3 of the bytes)", time(runs, || manifest_hash(&bytes)));
    row("decode (`Manifest::decode`, all checks)", time(runs, || Manifest::decode(&bytes).unwrap()));
    row("validate (`Manifest::validate`)", time(runs, || m.validate().unwrap()));
    row("jobs_per_system", time(runs, || m.jobs_per_system()));
    row("encode + decode", time(runs, || Manifest::decode(&m.encode_to_vec()).unwrap()));
    row("drop a decoded manifest", {
        let mut copies: Vec<Manifest> = (0..runs).map(|_| m.clone()).collect();
        time(runs, || drop(copies.pop()))
    });
}
