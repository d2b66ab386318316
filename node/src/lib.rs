//! # buildmesh (node)
//!
//! The `buildmesh` binary's library: it drives [`buildmesh_protocol`] with real I/O (filesystem,
//! processes, libp2p, redb, HTTP). `main.rs` is thin: it parses the command line and calls into
//! the modules here.
//!
//! ## Layout
//! - [`cli`]: one module per command group (`drv`, `nar`, `key`, `narinfo`, ...).
//! - [`nar_fs`]: NAR dump from and restore to the filesystem.
//! - [`executor`]: build executors (`local` sandbox, host `nix`).
//! - [`net`]: libp2p networking (one task owns the swarm).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, unreachable_pub)]

pub mod cli;
pub mod executor;
pub mod nar_fs;
pub mod net;
