//! Arbitrary bytes as a Guix narinfo and as a Guix s-expression (signature, key, ACL). Nothing
//! may panic; an s-expression that parses prints (advanced and canonical) back to the same tree,
//! and keys that parse print back to themselves.
#![no_main]

use buildmesh_protocol::guix::sexp::Sexp;
use buildmesh_protocol::guix::{GuixPublicKey, GuixSecretKey, parse_keys, verify_narinfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Sexp::parse(data) {
        assert_eq!(Sexp::parse(&tree.advanced()).as_ref(), Ok(&tree), "advanced form must parse back");
        if !has_empty_atom(&tree) {
            assert_eq!(Sexp::parse(&tree.canonical()).as_ref(), Ok(&tree), "canonical form must parse back");
        }
    }
    let _ = Sexp::parse_seq(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(keys) = parse_keys(text) {
        for key in keys {
            assert_eq!(GuixPublicKey::parse_sexp(&key.to_sexp()), Ok(key));
        }
    }
    if let Ok(secret) = GuixSecretKey::parse_sexp(text) {
        assert_eq!(GuixSecretKey::parse_sexp(&secret.to_sexp()).map(|k| k.public()), Ok(secret.public()));
    }
    // Under the ACL of the key in the signature (if any), and under an empty one.
    let verdict = verify_narinfo(text, &[]);
    if let Some(signer) = verdict.signer {
        let _ = verify_narinfo(text, &[signer]);
    }
});

fn has_empty_atom(tree: &Sexp) -> bool {
    match tree {
        Sexp::Atom(bytes) => bytes.is_empty(),
        Sexp::List(items) => items.iter().any(has_empty_atom),
    }
}
