//! The narinfo layout `guix publish` writes today (2025 `guix/scripts/publish.scm`), which is what
//! a node with store dir `/gnu/store` serves (`../shared/FORMATS.md`, "Guix narinfo signatures"):
//!
//! ```text
//! StorePath: /gnu/store/<hash>-<name>
//! NarHash: sha256:<nix32>
//! NarSize: <n>
//! References: <basename> <basename>      (`References: ` with a trailing space when empty)
//! Deriver: <basename>.drv                 (only when known)
//! Signature: 1;<host>;<base64 of the signature s-expression>
//! URL: nar/zstd/<basename>
//! Compression: zstd
//! FileSize: <n>
//! URL: nar/<basename>
//! Compression: none
//! FileSize: <n>
//! ```
//!
//! Guix signs the bytes **before** `Signature:` ([`signed_part`]); the URL triples come after it,
//! unsigned, so a server may change them without re-signing. [`signed_part`] is the one function
//! that renders those bytes from attested facts: a builder signs what it returns when it attests
//! an output, and every gateway serves what it returns for the same facts, so a builder's signature
//! made at build time is valid in any gateway's narinfo.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::guix::{GuixPublicKey, GuixSecretKey, GuixStatus, sign_narinfo, verify_narinfo_in};
use crate::hash::NixHash;
use crate::id::NodeId;
use crate::identity::NodeKey;
use crate::store_path::{StoreDir, StorePath};
use crate::wire::OutputAttestation;

/// One `URL`/`Compression`/`FileSize` triple of a Guix narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarUrl {
    /// `URL`, relative to the cache (e.g. `nar/zstd/<basename>`).
    pub url: String,
    /// `Compression`: `zstd`, `none`, ...
    pub compression: String,
    /// `FileSize`: the size of the file at `URL`.
    pub file_size: u64,
}

impl NarUrl {
    /// The zstd triple `guix publish` writes: `nar/zstd/<basename>`.
    pub fn zstd(path: &StorePath, file_size: u64) -> NarUrl {
        NarUrl { url: format!("nar/zstd/{path}"), compression: "zstd".into(), file_size }
    }

    /// The uncompressed triple: `nar/<basename>`, `Compression: none`, `FileSize` = NarSize.
    pub fn none(path: &StorePath, nar_size: u64) -> NarUrl {
        NarUrl { url: format!("nar/{path}"), compression: "none".into(), file_size: nar_size }
    }
}

/// The signed part of a Guix narinfo: `StorePath`, `NarHash`, `NarSize`, `References` (base
/// names, sorted, space-separated; `References: ` when empty) and `Deriver` when known, each line
/// ending in `\n`. The same facts give the same bytes on every node.
///
/// `references` may contain `path` itself (a self-reference), as Guix writes it.
pub fn signed_part(
    sd: &StoreDir,
    path: &StorePath,
    nar_hash: &[u8; 32],
    nar_size: u64,
    references: &BTreeSet<StorePath>,
    deriver: Option<&StorePath>,
) -> String {
    let mut s = String::with_capacity(160 + references.len() * 48);
    let _ = writeln!(s, "StorePath: {}", sd.display(path));
    let _ = writeln!(s, "NarHash: {}", NixHash::sha256(*nar_hash));
    let _ = writeln!(s, "NarSize: {nar_size}");
    // Base names sort like the store paths they name (a `StorePath` orders by its base name's
    // text: hash part first, then the name).
    let mut refs: Vec<String> = references.iter().map(|r| r.to_string()).collect();
    refs.sort();
    let _ = writeln!(s, "References: {}", refs.join(" "));
    if let Some(d) = deriver {
        let _ = writeln!(s, "Deriver: {d}");
    }
    s
}

/// A whole narinfo in the current `guix publish` layout: `signed` (from [`signed_part`]), the
/// `Signature:` line when there is one (`signature` is its value, `1;<host>;<base64>`), then the
/// URL triples.
pub fn render(signed: &str, signature: Option<&str>, urls: &[NarUrl]) -> String {
    let mut s = String::with_capacity(signed.len() + signature.map_or(0, |x| x.len() + 12) + urls.len() * 120);
    s.push_str(signed);
    if let Some(sig) = signature {
        let _ = writeln!(s, "Signature: {sig}");
    }
    for u in urls {
        let _ = writeln!(s, "URL: {}\nCompression: {}\nFileSize: {}", u.url, u.compression, u.file_size);
    }
    s
}

/// Whether `sd` is Guix's store (`/gnu/store`): its narinfos use this layout, and attestations of
/// its outputs carry the builder's Guix signature.
pub fn is_guix_store(sd: &StoreDir) -> bool {
    sd.to_string() == GUIX_STORE
}

/// Guix's store directory.
pub const GUIX_STORE: &str = "/gnu/store";

/// The builder's Guix signature of an output it attests: the value of the `Signature:` line
/// (`1;<key name>;<base64>`) over [`OutputAttestation::guix_signed_part`], made with the Guix key
/// of the node key (its Ed25519 secret scalar; [`GuixSecretKey::from_ed25519_seed`]). `None` only
/// when Guix could not read the signed part (a key name that cannot be a Guix host name).
pub fn sign_output(key: &NodeKey, sd: &StoreDir, o: &OutputAttestation) -> Option<String> {
    let secret = GuixSecretKey::from_ed25519_seed(&key.seed());
    let line = sign_narinfo(&o.guix_signed_part(sd), key.name(), &secret).ok()?;
    Some(line.strip_prefix("Signature: ")?.strip_suffix('\n')?.to_string())
}

/// The Guix public key of a node (its Ed25519 public key as an edwards25519 point).
pub fn guix_public_key(node: &NodeId) -> Result<GuixPublicKey, String> {
    let vk = node.verifying_key().map_err(|e| e.to_string())?;
    Ok(GuixPublicKey::from_ed25519(&vk))
}

/// Check that `sig` (a `Signature:` value) is `builder`'s valid Guix signature of the output `o`:
/// Guix's own verdict ([`verify_narinfo_in`]) on the narinfo a gateway serves, under an ACL of the
/// builder's key alone.
pub fn check_output_signature(builder: &NodeId, sd: &StoreDir, o: &OutputAttestation, sig: &str) -> Result<(), String> {
    if sig.contains('\n') || !sig.starts_with("1;") {
        return Err("the Guix signature is not one `1;<host>;<base64>` value".to_string());
    }
    let key = guix_public_key(builder)?;
    let text = render(&o.guix_signed_part(sd), Some(sig), &[NarUrl::none(&o.path, o.nar_size)]);
    let verdict = verify_narinfo_in(&text, &[key], &sd.to_string());
    if verdict.status != GuixStatus::ValidSignature {
        return Err(format!(
            "the Guix signature is not the builder's signature of its narinfo: {}",
            verdict.describe()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    #[test]
    fn renders_the_current_publish_layout() {
        let sd = StoreDir::new("/gnu/store").unwrap();
        let out = p("cs56i9digj9qg1bd383cmxc6xrfpdn9n-hello-2.12.2");
        let refs = BTreeSet::from([p("zz56i9digj9qg1bd383cmxc6xrfpdn9n-glibc"), out.clone()]);
        let drv = p("rxw8g87bl6dvv4n6gzqr3mcmd8gmqk8c-hello-2.12.2.drv");
        let signed = signed_part(&sd, &out, &[0; 32], 282616, &refs, Some(&drv));
        assert_eq!(
            signed,
            "StorePath: /gnu/store/cs56i9digj9qg1bd383cmxc6xrfpdn9n-hello-2.12.2\n\
             NarHash: sha256:0000000000000000000000000000000000000000000000000000\n\
             NarSize: 282616\n\
             References: cs56i9digj9qg1bd383cmxc6xrfpdn9n-hello-2.12.2 zz56i9digj9qg1bd383cmxc6xrfpdn9n-glibc\n\
             Deriver: rxw8g87bl6dvv4n6gzqr3mcmd8gmqk8c-hello-2.12.2.drv\n"
        );
        let text = render(&signed, Some("1;h;QUJD"), &[NarUrl::zstd(&out, 10), NarUrl::none(&out, 282616)]);
        assert!(text.starts_with(&signed));
        assert!(text.ends_with(
            "Signature: 1;h;QUJD\n\
             URL: nar/zstd/cs56i9digj9qg1bd383cmxc6xrfpdn9n-hello-2.12.2\nCompression: zstd\nFileSize: 10\n\
             URL: nar/cs56i9digj9qg1bd383cmxc6xrfpdn9n-hello-2.12.2\nCompression: none\nFileSize: 282616\n"
        ));
    }

    #[test]
    fn attested_outputs_carry_a_guix_signature_that_guix_accepts() {
        let sd = StoreDir::new(GUIX_STORE).unwrap();
        let key = NodeKey::from_seed("builder-1", [9; 32]).unwrap();
        let out = p("cs56i9digj9qg1bd383cmxc6xrfpdn9n-x");
        let refs = BTreeSet::from([out.clone()]);
        let o = OutputAttestation::new_signed(
            &key,
            &sd,
            out.clone(),
            [3; 32],
            5,
            refs,
            crate::id::ArtifactHash::of(b"x"),
            None,
        )
        .unwrap();
        let sig = o.guix_signature.clone().expect("a /gnu/store output is signed for Guix");
        assert!(sig.starts_with("1;builder-1;"), "{sig}");
        check_output_signature(&key.node_id(), &sd, &o, &sig).unwrap();
        // Another builder's key, other facts, or a mangled value: refused.
        let other = NodeKey::from_seed("b2", [8; 32]).unwrap();
        assert!(check_output_signature(&other.node_id(), &sd, &o, &sig).unwrap_err().contains("unauthorized"));
        let mut changed = o.clone();
        changed.nar_size = 6;
        assert!(check_output_signature(&key.node_id(), &sd, &changed, &sig).unwrap_err().contains("hash-mismatch"));
        assert!(check_output_signature(&key.node_id(), &sd, &o, &format!("{sig}\nURL: x")).is_err());
        // A /nix/store output carries none.
        let nix = OutputAttestation::new_signed(
            &key,
            &StoreDir::nix(),
            out,
            [3; 32],
            5,
            BTreeSet::new(),
            crate::id::ArtifactHash::of(b"x"),
            None,
        )
        .unwrap();
        assert!(nix.guix_signature.is_none());
    }

    #[test]
    fn empty_references_keep_the_trailing_space_and_no_deriver_line() {
        let sd = StoreDir::new("/gnu/store").unwrap();
        let out = p("cs56i9digj9qg1bd383cmxc6xrfpdn9n-x");
        let signed = signed_part(&sd, &out, &[0; 32], 1, &BTreeSet::new(), None);
        assert!(signed.ends_with("NarSize: 1\nReferences: \n"), "{signed:?}");
    }
}
