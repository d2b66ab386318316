//! The narinfo parser.

use thiserror::Error;

use super::{ContentAddress, ContentAddressError, Deriver, ExtraField, Field, HashEncoding, MAX_NARINFO_SIZE, NarInfo};
use crate::hash::{HashAlgo, HashError, NixHash};
use crate::nixbase32;
use crate::nixkey::{NixKeyError, NixSignature};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Why a narinfo is invalid. `line` is 1-based; `0` means the value was built in code and checked
/// by [`NarInfo::validate`], not read from text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NarInfoError {
    /// The input is larger than the limit, checked before parsing.
    #[error("narinfo is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not UTF-8.
    #[error("line {line}: narinfo is not valid UTF-8 (byte offset {offset})")]
    NotUtf8 {
        /// Line of the first invalid byte.
        line: usize,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The input is empty.
    #[error("narinfo is empty")]
    Empty,
    /// The last line does not end in `\n`.
    #[error("line {line}: the last line does not end with a newline")]
    MissingFinalNewline {
        /// The last line.
        line: usize,
    },
    /// An empty line.
    #[error("line {line}: empty line")]
    EmptyLine {
        /// The line.
        line: usize,
    },
    /// A line without `:`.
    #[error("line {line}: expected `Key: value`, found no ':'")]
    MissingColon {
        /// The line.
        line: usize,
    },
    /// The `:` is not followed by a space.
    #[error("line {line}: key {key:?} is not followed by \": \"")]
    MissingSpace {
        /// The line.
        line: usize,
        /// The key.
        key: String,
    },
    /// An unknown key that cannot be kept (empty, or with characters that would not parse back).
    #[error("line {line}: unknown key {key:?}: {reason}")]
    BadExtra {
        /// The line.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key that may appear once appears again.
    #[error("line {line}: {field} appears a second time (first on line {first_line})")]
    Duplicate {
        /// The second occurrence.
        line: usize,
        /// The key.
        field: Field,
        /// The first occurrence.
        first_line: usize,
    },
    /// A required key is missing.
    #[error("narinfo has no {field} line")]
    Missing {
        /// The key.
        field: Field,
    },
    /// A store path (StorePath, References, Deriver) is invalid or not in the store dir.
    #[error("line {line}: {field}: {source}")]
    BadStorePath {
        /// The line.
        line: usize,
        /// The key.
        field: Field,
        /// Why.
        source: StorePathError,
    },
    /// A hash (NarHash, FileHash) is invalid.
    #[error("line {line}: {field}: {source}")]
    BadHash {
        /// The line.
        line: usize,
        /// The key.
        field: Field,
        /// Why.
        source: HashError,
    },
    /// A hash given in base64 or SRI form, which this module does not keep byte-exactly.
    #[error("line {line}: {field}: {value:?} is neither `<algo>:<nix32>` nor `<algo>:<hex>`")]
    UnsupportedHashEncoding {
        /// The line.
        line: usize,
        /// The key.
        field: Field,
        /// The value.
        value: String,
    },
    /// NarHash with another algorithm than sha256.
    #[error("line {line}: NarHash must be sha256, found {algo}")]
    NarHashNotSha256 {
        /// The line.
        line: usize,
        /// The algorithm found.
        algo: HashAlgo,
    },
    /// A size is not a canonical decimal u64.
    #[error("line {line}: {field}: {value:?} is not a decimal number without sign or leading zeros")]
    BadNumber {
        /// The line.
        line: usize,
        /// The key.
        field: Field,
        /// The value.
        value: String,
    },
    /// `NarSize: 0` (Nix rejects it and cannot fingerprint it).
    #[error("line {line}: NarSize must be greater than 0")]
    ZeroNarSize {
        /// The line.
        line: usize,
    },
    /// Another invalid value.
    #[error("line {line}: {field}: {reason}")]
    BadValue {
        /// The line.
        line: usize,
        /// The key.
        field: Field,
        /// What is wrong.
        reason: String,
    },
    /// A `Sig` value is invalid.
    #[error("line {line}: Sig: {source}")]
    BadSignature {
        /// The line.
        line: usize,
        /// Why.
        source: NixKeyError,
    },
    /// A `CA` value is invalid.
    #[error("line {line}: CA: {source}")]
    BadContentAddress {
        /// The line.
        line: usize,
        /// Why.
        source: ContentAddressError,
    },
}

/// Check that an unknown key can be kept and written back.
pub(super) fn check_extra_key(key: &str, line: usize) -> Result<(), NarInfoError> {
    let bad = |reason| Err(NarInfoError::BadExtra { line, key: key.to_string(), reason });
    if key.is_empty() {
        return bad("the key is empty");
    }
    if key.contains([':', '\n']) {
        return bad("the key contains ':' or a newline");
    }
    if Field::from_name(key).is_some() {
        return bad("the key is a known key");
    }
    Ok(())
}

fn parse_u64(value: &str, line: usize, field: Field) -> Result<u64, NarInfoError> {
    let bad = || NarInfoError::BadNumber { line, field, value: value.to_string() };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || (value.len() > 1 && value.starts_with('0')) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

fn parse_hash(value: &str, line: usize, field: Field) -> Result<(NixHash, HashEncoding), NarInfoError> {
    let (algo, digest) =
        value.split_once(':').ok_or(NarInfoError::UnsupportedHashEncoding { line, field, value: value.to_string() })?;
    let algo = HashAlgo::from_name(algo).ok_or_else(|| NarInfoError::BadHash {
        line,
        field,
        source: HashError::UnknownAlgo(algo.to_string()),
    })?;
    let n = algo.digest_len();
    let encoding = if digest.len() == 2 * n {
        HashEncoding::Hex
    } else if digest.len() == nixbase32::encoded_len(n) {
        HashEncoding::Nix32
    } else {
        return Err(NarInfoError::UnsupportedHashEncoding { line, field, value: value.to_string() });
    };
    // Hex must be lowercase to render back identically.
    if encoding == HashEncoding::Hex && digest.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NarInfoError::BadHash {
            line,
            field,
            source: HashError::BadEncoding { input: value.to_string(), encoding: "lowercase hex" },
        });
    }
    let hash =
        NixHash::parse_digest(value, algo, digest).map_err(|source| NarInfoError::BadHash { line, field, source })?;
    Ok((hash, encoding))
}

/// Values seen so far, each with the line it came from (for duplicate errors).
#[derive(Default)]
struct Seen {
    lines: [usize; Field::ALL.len()],
}

impl Seen {
    fn once(&mut self, field: Field, line: usize) -> Result<(), NarInfoError> {
        let slot = &mut self.lines[field as usize];
        if *slot != 0 && field != Field::Sig {
            return Err(NarInfoError::Duplicate { line, field, first_line: *slot });
        }
        if *slot == 0 {
            *slot = line;
        }
        Ok(())
    }
}

impl NarInfo {
    /// Parse a narinfo whose store paths live in `store_dir`, with the default size limit
    /// [`MAX_NARINFO_SIZE`].
    pub fn parse(input: &str, store_dir: &StoreDir) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse_with_limit(input.as_bytes(), store_dir, MAX_NARINFO_SIZE)
    }

    /// Parse raw bytes (checked to be UTF-8) with the default size limit.
    pub fn parse_bytes(input: &[u8], store_dir: &StoreDir) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse_with_limit(input, store_dir, MAX_NARINFO_SIZE)
    }

    /// Parse raw bytes, rejecting inputs longer than `max_len` before looking at them.
    pub fn parse_with_limit(input: &[u8], store_dir: &StoreDir, max_len: usize) -> Result<NarInfo, NarInfoError> {
        if input.len() > max_len {
            return Err(NarInfoError::TooLarge { len: input.len(), max: max_len });
        }
        let text = std::str::from_utf8(input).map_err(|e| {
            let offset = e.valid_up_to();
            NarInfoError::NotUtf8 { line: 1 + input[..offset].iter().filter(|&&b| b == b'\n').count(), offset }
        })?;
        if text.is_empty() {
            return Err(NarInfoError::Empty);
        }
        let body = match text.strip_suffix('\n') {
            Some(body) => body,
            None => return Err(NarInfoError::MissingFinalNewline { line: 1 + text.matches('\n').count() }),
        };

        let mut seen = Seen::default();
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        let mut extra = Vec::new();
        let mut last_known: Option<Field> = None;

        for (i, raw) in body.split('\n').enumerate() {
            let line = i + 1;
            if raw.is_empty() {
                return Err(NarInfoError::EmptyLine { line });
            }
            let (key, rest) = raw.split_once(':').ok_or(NarInfoError::MissingColon { line })?;
            let value =
                rest.strip_prefix(' ').ok_or_else(|| NarInfoError::MissingSpace { line, key: key.to_string() })?;
            let Some(field) = Field::from_name(key) else {
                check_extra_key(key, line)?;
                extra.push(ExtraField { key: key.to_string(), value: value.to_string(), after: last_known });
                continue;
            };
            seen.once(field, line)?;
            last_known = Some(field);
            let path_err = |source| NarInfoError::BadStorePath { line, field, source };
            match field {
                Field::StorePath => store_path = Some(store_dir.parse_path(value).map_err(path_err)?),
                Field::Url => {
                    if value.is_empty() {
                        return Err(NarInfoError::BadValue { line, field, reason: "it is empty".to_string() });
                    }
                    url = Some(value.to_string());
                }
                Field::Compression => compression = Some(value.to_string()),
                Field::FileHash => file_hash = Some(parse_hash(value, line, field)?),
                Field::FileSize => file_size = Some(parse_u64(value, line, field)?),
                Field::NarHash => {
                    let (hash, encoding) = parse_hash(value, line, field)?;
                    let not_sha256 = NarInfoError::NarHashNotSha256 { line, algo: hash.algo() };
                    if hash.algo() != HashAlgo::Sha256 {
                        return Err(not_sha256);
                    }
                    let digest: [u8; 32] = hash.digest().try_into().map_err(|_| not_sha256)?;
                    nar_hash = Some((digest, encoding));
                }
                Field::NarSize => {
                    let n = parse_u64(value, line, field)?;
                    if n == 0 {
                        return Err(NarInfoError::ZeroNarSize { line });
                    }
                    nar_size = Some(n);
                }
                Field::References => {
                    let refs = if value.is_empty() {
                        Vec::new()
                    } else {
                        value
                            .split(' ')
                            .map(|r| {
                                if r.is_empty() {
                                    Err(NarInfoError::BadValue {
                                        line,
                                        field,
                                        reason: "references must be separated by exactly one space".to_string(),
                                    })
                                } else {
                                    StorePath::from_basename(r).map_err(path_err)
                                }
                            })
                            .collect::<Result<Vec<_>, _>>()?
                    };
                    references = Some(refs);
                }
                Field::Deriver => {
                    deriver = Some(if value == "unknown-deriver" {
                        Deriver::Unknown
                    } else {
                        Deriver::Path(StorePath::from_basename(value).map_err(path_err)?)
                    });
                }
                Field::System => system = Some(value.to_string()),
                Field::Sig => {
                    let sig =
                        NixSignature::parse(value).map_err(|source| NarInfoError::BadSignature { line, source })?;
                    if sig.to_string() != value {
                        return Err(NarInfoError::BadValue {
                            line,
                            field,
                            reason: "signature is not in canonical `name:base64` form (stray whitespace?)".to_string(),
                        });
                    }
                    sigs.push(sig);
                }
                Field::Ca => {
                    ca = Some(
                        ContentAddress::parse(value)
                            .map_err(|source| NarInfoError::BadContentAddress { line, source })?,
                    )
                }
            }
        }

        let missing = |field| NarInfoError::Missing { field };
        let store_path = store_path.ok_or(missing(Field::StorePath))?;
        let url = url.ok_or(missing(Field::Url))?;
        let (nar_hash, nar_hash_encoding) = nar_hash.ok_or(missing(Field::NarHash))?;
        let nar_size = nar_size.ok_or(missing(Field::NarSize))?;
        // Rendering groups unknown lines by anchor in Nix's key order; sort the same way (stably)
        // so that parse(render(x)) == x even when the input had its known keys out of order.
        extra.sort_by_key(|e: &ExtraField| e.after);
        let (file_hash, file_hash_encoding) = match file_hash {
            Some((h, e)) => (Some(h), e),
            None => (None, HashEncoding::Nix32),
        };
        Ok(NarInfo {
            store_dir: store_dir.clone(),
            store_path,
            url,
            compression,
            file_hash,
            file_hash_encoding,
            file_size,
            nar_hash,
            nar_hash_encoding,
            nar_size,
            omit_empty_references: references.is_none(),
            references: references.unwrap_or_default(),
            deriver,
            system,
            sigs,
            ca,
            extra,
        })
    }
}
