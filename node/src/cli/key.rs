//! `buildmesh key ...` commands: Nix binary-cache signing keys.
//!
//! The files are the ones `nix-store --generate-binary-cache-key` writes: the secret key file is
//! `name:base64(seed ‖ public)` with mode 0600, the public key file `name:base64(public)` with mode
//! 0644, both without a trailing newline. `nix store sign --key-file` and
//! `--trusted-public-keys "$(cat public)"` accept them.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use buildmesh_protocol::nixkey::SecretKey;
use clap::Subcommand;

/// `buildmesh key` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a Nix signing key pair (like `nix-store --generate-binary-cache-key NAME SECRET PUBLIC`).
    Generate {
        /// The key name, conventionally `<host>-<n>` (e.g. `cache.example.org-1`).
        name: String,
        /// Where to write the secret key (mode 0600).
        #[arg(long)]
        secret_file: PathBuf,
        /// Where to write the public key (mode 0644).
        #[arg(long)]
        public_file: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key (`name:base64`) of a secret key file.
    Public {
        /// The secret key file.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Print a node's Guix public key, `(public-key (ecc (curve Ed25519) (q #...#)))`: what
    /// `guix archive --authorize` takes. The same key as the node's Nix key (docs/guix.md).
    GuixPublic {
        /// A node key file (`DATA/node.key`), a Nix public key, or a Guix key s-expression.
        #[arg(long, required_unless_present = "api", conflicts_with = "api")]
        key: Option<PathBuf>,
        /// A running node's HTTP address; its key is read from `GET /api/v1/node`.
        #[arg(long)]
        api: Option<String>,
    },
    /// Print a node key as Guix's `signing-key.sec` s-expression (for `guix publish` or
    /// `guix archive --export` with the node's key). Prints a secret: redirect it to a file.
    GuixSecret {
        /// The node key file (`DATA/node.key`) or a Nix secret key file.
        #[arg(long)]
        key: PathBuf,
    },
}

/// Run a `buildmesh key` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Generate { name, secret_file, public_file, force } => {
            let key = generate(&name)?;
            if secret_file == public_file {
                bail!("--secret-file and --public-file are the same file");
            }
            if !force {
                for f in [&secret_file, &public_file] {
                    if f.symlink_metadata().is_ok() {
                        bail!("{} already exists (use --force to overwrite)", f.display());
                    }
                }
            }
            write_file(&secret_file, &key.to_file_string(), 0o600, force)?;
            write_file(&public_file, &key.public().to_string(), 0o644, force)?;
            println!("{}", key.public());
            Ok(())
        }
        Command::Public { secret_file } => {
            let key = read_secret_key(&secret_file)?;
            println!("{}", key.public());
            Ok(())
        }
        Command::GuixPublic { key, api } => {
            let public = match (key, api) {
                (Some(path), _) => super::guix::read_guix_public(&path)?,
                (None, Some(api)) => super::guix::fetch_guix_public(&api)?,
                (None, None) => bail!("pass --key FILE or --api URL"),
            };
            print!("{}", public.to_sexp());
            Ok(())
        }
        Command::GuixSecret { key } => {
            print!("{}", super::guix::read_guix_secret(&key)?.to_sexp());
            Ok(())
        }
    }
}

/// A new key named `name` from 32 bytes of operating-system randomness.
pub fn generate(name: &str) -> anyhow::Result<SecretKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("cannot get randomness from the OS: {e}"))?;
    Ok(SecretKey::from_seed(name, seed)?)
}

/// Read a secret key file (`name:base64(64 bytes)`; surrounding whitespace is ignored).
pub fn read_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read secret key file {}", path.display()))?;
    if meta.len() > 4096 {
        bail!("{} is {} bytes: too large for a secret key file", path.display(), meta.len());
    }
    let text = fs::read_to_string(path).with_context(|| format!("cannot read secret key file {}", path.display()))?;
    SecretKey::parse(&text).with_context(|| format!("{} is not a Nix secret key file", path.display()))
}

fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    if force && path.symlink_metadata().is_ok() {
        // Replace rather than truncate, so that the new file gets `mode` even if the old one was
        // world-readable, and a symlink is not followed.
        fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
