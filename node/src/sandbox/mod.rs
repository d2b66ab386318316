//! The sandbox: Linux namespaces, an unprivileged build uid and a capped, timed builder process:
//! what the `local` executor of [`crate::build`] runs builders in.
//!
//! ## The `local` sandbox (Linux, run as root)
//! [`SandboxRunner::run`] executes one builder described by a [`SandboxSpec`] the way Nix 2.8's
//! sandbox does, and returns a [`BuildOutcome`] (exit status, capped log, duration):
//! - new PID (the builder is PID 1), mount, UTS (hostname `localhost`), IPC and
//!   network namespaces (only `lo`, brought up, unless `network`: see below);
//! - a fresh tmpfs root, read-only once set up, holding: the `sandbox_paths` (read-only binds),
//!   the store dir (the per-build store, read-write) with each input read-only at its logical path,
//!   `/build` (read-write), `/tmp` and `/dev/shm` (tmpfs), `/dev` with `full null random tty
//!   urandom zero` and a private `/dev/pts`, a fresh `/proc`, and `/etc/{passwd,group,hosts}` as
//!   Nix writes them;
//! - a `/proc` whose host-wide knobs (`/proc/sys`, `/proc/sysrq-trigger`, ...) are read-only and
//!   whose kernel-memory and key files (`/proc/kcore`, `/proc/keys`, ...) are masked
//!   ([`confine`]);
//! - an **unprivileged host uid/gid per running build** ([`build_users`]: default range
//!   30000..30256, locked host-wide), seen inside as Nix's `nixbld` 1000/100 through a user
//!   namespace that stage 1 maps; the build dir and the store dir are given to it for the run
//!   and taken back before the uid is released; every capability set is empty (bounding and
//!   ambient included), `no_new_privs`, and no mount can be changed;
//! - fixed-output builds (`network`) get their own network namespace too, with outbound access
//!   through `slirp4netns --disable-host-loopback` ([`slirp`]): never the host's loopback;
//! - exactly the spec's environment ([`nix_builder_env`] makes Nix's), `argv[0]` = the builder's
//!   file name, cwd `/build`, stdin `/dev/null`, stdout and stderr into one log pipe.
//!
//! The helper is this binary's hidden `__sandbox-exec` subcommand ([`sandbox_exec_main`]); see
//! [`exec`] for why this needs no `unsafe`.

pub mod build_users;
pub mod cgroup;
pub mod confine;
pub mod exec;
mod process;
pub mod settings;
pub mod slirp;
mod spec;

pub use build_users::{BuildUser, BuildUserError, BuildUsers};
pub use cgroup::{BuildLimits, Cgroups, LimitHit};
pub use exec::{SandboxExecArgs, sandbox_exec_main};
pub use process::{BuildOutcome, DEFAULT_KILL_GRACE, ExecutorError, SandboxRunner, Termination, run_sandboxed};
pub use settings::{FixedOutputNetwork, SandboxSettings};
pub use spec::{
    DEFAULT_MAX_LOG_BYTES, DEFAULT_SANDBOX_GID, DEFAULT_SANDBOX_PATHS, DEFAULT_SANDBOX_UID, HOMELESS_SHELTER,
    InputPath, SANDBOX_BUILD_DIR, SandboxSpec, SpecError, nix_builder_env, nix_fixed_output_builder_env, pass_as_file,
    pass_as_file_name, structured_attrs,
};
