//! A derivation's own store path, `hashDerivationModulo`, and output paths
//! (C++ Nix `src/libstore/derivation/modulo.cc`, `store-dir-config.cc`).

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest as _;

use super::{
    CaMethod, Derivation, DrvError, OutputHash, OutputKind, aterm, lossy, output_path_name, validate_drv_name,
};
use crate::hash::{HashAlgo, NixHash};
use crate::store_path::{StoreDir, StorePath, StorePathError, make_store_path, make_text_path};

/// The result of `hashDerivationModulo`: one SHA-256 per output.
///
/// For a fixed-output derivation each output has its own hash (`fixed:out:…`), which depends only
/// on the content address and the output path; otherwise every output has the hash of the
/// derivation's modulo ATerm.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DrvHash {
    /// Hash per output name.
    pub hashes: BTreeMap<String, [u8; 32]>,
    /// `true` when output paths cannot be known before building: the derivation, or one of its
    /// inputs (transitively), is floating content-addressed or impure (Nix `DrvHash::Kind::Deferred`).
    pub deferred: bool,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

pub(super) fn name_err(name: &str, e: StorePathError) -> DrvError {
    DrvError::BadName { name: name.to_string(), reason: e.to_string() }
}

/// The store path of a fixed output (Nix `makeFixedOutputPath` / `makeTextPath`, no references).
pub(super) fn fixed_output_path(
    store_dir: &StoreDir,
    drv_name: &str,
    output: &str,
    method: CaMethod,
    hash: &NixHash,
) -> Result<StorePath, DrvError> {
    let path_name = output_path_name(drv_name, output);
    let bad = |reason: &str| DrvError::BadContentAddress { output: output.to_string(), reason: reason.to_string() };
    let digest = hash.digest();
    let result = match (method, hash.algo()) {
        (CaMethod::Text, HashAlgo::Sha256) => {
            make_store_path(store_dir, "text", &digest_32(digest).ok_or_else(|| bad("digest"))?, &path_name)
        }
        (CaMethod::Text, _) => return Err(bad("text-hashed store paths must use SHA-256")),
        (CaMethod::Nar, HashAlgo::Sha256) => {
            make_store_path(store_dir, "source", &digest_32(digest).ok_or_else(|| bad("digest"))?, &path_name)
        }
        (CaMethod::Git, HashAlgo::Md5 | HashAlgo::Sha512) => {
            return Err(bad("git-hashed store paths must use SHA-1 or SHA-256"));
        }
        (m, a) => {
            let inner = sha256(format!("fixed:out:{}{}:{}:", m.prefix(), a.name(), hash.to_hex()).as_bytes());
            make_store_path(store_dir, "output:out", &inner, &path_name)
        }
    };
    result.map_err(|e| name_err(&path_name, e))
}

/// `hashDerivationModulo` of a fixed output at `path`: `sha256("fixed:out:<method><algo>:<hex>:<path>")`.
pub(super) fn fixed_hash_modulo(store_dir: &StoreDir, path: &StorePath, method: CaMethod, hash: &NixHash) -> [u8; 32] {
    let s = format!("fixed:out:{}:{}:{}", method.method_algo(hash.algo()), hash.to_hex(), store_dir.display(path));
    sha256(s.as_bytes())
}

fn digest_32(d: &[u8]) -> Option<[u8; 32]> {
    d.try_into().ok()
}

impl Derivation {
    /// This derivation's own store path: `makeTextPath(name + ".drv", ATerm, inputSrcs ∪ inputDrvs)`.
    pub fn drv_path(&self, store_dir: &StoreDir, name: &str) -> Result<StorePath, DrvError> {
        self.drv_path_of_aterm(store_dir, name, &self.to_aterm(store_dir))
    }

    /// [`Derivation::drv_path`] given the ATerm this derivation prints to (`aterm` must be
    /// `self.to_aterm(store_dir)`; [`Derivation::parse_with_path`] uses the parsed bytes, which
    /// are that ATerm since parsing is canonical).
    pub(super) fn drv_path_of_aterm(
        &self,
        store_dir: &StoreDir,
        name: &str,
        aterm: &[u8],
    ) -> Result<StorePath, DrvError> {
        validate_drv_name(name)?;
        let drv_name = format!("{name}.drv");
        make_text_path(store_dir, &drv_name, aterm, self.references()).map_err(|e| name_err(&drv_name, e))
    }

    /// Check that the outputs form one derivation type as Nix requires: all fixed (then exactly
    /// one, named `out`), or none fixed; floating and impure outputs not mixed with others.
    fn check_output_types(&self) -> Result<(), DrvError> {
        let bad = |reason: &str| DrvError::BadContentAddress { output: String::new(), reason: reason.to_string() };
        // One bit per kind of output present.
        let kinds: u8 = self.outputs.values().fold(0, |k, o| {
            k | match o.kind() {
                OutputKind::InputAddressed | OutputKind::Deferred => 1,
                OutputKind::Fixed => 2,
                OutputKind::Floating => 4,
                OutputKind::Impure => 8,
            }
        });
        if kinds.count_ones() > 1 {
            return Err(bad("a derivation cannot mix input-addressed, fixed, floating and impure outputs"));
        }
        if kinds == 2 && (self.outputs.len() != 1 || !self.outputs.contains_key("out")) {
            return Err(bad("a fixed-output derivation must have a single output named \"out\""));
        }
        Ok(())
    }

    /// Nix `hashDerivationModulo(drv, mask_outputs)`.
    ///
    /// - Fixed-output: per output `sha256("fixed:out:<method><algo>:<hex>:<out path>")`.
    /// - Otherwise: sha256 of the ATerm with each input derivation replaced by the lowercase hex of
    ///   its hash for the used outputs (inputs colliding on one hash merge their output sets), and,
    ///   with `mask_outputs`, outputs printed as `("name","","","")` and env vars named after
    ///   outputs set to `""`.
    ///
    /// `lookup` gives an input derivation's hash "as an input" (`mask_outputs = false`); the
    /// caller can memoize it. `name` is the derivation's name (for fixed output paths).
    pub fn hash_modulo<L>(
        &self,
        store_dir: &StoreDir,
        name: &str,
        mask_outputs: bool,
        lookup: &mut L,
    ) -> Result<DrvHash, DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        self.check_output_types()?;
        if self.is_fixed_output() {
            let mut hashes = BTreeMap::new();
            for (out, o) in &self.outputs {
                if let OutputHash::Fixed { method, hash } = &o.hash {
                    let path = fixed_output_path(store_dir, name, out, *method, hash)?;
                    hashes.insert(out.clone(), fixed_hash_modulo(store_dir, &path, *method, hash));
                }
            }
            return Ok(DrvHash { hashes, deferred: false });
        }
        if self.outputs.values().any(|o| o.kind() == OutputKind::Impure) {
            let h = sha256(b"impure");
            return Ok(DrvHash { hashes: self.outputs.keys().map(|k| (k.clone(), h)).collect(), deferred: true });
        }
        let (inputs, deferred) = self.modulo_inputs(store_dir, lookup)?;
        let h = aterm::print_sha256(self, store_dir, mask_outputs, Some(&inputs));
        Ok(DrvHash { hashes: self.outputs.keys().map(|k| (k.clone(), h)).collect(), deferred })
    }

    /// The ATerm that [`Derivation::hash_modulo`] hashes for a derivation that is not fixed-output
    /// (Nix `unparse(store, maskOutputs, &inputs2)`), and whether the result is deferred.
    pub fn modulo_aterm<L>(
        &self,
        store_dir: &StoreDir,
        mask_outputs: bool,
        lookup: &mut L,
    ) -> Result<(Vec<u8>, bool), DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        let (inputs, deferred) = self.modulo_inputs(store_dir, lookup)?;
        Ok((aterm::print(self, store_dir, mask_outputs, Some(&inputs)), deferred))
    }

    /// The input derivations as [`Derivation::modulo_aterm`] prints them (each input's hash for
    /// the used outputs, inputs colliding on one hash merged), and whether the result is deferred.
    #[allow(clippy::type_complexity)]
    fn modulo_inputs<L>(
        &self,
        store_dir: &StoreDir,
        lookup: &mut L,
    ) -> Result<(BTreeMap<[u8; 32], BTreeSet<&str>>, bool), DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        let mut deferred = self.outputs.values().any(|o| o.kind() == OutputKind::Floating);
        // Keyed by digest: lowercase hex sorts as the digest bytes do.
        let mut inputs: BTreeMap<[u8; 32], BTreeSet<&str>> = BTreeMap::new();
        for (path, outs) in &self.input_drvs {
            let h = lookup(path).ok_or_else(|| DrvError::MissingInput { path: store_dir.display(path) })?;
            deferred |= h.deferred;
            for o in outs {
                let oh = h.hashes.get(o).ok_or_else(|| DrvError::MissingInputOutput {
                    input: store_dir.display(path),
                    output: o.clone(),
                })?;
                inputs.entry(*oh).or_default().insert(o.as_str());
            }
        }
        Ok((inputs, deferred))
    }

    /// The output paths Nix computes for this derivation: fixed outputs from their content
    /// address, input-addressed and deferred outputs from `hashDerivationModulo(mask = true)`
    /// (`makeStorePath("output:<o>", hash, outputPathName)`). `None` for outputs whose path is
    /// not known before building (floating, impure, or deferred because an input is).
    pub fn output_paths<L>(
        &self,
        store_dir: &StoreDir,
        name: &str,
        lookup: &mut L,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        self.check_output_types()?;
        validate_drv_name(name)?;
        let mut result = BTreeMap::new();
        let needs_modulo =
            self.outputs.values().any(|o| matches!(o.kind(), OutputKind::InputAddressed | OutputKind::Deferred));
        let modulo = if needs_modulo { Some(self.hash_modulo(store_dir, name, true, lookup)?) } else { None };
        for (out, o) in &self.outputs {
            let path = match &o.hash {
                OutputHash::Fixed { method, hash } => Some(fixed_output_path(store_dir, name, out, *method, hash)?),
                OutputHash::Floating { .. } | OutputHash::Impure { .. } => None,
                OutputHash::None => match &modulo {
                    Some(m) if !m.deferred => {
                        let h = m.hashes.get(out).ok_or_else(|| DrvError::MissingInputOutput {
                            input: name.to_string(),
                            output: out.clone(),
                        })?;
                        let path_name = output_path_name(name, out);
                        Some(
                            make_store_path(store_dir, &format!("output:{out}"), h, &path_name)
                                .map_err(|e| name_err(&path_name, e))?,
                        )
                    }
                    _ => None,
                },
            };
            result.insert(out.clone(), path);
        }
        Ok(result)
    }

    /// Fill in empty output paths (the hashing form `nix-instantiate` hashes) and the env vars
    /// named after outputs (inserted when absent, as Nix `fillInOutputPaths` does), and check
    /// recorded ones: a recorded path or env var that differs from the computed path is an error
    /// naming the output and both paths.
    pub fn fill_in_output_paths<L>(&mut self, store_dir: &StoreDir, name: &str, lookup: &mut L) -> Result<(), DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        let computed = self.output_paths(store_dir, name, lookup)?;
        for (out, c) in computed {
            let Some(o) = self.outputs.get_mut(&out) else { continue };
            match (c, &o.path) {
                (Some(c), recorded) => {
                    if let Some(r) = recorded
                        && r != &c
                    {
                        let (recorded, computed) = (store_dir.display(r), store_dir.display(&c));
                        return Err(if o.kind() == OutputKind::Fixed {
                            DrvError::FixedPathMismatch { output: out, recorded, computed }
                        } else {
                            DrvError::OutputPathMismatch { output: out, recorded, computed }
                        });
                    }
                    let shown = store_dir.display(&c);
                    match self.env.get(out.as_bytes()) {
                        Some(v) if !v.is_empty() && v.as_slice() != shown.as_bytes() => {
                            return Err(DrvError::EnvMismatch { output: out, recorded: lossy(v), computed: shown });
                        }
                        Some(v) if !v.is_empty() => {}
                        Some(_) => {
                            self.env.insert(out.as_bytes().to_vec(), shown.into_bytes());
                        }
                        None if recorded.is_none() => {
                            self.env.insert(out.as_bytes().to_vec(), shown.into_bytes());
                        }
                        None => {}
                    }
                    o.path = Some(c);
                }
                (None, Some(r)) => {
                    return Err(DrvError::ShouldBeDeferred { output: out, recorded: store_dir.display(r) });
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Check recorded output paths (and the env vars named after outputs) against the computed
    /// ones without changing anything; empty paths are not an error.
    pub fn check_output_paths<L>(&self, store_dir: &StoreDir, name: &str, lookup: &mut L) -> Result<(), DrvError>
    where
        L: FnMut(&StorePath) -> Option<DrvHash> + ?Sized,
    {
        self.clone().fill_in_output_paths(store_dir, name, lookup)
    }
}
