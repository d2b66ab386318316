//! # buildmesh (node)
//!
//! The `buildmesh` binary's library: it drives [`buildmesh_protocol`] with real I/O (filesystem,
//! processes, libp2p, redb, HTTP). `main.rs` is thin: it parses the command line and calls into
//! the modules here.
//!
//! ## Layout (ARCHITECTURE.md has the map; each module imports only modules listed below it)
//! - [`bench`]: `buildmesh bench gateway` (wrk and real Nix clients against the gateway, nginx,
//!   and any other cache).
//! - [`cli`]: the command-line front ends, one module per command group, and the API clients.
//! - [`runtime`]: the composition root: a running node (key, store, scheduler, HTTP server, mesh)
//!   and its shutdown; nothing but [`cli`] imports it.
//! - [`config`]: the TOML configuration and its validation (each component's table is defined
//!   with the component).
//! - [`http`]: the HTTP server: Nix binary cache, JSON API (mesh and auditors' routes included).
//! - [`submit`]: checking and storing uploaded closures (`POST /api/v1/submit`).
//! - [`mesh`]: the mesh state machine driven over libp2p (gossip, fetches, sync, quorum gateway).
//! - [`scheduler`]: the local build queue: which builds start, on which executor, and retries.
//! - [`trust`]: which registered outputs count as built (the trust rule) for builds and serving.
//! - [`audit`]: what auditors see: attestations of an output, verdicts, per-builder statistics.
//! - [`build`]: the build executors (`local`, host `nix`) and signing their results.
//! - [`sandbox`]: the namespace sandbox and builder process primitives the `local` executor uses.
//! - [`net`]: libp2p networking (one task owns the swarm).
//! - [`store`]: the node's durable state (redb tables + content-addressed NAR blobs).
//! - [`bounded_cache`]: the two-generation bounded map behind the gateway's caches and the
//!   store's verified blobs.
//! - [`nar_fs`], [`content_address`], [`systems`]: NAR dump/restore on the filesystem, content
//!   addresses of source and text paths, the systems this machine builds for.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, unreachable_pub)]

pub mod audit;
pub mod bench;
pub mod bounded_cache;
pub mod build;
pub mod cli;
pub mod config;
pub mod content_address;
pub mod gc;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod nar_fs;
pub mod net;
pub mod qa;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod slowdown;
pub mod store;
pub mod submit;
pub mod systems;
pub mod trust;
