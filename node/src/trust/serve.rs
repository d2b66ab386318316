//! The binary cache under the trust rule: which narinfo is served for a path and whether a NAR
//! may be served at all. The narinfo and NAR routes of the gateway (standalone and mesh) call
//! these before anything else, so both follow the same rule:
//!
//! - an accepted output is served with the NarHash, NarSize and references its agreeing builders
//!   attested, and their own `Sig` lines (nothing is signed here);
//! - a content-addressed path whose bytes match it is served with its `CA:` line and no `Sig`
//!   (Nix checks such a path against its content and needs no signature);
//! - `/nar/<NarHash>` is served only when that NarHash is the accepted one of some path that
//!   carries it (registered or attested here).
//!
//! A node whose store dir is `/gnu/store` writes the layout `guix publish` writes
//! ([`buildmesh_protocol::narinfo::guix_layout`]): the signed part rendered from the accepted
//! facts, then **one** `Signature:` line (Guix reads only the first), the Guix signature that an
//! agreeing *trusted* builder made when it built the output and carried in its attestation (the
//! trusted builder with the lowest node id, so every gateway picks the same one), then the
//! `nar/zstd/<basename>` and `nar/<basename>` triples. Nothing is signed here either: a Guix client
//! authorizes the keys of the mesh's trusted builders (`buildmesh key guix-public`), as a Nix
//! client lists them in `trusted-public-keys`. A path with no such signature (a content-addressed
//! source, an attestation made before builders signed for Guix) is not served in this layout: Guix
//! refuses unsigned narinfos anyway.

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::narinfo::guix_layout::{self, NarUrl};
use buildmesh_protocol::narinfo::{ContentAddress, Deriver, NarInfo};
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use super::{Judgement, TrustError, judge};
use crate::store::{BlobInfo, PathInfo, Store};

/// The narinfo of `path` under `judgement`, pointing at the zstd `blob` (which holds the accepted
/// NAR); `local` is the path's registration here, whose `CA` is used when it has the accepted
/// NarHash. `None` when nothing is accepted. In the Guix layout when `sd` is `/gnu/store` (see the
/// module docs; `trust` says whose Guix signature may be served).
pub fn render(
    sd: &StoreDir,
    trust: &TrustConfig,
    path: &StorePath,
    judgement: &Judgement,
    blob: &BlobInfo,
    local: Option<&PathInfo>,
) -> Option<String> {
    if guix_layout::is_guix_store(sd) {
        return render_guix(sd, trust, judgement, blob);
    }
    let (digest, size, references, deriver, ca, sigs) = match judgement {
        Judgement::Attested(acc) => {
            let ca = local.filter(|l| l.nar_hash == acc.nix_hash()).and_then(|l| l.ca.clone());
            (acc.nar_hash, acc.nar_size, acc.references(), acc.deriver(), ca, acc.signatures())
        }
        Judgement::ContentAddressed(info, ca) => {
            let digest: [u8; 32] = info.nar_hash.digest().try_into().ok()?;
            (digest, info.nar_size, info.references.clone(), info.deriver.clone(), Some(ca.clone()), Vec::new())
        }
        Judgement::Refused(_) => return None,
    };
    if blob.nar_size != size || blob.nar_hash != NixHash::sha256(digest) {
        return None;
    }
    let mut ni = NarInfo::new(sd.clone(), path.clone(), digest, size, references.into_iter().collect());
    ni.url = format!("nar/{}.nar.zst", nixbase32::encode(&digest));
    ni.compression = Some("zstd".to_string());
    ni.file_size = Some(blob.compressed_size);
    ni.deriver = deriver.map(Deriver::Path);
    ni.ca = ca.as_deref().and_then(|ca| ContentAddress::parse(ca).ok());
    ni.sigs = sigs;
    Some(ni.to_string())
}

/// The Guix-layout narinfo of an accepted output: its signed part, the Guix signature of the
/// agreeing trusted builder with the lowest node id, the zstd and uncompressed triples.
fn render_guix(sd: &StoreDir, trust: &TrustConfig, judgement: &Judgement, blob: &BlobInfo) -> Option<String> {
    let Judgement::Attested(acc) = judgement else { return None };
    if blob.nar_size != acc.nar_size || blob.nar_hash != acc.nix_hash() {
        return None;
    }
    let (_, signer) = acc.agreeing.iter().find(|(b, o)| trust.is_trusted(b) && o.guix_signature.is_some())?;
    let urls = [NarUrl::zstd(&acc.path, blob.compressed_size), NarUrl::none(&acc.path, acc.nar_size)];
    Some(guix_layout::render(&signer.guix_signed_part(sd), signer.guix_signature.as_deref(), &urls))
}

/// The narinfo of the registered path with this hash part, if the trust rule accepts it and
/// its accepted NAR is stored here (blocking; a standalone node's narinfo route).
pub fn narinfo_for(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    hash_part: &str,
) -> Result<Option<String>, TrustError> {
    let Some(local) = store.path_by_hash_part(hash_part)? else { return Ok(None) };
    let judgement = judge(store, sd, trust, &local.path)?;
    let Some(nar_hash) = judgement.nar_hash() else {
        if let Judgement::Refused(r) = &judgement {
            tracing::debug!(path = %local.path, reason = %r, "narinfo refused by the trust rule");
        }
        return Ok(None);
    };
    let Some(blob) = store.blob_by_nar_hash(&nar_hash)? else {
        tracing::warn!(path = %local.path, %nar_hash, "accepted NAR is not stored here");
        return Ok(None);
    };
    Ok(render(sd, trust, &local.path, &judgement, &blob, Some(&local)))
}

/// Whether `/nar/<nar_hash>` may be served: a path that carries this NarHash (registered or
/// attested here) is accepted with exactly it (blocking).
pub fn nar_servable(
    store: &Store,
    sd: &StoreDir,
    trust: &TrustConfig,
    nar_hash: &[u8; 32],
) -> Result<bool, TrustError> {
    let wanted = NixHash::sha256(*nar_hash);
    for path in store.paths_with_nar_hash(nar_hash)? {
        if judge(store, sd, trust, &path)?.nar_hash().as_ref() == Some(&wanted) {
            return Ok(true);
        }
    }
    Ok(false)
}
