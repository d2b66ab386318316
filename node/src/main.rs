//! The `buildmesh` binary: the command line lives in the library ([`buildmesh::cli::app`]).

fn main() -> std::process::ExitCode {
    buildmesh::cli::app::main()
}
