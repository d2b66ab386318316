//! The ATerm `.drv` format: a strict, canonical parser and the printer (C++ Nix `aterm.cc`).

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest as _;

use super::{CaMethod, Derivation, DrvError, MAX_DRV_SIZE, Output, OutputHash, validate_output_name};
use crate::hash::NixHash;
use crate::store_path::{StoreDir, StorePath};

/// The index of the first byte `printString` escapes, or of the closing quote (`"`, `\`, LF, CR,
/// TAB), or `s.len()`: a vectorised search (`memchr2`) for the quote or backslash, then a
/// branch-free check of the bytes before it for raw control characters (rare: an error).
fn first_special(s: &[u8]) -> usize {
    let q = memchr::memchr2(b'"', b'\\', s).unwrap_or(s.len());
    let head = &s[..q];
    if head.iter().fold(false, |any, &b| any | (b == b'\n') | (b == b'\r') | (b == b'\t')) {
        head.iter().position(|&b| matches!(b, b'\n' | b'\r' | b'\t')).unwrap_or(q)
    } else {
        q
    }
}

/// The version string of the experimental dynamic-derivations format.
const DYN_DRV_VERSION: &str = "xp-dyn-drv";

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

pub(super) fn parse(input: &[u8], store_dir: &StoreDir) -> Result<Derivation, DrvError> {
    let mut drv = Derivation::default();
    parse_into(input, store_dir, &mut drv)?;
    Ok(drv)
}

/// Byte offsets of the ATerm's first two lists: `Derive(` outputs `,` input derivations `,` ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sections {
    /// Just after the outputs list's `]`.
    pub(super) outputs_end: usize,
    /// Just after the input derivations list's `]`.
    pub(super) inputs_end: usize,
}

/// Parse `input`, handing each piece to `b` ([`Derivation`] builds itself; an index records
/// spans). Accepts and rejects exactly what [`parse`] does, whatever `b` is.
pub(super) fn parse_into<'a>(
    input: &'a [u8],
    store_dir: &'a StoreDir,
    b: &mut impl Build<'a>,
) -> Result<Sections, DrvError> {
    if input.len() > MAX_DRV_SIZE {
        return Err(DrvError::TooLarge { len: input.len(), max: MAX_DRV_SIZE });
    }
    let mut p = Parser { input, pos: 0, store_dir };
    p.header()?;
    let sections = p.body(b)?;
    if p.pos != input.len() {
        return Err(DrvError::TrailingData { offset: p.pos, len: input.len() - p.pos });
    }
    Ok(sections)
}

/// A string written with `printString` escaping, checked canonical: its bytes between the
/// quotes as they are in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Escaped<'a> {
    /// The bytes between the quotes.
    pub(super) raw: &'a [u8],
    /// Whether `raw` holds escape sequences (else it is the value itself).
    pub(super) escapes: bool,
    /// Offset of the opening quote.
    pub(super) at: usize,
}

impl<'a> Escaped<'a> {
    /// The value (unescaped).
    pub(super) fn value(&self) -> std::borrow::Cow<'a, [u8]> {
        if !self.escapes {
            return std::borrow::Cow::Borrowed(self.raw);
        }
        let mut out = Vec::with_capacity(self.raw.len());
        let mut bytes = self.raw.iter();
        while let Some(&c) = bytes.next() {
            if c != b'\\' {
                out.push(c);
                continue;
            }
            // The parser accepted only the five escapes, so a byte follows.
            out.push(match bytes.next() {
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(&other) => other,
                None => break,
            });
        }
        std::borrow::Cow::Owned(out)
    }

    /// Offset just after the closing quote.
    pub(super) fn end(&self) -> usize {
        self.at + self.raw.len() + 2
    }
}

/// What the parser hands over while it reads a derivation, in file order. Pieces are checked
/// (grammar, canonical form, order) before they are handed over.
pub(super) trait Build<'a> {
    /// An output.
    fn output(&mut self, name: &'a str, out: Output);
    /// An input derivation and the output names used (sorted).
    fn input_drv(&mut self, path: StorePath, outputs: &[&'a str]);
    /// An input source.
    fn input_src(&mut self, path: StorePath);
    /// The system.
    fn system(&mut self, system: &'a [u8]);
    /// The builder.
    fn builder(&mut self, builder: Escaped<'a>);
    /// An argument.
    fn arg(&mut self, arg: Escaped<'a>);
    /// An env var (`key` unescaped).
    fn env(&mut self, key: &[u8], value: Escaped<'a>);
}

impl<'a> Build<'a> for Derivation {
    fn output(&mut self, name: &'a str, out: Output) {
        self.outputs.insert(name.to_string(), out);
    }

    fn input_drv(&mut self, path: StorePath, outputs: &[&'a str]) {
        self.input_drvs.insert(path, outputs.iter().map(|o| o.to_string()).collect());
    }

    fn input_src(&mut self, path: StorePath) {
        self.input_srcs.insert(path);
    }

    fn system(&mut self, system: &'a [u8]) {
        self.system = system.to_vec();
    }

    fn builder(&mut self, builder: Escaped<'a>) {
        self.builder = builder.value().into_owned();
    }

    fn arg(&mut self, arg: Escaped<'a>) {
        self.args.push(arg.value().into_owned());
    }

    fn env(&mut self, key: &[u8], value: Escaped<'a>) {
        self.env.insert(key.to_vec(), value.value().into_owned());
    }
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
    fn escaped(&mut self) -> Result<Escaped<'a>, DrvError> {
        let start = self.pos;
        self.expect("\"")?;
        let base = self.pos;
        let s = &self.input[base..];
        let mut i = first_special(s);
        let mut escapes = false;
        while i < s.len() {
            match s[i] {
                b'"' => {
                    self.pos = base + i + 1;
                    return Ok(Escaped { raw: &s[..i], escapes, at: start });
                }
                b'\\' => {
                    let Some(&c) = s.get(i + 1) else { break };
                    if !matches!(c, b'"' | b'\\' | b'n' | b'r' | b't') {
                        return Err(DrvError::NonCanonical {
                            offset: base + i,
                            reason: format!(
                                "escape `\\{}`: Nix escapes only '\"', '\\', newline, CR and tab",
                                c.escape_ascii()
                            ),
                        });
                    }
                    escapes = true;
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
                _ => i += first_special(&s[i..]),
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

    fn output(&mut self) -> Result<(&'a str, Output), DrvError> {
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
        Ok((name, Output { path, hash }))
    }

    fn body(&mut self, b: &mut impl Build<'a>) -> Result<Sections, DrvError> {
        // outputs
        let mut prev: Option<&str> = None;
        self.list(|p| {
            let at = p.pos;
            let (name, out) = p.output()?;
            check_order(at, "outputs", prev.map(str::as_bytes), name.as_bytes())?;
            prev = Some(name);
            b.output(name, out);
            Ok(())
        })?;
        let outputs_end = self.pos;
        self.expect(",")?;
        // input derivations
        let mut prev: Option<&str> = None;
        let mut outs: Vec<&'a str> = Vec::new();
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
            outs.clear();
            p.list(|p| {
                let at = p.pos;
                let o = p.output_name()?;
                check_order(
                    at,
                    "output names of an input derivation",
                    outs.last().map(|o| o.as_bytes()),
                    o.as_bytes(),
                )?;
                outs.push(o);
                Ok(())
            })?;
            p.expect(")")?;
            b.input_drv(path, &outs);
            Ok(())
        })?;
        let inputs_end = self.pos;
        self.expect(",")?;
        // input sources
        let mut prev: Option<&str> = None;
        self.list(|p| {
            let at = p.pos;
            let (path, raw) = p.store_path()?;
            check_order(at, "input sources", prev.map(str::as_bytes), raw.as_bytes())?;
            prev = Some(raw);
            b.input_src(path);
            Ok(())
        })?;
        self.expect(",")?;
        b.system(self.plain_bytes()?);
        self.expect(",")?;
        b.builder(self.escaped()?);
        self.expect(",")?;
        self.list(|p| {
            b.arg(p.escaped()?);
            Ok(())
        })?;
        self.expect(",")?;
        // Keys without escapes (nearly all) are compared where they lie in the input.
        let mut prev: Option<std::borrow::Cow<'a, [u8]>> = None;
        self.list(|p| {
            let at = p.pos;
            p.expect("(")?;
            let key = p.escaped()?.value();
            check_order(at, "env vars", prev.as_deref(), &key)?;
            p.expect(",")?;
            let value = p.escaped()?;
            p.expect(")")?;
            b.env(&key, value);
            prev = Some(key);
            Ok(())
        })?;
        self.expect(")")?;
        Ok(Sections { outputs_end, inputs_end })
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

/// Where the printer writes: a `Vec` (the ATerm) or a buffered SHA-256 (its hash).
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_byte(&mut self, b: u8);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn put_byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// Small: the buffer is zeroed per hash, and large pieces bypass it.
const HASH_SINK_BUF: usize = 512;

/// SHA-256 fed in blocks of [`HASH_SINK_BUF`] bytes, so the many small pieces of an ATerm cost
/// a copy each, not a hasher call.
pub(super) struct HashSink {
    h: sha2::Sha256,
    buf: [u8; HASH_SINK_BUF],
    n: usize,
}

impl HashSink {
    pub(super) fn new() -> HashSink {
        HashSink { h: sha2::Sha256::new(), buf: [0; HASH_SINK_BUF], n: 0 }
    }

    /// The SHA-256 of everything put.
    pub(super) fn finish(mut self) -> [u8; 32] {
        self.h.update(&self.buf[..self.n]);
        self.h.finalize().into()
    }
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        if self.n + bytes.len() > HASH_SINK_BUF {
            self.h.update(&self.buf[..self.n]);
            self.n = 0;
            if bytes.len() >= HASH_SINK_BUF {
                self.h.update(bytes);
                return;
            }
        }
        self.buf[self.n..self.n + bytes.len()].copy_from_slice(bytes);
        self.n += bytes.len();
    }

    fn put_byte(&mut self, b: u8) {
        if self.n == HASH_SINK_BUF {
            self.h.update(&self.buf[..]);
            self.n = 0;
        }
        self.buf[self.n] = b;
        self.n += 1;
    }
}

fn push_plain(out: &mut impl Sink, s: &[u8]) {
    out.put_byte(b'"');
    out.put(s);
    out.put_byte(b'"');
}

fn push_path(out: &mut impl Sink, store_dir: &StoreDir, p: &StorePath) {
    out.put_byte(b'"');
    out.put(store_dir.as_str().as_bytes());
    out.put_byte(b'/');
    out.put(&crate::nixbase32::encode_20(p.digest()));
    out.put_byte(b'-');
    out.put(p.name().as_bytes());
    out.put_byte(b'"');
}

/// Nix `printString`: escape `"`, `\`, LF, CR, TAB; everything else raw. The bytes to escape
/// are found by two vectorised scans over `s` (quote/backslash, control characters), merged.
pub(super) fn push_escaped(out: &mut impl Sink, s: &[u8]) {
    out.put_byte(b'"');
    let mut quotes = memchr::memchr2_iter(b'"', b'\\', s).peekable();
    let mut controls = memchr::memchr3_iter(b'\n', b'\r', b'\t', s).peekable();
    let mut run = 0;
    loop {
        let i = match (quotes.peek(), controls.peek()) {
            (Some(&q), Some(&c)) if q < c => quotes.next(),
            (_, Some(_)) => controls.next(),
            (Some(_), None) => quotes.next(),
            (None, None) => None,
        };
        let Some(i) = i else { break };
        let esc: &[u8] = match s[i] {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => b"\\t",
        };
        out.put(&s[run..i]);
        out.put(esc);
        run = i + 1;
    }
    out.put(&s[run..]);
    out.put_byte(b'"');
}

/// Print the ATerm. With `mask_outputs`, outputs become `("name","","","")` and env vars named
/// after outputs become `""`; with `inputs`, the input derivations are replaced by that map
/// (hash-modulo form, keys printed as they are).
pub(super) fn print(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<[u8; 32], BTreeSet<&str>>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(drv));
    print_into(&mut out, drv, store_dir, mask_outputs, inputs);
    out
}

/// SHA-256 of what [`print`] prints, without building the ATerm in memory.
pub(super) fn print_sha256(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<[u8; 32], BTreeSet<&str>>>,
) -> [u8; 32] {
    let mut out = HashSink::new();
    print_into(&mut out, drv, store_dir, mask_outputs, inputs);
    out.finish()
}

fn print_into(
    out: &mut impl Sink,
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<[u8; 32], BTreeSet<&str>>>,
) {
    out.put(b"Derive([");
    for (i, (name, o)) in drv.outputs.iter().enumerate() {
        if i > 0 {
            out.put_byte(b',');
        }
        out.put_byte(b'(');
        push_plain(out, name.as_bytes());
        if mask_outputs {
            out.put(b",\"\",\"\",\"\")");
            continue;
        }
        out.put_byte(b',');
        match &o.path {
            Some(p) => push_path(out, store_dir, p),
            None => out.put(b"\"\""),
        }
        out.put_byte(b',');
        push_plain(out, o.hash_algo_field().as_bytes());
        out.put_byte(b',');
        push_plain(out, o.hash_field().as_bytes());
        out.put_byte(b')');
    }
    out.put(b"],[");
    fn push_outs<'s>(out: &mut impl Sink, outs: impl Iterator<Item = &'s str>) {
        out.put(b",[");
        for (j, o) in outs.enumerate() {
            if j > 0 {
                out.put_byte(b',');
            }
            push_plain(out, o.as_bytes());
        }
        out.put(b"])");
    }
    match inputs {
        Some(map) => {
            for (i, (key, outs)) in map.iter().enumerate() {
                if i > 0 {
                    out.put_byte(b',');
                }
                out.put_byte(b'(');
                let mut hex = [0u8; 64];
                // 64 bytes of room for 32 bytes of hex cannot fail.
                let _ = hex::encode_to_slice(key, &mut hex);
                push_plain(out, &hex);
                push_outs(out, outs.iter().copied());
            }
        }
        None => {
            for (i, (path, outs)) in drv.input_drvs.iter().enumerate() {
                if i > 0 {
                    out.put_byte(b',');
                }
                out.put_byte(b'(');
                push_path(out, store_dir, path);
                push_outs(out, outs.iter().map(String::as_str));
            }
        }
    }
    out.put(b"],[");
    for (i, p) in drv.input_srcs.iter().enumerate() {
        if i > 0 {
            out.put_byte(b',');
        }
        push_path(out, store_dir, p);
    }
    out.put(b"],");
    push_plain(out, &drv.system);
    out.put_byte(b',');
    push_escaped(out, &drv.builder);
    out.put(b",[");
    for (i, a) in drv.args.iter().enumerate() {
        if i > 0 {
            out.put_byte(b',');
        }
        push_escaped(out, a);
    }
    out.put(b"],[");
    for (i, (k, v)) in drv.env.iter().enumerate() {
        if i > 0 {
            out.put_byte(b',');
        }
        out.put_byte(b'(');
        push_escaped(out, k);
        out.put_byte(b',');
        let masked = mask_outputs && std::str::from_utf8(k).is_ok_and(|k| drv.outputs.contains_key(k));
        push_escaped(out, if masked { b"" } else { v });
        out.put_byte(b')');
    }
    out.put(b"])");
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
