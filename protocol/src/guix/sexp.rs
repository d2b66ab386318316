//! S-expressions as libgcrypt reads and prints them (what Guix keys, ACLs and signatures are).
//!
//! An s-expression is a list of atoms (byte strings) and lists. libgcrypt reads the "advanced"
//! transport forms (tokens, `"quoted strings"`, `#hex#`, `|base64|`, verbatim `N:bytes`) and the
//! canonical form (only verbatim atoms), which all denote the same tree; [`Sexp::canonical`] is the
//! one byte encoding of a tree, [`Sexp::advanced`] the text libgcrypt's `gcry_sexp_sprint` writes
//! in `GCRYSEXP_FMT_ADVANCED` mode (what Guix base64-encodes into a narinfo `Signature:` line and
//! writes into `signing-key.pub` and `/etc/guix/acl`).
//!
//! Source: libgcrypt `src/sexp.c` (`do_sexp_sscan`, `suitable_encoding`, `_gcry_sexp_sprint`,
//! `_gcry_sexp_find_token`, `_gcry_sexp_nth_data`). Display hints (`[...]`) are refused: Guix
//! never writes them.

use std::fmt::Write as _;

use base64::Engine as _;
use thiserror::Error;

/// The largest s-expression text accepted (a Guix signature is about 600 bytes, an ACL of a
/// hundred keys about 20 KiB).
pub const MAX_SEXP_BYTES: usize = 1 << 20;
/// The deepest nesting accepted (Guix's forms nest four levels deep).
pub const MAX_DEPTH: usize = 64;

/// A parsed s-expression: an atom (byte string) or a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sexp {
    /// An octet string (libgcrypt "data").
    Atom(Vec<u8>),
    /// A list of s-expressions.
    List(Vec<Sexp>),
}

/// Why a text is not an s-expression libgcrypt would read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SexpError {
    /// The text is longer than [`MAX_SEXP_BYTES`].
    #[error("s-expression is {0} bytes, more than the {MAX_SEXP_BYTES} accepted")]
    TooLarge(usize),
    /// Lists nest deeper than [`MAX_DEPTH`].
    #[error("s-expression nests deeper than {MAX_DEPTH} levels at byte {0}")]
    TooDeep(usize),
    /// A byte that no s-expression form may hold here.
    #[error("unexpected character {ch:?} at byte {at}")]
    BadChar {
        /// The byte.
        ch: char,
        /// Its offset.
        at: usize,
    },
    /// A `)` without its `(`, or a `(` never closed.
    #[error("unbalanced parenthesis at byte {0}")]
    Unbalanced(usize),
    /// A `"`, `#` or `|` form never closed.
    #[error("unterminated {what} starting at byte {at}")]
    Unterminated {
        /// `string`, `hex string` or `base64 string`.
        what: &'static str,
        /// Where it starts.
        at: usize,
    },
    /// A hex string with an odd number of digits or a non-hex character.
    #[error("bad hex string at byte {0}")]
    BadHex(usize),
    /// A `|base64|` string that does not decode.
    #[error("bad base64 string at byte {0}")]
    BadBase64(usize),
    /// A bad escape inside a quoted string.
    #[error("bad escape in quoted string at byte {0}")]
    BadEscape(usize),
    /// A verbatim `N:` length that is malformed or runs past the end.
    #[error("bad verbatim length at byte {0}")]
    BadLength(usize),
    /// Display hints (`[...]`) are not supported.
    #[error("display hint at byte {0}: not supported")]
    DisplayHint(usize),
    /// Nothing, or only `()`, was found.
    #[error("empty s-expression")]
    Empty,
    /// Text follows the first complete s-expression.
    #[error("trailing data after the s-expression at byte {0}")]
    Trailing(usize),
    /// The top level is an atom rather than a list.
    #[error("s-expression is not a list")]
    NotAList,
}

const TOKEN_SPECIALS: &[u8] = b"-./_:*+=";

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || TOKEN_SPECIALS.contains(&b)
}

/// libgcrypt's `whitespacep`/`isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

impl Sexp {
    /// An atom from text.
    pub fn atom(text: impl AsRef<[u8]>) -> Sexp {
        Sexp::Atom(text.as_ref().to_vec())
    }

    /// A list.
    pub fn list(items: Vec<Sexp>) -> Sexp {
        Sexp::List(items)
    }

    /// Parses text in any transport form libgcrypt's `gcry_sexp_new(.., autodetect = 1)` reads.
    /// The top level must be one non-empty list, optionally surrounded by whitespace.
    pub fn parse(text: &[u8]) -> Result<Sexp, SexpError> {
        let mut items = Sexp::parse_seq(text)?;
        match items.len() {
            0 => Err(SexpError::Empty),
            1 => match items.pop() {
                Some(Sexp::List(list)) if list.is_empty() => Err(SexpError::Empty),
                Some(sexp @ Sexp::List(_)) => Ok(sexp),
                _ => Err(SexpError::NotAList),
            },
            _ => Err(SexpError::Trailing(text.len())),
        }
    }

    /// Parses a sequence of top-level items (atoms or lists), as libgcrypt's scanner accepts
    /// them: a signature text may hold any sequence, and Guix looks tokens up across all of it.
    pub fn parse_seq(text: &[u8]) -> Result<Vec<Sexp>, SexpError> {
        if text.len() > MAX_SEXP_BYTES {
            return Err(SexpError::TooLarge(text.len()));
        }
        let mut parser = Parser { text, pos: 0 };
        let mut items = Vec::new();
        loop {
            parser.skip_space();
            match text.get(parser.pos) {
                None => return Ok(items),
                Some(b'(') => items.push(parser.list(0)?),
                Some(b')') => return Err(SexpError::Unbalanced(parser.pos)),
                Some(_) => items.push(Sexp::Atom(parser.atom()?)),
            }
        }
    }

    /// The canonical encoding (`(9:signature(4:data...`), the one byte form of a tree.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Sexp::Atom(bytes) => {
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(bytes);
            }
            Sexp::List(items) => {
                out.push(b'(');
                for item in items {
                    item.write_canonical(out);
                }
                out.push(b')');
            }
        }
    }

    /// The advanced rendering, byte for byte as `gcry_sexp_sprint(.., GCRYSEXP_FMT_ADVANCED)`
    /// writes it, including its final newline. Atoms that are not text come out as `#HEX#`, so
    /// the result is ASCII unless an atom holds bytes 0xA1..=0xFF in a printable string.
    pub fn advanced(&self) -> Vec<u8> {
        // Flatten to libgcrypt's internal stream of OPEN / DATA / CLOSE, then print it with the
        // same look-ahead rules as _gcry_sexp_sprint.
        let mut stream = Vec::new();
        self.flatten(&mut stream);
        let mut out = Vec::new();
        let mut indent = 0usize;
        for (i, item) in stream.iter().enumerate() {
            let next = stream.get(i + 1);
            match item {
                Flat::Open => {
                    if indent > 0 {
                        out.push(b'\n');
                        out.extend(std::iter::repeat_n(b' ', indent));
                    }
                    out.push(b'(');
                    indent += 1;
                }
                Flat::Close => {
                    out.push(b')');
                    indent = indent.saturating_sub(1);
                    if !matches!(next, Some(Flat::Open) | None) {
                        out.push(b'\n');
                        out.extend(std::iter::repeat_n(b' ', indent));
                    }
                }
                Flat::Data(bytes) => {
                    write_atom(bytes, &mut out);
                    if !matches!(next, Some(Flat::Close)) {
                        out.push(b' ');
                    }
                }
            }
        }
        out.push(b'\n');
        out
    }

    /// [`Sexp::advanced`] as a string (Guix's forms are ASCII; other bytes map as Latin-1, as
    /// guile-gcrypt's `canonical-sexp->string` reads them).
    pub fn advanced_string(&self) -> String {
        self.advanced().iter().map(|&b| char::from(b)).collect()
    }

    fn flatten<'a>(&'a self, out: &mut Vec<Flat<'a>>) {
        match self {
            Sexp::Atom(bytes) => out.push(Flat::Data(bytes)),
            Sexp::List(items) => {
                out.push(Flat::Open);
                for item in items {
                    item.flatten(out);
                }
                out.push(Flat::Close);
            }
        }
    }

    /// The items of a list (an atom has none).
    pub fn items(&self) -> &[Sexp] {
        match self {
            Sexp::List(items) => items,
            Sexp::Atom(_) => &[],
        }
    }

    /// The bytes of an atom.
    pub fn as_atom(&self) -> Option<&[u8]> {
        match self {
            Sexp::Atom(bytes) => Some(bytes),
            Sexp::List(_) => None,
        }
    }

    /// `gcry_sexp_nth_data`: the `n`th item of this list when it is an atom.
    pub fn nth_data(&self, n: usize) -> Option<&[u8]> {
        self.items().get(n).and_then(Sexp::as_atom)
    }

    /// The first item of a list when it is an atom: the list's name (`public-key`, `data`...).
    pub fn head(&self) -> Option<&[u8]> {
        self.nth_data(0)
    }

    /// `gcry_sexp_find_token`: the first list, in depth-first order (this list included), whose
    /// first item is the atom `token`.
    pub fn find_token(&self, token: &str) -> Option<&Sexp> {
        let Sexp::List(items) = self else { return None };
        if self.head() == Some(token.as_bytes()) {
            return Some(self);
        }
        items.iter().find_map(|item| item.find_token(token))
    }
}

#[derive(Debug)]
enum Flat<'a> {
    Open,
    Close,
    Data(&'a [u8]),
}

/// libgcrypt's `suitable_encoding`: 0 binary (hex), 1 quoted string, 2 token.
fn suitable_encoding(bytes: &[u8]) -> u8 {
    let Some(&first) = bytes.first() else { return 1 };
    if first & 0x80 != 0 || first == 0 {
        return 0;
    }
    let mut maybe_token = true;
    for &b in bytes {
        if (b < 0x20 || (0x7f..=0xa0).contains(&b)) && !b"\x08\t\x0b\n\x0c\r\"'\\".contains(&b) {
            return 0;
        }
        if maybe_token && !is_token_char(b) {
            maybe_token = false;
        }
    }
    if maybe_token && !first.is_ascii_digit() { 2 } else { 1 }
}

fn write_atom(bytes: &[u8], out: &mut Vec<u8>) {
    match suitable_encoding(bytes) {
        2 => out.extend_from_slice(bytes),
        1 => {
            out.push(b'"');
            for &b in bytes {
                match b {
                    b'\x08' => out.extend_from_slice(b"\\b"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\x0b' => out.extend_from_slice(b"\\v"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\x0c' => out.extend_from_slice(b"\\f"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\'' => out.extend_from_slice(b"\\'"),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    _ if b < 0x20 || (0x7f..=0xa0).contains(&b) => {
                        let mut s = String::new();
                        let _ = write!(s, "\\x{b:02x}");
                        out.extend_from_slice(s.as_bytes());
                    }
                    _ => out.push(b),
                }
            }
            out.push(b'"');
        }
        _ => {
            out.push(b'#');
            out.extend_from_slice(hex::encode_upper(bytes).as_bytes());
            out.push(b'#');
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.text.get(self.pos).is_some_and(|&b| is_space(b)) {
            self.pos += 1;
        }
    }

    /// Parses a list; `self.pos` is at its `(`.
    fn list(&mut self, depth: usize) -> Result<Sexp, SexpError> {
        if depth >= MAX_DEPTH {
            return Err(SexpError::TooDeep(self.pos));
        }
        let open = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            let Some(&b) = self.text.get(self.pos) else {
                return Err(SexpError::Unbalanced(open));
            };
            match b {
                b')' => {
                    self.pos += 1;
                    return Ok(Sexp::List(items));
                }
                b'(' => items.push(self.list(depth + 1)?),
                _ => items.push(Sexp::Atom(self.atom()?)),
            }
        }
    }

    /// Parses one atom at `self.pos`.
    fn atom(&mut self) -> Result<Vec<u8>, SexpError> {
        let at = self.pos;
        let b = self.text[at];
        match b {
            b'"' => self.quoted(),
            b'#' => self.hex(),
            b'|' => self.base64(),
            b'[' => Err(SexpError::DisplayHint(at)),
            b'1'..=b'9' => {
                // A length prefix: `N:verbatim`, or (ignored) before "...", #...# or |...|.
                let digits_end = at + self.text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
                let len: usize = std::str::from_utf8(&self.text[at..digits_end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(SexpError::BadLength(at))?;
                self.pos = digits_end;
                match self.text.get(digits_end) {
                    Some(b':') => {
                        let start = digits_end + 1;
                        let end = start.checked_add(len).ok_or(SexpError::BadLength(at))?;
                        let bytes = self.text.get(start..end).ok_or(SexpError::BadLength(at))?;
                        self.pos = end;
                        Ok(bytes.to_vec())
                    }
                    Some(b'"') => self.quoted(),
                    Some(b'#') => self.hex(),
                    Some(b'|') => self.base64(),
                    _ => Err(SexpError::BadLength(at)),
                }
            }
            b'0' => Err(SexpError::BadLength(at)),
            _ if is_token_char(b) => {
                let len = self.text[at..].iter().take_while(|&&b| is_token_char(b)).count();
                self.pos = at + len;
                Ok(self.text[at..at + len].to_vec())
            }
            _ => Err(SexpError::BadChar { ch: char::from(b), at }),
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, SexpError> {
        let start = self.pos;
        let mut i = start + 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.text.get(i) else {
                return Err(SexpError::Unterminated { what: "string", at: start });
            };
            match b {
                b'"' => {
                    self.pos = i + 1;
                    return Ok(out);
                }
                b'\\' => {
                    let Some(&e) = self.text.get(i + 1) else {
                        return Err(SexpError::Unterminated { what: "string", at: start });
                    };
                    i += 2;
                    match e {
                        b'b' => out.push(0x08),
                        b't' => out.push(b'\t'),
                        b'v' => out.push(0x0b),
                        b'n' => out.push(b'\n'),
                        b'f' => out.push(0x0c),
                        b'r' => out.push(b'\r'),
                        b'"' | b'\'' | b'\\' => out.push(e),
                        b'0'..=b'7' => {
                            let digits = self.text.get(i - 1..i + 2).ok_or(SexpError::BadEscape(i - 2))?;
                            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                                return Err(SexpError::BadEscape(i - 2));
                            }
                            let v = u32::from(digits[0] - b'0') * 64
                                + u32::from(digits[1] - b'0') * 8
                                + u32::from(digits[2] - b'0');
                            out.push((v & 0xff) as u8);
                            i += 2;
                        }
                        b'x' => {
                            let digits = self.text.get(i..i + 2).ok_or(SexpError::BadEscape(i - 2))?;
                            let v = hex::decode(digits).map_err(|_| SexpError::BadEscape(i - 2))?;
                            out.extend_from_slice(&v);
                            i += 2;
                        }
                        b'\r' => {
                            if self.text.get(i) == Some(&b'\n') {
                                i += 1;
                            }
                        }
                        b'\n' => {
                            if self.text.get(i) == Some(&b'\r') {
                                i += 1;
                            }
                        }
                        _ => return Err(SexpError::BadEscape(i - 2)),
                    }
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }

    fn hex(&mut self) -> Result<Vec<u8>, SexpError> {
        let start = self.pos;
        let Some(len) = self.text[start + 1..].iter().position(|&b| b == b'#') else {
            return Err(SexpError::Unterminated { what: "hex string", at: start });
        };
        let body = &self.text[start + 1..start + 1 + len];
        let digits: Vec<u8> = body.iter().copied().filter(|&b| !is_space(b)).collect();
        if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(SexpError::BadHex(start));
        }
        self.pos = start + len + 2;
        hex::decode(digits).map_err(|_| SexpError::BadHex(start))
    }

    fn base64(&mut self) -> Result<Vec<u8>, SexpError> {
        let start = self.pos;
        let Some(len) = self.text[start + 1..].iter().position(|&b| b == b'|') else {
            return Err(SexpError::Unterminated { what: "base64 string", at: start });
        };
        let body: Vec<u8> = self.text[start + 1..start + 1 + len].iter().copied().filter(|&b| !is_space(b)).collect();
        self.pos = start + len + 2;
        base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| SexpError::BadBase64(start))
    }
}

/// guile-gcrypt's `token-string?` over an atom read as Latin-1: non-empty, only letters (any
/// Latin-1 letter), digits and `-./_:*+=`, not starting with a digit. guile-gcrypt turns such an
/// atom into a symbol and any other into a bytevector, so a token is never `equal?` to bytes.
pub fn is_guile_token(bytes: &[u8]) -> bool {
    fn letter(b: u8) -> bool {
        b.is_ascii_alphabetic() || matches!(b, 0xaa | 0xb5 | 0xba | 0xc0..=0xd6 | 0xd8..=0xf6 | 0xf8..=0xff)
    }
    match bytes.first() {
        None => false,
        Some(first) if first.is_ascii_digit() => false,
        Some(_) => bytes.iter().all(|&b| letter(b) || b.is_ascii_digit() || TOKEN_SPECIALS.contains(&b)),
    }
}
