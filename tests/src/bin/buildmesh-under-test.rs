//! The `buildmesh` program, built again under another name for this package's integration tests:
//! cargo hands `CARGO_BIN_EXE_<name>` only to the tests of the package that owns the binary, and
//! a second binary called `buildmesh` would collide with node's in `target/<profile>/`. Same code
//! as node/src/main.rs ([`buildmesh::cli::app::main`]), so the tests run what users run.

fn main() -> std::process::ExitCode {
    buildmesh::cli::app::main()
}
