//! [`DrvSet`]: a set of derivations keyed by their computed `.drv` paths, with memoized
//! `hashDerivationModulo` of inputs, so output paths can be computed for any member.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Derivation, DrvError, DrvHash, OutputKind};
use crate::store_path::{StoreDir, StorePath};

/// How deep input derivations may nest before [`DrvSet`] gives up (real closures are far
/// shallower; this bounds recursion on hostile input).
pub const MAX_INPUT_DEPTH: usize = 2048;

/// Derivations keyed by their computed `.drv` store path, for resolving input derivations.
///
/// [`DrvSet::hash_as_input`] computes and memoizes each member's `hashDerivationModulo` "as an
/// input" (`mask_outputs = false`). A member whose output paths are empty (the hashing form) is
/// filled in first ([`Derivation::fill_in_output_paths`]), since Nix hashes inputs with their
/// output paths present.
#[derive(Debug, Clone)]
pub struct DrvSet {
    store_dir: StoreDir,
    drvs: BTreeMap<StorePath, Arc<(String, Derivation)>>,
    memo: HashMap<StorePath, DrvHash>,
}

impl DrvSet {
    /// An empty set for derivations in `store_dir`.
    pub fn new(store_dir: StoreDir) -> DrvSet {
        DrvSet { store_dir, drvs: BTreeMap::new(), memo: HashMap::new() }
    }

    /// The store dir.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Add a derivation named `name`; returns its computed `.drv` path (the key).
    pub fn insert(&mut self, name: String, drv: Derivation) -> Result<StorePath, DrvError> {
        let path = drv.drv_path(&self.store_dir, &name)?;
        self.drvs.insert(path.clone(), Arc::new((name, drv)));
        Ok(path)
    }

    /// Parse a `.drv` file and add it (see [`Derivation::parse_with_path`]); returns its `.drv`
    /// path. Faster than [`Derivation::parse`] plus [`DrvSet::insert`], which prints the ATerm
    /// again to hash it.
    pub fn insert_aterm(&mut self, bytes: &[u8], name: Option<&str>) -> Result<StorePath, DrvError> {
        let (drv, name, path) = Derivation::parse_with_path(bytes, &self.store_dir, name)?;
        self.drvs.insert(path.clone(), Arc::new((name, drv)));
        Ok(path)
    }

    /// A member by `.drv` path: its name and the derivation.
    pub fn get(&self, path: &StorePath) -> Option<(&str, &Derivation)> {
        self.drvs.get(path).map(|e| (e.0.as_str(), &e.1))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.drvs.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.drvs.is_empty()
    }

    /// The `.drv` paths of all members, in order.
    pub fn paths(&self) -> impl Iterator<Item = &StorePath> {
        self.drvs.keys()
    }

    /// `hashDerivationModulo(member, mask_outputs = false)`, memoized, resolving its inputs
    /// recursively among the members. Errors in an input name the input.
    pub fn hash_as_input(&mut self, path: &StorePath) -> Result<DrvHash, DrvError> {
        self.resolve(path, 0)
    }

    /// A lookup closure for [`Derivation::hash_modulo`] and friends over this set. Failures
    /// show up as [`DrvError::MissingInput`]; use [`DrvSet::output_paths_of`] for detailed errors.
    pub fn lookup(&mut self) -> impl FnMut(&StorePath) -> Option<DrvHash> + '_ {
        move |p| self.resolve(p, 0).ok()
    }

    /// Compute `drv`'s output paths (see [`Derivation::output_paths`]) with inputs from this set.
    pub fn output_paths_of(
        &mut self,
        drv: &Derivation,
        name: &str,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DrvError> {
        let sd = self.store_dir.clone();
        self.with_lookup(0, |lookup| drv.output_paths(&sd, name, lookup))
    }

    /// The output paths of the member at `path` (see [`Derivation::output_paths`]).
    pub fn member_output_paths(&mut self, path: &StorePath) -> Result<BTreeMap<String, Option<StorePath>>, DrvError> {
        let entry = self
            .drvs
            .get(path)
            .cloned()
            .ok_or_else(|| DrvError::MissingInput { path: self.store_dir.display(path) })?;
        self.output_paths_of(&entry.1, &entry.0)
    }

    /// [`Derivation::fill_in_output_paths`] with inputs from this set.
    pub fn fill_in(&mut self, drv: &mut Derivation, name: &str) -> Result<(), DrvError> {
        let sd = self.store_dir.clone();
        self.with_lookup(0, |lookup| drv.fill_in_output_paths(&sd, name, lookup))
    }

    /// Run `f` with a lookup over this set; when `f` fails because an input failed to resolve,
    /// return the input's own error (wrapped in [`DrvError::InInput`]).
    fn with_lookup<T>(
        &mut self,
        depth: usize,
        f: impl FnOnce(&mut dyn FnMut(&StorePath) -> Option<DrvHash>) -> Result<T, DrvError>,
    ) -> Result<T, DrvError> {
        let mut inner: Option<DrvError> = None;
        let result = {
            let mut lookup = |p: &StorePath| match self.resolve(p, depth + 1) {
                Ok(h) => Some(h),
                Err(e) => {
                    let input = self.store_dir.display(p);
                    let itself_missing = matches!(&e, DrvError::MissingInput { path } if *path == input);
                    if inner.is_none() && !itself_missing {
                        inner = Some(DrvError::InInput { input, error: Box::new(e) });
                    }
                    None
                }
            };
            f(&mut lookup)
        };
        match (result, inner) {
            (Err(DrvError::MissingInput { .. }), Some(e)) => Err(e),
            (r, _) => r,
        }
    }

    fn resolve(&mut self, path: &StorePath, depth: usize) -> Result<DrvHash, DrvError> {
        if let Some(h) = self.memo.get(path) {
            return Ok(h.clone());
        }
        if depth > MAX_INPUT_DEPTH {
            return Err(DrvError::TooDeep { max: MAX_INPUT_DEPTH });
        }
        let entry = self
            .drvs
            .get(path)
            .cloned()
            .ok_or_else(|| DrvError::MissingInput { path: self.store_dir.display(path) })?;
        let (name, drv) = (&entry.0, &entry.1);
        let sd = self.store_dir.clone();
        let unfilled = drv
            .outputs
            .values()
            .any(|o| o.path.is_none() && matches!(o.kind(), OutputKind::Deferred | OutputKind::Fixed));
        let h = if unfilled {
            let mut filled = drv.clone();
            self.with_lookup(depth, |lookup| {
                filled.fill_in_output_paths(&sd, name, lookup)?;
                filled.hash_modulo(&sd, name, false, lookup)
            })?
        } else {
            self.with_lookup(depth, |lookup| drv.hash_modulo(&sd, name, false, lookup))?
        };
        self.memo.insert(path.clone(), h.clone());
        Ok(h)
    }
}
