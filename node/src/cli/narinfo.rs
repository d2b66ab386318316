//! `buildmesh narinfo ...` commands: sign and verify `.narinfo` files with Nix keys, or with
//! `--guix`/`--guix-key`/`--acl` as Guix does (`cli/guix.rs`).

use std::fs::File;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use buildmesh_protocol::narinfo::{MAX_NARINFO_SIZE, NarInfo, SigResult};
use buildmesh_protocol::nixkey::PublicKey;
use buildmesh_protocol::store_path::StoreDir;
use clap::Subcommand;

use super::key::read_secret_key;

/// The store directory of Nix narinfos unless `--store-dir` says otherwise.
const NIX_STORE_DIR: &str = "/nix/store";

/// `buildmesh narinfo` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign a narinfo's fingerprint with a Nix secret key and print the narinfo with the new `Sig`
    /// line (a `Sig` by the same key name is replaced). Other lines are kept byte for byte.
    /// With `--guix`, sign it as Guix does instead (a `Signature:` line; docs/guix.md).
    Sign {
        /// The secret key file (`nix-store --generate-binary-cache-key` or `buildmesh key generate`;
        /// with `--guix` also Guix's `signing-key.sec`).
        #[arg(long)]
        secret_file: PathBuf,
        /// The store directory of the narinfo's paths (default `/nix/store`; not used with `--guix`).
        #[arg(long)]
        store_dir: Option<String>,
        /// Sign for Guix: ECDSA over edwards25519 with the same key, `Signature: 1;<host>;<base64>`.
        #[arg(long)]
        guix: bool,
        /// With `--guix`: the host name in the `Signature:` line (default: this machine's name, as
        /// `guix publish` writes it).
        #[arg(long, requires = "guix")]
        host: Option<String>,
        /// The narinfo file, or `-` for standard input.
        narinfo: PathBuf,
    },
    /// Verify a narinfo's `Sig` lines. Exits 0 only when a signature by a trusted key is valid for
    /// the narinfo's fingerprint; prints one line per `Sig` with its outcome.
    Verify {
        /// A trusted public key `name:base64` (repeatable), as in Nix's `trusted-public-keys`.
        #[arg(long = "trusted-key", required_unless_present_any = ["guix_keys", "acls"])]
        trusted_keys: Vec<String>,
        /// Check the Guix `Signature:` instead, as Guix does, authorizing this Guix public key
        /// file (repeatable; `signing-key.pub`, or the output of `buildmesh key guix-public`).
        /// Exits 0 only when Guix would accept the narinfo; otherwise prints Guix's status.
        #[arg(long = "guix-key", conflicts_with = "trusted_keys")]
        guix_keys: Vec<PathBuf>,
        /// Like `--guix-key`, with the keys of a Guix ACL file (`/etc/guix/acl`; repeatable).
        #[arg(long = "acl", conflicts_with = "trusted_keys")]
        acls: Vec<PathBuf>,
        /// The store directory of the narinfo's paths (default `/nix/store`, `/gnu/store` for Guix).
        #[arg(long)]
        store_dir: Option<String>,
        /// The narinfo file, or `-` for standard input.
        narinfo: PathBuf,
    },
}

/// Run a `buildmesh narinfo` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Sign { secret_file, guix: true, host, narinfo, .. } => {
            super::guix::sign(&secret_file, host.as_deref(), &narinfo)
        }
        Command::Sign { secret_file, store_dir, narinfo, .. } => {
            let key = read_secret_key(&secret_file)?;
            let mut ni = read_narinfo(&narinfo, store_dir.as_deref().unwrap_or(NIX_STORE_DIR))?;
            ni.sign(&key).with_context(|| format!("cannot sign {}", display_name(&narinfo)))?;
            let mut out = io::stdout().lock();
            out.write_all(ni.to_string().as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Verify { guix_keys, acls, store_dir, narinfo, .. } if !guix_keys.is_empty() || !acls.is_empty() => {
            super::guix::verify(&guix_keys, &acls, store_dir.as_deref(), &narinfo)
        }
        Command::Verify { trusted_keys, store_dir, narinfo, .. } => {
            let store_dir = store_dir.as_deref().unwrap_or(NIX_STORE_DIR);
            let keys = trusted_keys
                .iter()
                .map(|k| PublicKey::parse(k).with_context(|| format!("--trusted-key {k:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ni = read_narinfo(&narinfo, store_dir)?;
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
