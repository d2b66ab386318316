//! The Guix side of `buildmesh key` and `buildmesh narinfo` (docs/guix.md): the node key as a
//! Guix key, and narinfos signed and verified exactly as Guix does (`buildmesh_protocol::guix`).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use buildmesh_protocol::guix::{
    GUIX_STORE_DIR, GuixPublicKey, GuixSecretKey, parse_keys, sign_narinfo, verify_narinfo_in,
};
use buildmesh_protocol::nixkey::{PublicKey, SecretKey};

/// The largest key or ACL file read (an ACL of a thousand keys is about 200 KiB).
const MAX_KEY_FILE: u64 = 1 << 20;
/// The largest narinfo read.
const MAX_NARINFO: u64 = 1 << 20;
/// The narinfo lines `guix publish` writes after the signature (unsigned), in its current layout.
const UNSIGNED_FIELDS: [&str; 4] = ["URL:", "Compression:", "FileSize:", "FileHash:"];

fn read_limited(path: &Path, limit: u64, what: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {what} from stdin"))?;
    } else {
        File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {what} {}", path.display()))?;
    }
    if bytes.len() as u64 > limit {
        bail!("{what} {} is larger than {limit} bytes", path.display());
    }
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not UTF-8", path.display()))
}

/// A Guix signing key from a file holding either Guix's `signing-key.sec` s-expression or a
/// node key file (Nix secret key `name:base64`, whose secret scalar is the Guix secret).
pub fn read_guix_secret(path: &Path) -> anyhow::Result<GuixSecretKey> {
    let text = read_limited(path, MAX_KEY_FILE, "secret key file")?;
    if text.trim_start().starts_with('(') {
        GuixSecretKey::parse_sexp(&text).with_context(|| format!("{} is not a Guix secret key", path.display()))
    } else {
        let key = SecretKey::parse(&text)
            .with_context(|| format!("{} is neither a Guix secret key nor a node (Nix) key file", path.display()))?;
        Ok(GuixSecretKey::from_ed25519_seed(&key.seed()))
    }
}

/// The Guix public key from a file holding a node key file, a Nix public key, or a Guix secret
/// or public key s-expression.
pub fn read_guix_public(path: &Path) -> anyhow::Result<GuixPublicKey> {
    let text = read_limited(path, MAX_KEY_FILE, "key file")?;
    let trimmed = text.trim();
    if trimmed.starts_with("(public-key") {
        return GuixPublicKey::parse_sexp(trimmed).with_context(|| format!("{}", path.display()));
    }
    if trimmed.starts_with('(') || SecretKey::parse(trimmed).is_ok() {
        return Ok(read_guix_secret(path)?.public());
    }
    let public = PublicKey::parse(trimmed)
        .with_context(|| format!("{} holds no key buildmesh knows (node key, Nix or Guix key)", path.display()))?;
    Ok(GuixPublicKey::from_ed25519(public.verifying_key()))
}

/// `buildmesh key guix-public --api URL`: the node's Guix key from `GET URL/api/v1/node`.
pub fn fetch_guix_public(api: &str) -> anyhow::Result<GuixPublicKey> {
    let url = format!("{}/api/v1/node", api.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let response = client.get(&url).send().with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let bytes = response.bytes().with_context(|| format!("GET {url}"))?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("GET {url}: not JSON"))?;
    if let Some(sexp) = body.get("guix_public_key").and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
        return GuixPublicKey::parse_sexp(sexp).with_context(|| format!("GET {url}: guix_public_key"));
    }
    // A node from before the field: its Nix public key is the same point.
    let nix = body.get("public_key").and_then(|v| v.as_str()).with_context(|| format!("GET {url}: no public_key"))?;
    let public = PublicKey::parse(nix).with_context(|| format!("GET {url}: public_key {nix:?}"))?;
    Ok(GuixPublicKey::from_ed25519(public.verifying_key()))
}

/// The narinfo with Guix's `Signature:` line. A narinfo that already has one keeps its signed
/// region and trailer and gets the line replaced; otherwise it is laid out as the current
/// `guix publish` does: URL/Compression/FileSize/FileHash lines after the signature, the rest
/// (StorePath, NarHash, NarSize, References, Deriver, ...) signed in its order.
pub fn guix_sign_text(text: &str, host: &str, key: &GuixSecretKey) -> anyhow::Result<String> {
    let (region, trailer) = match text.find("Signature:") {
        Some(index) => {
            let region = &text[..index];
            if !region.is_empty() && !region.ends_with('\n') {
                bail!("\"Signature:\" is not at the start of a line");
            }
            let rest = &text[index..];
            let trailer = rest.split_once('\n').map(|(_, t)| t).unwrap_or("");
            (region.to_string(), trailer.to_string())
        }
        None => {
            let (mut region, mut trailer) = (String::new(), String::new());
            for line in text.lines() {
                let target =
                    if UNSIGNED_FIELDS.iter().any(|f| line.starts_with(f)) { &mut trailer } else { &mut region };
                target.push_str(line);
                target.push('\n');
            }
            (region, trailer)
        }
    };
    let line = sign_narinfo(&region, host, key)?;
    Ok(format!("{region}{line}{trailer}"))
}

/// `buildmesh narinfo sign --guix`.
pub fn sign(secret_file: &Path, host: Option<&str>, narinfo: &Path) -> anyhow::Result<()> {
    let key = read_guix_secret(secret_file)?;
    let host = match host {
        Some(h) => h.to_string(),
        None => nix::unistd::gethostname()
            .context("cannot read the host name (pass --host)")?
            .to_string_lossy()
            .into_owned(),
    };
    let text = read_limited(narinfo, MAX_NARINFO, "narinfo")?;
    let signed = guix_sign_text(&text, &host, &key).with_context(|| format!("cannot sign {}", narinfo.display()))?;
    let mut out = io::stdout().lock();
    out.write_all(signed.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `buildmesh narinfo verify --guix-key FILE... --acl FILE...`: Guix's verdict; Ok only when a
/// Guix client would use the narinfo.
pub fn verify(guix_keys: &[PathBuf], acls: &[PathBuf], store_dir: Option<&str>, narinfo: &Path) -> anyhow::Result<()> {
    let mut acl = Vec::new();
    for path in guix_keys.iter().chain(acls) {
        let text = read_limited(path, MAX_KEY_FILE, "key file")?;
        acl.extend(parse_keys(&text).with_context(|| format!("{} is not a Guix public key or ACL", path.display()))?);
    }
    let text = read_limited(narinfo, MAX_NARINFO, "narinfo")?;
    let verdict = verify_narinfo_in(&text, &acl, store_dir.unwrap_or(GUIX_STORE_DIR));
    println!("{}", verdict.store_path.as_deref().unwrap_or("(no StorePath)"));
    println!("  Signature {}: {}", verdict.host.as_deref().unwrap_or("-"), verdict.describe());
    if !verdict.accepted() {
        bail!("{}: Guix would refuse this narinfo ({})", narinfo.display(), verdict.status);
    }
    Ok(())
}
