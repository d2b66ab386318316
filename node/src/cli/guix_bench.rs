//! `buildmesh bench guix`: narinfo signatures signed and verified per second on one core, Guix
//! (ECDSA over edwards25519, `buildmesh_protocol::guix`) beside Nix (Ed25519 over the
//! fingerprint, `buildmesh_protocol::narinfo`). Each row runs on this thread alone for
//! `--seconds`, `--runs` times; the table shows the best run and the spread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use buildmesh_protocol::guix::{GuixSecretKey, sign_narinfo, verify_narinfo};
use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::nixkey::SecretKey;
use buildmesh_protocol::store_path::StoreDir;
use clap::Args;

/// The goal of issue 17: Guix verifications per second on one core.
const VERIFY_GOAL: f64 = 10_000.0;
/// Distinct narinfos cycled through.
const NARINFOS: usize = 1000;

/// `buildmesh bench guix` options.
#[derive(Debug, Args)]
pub struct GuixBenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Measurements per row (the best and the spread are shown).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn unsigned(i: usize, store: &str) -> String {
    let hash = |salt: u64| {
        let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
        (0..32)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(alphabet[(x >> 59) as usize])
            })
            .collect::<String>()
    };
    format!(
        "StorePath: {store}/{}-hello-2.12.2\nURL: nar/{}.nar\nCompression: none\n\
         NarHash: sha256:0v1px5j9dyj175c4grp9b9acljzhv665gh3r56zhyn10yldqpg{:02}\nNarSize: {}\n\
         References: {}-glibc-2.41 {}-gcc-14.3.0-lib\nDeriver: {}-hello-2.12.2.drv\n",
        hash(1),
        hash(2),
        i % 100,
        1000 + i,
        hash(3),
        hash(4),
        hash(5)
    )
}

/// Operations per second of `op` over `seconds`, cycling through `n` inputs.
fn rate(seconds: f64, n: usize, mut op: impl FnMut(usize)) -> f64 {
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget {
        for _ in 0..64 {
            op(done % n);
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

struct Row {
    what: &'static str,
    best: f64,
    worst: f64,
}

fn measure(what: &'static str, args: &GuixBenchArgs, n: usize, mut op: impl FnMut(usize)) -> Row {
    let rates: Vec<f64> = (0..args.runs.max(1)).map(|_| rate(args.seconds, n, &mut op)).collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "  {what}: {:.0}/s (runs: {})",
        best,
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
    Row { what, best, worst }
}

/// Run `buildmesh bench guix`.
pub fn run(args: GuixBenchArgs) -> anyhow::Result<()> {
    let seed = [42u8; 32];
    let guix_key = GuixSecretKey::from_ed25519_seed(&seed);
    let acl = [guix_key.public()];
    let nix_key = SecretKey::from_seed("bench-1", seed).context("bench key")?;
    let nix_public = [nix_key.public()];
    let nix_store = StoreDir::new("/nix/store").context("store dir")?;

    let guix_parts: Vec<String> = (0..NARINFOS).map(|i| unsigned(i, "/gnu/store")).collect();
    let guix_signed: Vec<String> = guix_parts
        .iter()
        .map(|p| Ok(format!("{p}{}", sign_narinfo(p, "bench", &guix_key)?)))
        .collect::<anyhow::Result<_>>()?;
    let nix_unsigned: Vec<NarInfo> = (0..NARINFOS)
        .map(|i| NarInfo::parse(&unsigned(i, "/nix/store"), &nix_store).context("bench narinfo"))
        .collect::<anyhow::Result<_>>()?;
    let nix_signed: Vec<String> = nix_unsigned
        .iter()
        .map(|ni| {
            let mut ni = ni.clone();
            ni.sign(&nix_key).context("sign")?;
            Ok(ni.to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(verify_narinfo(&guix_signed[0], &acl).accepted(), "a Guix signature does not verify");

    eprintln!("buildmesh bench guix: one thread, {} s x {} runs per row", args.seconds, args.runs);
    let rows = [
        measure("Guix sign (ECDSA edwards25519, RFC 6979)", &args, NARINFOS, |i| {
            black_box(sign_narinfo(&guix_parts[i], "bench", &guix_key).ok());
        }),
        measure("Guix verify (whole narinfo, as Guix judges it)", &args, NARINFOS, |i| {
            black_box(verify_narinfo(&guix_signed[i], &acl).accepted());
        }),
        measure("Nix sign (Ed25519 over the fingerprint)", &args, NARINFOS, |i| {
            let mut ni = nix_unsigned[i].clone();
            black_box(ni.sign(&nix_key).ok());
        }),
        measure("Nix verify (parse + Ed25519 verify)", &args, NARINFOS, |i| {
            let ni = NarInfo::parse(&nix_signed[i], &nix_store).ok();
            black_box(ni.and_then(|ni| ni.verify(&nix_public).ok()).is_some_and(|v| v.is_valid()));
        }),
    ];
    println!("| operation (one core) | per second (best) | spread (worst run) |");
    println!("|---|---:|---:|");
    for row in &rows {
        println!("| {} | {:.0} | {:.0} |", row.what, row.best, row.worst);
    }
    let verify = rows[1].best;
    println!();
    println!(
        "Guix verifications: {verify:.0}/s, goal {VERIFY_GOAL:.0}/s: {}",
        if verify >= VERIFY_GOAL { "met" } else { "NOT met" }
    );
    Ok(())
}
