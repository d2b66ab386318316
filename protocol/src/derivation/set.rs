//! [`DrvSet`]: a set of derivations keyed by their computed `.drv` paths, with memoized
//! `hashDerivationModulo` of inputs, so output paths can be computed for any member.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::index::{Indexed, Shape};
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
///
/// Members added with [`DrvSet::insert_aterm`] keep their file and an index of it: their paths
/// are computed from slices of the file (see `index.rs`), and the owned [`Derivation`] is
/// parsed only when [`DrvSet::get`] or a rare kind of derivation needs it.
#[derive(Debug, Clone)]
pub struct DrvSet {
    store_dir: StoreDir,
    drvs: BTreeMap<StorePath, Arc<Entry>>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    form: Form,
    /// `hashDerivationModulo(mask_outputs = false)`, once computed. A member's path fixes its
    /// contents, so the value holds in every set that has it (clones share it).
    memo: OnceLock<Memo>,
}

#[derive(Debug)]
enum Form {
    Owned(Derivation),
    Indexed(Indexed),
}

/// Each used output of the input derivations as `(its hash, its name)`.
type ModuloInputs<'s> = Vec<([u8; 32], &'s str)>;

/// A memoized hash "as an input".
#[derive(Debug, Clone)]
enum Memo {
    /// The same hash for every output (all but fixed-output derivations).
    Uniform { hash: [u8; 32], deferred: bool },
    /// Per output.
    PerOutput(DrvHash),
}

impl Entry {
    fn derivation(&self, store_dir: &StoreDir) -> &Derivation {
        match &self.form {
            Form::Owned(d) => d,
            Form::Indexed(ix) => ix.derivation(store_dir),
        }
    }

    fn has_output(&self, out: &str) -> bool {
        match &self.form {
            Form::Owned(d) => d.outputs.contains_key(out),
            Form::Indexed(ix) => ix.has_output(out),
        }
    }

    /// The hash of output `out` and whether it is deferred; `None` if there is no such output.
    fn output_hash(&self, memo: &Memo, out: &str) -> Option<([u8; 32], bool)> {
        match memo {
            Memo::Uniform { hash, deferred } => self.has_output(out).then_some((*hash, *deferred)),
            Memo::PerOutput(h) => h.hashes.get(out).map(|x| (*x, h.deferred)),
        }
    }

    fn drv_hash(&self, memo: &Memo) -> DrvHash {
        match memo {
            Memo::PerOutput(h) => h.clone(),
            Memo::Uniform { hash, deferred } => {
                let names: Vec<&str> = match &self.form {
                    Form::Owned(d) => d.outputs.keys().map(String::as_str).collect(),
                    Form::Indexed(ix) => ix.output_names().collect(),
                };
                DrvHash { hashes: names.into_iter().map(|n| (n.to_string(), *hash)).collect(), deferred: *deferred }
            }
        }
    }
}

impl Memo {
    fn of(h: DrvHash) -> Memo {
        let mut values = h.hashes.values();
        match values.next() {
            Some(first) if values.all(|v| v == first) => Memo::Uniform { hash: *first, deferred: h.deferred },
            _ => Memo::PerOutput(h),
        }
    }
}

impl DrvSet {
    /// An empty set for derivations in `store_dir`.
    pub fn new(store_dir: StoreDir) -> DrvSet {
        DrvSet { store_dir, drvs: BTreeMap::new() }
    }

    /// The store dir.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Add a derivation named `name`; returns its computed `.drv` path (the key).
    pub fn insert(&mut self, name: String, drv: Derivation) -> Result<StorePath, DrvError> {
        let path = drv.drv_path(&self.store_dir, &name)?;
        self.drvs.insert(path.clone(), Arc::new(Entry { name, form: Form::Owned(drv), memo: OnceLock::new() }));
        Ok(path)
    }

    /// Parse a `.drv` file and add it (the checks of [`Derivation::parse`]; the name as in
    /// [`Derivation::parse_with_path`]); returns its `.drv` path. The file is kept with an index
    /// and its paths are computed from slices of it: much faster than [`Derivation::parse`] plus
    /// [`DrvSet::insert`].
    pub fn insert_aterm(&mut self, bytes: &[u8], name: Option<&str>) -> Result<StorePath, DrvError> {
        let (ix, name, path) = Indexed::parse(bytes, &self.store_dir, name)?;
        self.drvs.insert(path.clone(), Arc::new(Entry { name, form: Form::Indexed(ix), memo: OnceLock::new() }));
        Ok(path)
    }

    /// A member by `.drv` path: its name and the derivation.
    pub fn get(&self, path: &StorePath) -> Option<(&str, &Derivation)> {
        self.drvs.get(path).map(|e| (e.name.as_str(), e.derivation(&self.store_dir)))
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
        self.resolve(path, 0).map(|(e, m)| e.drv_hash(m))
    }

    /// A lookup closure for [`Derivation::hash_modulo`] and friends over this set. Failures
    /// show up as [`DrvError::MissingInput`]; use [`DrvSet::output_paths_of`] for detailed errors.
    pub fn lookup(&mut self) -> impl FnMut(&StorePath) -> Option<DrvHash> + '_ {
        move |p| self.resolve(p, 0).ok().map(|(e, m)| e.drv_hash(m))
    }

    /// Compute `drv`'s output paths (see [`Derivation::output_paths`]) with inputs from this set.
    pub fn output_paths_of(
        &mut self,
        drv: &Derivation,
        name: &str,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DrvError> {
        self.with_lookup(0, |lookup| drv.output_paths(&self.store_dir, name, lookup))
    }

    /// The output paths of the member at `path` (see [`Derivation::output_paths`]).
    pub fn member_output_paths(&mut self, path: &StorePath) -> Result<BTreeMap<String, Option<StorePath>>, DrvError> {
        let entry = self.drvs.get(path).ok_or_else(|| DrvError::MissingInput { path: self.store_dir.display(path) })?;
        let sd = &self.store_dir;
        match &entry.form {
            Form::Indexed(ix) if ix.shape() == Shape::InputAddressed => {
                let (inputs, deferred) = self.modulo_inputs(ix, 0)?;
                let modulo = (!deferred).then(|| ix.modulo_sha256(true, &inputs));
                ix.input_addressed_paths(sd, &entry.name, modulo)
            }
            Form::Indexed(ix) if ix.shape() == Shape::Fixed => {
                let fixed = ix.fixed(sd, &entry.name, false)?;
                Ok(fixed.into_iter().map(|(p, _)| ("out".to_string(), Some(p))).collect())
            }
            _ => self.with_lookup(0, |lookup| entry.derivation(sd).output_paths(sd, &entry.name, lookup)),
        }
    }

    /// [`Derivation::fill_in_output_paths`] with inputs from this set.
    pub fn fill_in(&mut self, drv: &mut Derivation, name: &str) -> Result<(), DrvError> {
        self.with_lookup(0, |lookup| drv.fill_in_output_paths(&self.store_dir, name, lookup))
    }

    /// Run `f` with a lookup over this set; when `f` fails because an input failed to resolve,
    /// return the input's own error (wrapped in [`DrvError::InInput`]).
    fn with_lookup<T>(
        &self,
        depth: usize,
        f: impl FnOnce(&mut dyn FnMut(&StorePath) -> Option<DrvHash>) -> Result<T, DrvError>,
    ) -> Result<T, DrvError> {
        let mut inner: Option<DrvError> = None;
        let result = {
            let mut lookup = |p: &StorePath| match self.resolve(p, depth + 1) {
                Ok((e, m)) => Some(e.drv_hash(m)),
                Err(e) => {
                    if inner.is_none() {
                        inner = Some(self.input_error(p, e));
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

    /// The error of a computation whose input `p` failed with `e`: [`DrvError::MissingInput`]
    /// when `p` itself is missing, else `e` in [`DrvError::InInput`].
    fn input_error(&self, p: &StorePath, e: DrvError) -> DrvError {
        let input = self.store_dir.display(p);
        match e {
            DrvError::MissingInput { path } if path == input => DrvError::MissingInput { path },
            e => DrvError::InInput { input, error: Box::new(e) },
        }
    }

    /// The input derivations of an indexed member as `hashDerivationModulo` prints them: each
    /// used output's `(input hash, output name)`, sorted, without duplicates; and whether one is
    /// deferred. Errors as [`Derivation::hash_modulo`] with [`DrvSet::with_lookup`] gives them.
    fn modulo_inputs<'s>(&'s self, ix: &'s Indexed, depth: usize) -> Result<(ModuloInputs<'s>, bool), DrvError> {
        let mut inputs = Vec::new();
        let mut deferred = false;
        for (p, outs) in ix.inputs() {
            let (entry, memo) = self.resolve(p, depth + 1).map_err(|e| self.input_error(p, e))?;
            for o in outs {
                let (h, d) = entry.output_hash(memo, o).ok_or_else(|| DrvError::MissingInputOutput {
                    input: self.store_dir.display(p),
                    output: o.to_string(),
                })?;
                deferred |= d;
                inputs.push((h, o));
            }
        }
        inputs.sort_unstable();
        inputs.dedup();
        Ok((inputs, deferred))
    }

    fn resolve(&self, path: &StorePath, depth: usize) -> Result<(&Entry, &Memo), DrvError> {
        let entry = self.drvs.get(path).ok_or_else(|| DrvError::MissingInput { path: self.store_dir.display(path) })?;
        if let Some(m) = entry.memo.get() {
            return Ok((entry, m));
        }
        if depth > MAX_INPUT_DEPTH {
            return Err(DrvError::TooDeep { max: MAX_INPUT_DEPTH });
        }
        let sd = &self.store_dir;
        let name = &entry.name;
        let memo = match &entry.form {
            Form::Indexed(ix) if ix.shape() == Shape::InputAddressed => {
                let (inputs, deferred) = self.modulo_inputs(ix, depth)?;
                Memo::Uniform { hash: ix.modulo_sha256(false, &inputs), deferred }
            }
            Form::Indexed(ix) if ix.shape() == Shape::Fixed => match ix.fixed(sd, name, true)? {
                Some((_, Some(h))) => {
                    Memo::PerOutput(DrvHash { hashes: [("out".to_string(), h)].into(), deferred: false })
                }
                _ => return Err(DrvError::MissingInputOutput { input: sd.display(path), output: "out".into() }),
            },
            _ => {
                let drv = entry.derivation(sd);
                let unfilled = drv
                    .outputs
                    .values()
                    .any(|o| o.path.is_none() && matches!(o.kind(), OutputKind::Deferred | OutputKind::Fixed));
                let h = if unfilled {
                    let mut filled = drv.clone();
                    self.with_lookup(depth, |lookup| {
                        filled.fill_in_output_paths(sd, name, lookup)?;
                        filled.hash_modulo(sd, name, false, lookup)
                    })?
                } else {
                    self.with_lookup(depth, |lookup| drv.hash_modulo(sd, name, false, lookup))?
                };
                Memo::of(h)
            }
        };
        Ok((entry, entry.memo.get_or_init(|| memo)))
    }
}
