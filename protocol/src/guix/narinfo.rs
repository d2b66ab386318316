//! Signing and verifying narinfos the way Guix does (`guix/narinfo.scm`, `guix/pki.scm`,
//! `guix/scripts/publish.scm`).
//!
//! - The signed region is the text before the first occurrence of `Signature:`; it counts only
//!   when `StorePath`, `NarHash` and `References` are fields of it (`narinfo-sha256`).
//! - `Signature: 1;<host>;<base64>`: the base64 of libgcrypt's advanced rendering of
//!   `(signature (data (flags rfc6979) (hash sha256 #H#)) (sig-val (ecdsa (r #…#) (s #…#)))
//!   (public-key (ecc (curve Ed25519) (q #…#))))` with H = sha256(signed region).
//! - The status (`%signature-status`): `corrupt-signature` without a `data` or `public-key`
//!   list, `unauthorized-key` when the signature's key is not in the ACL, `hash-mismatch` when
//!   H is not the region's hash, then `valid-signature` or `invalid-signature` by ECDSA.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::ecdsa;
use super::keys::{GuixPublicKey, GuixSecretKey};
use super::recutils::{self, read_narinfo, read_record, scheme_number_is_one};
use super::sexp::{Sexp, is_guile_token};

/// The store directory Guix clients accept narinfos for.
pub const GUIX_STORE_DIR: &str = "/gnu/store";
/// The largest narinfo accepted for verification (Guix narinfos are a few KiB).
pub const MAX_NARINFO_BYTES: usize = 1 << 20;
/// The fields that must lie in the signed region (`%mandatory-fields` in `guix/narinfo.scm`).
pub const MANDATORY_FIELDS: [&str; 3] = ["StorePath", "NarHash", "References"];

/// Why a narinfo cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GuixSignError {
    /// The signed part must end with a newline (the `Signature:` line follows it).
    #[error("the part to sign must end with a newline")]
    NoFinalNewline,
    /// The signed part already holds `Signature:`: the region would end there.
    #[error("the part to sign already contains \"Signature:\"")]
    HasSignature,
    /// Guix would not read the signed part.
    #[error("Guix would not read the part to sign: {0}")]
    Unreadable(String),
    /// A mandatory field is missing from the signed part.
    #[error("the part to sign has no {0} field (Guix requires StorePath, NarHash and References to be signed)")]
    MissingField(&'static str),
    /// The host name cannot go in a `Signature:` line.
    #[error("host name {0:?} may not be empty or contain ';' or whitespace")]
    BadHost(String),
}

/// Guix's verdict on a narinfo's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuixStatus {
    /// Signed by an authorized key and the signature verifies.
    ValidSignature,
    /// Authorized key and matching hash, but ECDSA verification fails.
    InvalidSignature,
    /// The hash inside the signature is not the hash of the signed region.
    HashMismatch,
    /// The signature's key is not in the ACL.
    UnauthorizedKey,
    /// The signature s-expression lacks its `data` or `public-key` part.
    CorruptSignature,
    /// No `Signature:` field Guix can parse (missing, version ≠ 1, bad base64, not an
    /// s-expression): Guix treats the narinfo as unsigned.
    NoSignature,
    /// `StorePath`, `NarHash` or `References` is not above `Signature:`: treated as unsigned.
    UnsignedFields,
    /// Guix cannot even read the narinfo (`read-narinfo` raises).
    Malformed,
    /// libgcrypt refuses the signature's form (Guix raises an error rather than returning a status).
    VerifyError,
}

impl GuixStatus {
    /// The name Guix (or, for the last four, the oracle) uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            GuixStatus::ValidSignature => "valid-signature",
            GuixStatus::InvalidSignature => "invalid-signature",
            GuixStatus::HashMismatch => "hash-mismatch",
            GuixStatus::UnauthorizedKey => "unauthorized-key",
            GuixStatus::CorruptSignature => "corrupt-signature",
            GuixStatus::NoSignature => "no-parsable-signature",
            GuixStatus::UnsignedFields => "no-signed-region-or-missing-mandatory-fields",
            GuixStatus::Malformed => "parse-error",
            GuixStatus::VerifyError => "error",
        }
    }
}

impl std::fmt::Display for GuixStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Guix decides about one narinfo under an ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuixVerdict {
    /// The signature status.
    pub status: GuixStatus,
    /// Why, in words (names the field or part at fault).
    pub reason: String,
    /// The key inside the signature, when it is a Guix Ed25519 key.
    pub signer: Option<GuixPublicKey>,
    /// The host named in the `Signature:` line.
    pub host: Option<String>,
    /// `StorePath`, when the narinfo has one.
    pub store_path: Option<String>,
    /// Whether `StorePath` lies directly in the store directory checked (`fetch-narinfos`).
    pub in_store: bool,
    /// Whether the narinfo has a `URL` (without one, Guix's `valid-narinfo?` raises).
    pub has_url: bool,
}

impl GuixVerdict {
    /// Whether a Guix client would use this narinfo: a valid signature under the ACL, StorePath
    /// in the store, and a URL to fetch.
    pub fn accepted(&self) -> bool {
        self.status == GuixStatus::ValidSignature && self.in_store && self.has_url
    }

    /// One line for people: the status and the reason, plus why an otherwise valid narinfo is
    /// still refused.
    pub fn describe(&self) -> String {
        let mut out = format!("{}: {}", self.status, self.reason);
        if self.status == GuixStatus::ValidSignature && !self.in_store {
            out.push_str("; but StorePath is not in the store directory, so Guix drops it");
        }
        if self.status == GuixStatus::ValidSignature && !self.has_url {
            out.push_str("; but there is no URL line, so Guix's check raises an error");
        }
        out
    }
}

fn base64_engine() -> GeneralPurpose {
    // guix/base64.scm: length a multiple of 4, `=` only at the end, stray low bits ignored.
    GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    )
}

/// The signed region of a narinfo: the text before the first `Signature:`, when it holds the
/// mandatory fields; `None` otherwise (Guix then treats the narinfo as unsigned).
pub fn signed_region(text: &str) -> Option<&str> {
    let index = text.find("Signature:")?;
    let region = &text[..index];
    let fields = read_record(region).ok()?;
    MANDATORY_FIELDS.iter().all(|f| fields.has(f)).then_some(region)
}

/// Signs the part of a narinfo before `Signature:`; returns the whole line
/// `Signature: 1;<host>;<base64>\n` to append (then any unsigned trailer, such as the URL
/// triples in the current `guix publish` layout). Deterministic (RFC 6979).
pub fn sign_narinfo(signed_part: &str, host: &str, key: &GuixSecretKey) -> Result<String, GuixSignError> {
    if !signed_part.ends_with('\n') {
        return Err(GuixSignError::NoFinalNewline);
    }
    if signed_part.contains("Signature:") {
        return Err(GuixSignError::HasSignature);
    }
    if host.is_empty() || host.contains(';') || host.chars().any(char::is_whitespace) {
        return Err(GuixSignError::BadHost(host.to_string()));
    }
    let fields = read_record(signed_part).map_err(GuixSignError::Unreadable)?;
    if let Some(missing) = MANDATORY_FIELDS.iter().find(|f| !fields.has(f)) {
        return Err(GuixSignError::MissingField(missing));
    }
    let hash: [u8; 32] = Sha256::digest(signed_part.as_bytes()).into();
    Ok(format!("Signature: 1;{host};{}\n", signature_value(&hash, key)))
}

/// The base64 text of Guix's signature s-expression over `hash` (what follows `1;<host>;`).
pub fn signature_value(hash: &[u8; 32], key: &GuixSecretKey) -> String {
    let sig = key.sign_hash(hash);
    let tree = Sexp::list(vec![
        Sexp::atom("signature"),
        hash_data(hash),
        Sexp::list(vec![
            Sexp::atom("sig-val"),
            Sexp::list(vec![
                Sexp::atom("ecdsa"),
                Sexp::list(vec![Sexp::atom("r"), Sexp::Atom(ecdsa::minimal_be(&sig.r).to_vec())]),
                Sexp::list(vec![Sexp::atom("s"), Sexp::Atom(ecdsa::minimal_be(&sig.s).to_vec())]),
            ]),
        ]),
        key.public().to_tree(),
    ]);
    // guile-gcrypt reads libgcrypt's rendering as Latin-1 and `guix publish` base64-encodes the
    // string's UTF-8 (an r or s printed as a quoted string may hold bytes 0xA1..=0xFF).
    base64::engine::general_purpose::STANDARD.encode(tree.advanced_string())
}

/// `(data (flags rfc6979) (hash sha256 #H#))`, as guile-gcrypt's `bytevector->hash-data` builds it.
fn hash_data(hash: &[u8; 32]) -> Sexp {
    Sexp::list(vec![
        Sexp::atom("data"),
        Sexp::list(vec![Sexp::atom("flags"), Sexp::atom("rfc6979")]),
        Sexp::list(vec![Sexp::atom("hash"), Sexp::atom("sha256"), Sexp::Atom(hash.to_vec())]),
    ])
}

/// Guix's verdict on a narinfo under an ACL, for the store `/gnu/store`.
pub fn verify_narinfo(text: &str, acl: &[GuixPublicKey]) -> GuixVerdict {
    verify_narinfo_in(text, acl, GUIX_STORE_DIR)
}

/// Guix's verdict on a narinfo under an ACL, for a client whose store is `store_dir`.
pub fn verify_narinfo_in(text: &str, acl: &[GuixPublicKey], store_dir: &str) -> GuixVerdict {
    let mut verdict = GuixVerdict {
        status: GuixStatus::Malformed,
        reason: String::new(),
        signer: None,
        host: None,
        store_path: None,
        in_store: false,
        has_url: false,
    };
    if text.len() > MAX_NARINFO_BYTES {
        verdict.reason = format!("narinfo is {} bytes, more than {MAX_NARINFO_BYTES}", text.len());
        return verdict;
    }
    let fields = match read_narinfo(text) {
        Ok(fields) => fields,
        Err(why) => {
            verdict.reason = format!("Guix cannot read this narinfo: {why}");
            return verdict;
        }
    };
    verdict.store_path = fields.first("StorePath").map(str::to_string);
    verdict.in_store = verdict.store_path.as_deref().is_some_and(|p| recutils::dirname(p) == store_dir);
    verdict.has_url = fields.has("URL");
    let (status, reason) = judge(text, &fields, acl, &mut verdict);
    verdict.status = status;
    verdict.reason = reason;
    verdict
}

fn judge(
    text: &str,
    fields: &recutils::GuixFields,
    acl: &[GuixPublicKey],
    verdict: &mut GuixVerdict,
) -> (GuixStatus, String) {
    let Some(value) = fields.first("Signature") else {
        return (GuixStatus::NoSignature, "no Signature field".to_string());
    };
    let sig = match parse_signature_field(value) {
        Ok((host, sig)) => {
            verdict.host = Some(host);
            sig
        }
        Err(why) => return (GuixStatus::NoSignature, why),
    };
    let Some(region) = signed_region(text) else {
        return (
            GuixStatus::UnsignedFields,
            "StorePath, NarHash and References must all come before Signature".to_string(),
        );
    };
    let hash: [u8; 32] = Sha256::digest(region.as_bytes()).into();
    let find = |token: &str| sig.iter().find_map(|s| s.find_token(token));
    let (Some(subject), Some(data)) = (find("public-key"), find("data")) else {
        return (GuixStatus::CorruptSignature, "the signature has no (data ...) or no (public-key ...)".to_string());
    };
    verdict.signer = GuixPublicKey::from_tree(subject).ok();
    // authorized-key?: the signature's key, as a tree, must equal an ACL entry's.
    let subject_canonical = subject.canonical();
    let Some(key) = acl.iter().find(|a| a.canonical() == subject_canonical).copied() else {
        let who =
            verdict.signer.map(|k| hex::encode_upper(k.to_bytes())).unwrap_or_else(|| "a non-Guix key".to_string());
        return (GuixStatus::UnauthorizedKey, format!("signed by {who}, which is not in the ACL"));
    };
    // hash-data->bytevector: the first (hash ALGO VALUE) in data; ALGO must be a token.
    let hash_list = data.find_token("hash");
    if let Some(list) = hash_list
        && !list.nth_data(1).is_some_and(is_guile_token)
    {
        return (GuixStatus::VerifyError, "(hash ...) has no algorithm name: Guix raises".to_string());
    }
    let value = hash_list.and_then(|l| l.nth_data(2)).filter(|v| !is_guile_token(v));
    if value != Some(&hash[..]) {
        return (
            GuixStatus::HashMismatch,
            format!("the signature covers another text: the signed region's sha256 is {}", hex::encode_upper(hash)),
        );
    }
    let Some(sig_val) = find("sig-val") else {
        return (GuixStatus::InvalidSignature, "the signature has no (sig-val ...)".to_string());
    };
    match ecdsa_verify(sig_val, data, &key, &hash) {
        Ok(true) => (GuixStatus::ValidSignature, format!("signed by {}", hex::encode_upper(key.to_bytes()))),
        Ok(false) => (GuixStatus::InvalidSignature, "the ECDSA signature does not verify".to_string()),
        Err(why) => (GuixStatus::VerifyError, format!("libgcrypt refuses the signature: {why}")),
    }
}

/// `narinfo-signature->canonical-sexp`: `1;<host>;<base64>` → host and the top-level items of
/// the s-expression. `Err` means Guix finds no usable signature.
fn parse_signature_field(value: &str) -> Result<(String, Vec<Sexp>), String> {
    let parts: Vec<&str> = value.split(';').collect();
    let [version, host, b64] = parts[..] else {
        return Err(format!("Signature has {} ';'-separated parts, expected 3", parts.len()));
    };
    if !scheme_number_is_one(version) {
        return Err(format!("signature version {version:?} is not 1"));
    }
    let bytes = base64_engine().decode(b64).map_err(|e| format!("signature is not base64: {e}"))?;
    // utf8->string, then guile-gcrypt passes the string to libgcrypt as Latin-1, NUL-terminated.
    let text = std::str::from_utf8(&bytes).map_err(|_| "signature is not UTF-8".to_string())?;
    let mut latin1 = Vec::with_capacity(text.len());
    for c in text.chars() {
        let code = u32::from(c);
        if code > 0xff {
            return Err("signature holds a character outside Latin-1".to_string());
        }
        if code == 0 {
            break;
        }
        latin1.push(code as u8);
    }
    let items = Sexp::parse_seq(&latin1).map_err(|e| format!("signature is not an s-expression: {e}"))?;
    Ok((host.to_string(), items))
}

/// `gcry_pk_verify(sig-val, data, public-key)`: `Ok(false)` for a bad signature, `Err` for what
/// libgcrypt reports as an error instead.
fn ecdsa_verify(sig_val: &Sexp, data: &Sexp, key: &GuixPublicKey, hash: &[u8; 32]) -> Result<bool, String> {
    check_data(data)?;
    // _gcry_pk_util_preparse_sigval: the algorithm list after sig-val (skipping a flags list).
    let mut algo = sig_val.items().get(1);
    if algo.and_then(Sexp::head) == Some(b"flags") {
        algo = sig_val.items().get(2);
    }
    let algo = algo.filter(|a| matches!(a, Sexp::List(_))).ok_or("sig-val holds no algorithm list")?;
    match algo.head().map(|h| h.to_ascii_lowercase()) {
        Some(h) if h == b"ecdsa" || h == b"ecc" => {}
        Some(h) if h == b"eddsa" => return Err("an EdDSA sig-val for an ECDSA key".to_string()),
        _ => return Err("sig-val algorithm is not ecdsa".to_string()),
    }
    let param = |name: &str| {
        algo.find_token(name).and_then(|l| l.nth_data(1)).ok_or_else(|| format!("sig-val has no ({name} ...)"))
    };
    let (r, s) = (param("r")?, param("s")?);
    let point = key.point().ok_or("q is not a point")?;
    Ok(ecdsa::verify_hash(&point, hash, r, s))
}

/// `_gcry_pk_util_data_to_mpi` for an ECDSA verification: `(data (flags rfc6979|raw ...)
/// (hash ALGO VALUE))` with a digest libgcrypt knows.
fn check_data(data: &Sexp) -> Result<(), String> {
    const KNOWN_FLAGS: [&[u8]; 3] = [b"rfc6979", b"raw", b"no-blinding"];
    let flags = data.find_token("flags").map(|f| &f.items()[1..]).unwrap_or(&[]);
    let mut usable = false;
    for flag in flags {
        match flag.as_atom() {
            Some(f) if KNOWN_FLAGS.contains(&f) => usable |= f != b"no-blinding",
            Some(f) => {
                return Err(format!("data flag {:?} is not one ECDSA verification takes", String::from_utf8_lossy(f)));
            }
            None => return Err("a list inside (flags ...)".to_string()),
        }
    }
    if !usable {
        return Err("(data ...) with a hash needs the rfc6979 or raw flag".to_string());
    }
    if data.find_token("value").is_some() {
        return Err("(data ...) holds both hash and value".to_string());
    }
    let hash = data.find_token("hash").ok_or("(data ...) has no (hash ...)")?;
    if hash.items().len() != 3 {
        return Err("(hash ...) must have exactly an algorithm and a value".to_string());
    }
    let algo = hash.nth_data(1).map(|a| a.to_ascii_lowercase()).unwrap_or_default();
    const DIGESTS: [&[u8]; 12] = [
        b"sha1",
        b"sha224",
        b"sha256",
        b"sha384",
        b"sha512",
        b"sha512/224",
        b"sha512/256",
        b"sha3-224",
        b"sha3-256",
        b"sha3-384",
        b"sha3-512",
        b"md5",
    ];
    if !DIGESTS.contains(&algo.as_slice()) {
        return Err(format!("unknown digest {:?}", String::from_utf8_lossy(&algo)));
    }
    Ok(())
}
