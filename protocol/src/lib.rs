//! # buildmesh-protocol
//!
//! The pure core of buildmesh: every byte format that must match Nix exactly, the mesh's signed
//! messages, placement, and (later) the node state machine. Nothing here does I/O, reads a clock or
//! uses a global random number generator: time and randomness are parameters, so that the real node
//! (`buildmesh`) and the deterministic simulator (`buildmesh-sim`) drive the same code.
//!
//! ## Layout
//! - [`nixbase32`]: Nix's base-32 alphabet and bit order.
//! - [`hash`]: typed hashes (`sha256:<nix32>`, hex, SRI) as Nix prints and parses them.
//! - [`store_path`]: store directories, store path names, validation and `makeStorePath`.
//! - [`derivation`]: `.drv` ATerm parse/print (byte-exact), `hashDerivationModulo`, output paths.
//! - [`nar`]: Nix ARchive streaming writer and strict streaming reader, NarHash/NarSize.
//! - [`nixkey`]: Nix key files `name:base64(...)` (secret 64 bytes, public 32 bytes).
//! - [`narinfo`]: `.narinfo` parse/render, fingerprint, Sig lines.
//! - [`guix`]: Guix narinfo signatures (ECDSA over edwards25519), keys and ACLs as s-expressions.
//! - [`id`]: `NodeId`, `JobId`, `ArtifactHash`, `MessageId` newtypes (text and binary forms).
//! - [`identity`]: one ed25519 key per node: PeerId, mesh signatures and Nix signatures.
//! - [`intoto`]: the builder-signed in-toto/SLSA provenance an attestation carries (DSSE).
//! - [`signed`]: `Signed<T>` with versioned domain separation.
//! - [`wire`]: the mesh's message types and their canonical encoding with size limits.
//! - [`placement`]: weighted rendezvous hashing with eligibility.
//! - [`verdict`]: agreement of attestations under a trust policy (keys, quorum).
//! - [`mesh`]: the node's coordination state machine (membership, claims, takeover, quorum).
//! - [`qa`]: QA across revisions: job status, compare, weather, history, ready (issue 13).
//!
//! ## Invariants
//! - Anything hashed or signed has exactly one canonical byte encoding.
//! - A signed payload is reachable only after its signature verified under the expected domain.
//! - Untrusted bytes are size-checked before they are decoded.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, unreachable_pub)]

pub mod derivation;
pub mod guix;
pub mod hash;
pub mod id;
pub mod identity;
pub mod intoto;
pub mod mesh;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod nixkey;
pub mod placement;
pub mod qa;
pub mod revision;
pub mod signed;
pub mod store_path;
pub mod verdict;
pub mod wire;
