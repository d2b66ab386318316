//! Guix vectors: every narinfo of `../shared/guix/vectors` (signed by Guix's own code under keys
//! made by Guix's own `genkey`) judged with Guix's verdict from `index.tsv`, the real Bordeaux
//! `hello` narinfo under the Bordeaux key, and our signer reproducing Guix's signatures byte for
//! byte (RFC 6979 makes them deterministic).

use std::fs;
use std::path::{Path, PathBuf};

use buildmesh_protocol::guix::{
    GuixPublicKey, GuixSecretKey, GuixStatus, parse_keys, sign_narinfo, signed_region, verify_narinfo,
};

fn vectors() -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/guix/vectors")).to_path_buf();
    assert!(dir.is_dir(), "Guix vectors not found at {}", dir.display());
    dir
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ACL a comma-separated list of key or ACL files makes (as the oracle builds it).
fn acl(spec: &str) -> Vec<GuixPublicKey> {
    spec.split(',')
        .flat_map(|f| {
            let path = vectors().join(f);
            parse_keys(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

struct Case {
    file: String,
    accept: bool,
    keys: String,
    guix_status: String,
}

fn cases() -> Vec<Case> {
    let index = read(&vectors().join("index.tsv"));
    let cases: Vec<Case> = index
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Case {
                file: cols[0].to_string(),
                accept: match cols[1] {
                    "accept" => true,
                    "reject" => false,
                    other => panic!("index.tsv: expect column {other:?}"),
                },
                keys: cols[2].to_string(),
                guix_status: cols[3].to_string(),
            }
        })
        .collect();
    assert!(cases.len() >= 38, "index.tsv lists only {} vectors", cases.len());
    cases
}

#[test]
fn every_vector_gets_guix_verdict() {
    for case in cases() {
        let text = read(&vectors().join(&case.file));
        let verdict = verify_narinfo(&text, &acl(&case.keys));
        // "valid-signature (store-prefix-mismatch)" → the status, then what else refused it.
        let (status, note) = case.guix_status.split_once(' ').unwrap_or((&case.guix_status, ""));
        assert_eq!(verdict.status.as_str(), status, "{}: {}", case.file, verdict.reason);
        assert_eq!(verdict.accepted(), case.accept, "{}: {}", case.file, verdict.describe());
        match note {
            "(store-prefix-mismatch)" => assert!(!verdict.in_store, "{}", case.file),
            "(valid-narinfo?-raised)" => assert!(!verdict.has_url, "{}", case.file),
            "" => assert!(verdict.in_store && verdict.has_url, "{}", case.file),
            other => panic!("{}: unknown note {other}", case.file),
        }
    }
}

#[test]
fn bordeaux_narinfo_verifies_under_bordeaux_key() {
    let text = read(&vectors().join("bordeaux-hello.narinfo"));
    let key = GuixPublicKey::parse_sexp(&read(&vectors().join("bordeaux.guix.gnu.org.pub"))).unwrap();
    assert_eq!(hex::encode_upper(key.to_bytes()), "7D602902D3A2DBB83F8A0FB98602A754C5493B0B778C8D1DD4E0F41DE14DE34F");
    let verdict = verify_narinfo(&text, &[key]);
    assert_eq!(verdict.status, GuixStatus::ValidSignature, "{}", verdict.reason);
    assert!(verdict.accepted());
    assert_eq!(verdict.host.as_deref(), Some("bayfront"));
    assert_eq!(verdict.signer, Some(key));
    // Another key: unauthorized; a changed NarHash: hash mismatch.
    let k1 = acl("keys/k1/signing-key.pub");
    assert_eq!(verify_narinfo(&text, &k1).status, GuixStatus::UnauthorizedKey);
    let tampered = text.replace("NarHash: sha256:0qhasy0w", "NarHash: sha256:0qhasy0x");
    assert_eq!(verify_narinfo(&tampered, &[key]).status, GuixStatus::HashMismatch);
}

#[test]
fn guix_secret_keys_match_their_public_keys() {
    for name in ["k1", "k2", "k3", "unknown"] {
        let dir = vectors().join("keys").join(name);
        let secret = GuixSecretKey::parse_sexp(&read(&dir.join("signing-key.sec"))).unwrap();
        let public_text = read(&dir.join("signing-key.pub"));
        let public = GuixPublicKey::parse_sexp(&public_text).unwrap();
        assert_eq!(secret.public(), public, "{name}");
        // We print the key file byte for byte as Guix wrote it.
        assert_eq!(public.to_sexp(), public_text, "{name}");
    }
}

/// Our signer, given Guix's key, writes the very Signature line Guix wrote (same RFC 6979 nonce,
/// same s-expression rendering).
#[test]
fn our_signatures_equal_guix_signatures() {
    let mut compared = 0;
    for case in cases().iter().filter(|c| c.file.starts_with("pos-")) {
        let text = read(&vectors().join(&case.file));
        let verdict = verify_narinfo(&text, &acl(&case.keys));
        let signer = verdict.signer.expect("signed");
        let key = ["k1", "k2", "k3"]
            .iter()
            .map(|k| GuixSecretKey::parse_sexp(&read(&vectors().join(format!("keys/{k}/signing-key.sec")))).unwrap())
            .find(|k| k.public() == signer)
            .expect("a vector key signed it");
        let region = signed_region(&text).expect("signed region");
        let line = text[region.len()..].lines().next().unwrap();
        let host = line.split(';').nth(1).unwrap();
        let ours = sign_narinfo(region, host, &key).unwrap();
        assert_eq!(ours, format!("{line}\n"), "{}", case.file);
        compared += 1;
    }
    assert!(compared >= 20);
}

/// Edits of a Guix-signed vector's signature, with the verdicts Guix's own verifier gave them
/// (tests/fixtures/guix/verify-dir.scm over these files, 2026-12-06; Debian's libgcrypt 1.10).
#[test]
fn signature_edge_cases_get_guix_verdict() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let src = read(&vectors().join("pos-01-modern-k1.narinfo"));
    let line = src.lines().find(|l| l.starts_with("Signature:")).unwrap().to_string();
    let (head, b64) = line.rsplit_once(';').unwrap();
    let sexp = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
    let with_payload = |p: &str| src.replace(&line, &format!("{head};{}", STANDARD.encode(p)));
    let with_line = |l: String| src.replace(&line, &l);
    let r = {
        let at = sexp.find("(r #").unwrap() + 4;
        sexp[at..at + 64].to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("digest name in capitals", with_payload(&sexp.replace("sha256", "SHA256")), "valid-signature"),
        ("algorithm in capitals", with_payload(&sexp.replace("(ecdsa", "(ECDSA")), "valid-signature"),
        ("outer name changed", with_payload(&sexp.replace("(signature", "(sig")), "valid-signature"),
        ("empty payload", with_payload(""), "corrupt-signature"),
        ("empty list", with_payload("()"), "corrupt-signature"),
        ("an atom", with_payload("signature"), "corrupt-signature"),
        ("extra atom in sig-val", with_payload(&sexp.replace("(s #", "foo (s #")), "valid-signature"),
        (
            "r with a leading zero",
            with_payload(&sexp.replace(&format!("(r #{r}"), &format!("(r #00{r}"))),
            "valid-signature",
        ),
        ("version 1.0", with_line(line.replace("Signature: 1;", "Signature: 1.0;")), "valid-signature"),
        ("version #x1", with_line(line.replace("Signature: 1;", "Signature: #x1;")), "valid-signature"),
        ("version with a space", with_line(line.replace("Signature: 1;", "Signature:  1 ;")), "no-parsable-signature"),
        ("digest sha512", with_payload(&sexp.replace("sha256", "sha512")), "valid-signature"),
        ("no flags", with_payload(&sexp.replace("(flags rfc6979)", "(flags)")), "error"),
        ("raw flag", with_payload(&sexp.replace("(flags rfc6979)", "(flags raw)")), "valid-signature"),
        ("a second s-expression", with_payload(&format!("{sexp}(foo)")), "valid-signature"),
        ("trailing whitespace", with_payload(&format!("{sexp}   \n")), "valid-signature"),
        ("quoted digest name", with_payload(&sexp.replace("(hash sha256", "(hash \"sha256\"")), "valid-signature"),
        ("flags in sig-val", with_payload(&sexp.replace("(sig-val \n", "(sig-val (flags) \n")), "valid-signature"),
        ("algorithm ecc", with_payload(&sexp.replace("(ecdsa", "(ecc")), "valid-signature"),
        ("algorithm eddsa", with_payload(&sexp.replace("(ecdsa", "(eddsa")), "error"),
        ("NUL byte", with_payload(&format!("{}\0{}", &sexp[..5], &sexp[5..])), "no-parsable-signature"),
        ("digest name a list", with_payload(&sexp.replace("(hash sha256", "(hash (sha256)")), "error"),
        ("other curve", with_payload(&sexp.replace("(curve Ed25519)", "(curve Ed448)")), "unauthorized-key"),
        (
            "two hashes",
            with_payload(&sexp.replace("(flags rfc6979)", "(flags rfc6979)(hash sha256 #00#)")),
            "hash-mismatch",
        ),
        ("unknown flag", with_payload(&sexp.replace("(flags rfc6979)", "(flags rfc6979 foo)")), "error"),
        ("four fields", with_line(line.replace("1;node-a;", "1;node;a;")), "no-parsable-signature"),
    ];
    let acl = acl("keys/k1/signing-key.pub");
    for (what, text, guix) in cases {
        let verdict = verify_narinfo(&text, &acl);
        assert_eq!(verdict.status.as_str(), guix, "{what}: {}", verdict.reason);
    }
}
