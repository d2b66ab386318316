//! The ATerm `.drv` format: a strict, canonical parser and the printer (C++ Nix `aterm.cc`).

use std::collections::{BTreeMap, BTreeSet};

use super::{CaMethod, Derivation, DrvError, MAX_DRV_SIZE, Output, OutputHash, validate_output_name};
use crate::hash::NixHash;
use crate::store_path::{StoreDir, StorePath};

/// The version string of the experimental dynamic-derivations format.
const DYN_DRV_VERSION: &str = "xp-dyn-drv";

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

pub(super) fn parse(input: &[u8], store_dir: &StoreDir) -> Result<Derivation, DrvError> {
    if input.len() > MAX_DRV_SIZE {
        return Err(DrvError::TooLarge { len: input.len(), max: MAX_DRV_SIZE });
    }
    let mut p = Parser { input, pos: 0, store_dir };
    p.header()?;
    let drv = p.body()?;
    if p.pos != input.len() {
        return Err(DrvError::TrailingData { offset: p.pos, len: input.len() - p.pos });
    }
    Ok(drv)
}

impl<'a> Parser<'a> {
    fn found(&self) -> String {
        match self.input.get(self.pos) {
            None => "end of input".to_string(),
            Some(&b) if b.is_ascii_graphic() || b == b' ' => format!("'{}'", b as char),
            Some(&b) => format!("byte 0x{b:02x}"),
        }
    }

    fn syntax(&self, expected: &str) -> DrvError {
        DrvError::Syntax { offset: self.pos, expected: expected.to_string(), found: self.found() }
    }

    fn expect(&mut self, lit: &'static str) -> Result<(), DrvError> {
        if self.input[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.syntax(&format!("`{lit}`")))
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.input.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn header(&mut self) -> Result<(), DrvError> {
        if self.input.starts_with(b"Derive(") {
            self.pos = 7;
            return Ok(());
        }
        if self.input.starts_with(b"DrvWithVersion(") {
            self.pos = 15;
            let at = self.pos;
            let version = self.plain_str("a version string")?;
            if version == DYN_DRV_VERSION {
                return Err(DrvError::DynamicDerivation { offset: at });
            }
            return Err(DrvError::UnknownVersion { offset: at, version: version.to_string() });
        }
        Err(self.syntax("`Derive(` or `DrvWithVersion(`"))
    }

    /// Parse `[item,item,...]`, calling `item` for each element.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), DrvError>) -> Result<(), DrvError> {
        self.expect("[")?;
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            item(self)?;
            if self.eat(b']') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(self.syntax("`,` or `]`"));
            }
        }
    }

    /// A string Nix writes unescaped: any byte but `"` and `\`.
    fn plain_bytes(&mut self) -> Result<&'a [u8], DrvError> {
        let start = self.pos;
        self.expect("\"")?;
        let rest = &self.input[self.pos..];
        for (i, &b) in rest.iter().enumerate() {
            match b {
                b'"' => {
                    self.pos += i + 1;
                    return Ok(&rest[..i]);
                }
                b'\\' => {
                    return Err(DrvError::NonCanonical {
                        offset: self.pos + i,
                        reason: "escape sequence in a field that Nix writes unescaped".to_string(),
                    });
                }
                _ => {}
            }
        }
        Err(DrvError::UnterminatedString { offset: start })
    }

    /// A string Nix writes unescaped that must be UTF-8 (names, paths, hashes).
    fn plain_str(&mut self, what: &'static str) -> Result<&'a str, DrvError> {
        let at = self.pos;
        let b = self.plain_bytes()?;
        std::str::from_utf8(b).map_err(|_| DrvError::Syntax {
            offset: at,
            expected: what.to_string(),
            found: "non-UTF-8 bytes".to_string(),
        })
    }

    /// A string Nix writes with `printString` escaping; only canonical escapes are accepted.
    fn escaped(&mut self) -> Result<Vec<u8>, DrvError> {
        let start = self.pos;
        self.expect("\"")?;
        let base = self.pos;
        let s = &self.input[base..];
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'"' => {
                    self.pos = base + i + 1;
                    return Ok(s[..i].to_vec());
                }
                b'\\' | b'\n' | b'\r' | b'\t' => break,
                _ => i += 1,
            }
        }
        let mut out = s[..i].to_vec();
        while i < s.len() {
            match s[i] {
                b'"' => {
                    self.pos = base + i + 1;
                    return Ok(out);
                }
                b'\\' => {
                    let Some(&c) = s.get(i + 1) else { break };
                    out.push(match c {
                        b'"' | b'\\' => c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => {
                            return Err(DrvError::NonCanonical {
                                offset: base + i,
                                reason: format!(
                                    "escape `\\{}`: Nix escapes only '\"', '\\', newline, CR and tab",
                                    c.escape_ascii()
                                ),
                            });
                        }
                    });
                    i += 2;
                }
                c @ (b'\n' | b'\r' | b'\t') => {
                    return Err(DrvError::NonCanonical {
                        offset: base + i,
                        reason: format!(
                            "raw {} in a string: Nix writes it as `{}`",
                            c.escape_ascii(),
                            c.escape_ascii()
                        ),
                    });
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Err(DrvError::UnterminatedString { offset: start })
    }

    fn store_path(&mut self) -> Result<(StorePath, &'a str), DrvError> {
        let at = self.pos;
        let s = self.plain_str("a store path")?;
        let p = self.store_dir.parse_path(s).map_err(|reason| DrvError::BadStorePath { offset: at, reason })?;
        Ok((p, s))
    }

    fn output_name(&mut self) -> Result<&'a str, DrvError> {
        let at = self.pos;
        let name = self.plain_str("an output name")?;
        validate_output_name(name).map_err(|reason| DrvError::BadOutputName {
            offset: at,
            name: name.to_string(),
            reason,
        })?;
        Ok(name)
    }

    fn output(&mut self) -> Result<(String, Output), DrvError> {
        let at = self.pos;
        self.expect("(")?;
        let name = self.output_name()?;
        self.expect(",")?;
        let path_at = self.pos;
        let path_s = self.plain_str("a store path")?;
        self.expect(",")?;
        let algo = self.plain_str("a hash algorithm")?;
        self.expect(",")?;
        let hash_s = self.plain_str("a hash")?;
        self.expect(")")?;
        let bad = |reason: String| DrvError::BadOutput { offset: at, output: name.to_string(), reason };
        let path = if path_s.is_empty() {
            None
        } else {
            Some(
                self.store_dir
                    .parse_path(path_s)
                    .map_err(|reason| DrvError::BadStorePath { offset: path_at, reason })?,
            )
        };
        let hash = if algo.is_empty() {
            if !hash_s.is_empty() {
                return Err(bad(format!("hash {hash_s:?} given without a hash algorithm")));
            }
            OutputHash::None
        } else {
            let (method, algo_v) = CaMethod::parse_method_algo(algo).ok_or_else(|| {
                bad(format!("unknown hash algorithm {algo:?} (expected [r:|text:|git:]md5|sha1|sha256|sha512)"))
            })?;
            if hash_s == "impure" {
                if path.is_some() {
                    return Err(bad("an impure output must not specify an output path".to_string()));
                }
                OutputHash::Impure { method, algo: algo_v }
            } else if hash_s.is_empty() {
                if path.is_some() {
                    return Err(bad("a floating content-addressed output must not specify an output path".to_string()));
                }
                OutputHash::Floating { method, algo: algo_v }
            } else {
                let n = algo_v.digest_len();
                if hash_s.len() != 2 * n || !hash_s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
                    return Err(bad(format!(
                        "hash {hash_s:?} is not {} lowercase hex digits of a {algo_v} digest",
                        2 * n
                    )));
                }
                let digest = hex::decode(hash_s).map_err(|e| bad(e.to_string()))?;
                let hash = NixHash::new(algo_v, digest).ok_or_else(|| bad("digest length".to_string()))?;
                OutputHash::Fixed { method, hash }
            }
        };
        Ok((name.to_string(), Output { path, hash }))
    }

    fn body(&mut self) -> Result<Derivation, DrvError> {
        let mut drv = Derivation::default();
        // outputs
        let mut prev: Option<String> = None;
        self.list(|p| {
            let at = p.pos;
            let (name, out) = p.output()?;
            check_order(at, "outputs", prev.as_deref().map(str::as_bytes), name.as_bytes())?;
            prev = Some(name.clone());
            drv.outputs.insert(name, out);
            Ok(())
        })?;
        self.expect(",")?;
        // input derivations
        let mut prev: Option<&str> = None;
        self.list(|p| {
            let at = p.pos;
            p.expect("(")?;
            let (path, raw) = p.store_path()?;
            check_order(at, "input derivations", prev.map(str::as_bytes), raw.as_bytes())?;
            prev = Some(raw);
            p.expect(",")?;
            if p.input.get(p.pos) == Some(&b'(') {
                return Err(DrvError::DynamicDerivation { offset: p.pos });
            }
            let mut outs = BTreeSet::new();
            let mut prev_out: Option<&str> = None;
            p.list(|p| {
                let at = p.pos;
                let o = p.output_name()?;
                check_order(at, "output names of an input derivation", prev_out.map(str::as_bytes), o.as_bytes())?;
                prev_out = Some(o);
                outs.insert(o.to_string());
                Ok(())
            })?;
            p.expect(")")?;
            drv.input_drvs.insert(path, outs);
            Ok(())
        })?;
        self.expect(",")?;
        // input sources
        let mut prev: Option<&str> = None;
        self.list(|p| {
            let at = p.pos;
            let (path, raw) = p.store_path()?;
            check_order(at, "input sources", prev.map(str::as_bytes), raw.as_bytes())?;
            prev = Some(raw);
            drv.input_srcs.insert(path);
            Ok(())
        })?;
        self.expect(",")?;
        drv.system = self.plain_bytes()?.to_vec();
        self.expect(",")?;
        drv.builder = self.escaped()?;
        self.expect(",")?;
        self.list(|p| {
            drv.args.push(p.escaped()?);
            Ok(())
        })?;
        self.expect(",")?;
        let mut prev: Option<Vec<u8>> = None;
        self.list(|p| {
            let at = p.pos;
            p.expect("(")?;
            let key = p.escaped()?;
            check_order(at, "env vars", prev.as_deref(), &key)?;
            p.expect(",")?;
            let value = p.escaped()?;
            p.expect(")")?;
            prev = Some(key.clone());
            drv.env.insert(key, value);
            Ok(())
        })?;
        self.expect(")")?;
        Ok(drv)
    }
}

fn check_order(offset: usize, list: &'static str, prev: Option<&[u8]>, key: &[u8]) -> Result<(), DrvError> {
    let Some(prev) = prev else { return Ok(()) };
    match prev.cmp(key) {
        std::cmp::Ordering::Less => Ok(()),
        std::cmp::Ordering::Equal => Err(DrvError::Duplicate { offset, list, key: super::lossy(key) }),
        std::cmp::Ordering::Greater => {
            Err(DrvError::Unsorted { offset, list, key: super::lossy(key), prev: super::lossy(prev) })
        }
    }
}

fn push_plain(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

fn push_path(out: &mut Vec<u8>, store_dir: &StoreDir, p: &StorePath) {
    out.push(b'"');
    out.extend_from_slice(store_dir.as_str().as_bytes());
    out.push(b'/');
    out.extend_from_slice(p.to_string().as_bytes());
    out.push(b'"');
}

/// Nix `printString`: escape `"`, `\`, LF, CR, TAB; everything else raw.
pub(super) fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&s[run..i]);
        out.extend_from_slice(esc);
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Print the ATerm. With `mask_outputs`, outputs become `("name","","","")` and env vars named
/// after outputs become `""`; with `inputs`, the input derivations are replaced by that map
/// (hash-modulo form, keys printed as they are).
pub(super) fn print(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(drv));
    out.extend_from_slice(b"Derive([");
    for (i, (name, o)) in drv.outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'(');
        push_plain(&mut out, name.as_bytes());
        if mask_outputs {
            out.extend_from_slice(b",\"\",\"\",\"\")");
            continue;
        }
        out.push(b',');
        match &o.path {
            Some(p) => push_path(&mut out, store_dir, p),
            None => out.extend_from_slice(b"\"\""),
        }
        out.push(b',');
        push_plain(&mut out, o.hash_algo_field().as_bytes());
        out.push(b',');
        push_plain(&mut out, o.hash_field().as_bytes());
        out.push(b')');
    }
    out.extend_from_slice(b"],[");
    let push_outs = |out: &mut Vec<u8>, outs: &BTreeSet<String>| {
        out.extend_from_slice(b",[");
        for (j, o) in outs.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            push_plain(out, o.as_bytes());
        }
        out.extend_from_slice(b"])");
    };
    match inputs {
        Some(map) => {
            for (i, (key, outs)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'(');
                push_plain(&mut out, key.as_bytes());
                push_outs(&mut out, outs);
            }
        }
        None => {
            for (i, (path, outs)) in drv.input_drvs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'(');
                push_path(&mut out, store_dir, path);
                push_outs(&mut out, outs);
            }
        }
    }
    out.extend_from_slice(b"],[");
    for (i, p) in drv.input_srcs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_path(&mut out, store_dir, p);
    }
    out.extend_from_slice(b"],");
    push_plain(&mut out, &drv.system);
    out.push(b',');
    push_escaped(&mut out, &drv.builder);
    out.extend_from_slice(b",[");
    for (i, a) in drv.args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_escaped(&mut out, a);
    }
    out.extend_from_slice(b"],[");
    for (i, (k, v)) in drv.env.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'(');
        push_escaped(&mut out, k);
        out.push(b',');
        let masked = mask_outputs && std::str::from_utf8(k).is_ok_and(|k| drv.outputs.contains_key(k));
        push_escaped(&mut out, if masked { b"" } else { v });
        out.push(b')');
    }
    out.extend_from_slice(b"])");
    out
}

fn estimate(drv: &Derivation) -> usize {
    const PATH: usize = 80;
    64 + drv.outputs.len() * (PATH + 160)
        + drv.input_drvs.values().map(|o| PATH + 16 * o.len()).sum::<usize>()
        + drv.input_srcs.len() * PATH
        + drv.system.len()
        + drv.builder.len()
        + drv.args.iter().map(|a| a.len() + 4).sum::<usize>()
        + drv.env.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
}
