//! Command-line front ends, one module per command group. Each exposes a clap type and a `run`.

pub mod app;
pub mod audit;
pub mod auditx;
pub mod challenge;
mod challenge_diff;
pub mod control;
pub mod demo;
mod demo_deps;
pub mod drv;
pub mod gc;
pub mod guix;
pub mod guix_bench;
pub mod key;
pub mod mesh;
pub mod nar;
mod nar_bench;
pub mod narinfo;
pub mod node;
pub mod qa;
pub mod submit;
pub mod submit_client;
pub mod token;
