//! Property and unit tests of the Guix signature module. Guix's own verdicts on Guix-signed
//! vectors are checked in `protocol/tests/vectors_guix.rs`, Guix's verifier on our signatures in
//! `tests/tests/guix_signatures.rs`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::sexp::Sexp;
use super::*;

fn narinfo_part(hash_part: &str, refs: &[&str]) -> String {
    format!(
        "StorePath: /gnu/store/{hash_part}-hello-2.12\nNarHash: sha256:0v1px5j9dyj175c4grp9b9acljzhv665gh3r56zhyn10yldqpgl2\n\
         NarSize: 1234\nReferences: {}\nDeriver: x09z9fg4kzl4i6kc5q01xwss2kyb7bkz-hello-2.12.drv\n",
        refs.join(" ")
    )
}

const TRAILER: &str = "URL: nar/zstd/abc-hello\nCompression: zstd\nFileSize: 99\n";

fn signed(part: &str, key: &GuixSecretKey) -> String {
    format!("{part}{}{TRAILER}", sign_narinfo(part, "node-a", key).unwrap())
}

fn arb_part() -> impl Strategy<Value = String> {
    ("[0-9a-df-np-sv-z]{32}", prop::collection::vec("[0-9a-z]{32}-[a-z]{1,8}", 0..4)).prop_map(|(h, refs)| {
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        narinfo_part(&h, &refs)
    })
}

/// The base64 payload of the Signature line, decoded: UTF-8 of the Latin-1 rendering.
fn sig_text(narinfo: &str) -> Vec<u8> {
    let line = narinfo.lines().find(|l| l.starts_with("Signature:")).unwrap();
    STANDARD.decode(line.rsplit(';').next().unwrap()).unwrap()
}

/// The s-expression bytes libgcrypt reads from a payload (UTF-8 → Latin-1), if any.
fn latin1(payload: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).ok()?;
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// The payload for a tree, as `guix publish` makes it.
fn payload(tree: &Sexp) -> Vec<u8> {
    tree.advanced_string().into_bytes()
}

fn with_sig_text(narinfo: &str, text: &[u8]) -> String {
    let line = narinfo.lines().find(|l| l.starts_with("Signature:")).unwrap();
    let (head, _) = line.rsplit_once(';').unwrap();
    narinfo.replace(line, &format!("{head};{}", STANDARD.encode(text)))
}

#[test]
fn node_key_is_the_ed25519_key() {
    let seed = [7u8; 32];
    let ed = SigningKey::from_bytes(&seed);
    let guix = GuixSecretKey::from_ed25519_seed(&seed);
    assert_eq!(guix.public(), GuixPublicKey::from_ed25519(&ed.verifying_key()));
    assert_eq!(guix.public().to_bytes(), ed.verifying_key().to_bytes());
    let text = guix.public().to_sexp();
    assert!(text.starts_with("(public-key \n (ecc \n  (curve Ed25519)\n  (q #"), "{text}");
    assert_eq!(GuixPublicKey::parse_sexp(&text).unwrap(), guix.public());
    let secret = GuixSecretKey::parse_sexp(&guix.to_sexp()).unwrap();
    assert_eq!(secret.public(), guix.public());
    // Same key, same nonce: the same signature.
    let part = narinfo_part("yn0icszwsx2aijrmnlab4lnp8bvwpj7z", &[]);
    assert_eq!(sign_narinfo(&part, "h", &secret).unwrap(), sign_narinfo(&part, "h", &guix).unwrap());
}

#[test]
fn canonical_form_of_a_key_parses() {
    let key = GuixSecretKey::from_ed25519_seed(&[1; 32]).public();
    let canonical = String::from_utf8(key.canonical()).unwrap_or_else(|e| {
        // q's bytes are binary; the canonical form carries them verbatim (Latin-1 here).
        e.into_bytes().iter().map(|&b| char::from(b)).collect()
    });
    if canonical.is_ascii() {
        assert_eq!(GuixPublicKey::parse_sexp(&canonical).unwrap(), key);
    }
    let tree = Sexp::parse(&key.canonical()).unwrap();
    assert_eq!(GuixPublicKey::from_tree(&tree).unwrap(), key);
}

#[test]
fn sign_refuses_what_guix_would_not_count() {
    let key = GuixSecretKey::from_ed25519_seed(&[2; 32]);
    let part = narinfo_part("yn0icszwsx2aijrmnlab4lnp8bvwpj7z", &[]);
    assert_eq!(sign_narinfo(part.trim_end(), "h", &key), Err(GuixSignError::NoFinalNewline));
    let no_refs = part.replace("References: \n", "");
    assert_eq!(sign_narinfo(&no_refs, "h", &key), Err(GuixSignError::MissingField("References")));
    assert!(matches!(sign_narinfo(&part, "a;b", &key), Err(GuixSignError::BadHost(_))));
    assert_eq!(sign_narinfo(&format!("{part}Signature: x\n"), "h", &key), Err(GuixSignError::HasSignature));
}

#[test]
fn statuses() {
    let key = GuixSecretKey::from_ed25519_seed(&[3; 32]);
    let other = GuixSecretKey::from_ed25519_seed(&[4; 32]);
    let acl = [key.public()];
    let good = signed(&narinfo_part("yn0icszwsx2aijrmnlab4lnp8bvwpj7z", &["a-b"]), &key);
    let v = verify_narinfo(&good, &acl);
    assert!(v.accepted(), "{}", v.describe());
    assert_eq!(v.host.as_deref(), Some("node-a"));
    assert_eq!(verify_narinfo(&good, &[other.public()]).status, GuixStatus::UnauthorizedKey);
    assert_eq!(verify_narinfo(&good, &[]).status, GuixStatus::UnauthorizedKey);
    let nix_store = good.replace("/gnu/store/", "/nix/store/");
    let v = verify_narinfo(&nix_store, &acl);
    assert_eq!(v.status, GuixStatus::HashMismatch);
    let no_sig: String = good.lines().filter(|l| !l.starts_with("Signature")).map(|l| format!("{l}\n")).collect();
    assert_eq!(verify_narinfo(&no_sig, &acl).status, GuixStatus::NoSignature);
    let v2 = good.replace("Signature: 1;", "Signature: 2;");
    assert_eq!(verify_narinfo(&v2, &acl).status, GuixStatus::NoSignature);
    let crlf = good.replace('\n', "\r\n");
    assert_eq!(verify_narinfo(&crlf, &acl).status, GuixStatus::NoSignature);
    let no_refs = good.replace("References: a-b\n", "");
    assert_eq!(verify_narinfo(&no_refs, &acl).status, GuixStatus::Malformed);
    let refs_after = good.replace("References: a-b\n", "") + "References: a-b\n";
    assert_eq!(verify_narinfo(&refs_after, &acl).status, GuixStatus::UnsignedFields);
    // A signature whose s-expression lacks its data part.
    let text = sig_text(&good);
    let tree = Sexp::parse(&latin1(&text).unwrap()).unwrap();
    let without_data = Sexp::list(tree.items().iter().filter(|i| i.head() != Some(b"data")).cloned().collect());
    let corrupt = with_sig_text(&good, &payload(&without_data));
    assert_eq!(verify_narinfo(&corrupt, &acl).status, GuixStatus::CorruptSignature);
    // Another key's sig-val under this key: invalid signature.
    let theirs_payload = sig_text(&signed(&narinfo_part("yn0icszwsx2aijrmnlab4lnp8bvwpj7z", &["a-b"]), &other));
    let theirs = Sexp::parse(&latin1(&theirs_payload).unwrap()).unwrap();
    let swapped =
        Sexp::list(
            tree.items()
                .iter()
                .map(|i| {
                    if i.head() == Some(b"sig-val") { theirs.find_token("sig-val").unwrap().clone() } else { i.clone() }
                })
                .collect(),
        );
    let invalid = with_sig_text(&good, &payload(&swapped));
    assert_eq!(verify_narinfo(&invalid, &acl).status, GuixStatus::InvalidSignature);
}

#[test]
fn acl_round_trip() {
    let keys: Vec<_> = (0..3u8).map(|i| GuixSecretKey::from_ed25519_seed(&[i; 32]).public()).collect();
    let text = acl_sexp(&keys);
    assert!(text.starts_with("(acl \n (entry \n  (public-key \n"), "{text}");
    assert_eq!(parse_acl(&text).unwrap(), keys);
    assert_eq!(parse_keys(&text).unwrap(), keys);
    assert_eq!(parse_keys(&keys[0].to_sexp()).unwrap(), keys[..1]);
    let bad_tag = text.replacen("(guix import)", "(guix export)", 1);
    assert!(matches!(parse_acl(&bad_tag), Err(GuixKeyError::BadAclEntry { index: 0, .. })));
    assert!(GuixPublicKey::parse_sexp("(public-key (ecc (curve Ed448) (q #00#)))").is_err());
    assert!(GuixPublicKey::parse_sexp("(public-key (rsa (n #00#) (e #03#)))").is_err());
    assert!(GuixPublicKey::parse_sexp("(public-key (ecc (curve Ed25519) (q #0011#)))").is_err());
}

/// Applies `change` to the value of the list named `name` (its last item) inside `tree`.
fn flip_value(tree: &mut Sexp, name: &str, change: impl Fn(&mut Vec<u8>) + Copy) {
    if let Sexp::List(items) = tree {
        if items.first().and_then(Sexp::as_atom) == Some(name.as_bytes())
            && let Some(Sexp::Atom(value)) = items.last_mut()
        {
            change(value);
        }
        items.iter_mut().for_each(|i| flip_value(i, name, change));
    }
}

fn arb_tree() -> impl Strategy<Value = Sexp> {
    let atom = prop_oneof![
        "[a-z][a-z0-9-]{0,8}".prop_map(Sexp::atom),
        // libgcrypt cannot read an empty atom in canonical form ("0:": a length may not start
        // with 0), so atoms here have at least one byte.
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Sexp::Atom),
        "[ -~]{1,12}".prop_map(Sexp::atom),
    ];
    atom.prop_recursive(4, 40, 6, |inner| prop::collection::vec(inner, 0..6).prop_map(Sexp::List))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Signing then verifying succeeds, with the node key as the Guix key.
    #[test]
    fn sign_verify_round_trip(seed in any::<[u8; 32]>(), part in arb_part()) {
        let key = GuixSecretKey::from_ed25519_seed(&seed);
        let text = signed(&part, &key);
        let verdict = verify_narinfo(&text, &[key.public()]);
        prop_assert!(verdict.accepted(), "{}", verdict.describe());
        prop_assert_eq!(signed_region(&text), Some(part.as_str()));
    }

    /// Any one-bit change of the signed region is refused.
    #[test]
    fn any_bit_of_the_region_counts(seed in any::<[u8; 32]>(), part in arb_part(), pos in any::<prop::sample::Index>(), bit in 0u8..7) {
        let key = GuixSecretKey::from_ed25519_seed(&seed);
        let text = signed(&part, &key);
        let mut bytes = text.clone().into_bytes();
        let i = pos.index(part.len());
        bytes[i] ^= 1 << bit;
        if let Ok(changed) = String::from_utf8(bytes) {
            let verdict = verify_narinfo(&changed, &[key.public()]);
            prop_assert!(!verdict.accepted(), "byte {} bit {}: {}", i, bit, verdict.describe());
        }
    }

    /// Any one-bit change of a value the signature carries (the hash, r, s, q) is refused.
    /// (Changes to the text around them are judged against Guix's own verifier in
    /// `tests/tests/guix_signatures.rs`: Guix finds parts by name and ignores extra items.)
    #[test]
    fn any_bit_of_the_signature_counts(seed in any::<[u8; 32]>(), part in arb_part(), which in 0usize..4, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let key = GuixSecretKey::from_ed25519_seed(&seed);
        let text = signed(&part, &key);
        let mut tree = Sexp::parse(&latin1(&sig_text(&text)).unwrap()).unwrap();
        let name = ["hash", "r", "s", "q"][which];
        flip_value(&mut tree, name, |v| {
            let i = pos.index(v.len());
            v[i] ^= 1 << bit;
        });
        let verdict = verify_narinfo(&with_sig_text(&text, &payload(&tree)), &[key.public()]);
        prop_assert!(!verdict.accepted(), "{} changed: {}", name, verdict.describe());
    }

    /// The parser and the verifier never panic on a mangled signature payload.
    #[test]
    fn mangled_payloads_are_judged(seed in any::<[u8; 32]>(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let key = GuixSecretKey::from_ed25519_seed(&seed);
        let text = signed(&narinfo_part("yn0icszwsx2aijrmnlab4lnp8bvwpj7z", &[]), &key);
        let mut bytes = sig_text(&text);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = verify_narinfo(&with_sig_text(&text, &bytes), &[key.public()]);
    }

    /// The advanced and canonical renderings parse back to the same tree.
    #[test]
    fn sexp_print_parse(items in prop::collection::vec(arb_tree(), 1..5)) {
        let tree = Sexp::List(items);
        prop_assert_eq!(Sexp::parse(&tree.advanced()).unwrap(), tree.clone());
        prop_assert_eq!(Sexp::parse(&tree.canonical()).unwrap(), tree);
    }

    /// The parser never panics on arbitrary bytes.
    #[test]
    fn sexp_parse_total(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Sexp::parse_seq(&bytes);
    }
}
