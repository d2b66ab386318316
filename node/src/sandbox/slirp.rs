//! Outbound network for fixed-output builds without the host's loopback: `slirp4netns`.
//!
//! A fixed-output derivation may download (its output is checked against a declared hash), but
//! it comes from anyone, so it must not reach the node's own API or any other service listening
//! on the host's loopback. Its builder therefore gets its own network namespace like every other
//! build, and stage 1 of the helper (root in the host) attaches a user-mode network stack to it:
//!
//! `slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox --enable-seccomp
//! --exit-fd=0 --netns-type=path /proc/<pid>/ns/net tap0`
//!
//! - the namespace gets `tap0` = 10.0.2.100/24, a default route via 10.0.2.2 and DNS at 10.0.2.3
//!   (forwarded to the host's resolvers); connections leave as ordinary sockets of the
//!   `slirp4netns` process in the host's namespace;
//! - `--disable-host-loopback` refuses connections to 10.0.2.2 (which would otherwise be the
//!   host's 127.0.0.1), and the namespace's own 127.0.0.1 is its own `lo`;
//! - `--enable-sandbox`/`--enable-seccomp`: slirp4netns pivots into an empty root, drops its
//!   capabilities and filters its system calls, since it parses the builder's packets;
//! - `--exit-fd=0`: its stdin is a pipe whose write end stage 1 holds, so it exits with stage 1
//!   even when stage 1 is killed.
//!
//! Stage 1 waits until the default route shows in `/proc/<pid>/net/route` (the namespace as seen
//! through stage 2) before it lets the builder start.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::exec::{Ctx as _, SetupError};

/// The address of the slirp4netns DNS forwarder in the namespace.
pub const SLIRP_DNS: &str = "10.0.2.3";
/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The tap device's name in the namespace.
const TAP: &str = "tap0";

/// A running slirp4netns; killed when dropped.
#[derive(Debug)]
pub(crate) struct Slirp {
    child: Child,
    _exit_fd: OwnedFd,
}

impl Slirp {
    /// Attach `program` (slirp4netns) to the network namespace of process `pid` and wait until
    /// the namespace has its default route.
    pub(crate) fn start(program: &Path, pid: u32) -> Result<Slirp, SetupError> {
        let (exit_r, exit_w) = std::io::pipe().ctx(|| "creating the slirp4netns exit pipe".into())?;
        let mut child = Command::new(program)
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--enable-sandbox",
                "--enable-seccomp",
                "--exit-fd=0",
                // By path: given a pid, slirp4netns would also join the pid's user namespace,
                // where it has no right over this network namespace (owned by the host's).
                "--netns-type=path",
            ])
            .arg(format!("/proc/{pid}/ns/net"))
            .arg(TAP)
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(exit_r)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("starting {}", program.display()))?;
        let route = PathBuf::from(format!("/proc/{pid}/net/route"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().ctx(|| "waiting for slirp4netns".into())? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(SetupError::Io {
                    what: format!("{} exited ({status}) before the network was up", program.display()),
                    source: std::io::Error::other(err.trim().to_string()),
                });
            }
            if std::fs::read_to_string(&route).is_ok_and(|r| has_default_route(&r, TAP)) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SetupError::Io {
                    what: format!("{} did not configure the network", program.display()),
                    source: std::io::Error::other(format!("no default route via {TAP} after {READY_TIMEOUT:?}")),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Keep draining its stderr so it never blocks on a full pipe; the text is dropped.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut e, &mut std::io::sink()));
        }
        Ok(Slirp { child, _exit_fd: OwnedFd::from(exit_w) })
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a `/proc/net/route` text has a default route through `iface`.
fn has_default_route(route: &str, iface: &str) -> bool {
    route.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some(iface) && f.next() == Some("00000000")
    })
}

/// Find `name` in the usual binary directories when it is not a path.
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_detection() {
        let r = "Iface\tDestination\tGateway\tFlags\n\
                 tap0\t0002000A\t00000000\t0001\n";
        assert!(!has_default_route(r, "tap0"));
        let r = format!("{r}tap0\t00000000\t0202000A\t0003\n");
        assert!(has_default_route(&r, "tap0"));
        assert!(!has_default_route(&r, "eth0"));
    }

    #[test]
    fn programs_are_found() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("/nonexistent/slirp4netns")).is_none());
        assert!(find_program(Path::new("no-such-program-here")).is_none());
    }
}
