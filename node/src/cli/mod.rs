//! Command-line front ends, one module per command group. Each exposes a clap type and a `run`.

pub mod drv;
pub mod key;
pub mod nar;
pub mod narinfo;
