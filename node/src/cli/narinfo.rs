//! `buildmesh narinfo ...` commands: sign and verify `.narinfo` files with Nix keys.

use std::fs::File;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use buildmesh_protocol::narinfo::{MAX_NARINFO_SIZE, NarInfo, SigResult};
use buildmesh_protocol::nixkey::PublicKey;
use buildmesh_protocol::store_path::StoreDir;
use clap::Subcommand;

use super::key::read_secret_key;

/// `buildmesh narinfo` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign a narinfo's fingerprint with a Nix secret key and print the narinfo with the new `Sig`
    /// line (a `Sig` by the same key name is replaced). Other lines are kept byte for byte.
    Sign {
        /// The secret key file (`nix-store --generate-binary-cache-key` or `buildmesh key generate`).
        #[arg(long)]
        secret_file: PathBuf,
        /// The store directory of the narinfo's paths.
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
        /// The narinfo file, or `-` for standard input.
        narinfo: PathBuf,
    },
    /// Verify a narinfo's `Sig` lines. Exits 0 only when a signature by a trusted key is valid for
    /// the narinfo's fingerprint; prints one line per `Sig` with its outcome.
    Verify {
        /// A trusted public key `name:base64` (repeatable), as in Nix's `trusted-public-keys`.
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<String>,
        /// The store directory of the narinfo's paths.
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
        /// The narinfo file, or `-` for standard input.
        narinfo: PathBuf,
    },
}

/// Run a `buildmesh narinfo` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Sign { secret_file, store_dir, narinfo } => {
            let key = read_secret_key(&secret_file)?;
            let mut ni = read_narinfo(&narinfo, &store_dir)?;
            ni.sign(&key).with_context(|| format!("cannot sign {}", display_name(&narinfo)))?;
            let mut out = io::stdout().lock();
            out.write_all(ni.to_string().as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Verify { trusted_keys, store_dir, narinfo } => {
            let keys = trusted_keys
                .iter()
                .map(|k| PublicKey::parse(k).with_context(|| format!("--trusted-key {k:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ni = read_narinfo(&narinfo, &store_dir)?;
            let v = ni.verify(&keys).with_context(|| format!("cannot verify {}", display_name(&narinfo)))?;
            println!("{}", ni.store_path_string());
            for check in &v.checks {
                println!("  Sig {}: {}", check.signature.key_name(), check.result);
            }
            if v.checks.is_empty() {
                bail!("{}: no Sig line: the narinfo is unsigned", display_name(&narinfo));
            }
            if !v.is_valid() {
                let unknown = v.checks.iter().filter(|c| c.result == SigResult::UnknownKey).count();
                let bad = v.checks.len() - unknown;
                bail!(
                    "{}: no valid signature by a trusted key ({} by unknown keys, {} bad)",
                    display_name(&narinfo),
                    unknown,
                    bad
                );
            }
            Ok(())
        }
    }
}

/// Read and parse a narinfo from a file or `-` (stdin), reading at most [`MAX_NARINFO_SIZE`] + 1 bytes.
fn read_narinfo(path: &Path, store_dir: &str) -> anyhow::Result<NarInfo> {
    let store_dir = StoreDir::new(store_dir).with_context(|| format!("--store-dir {store_dir:?}"))?;
    let limit = MAX_NARINFO_SIZE as u64 + 1;
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        io::stdin().lock().take(limit).read_to_end(&mut bytes).context("cannot read the narinfo from stdin")?;
    } else {
        File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    NarInfo::parse_bytes(&bytes, &store_dir).with_context(|| format!("{} is not a valid narinfo", display_name(path)))
}

fn display_name(path: &Path) -> String {
    if path == Path::new("-") { "<stdin>".to_string() } else { path.display().to_string() }
}
