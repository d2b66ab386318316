//! # buildmesh (node)
//!
//! The `buildmesh` binary's library: it drives [`buildmesh_protocol`] with real I/O (filesystem,
//! processes, libp2p, redb, HTTP). `main.rs` is thin: it parses the command line and calls into
//! the modules here.
//!
//! ## Layout
//! - [`bench`]: `buildmesh bench gateway` (wrk and real Nix clients against the gateway, nginx,
//!   and any other cache).
//! - [`cli`]: one module per command group (`drv`, `nar`, `key`, `narinfo`, ...).
//! - [`config`]: the TOML configuration and its validation.
//! - [`nar_fs`]: NAR dump from and restore to the filesystem.
//! - [`executor`]: build executors (`local` sandbox, host `nix`).
//! - [`net`]: libp2p networking (one task owns the swarm).
//! - [`runtime`]: a running node (key, store, scheduler, HTTP server) and its shutdown.
//! - [`http`]: the HTTP server: Nix binary cache, JSON API, submit endpoint.
//! - [`mesh`]: the mesh state machine driven over libp2p (gossip, fetches, sync, quorum gateway).
//! - [`store`]: the node's durable state (redb tables + content-addressed NAR blobs).
//! - [`systems`]: native and binfmt_misc-emulated systems of this machine.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, unreachable_pub)]

pub mod audit;
pub mod bench;
pub mod build;
pub mod cli;
pub mod config;
pub mod content_address;
pub mod executor;
pub mod http;
pub mod mesh;
pub mod nar_fs;
pub mod net;
pub mod runtime;
pub mod store;
pub mod submit;
pub mod systems;
pub mod trust;
