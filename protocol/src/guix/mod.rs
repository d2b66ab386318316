//! Guix narinfo signatures, keys and ACLs, exactly as Guix makes and judges them.
//!
//! Guix signs narinfos with **ECDSA over edwards25519** (libgcrypt, RFC 6979 nonces), not with
//! EdDSA as Nix does, and writes keys, ACLs and signatures as s-expressions. This module does
//! the same in pure Rust on curve25519-dalek:
//! - [`sexp`]: libgcrypt's s-expressions (parse every transport form, print the advanced form
//!   byte for byte);
//! - [`keys`]: [`GuixPublicKey`], [`GuixSecretKey`] (also from the node's Ed25519 seed: one node
//!   key serves Nix and Guix), ACL files;
//! - [`ecdsa`]: the signature arithmetic;
//! - [`narinfo`]: [`sign_narinfo`] and [`verify_narinfo`] with Guix's statuses;
//! - [`recutils`]: the narinfo read as Guix reads it.
//!
//! Checked against Guix's own code: the vectors in `../shared/guix/vectors` (signed by Guix) in
//! `protocol/tests/vectors_guix.rs`, and Guix's verifier over narinfos signed here in
//! `tests/tests/guix_signatures.rs`. See `docs/guix.md`.

pub mod ecdsa;
pub mod keys;
pub mod narinfo;
pub mod recutils;
pub mod sexp;

pub use keys::{GuixKeyError, GuixPublicKey, GuixSecretKey, acl_sexp, parse_acl, parse_keys, parse_trusted_key};
pub use narinfo::{
    GUIX_STORE_DIR, GuixSignError, GuixStatus, GuixVerdict, sign_narinfo, signed_region, verify_narinfo,
    verify_narinfo_in,
};

#[cfg(test)]
mod tests;
