//! What `buildmesh demo` needs from the host, installed when missing so that the demo shows
//! every step on a fresh Debian machine whichever quick-start command runs first: Debian's
//! `nix-bin` (the real Nix client of the last step, configured single-user as root with no build
//! users and no sandbox, as `scripts/install-deps.sh` does) and `slirp4netns` (the outbound
//! network of fixed-output builds). Only as root on a machine with `apt-get`; otherwise it says
//! what is missing and the demo goes on (the step that needs it says it is skipped).

use std::process::Command;

/// Debian packages the demo uses, with the command each provides.
const NEEDED: [(&str, &str); 2] = [("nix-store", "nix-bin"), ("slirp4netns", "slirp4netns")];

/// The single-user Nix settings the demo's client needs (appended when `build-users-group` is
/// not set yet).
const NIX_CONF: &str = "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n";

fn has(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Install the missing packages of [`NEEDED`] (printing what it does) and configure Nix.
pub(super) fn ensure() {
    let missing: Vec<&str> = NEEDED.iter().filter(|(cmd, _)| !has(cmd)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        let root = nix::unistd::Uid::effective().is_root();
        if !root || !has_apt() {
            println!("== missing {}: install them (apt-get install {0}) for every step", missing.join(" "));
            return;
        }
        println!("== installing {} (Debian packages the demo needs)", missing.join(" "));
        let update = Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive").status();
        let install = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        match (update, install) {
            (Ok(u), Ok(i)) if u.success() && i.success() => {}
            (u, i) => {
                println!("   apt-get failed ({u:?}, {i:?}); the steps that need {} are skipped", missing.join(" "))
            }
        }
    }
    configure_nix();
}

fn has_apt() -> bool {
    Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Append [`NIX_CONF`] to `/etc/nix/nix.conf` when Nix is there and not configured yet.
fn configure_nix() {
    let path = std::path::Path::new("/etc/nix/nix.conf");
    if !has("nix-store") || !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current.lines().any(|l| l.trim_start().starts_with("build-users-group")) {
        return;
    }
    let write = std::fs::create_dir_all("/etc/nix").and_then(|()| {
        use std::io::Write;
        std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(NIX_CONF.as_bytes())
    });
    match write {
        Ok(()) => println!("== configured single-user Nix in {} (no build users, no sandbox)", path.display()),
        Err(e) => println!("   could not configure {}: {e}", path.display()),
    }
}
