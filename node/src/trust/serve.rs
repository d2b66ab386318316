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

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::narinfo::{ContentAddress, Deriver, NarInfo};
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use super::{Judgement, TrustError, judge};
use crate::store::{BlobInfo, PathInfo, Store};

/// The narinfo of `path` under `judgement`, pointing at the zstd `blob` (which holds the accepted
/// NAR); `local` is the path's registration here, whose `CA` is used when it has the accepted
/// NarHash. `None` when nothing is accepted.
pub fn render(
    sd: &StoreDir,
    path: &StorePath,
    judgement: &Judgement,
    blob: &BlobInfo,
    local: Option<&PathInfo>,
) -> Option<String> {
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
    Ok(render(sd, &local.path, &judgement, &blob, Some(&local)))
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
