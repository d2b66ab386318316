//! [`Indexed`]: a `.drv` file kept as its bytes plus the few facts path computation needs, so a
//! [`DrvSet`](super::DrvSet) computes drv paths, `hashDerivationModulo` and output paths without
//! building an owned [`Derivation`] (one allocation per env key and value, argument and map node:
//! most of the time of a parse).
//!
//! Parsing is canonical (`to_aterm(parse(x)) == x`), so the ATerms Nix hashes are the file with
//! two parts replaced, and are hashed from slices of it instead of printed again:
//!
//! - as an input (`mask_outputs = false`): the input derivations list replaced by the inputs'
//!   hashes; with no input derivations that is the file itself, whose SHA-256 the drv path
//!   already needed;
//! - for output paths (`mask_outputs = true`): also the outputs list replaced by
//!   `("name","","","")` tuples and the values of env vars named after outputs by `""`.
//!
//! Only derivations whose outputs are all input-addressed with their paths, or fixed-output, are
//! computed here; anything else (unfilled outputs, floating, impure, mixed kinds) goes through the
//! owned [`Derivation`], parsed on first use.

use std::ops::Range;
use std::sync::OnceLock;

use sha2::Digest as _;

use super::aterm::{self, Build, Escaped, HashSink, Sections, Sink as _};
use super::paths::{fixed_hash_modulo, fixed_output_path, name_err};
use super::{Derivation, DrvError, Output, OutputHash, name_from, output_path_name, validate_drv_name};
use crate::store_path::{StoreDir, StorePath, make_store_path};

/// What path computation may use from an indexed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Every output (at least one) input-addressed with its path recorded.
    InputAddressed,
    /// One output, `out`, fixed, with its path recorded.
    Fixed,
    /// Anything else: computed from the owned [`Derivation`].
    Other,
}

/// A fixed output's path and, when asked for, its hash "as an input".
pub(super) type FixedOutput = (StorePath, Option<[u8; 32]>);

/// A `.drv` file and its index (see the module doc).
#[derive(Debug)]
pub(super) struct Indexed {
    bytes: Box<[u8]>,
    /// Outputs by name, sorted.
    outputs: Vec<(String, Output)>,
    /// Input derivations (sorted) and the range of `input_outputs` they use.
    input_drvs: Vec<(StorePath, Range<usize>)>,
    /// Byte ranges in `bytes` of the output names the input derivations use.
    input_outputs: Vec<Range<usize>>,
    /// Byte ranges (quotes included) of the values of env vars named after outputs.
    masked: Vec<Range<usize>>,
    sections: Sections,
    /// SHA-256 of `bytes`.
    file_sha256: [u8; 32],
    shape: Shape,
    /// The owned derivation, parsed when first asked for.
    owned: OnceLock<Derivation>,
}

/// Collects the index while the parser reads.
struct Indexer<'a> {
    input: &'a [u8],
    outputs: Vec<(String, Output)>,
    input_drvs: Vec<(StorePath, Range<usize>)>,
    input_outputs: Vec<Range<usize>>,
    input_srcs: Vec<StorePath>,
    masked: Vec<Range<usize>>,
    name: Option<Escaped<'a>>,
    json: Option<Escaped<'a>>,
}

/// Where `part` (a subslice of `input`) starts in `input`.
fn offset_in(input: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - input.as_ptr() as usize
}

impl<'a> Build<'a> for Indexer<'a> {
    fn output(&mut self, name: &'a str, out: Output) {
        self.outputs.push((name.to_string(), out));
    }

    fn input_drv(&mut self, path: StorePath, outputs: &[&'a str]) {
        let start = self.input_outputs.len();
        for o in outputs {
            let at = offset_in(self.input, o.as_bytes());
            self.input_outputs.push(at..at + o.len());
        }
        self.input_drvs.push((path, start..self.input_outputs.len()));
    }

    fn input_src(&mut self, path: StorePath) {
        self.input_srcs.push(path);
    }

    fn system(&mut self, _: &'a [u8]) {}

    fn builder(&mut self, _: Escaped<'a>) {}

    fn arg(&mut self, _: Escaped<'a>) {}

    fn env(&mut self, key: &[u8], value: Escaped<'a>) {
        match key {
            b"name" => self.name = Some(value),
            b"__json" => self.json = Some(value),
            _ => {}
        }
        // Output names are sorted; keys named after one are few.
        if self.outputs.binary_search_by(|(n, _)| n.as_bytes().cmp(key)).is_ok() {
            self.masked.push(value.at..value.end());
        }
    }
}

impl Indexed {
    /// Parse and index `bytes` (exactly the checks of [`Derivation::parse`]), work out the name
    /// (`name`, or as [`Derivation::name`]) and the `.drv` path (as [`Derivation::drv_path`]).
    pub(super) fn parse(
        bytes: &[u8],
        store_dir: &StoreDir,
        name: Option<&str>,
    ) -> Result<(Indexed, String, StorePath), DrvError> {
        let mut ix = Indexer {
            input: bytes,
            outputs: Vec::new(),
            input_drvs: Vec::new(),
            input_outputs: Vec::new(),
            input_srcs: Vec::new(),
            masked: Vec::new(),
            name: None,
            json: None,
        };
        let sections = aterm::parse_into(bytes, store_dir, &mut ix)?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let value = ix.name.map(|v| v.value());
                let json = ix.json.map(|v| v.value());
                name_from(value.as_deref(), json.as_deref())?
            }
        };
        // Nix `makeTextPath(name + ".drv", ATerm, inputSrcs ∪ inputDrvs)`, with the contents'
        // SHA-256 kept for `hashDerivationModulo`.
        validate_drv_name(&name)?;
        let file_sha256: [u8; 32] = sha2::Sha256::digest(bytes).into();
        let mut refs: Vec<&StorePath> = ix.input_srcs.iter().chain(ix.input_drvs.iter().map(|(p, _)| p)).collect();
        refs.sort_unstable();
        refs.dedup();
        let sd = store_dir.as_str();
        let mut path_type = String::with_capacity(4 + refs.len() * (sd.len() + 60));
        path_type.push_str("text");
        for r in refs {
            path_type.push(':');
            path_type.push_str(sd);
            path_type.push('/');
            // nix32 digits are ASCII.
            path_type.push_str(std::str::from_utf8(&crate::nixbase32::encode_20(r.digest())).unwrap_or_default());
            path_type.push('-');
            path_type.push_str(r.name());
        }
        let mut drv_name = String::with_capacity(name.len() + 4);
        drv_name.push_str(&name);
        drv_name.push_str(".drv");
        let path =
            make_store_path(store_dir, &path_type, &file_sha256, &drv_name).map_err(|e| name_err(&drv_name, e))?;
        // Recorded paths are required: Nix hashes unfilled outputs after filling them in, which
        // checks the env vars named after them (the owned path does that).
        let shape = if !ix.outputs.is_empty()
            && ix.outputs.iter().all(|(_, o)| matches!(o.hash, OutputHash::None) && o.path.is_some())
        {
            Shape::InputAddressed
        } else if let [(out, Output { hash: OutputHash::Fixed { .. }, path: Some(_) })] = ix.outputs.as_slice()
            && out == "out"
        {
            Shape::Fixed
        } else {
            Shape::Other
        };
        let indexed = Indexed {
            bytes: bytes.into(),
            outputs: ix.outputs,
            input_drvs: ix.input_drvs,
            input_outputs: ix.input_outputs,
            masked: ix.masked,
            sections,
            file_sha256,
            shape,
            owned: OnceLock::new(),
        };
        Ok((indexed, name, path))
    }

    /// The owned derivation (parsed on first use; the bytes were checked when indexed).
    pub(super) fn derivation(&self, store_dir: &StoreDir) -> &Derivation {
        self.owned.get_or_init(|| aterm::parse(&self.bytes, store_dir).unwrap_or_default())
    }

    pub(super) fn shape(&self) -> Shape {
        self.shape
    }

    /// Whether the derivation has an output named `out`.
    pub(super) fn has_output(&self, out: &str) -> bool {
        self.outputs.binary_search_by(|(n, _)| n.as_str().cmp(out)).is_ok()
    }

    /// Output names, sorted.
    pub(super) fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|(n, _)| n.as_str())
    }

    /// The input derivations and, for each, the names of the outputs used.
    pub(super) fn inputs(&self) -> impl Iterator<Item = (&StorePath, impl Iterator<Item = &str>)> {
        self.input_drvs.iter().map(|(p, r)| {
            let names = self.input_outputs[r.clone()]
                .iter()
                // Output names were checked to be ASCII when parsed.
                .map(|r| std::str::from_utf8(&self.bytes[r.clone()]).unwrap_or_default());
            (p, names)
        })
    }

    /// The fixed output's path (for [`Shape::Fixed`]) and, with `modulo`, its hash "as an
    /// input".
    pub(super) fn fixed(
        &self,
        store_dir: &StoreDir,
        name: &str,
        modulo: bool,
    ) -> Result<Option<FixedOutput>, DrvError> {
        match self.outputs.as_slice() {
            [(out, Output { hash: OutputHash::Fixed { method, hash }, .. })] => {
                let path = fixed_output_path(store_dir, name, out, *method, hash)?;
                let h = modulo.then(|| fixed_hash_modulo(store_dir, &path, *method, hash));
                Ok(Some((path, h)))
            }
            _ => Ok(None),
        }
    }

    /// `hashDerivationModulo` of an input-addressed derivation given its inputs' hashes
    /// (`(hash, output name)`, sorted and without duplicates): with `mask_outputs`, the form
    /// output paths are made from; else the form this derivation has as an input.
    pub(super) fn modulo_sha256(&self, mask_outputs: bool, inputs: &[([u8; 32], &str)]) -> [u8; 32] {
        if !mask_outputs && self.input_drvs.is_empty() {
            return self.file_sha256;
        }
        let mut out = HashSink::new();
        let b = &self.bytes[..];
        if mask_outputs {
            out.put(b"Derive([");
            for (i, (name, _)) in self.outputs.iter().enumerate() {
                if i > 0 {
                    out.put_byte(b',');
                }
                out.put(b"(\"");
                out.put(name.as_bytes());
                out.put(b"\",\"\",\"\",\"\")");
            }
            out.put(b"]");
        } else {
            out.put(&b[..self.sections.outputs_end]);
        }
        out.put(b",[");
        let mut i = 0;
        while i < inputs.len() {
            let hash = inputs[i].0;
            if i > 0 {
                out.put_byte(b',');
            }
            let mut hex = [0u8; 64];
            // 64 bytes of room for 32 bytes of hex cannot fail.
            let _ = hex::encode_to_slice(hash, &mut hex);
            out.put(b"(\"");
            out.put(&hex);
            out.put(b"\",[");
            let mut first = true;
            while i < inputs.len() && inputs[i].0 == hash {
                if !first {
                    out.put_byte(b',');
                }
                first = false;
                out.put_byte(b'"');
                out.put(inputs[i].1.as_bytes());
                out.put_byte(b'"');
                i += 1;
            }
            out.put(b"])");
        }
        out.put(b"]");
        let mut at = self.sections.inputs_end;
        if mask_outputs {
            for r in &self.masked {
                out.put(&b[at..r.start]);
                out.put(b"\"\"");
                at = r.end;
            }
        }
        out.put(&b[at..]);
        out.finish()
    }

    /// Output paths of an input-addressed derivation from its masked hash (`None`: deferred).
    pub(super) fn input_addressed_paths(
        &self,
        store_dir: &StoreDir,
        name: &str,
        modulo: Option<[u8; 32]>,
    ) -> Result<std::collections::BTreeMap<String, Option<StorePath>>, DrvError> {
        let mut result = std::collections::BTreeMap::new();
        for (out, _) in &self.outputs {
            let path = match modulo {
                Some(h) => {
                    let path_name = output_path_name(name, out);
                    let mut path_type = String::with_capacity(7 + out.len());
                    path_type.push_str("output:");
                    path_type.push_str(out);
                    Some(make_store_path(store_dir, &path_type, &h, &path_name).map_err(|e| name_err(&path_name, e))?)
                }
                None => None,
            };
            result.insert(out.clone(), path);
        }
        Ok(result)
    }
}
