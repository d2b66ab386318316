//! # buildmesh-sim
//!
//! A deterministic, seeded, single-threaded discrete-event simulator of many
//! [`buildmesh_protocol::mesh::Mesh`] state machines: the same code the real node drives, here on a
//! virtual clock and a virtual network.
//!
//! - **One RNG** (ChaCha8, from `--seed`) makes every random choice: workload, latencies, losses,
//!   faults, build times and outcomes. The event queue orders by (time, sequence number), so a
//!   seed fully determines the run; [`Report::trace_hash`] (blake3 over every output of every node,
//!   in order) proves it.
//! - **Network** ([`world`]): every published message is delivered to every other node after a
//!   uniform latency, unless lost (`loss`) or cut by a partition.
//! - **Faults**: crash/restart (`churn` per node per hour; a restarted node loses its machine and
//!   its running builds but keeps what its driver persisted: its attestations and its submissions),
//!   partitions and heals, transient build failures, broken and unreproducible derivations,
//!   colluding byzantine builders.
//! - **Workload** ([`dag`]): a DAG of derivations (x86_64 and aarch64, native and emulated builders,
//!   required features, owners), submitted by a few clients as closures of root derivations; a
//!   dependent's submission waits (in the machine) until its inputs are complete.
//! - **Checkers** (`checkers.rs`): invariants after every step; see [`Report::violations`].
//!
//! Signatures are not computed for gossip (messages are handed over as verified values, as the
//! real driver does after checking them); attestations carry real Nix signatures.
#![deny(missing_docs, unreachable_pub)]

pub mod central;
pub mod charts;
mod checkers;
pub mod config;
pub mod dag;
pub mod draws;
pub mod figures;
mod report;
pub mod resources;
mod rng;
pub mod sweep;
pub mod sybil_table;
pub mod world;

pub use config::SimConfig;
pub use figures::Figures;
pub use report::{Report, peak_rss_bytes};
pub use world::World;

/// Build the world for `cfg` and run it to the end.
pub fn run(cfg: SimConfig) -> anyhow::Result<Report> {
    Ok(World::new(cfg)?.run())
}
