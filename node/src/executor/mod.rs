//! Build executors: the `local` sandbox and the host `nix`.
