//! The `buildmesh` binary: the command line lives in the library ([`buildmesh::cli::app`]).

/// mimalloc rather than glibc's malloc: a QA answer on a revision of 100,000 jobs allocates a few
/// hundred MiB of short-lived rows on the blocking pool's threads, and glibc's per-thread arenas
/// kept that memory after the answer (a node held 600 MiB after one compare, against 250 MiB with
/// mimalloc purging at once; `buildmesh bench qa`, docs/qa.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h): how long freed
/// pages stay committed before they go back to the system (default 10 ms, but a thread that goes
/// idle never comes back to purge them).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[allow(unsafe_code)] // one FFI call into the allocator, at start
fn main() -> std::process::ExitCode {
    // SAFETY: setting a mimalloc option is thread-safe and takes plain integers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    buildmesh::cli::app::main()
}
