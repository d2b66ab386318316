//! Helpers of the sandbox isolation tests: a "remote host" (a listener in its own network
//! namespace, reached from the host's namespace over a veth pair, as a machine on the network
//! would be), host-side views of a running builder, and host sysctls to compare.
//! Needs root and `ip` (iproute2); everything is removed on drop.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `ip` program (in /usr/sbin on Debian, which a non-login PATH may lack).
use buildmesh_tests::{ip, ip_program};

/// A namespace `bmsbx<tag>` holding `10.<net>.<sub>.2/30`, linked to the host's namespace
/// (`10.<net>.<sub>.1/30`) by a veth pair, with a TCP listener on `.2`.
pub struct RemoteHost {
    ns: String,
    link: String,
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

impl RemoteHost {
    pub fn new(tag: &str) -> RemoteHost {
        let pid = std::process::id();
        let routes = Command::new(ip_program()).args(["-4", "route", "show", "table", "all"]).output().expect("ip");
        let routes = String::from_utf8_lossy(&routes.stdout).to_string();
        let (net, sub) = (0..250u32)
            .map(|k| (213u8, ((pid + k) % 250) as u8))
            .find(|(n, s)| !routes.contains(&format!("10.{n}.{s}.")))
            .expect("a free 10.213.x.0/30");
        let ns = format!("bmsbx{tag}{}", pid % 100000);
        let link = format!("bmsx{tag}{}", pid % 100000);
        let _ = Command::new(ip_program()).args(["netns", "del", &ns]).output();
        let _ = Command::new(ip_program()).args(["link", "del", &link]).output();
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["addr", "add", &format!("10.{net}.{sub}.1/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("10.{net}.{sub}.2/30"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let remote_ip = Ipv4Addr::new(10, net, sub, 2);
        // Bind the listener inside the namespace from a thread that joins it (a socket stays in
        // the namespace it was made in).
        let ns_path = format!("/run/netns/{ns}");
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind((remote_ip, 0)).expect("bind in the remote namespace")
        })
        .join()
        .expect("listener thread");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        RemoteHost { ns, link, listener, addr }
    }

    /// Wait (at most `limit`) for a connection and return what it sent before closing.
    pub fn accept_text(&self, limit: Duration) -> Option<String> {
        use std::io::Read as _;
        let deadline = Instant::now() + limit;
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text);
                    return Some(text);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        let _ = Command::new(ip_program()).args(["link", "del", &self.link]).output();
        let _ = Command::new(ip_program()).args(["netns", "del", &self.ns]).output();
    }
}

/// Pids of host processes whose command line contains `marker`.
pub fn pids_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).replace('\0', " ").contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

/// The host's view of the first process whose command line has `marker` (waits up to `limit`):
/// its `/proc/<pid>/status` text.
pub fn host_status_of(marker: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        for pid in pids_with(marker) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "no process with {marker:?} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of a `Uid:`/`Gid:` line of a status text.
pub fn ids(status: &str, key: &str) -> Vec<u32> {
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
    line[key.len()..].split_whitespace().map(|v| v.parse().unwrap()).collect()
}

/// A host sysctl's current value.
pub fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{name}")).unwrap().trim().to_string()
}

/// Sets a sysctl back to the value it had when made (in case a broken sandbox changed it).
pub struct SysctlGuard {
    name: &'static str,
    value: String,
}

impl SysctlGuard {
    pub fn new(name: &'static str) -> SysctlGuard {
        SysctlGuard { name, value: sysctl(name) }
    }

    pub fn original(&self) -> &str {
        &self.value
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if sysctl(self.name) != self.value {
            let _ = std::fs::write(format!("/proc/sys/{}", self.name), &self.value);
        }
    }
}

/// The builder script of the privilege tests: tries to write host settings (the same
/// `core_pattern`, `printk_ratelimit` + 1), `/proc/sysrq-trigger`, to remount `/`, to become
/// root with `setpriv` and through a nested user namespace, and reports its status lines.
/// Prints `WROTE`/`REMOUNTED`/`SETUID`/`NESTED` for what succeeded, then `ATTACK-DONE`.
pub fn attack_script(core_pattern: &str, printk: &str) -> String {
    let printk_next: u64 = printk.parse::<u64>().unwrap() + 1;
    format!(
        "grep -E '^(Uid|Gid|Cap|NoNewPrivs)' /proc/self/status; \
         (printf '%s\\n' '{core_pattern}' > /proc/sys/kernel/core_pattern) 2>/dev/null && echo WROTE core_pattern; \
         (echo {printk_next} > /proc/sys/kernel/printk_ratelimit) 2>/dev/null && echo WROTE printk_ratelimit; \
         (echo h > /proc/sysrq-trigger) 2>/dev/null && echo WROTE sysrq-trigger; \
         mount -o remount,rw / 2>/dev/null && echo REMOUNTED /; \
         umount /proc/sys 2>/dev/null && echo REMOUNTED proc-sys; \
         setpriv --reuid=0 --regid=0 --clear-groups true 2>/dev/null && echo SETUID; \
         unshare -r sh -c 'echo {printk_next} > /proc/sys/kernel/printk_ratelimit' 2>/dev/null && echo NESTED; \
         echo kcore=$(head -c 64 /proc/kcore 2>/dev/null | wc -c); \
         echo ATTACK-DONE"
    )
}

/// Check the report of [`attack_script`]: nothing succeeded, no capability, `no_new_privs`,
/// the in-sandbox ids are Nix's 1000/100.
pub fn assert_attack_denied(report: &str) {
    assert!(report.contains("ATTACK-DONE"), "{report}");
    for bad in ["WROTE", "REMOUNTED", "SETUID", "NESTED"] {
        assert!(!report.contains(bad), "{bad} succeeded:\n{report}");
    }
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = report.lines().find(|l| l.starts_with(cap)).unwrap_or_else(|| panic!("no {cap}:\n{report}"));
        assert!(line.ends_with("0000000000000000"), "{line}\n{report}");
    }
    assert!(report.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{report}");
    assert_eq!(ids(report, "Uid:"), [1000; 4], "{report}");
    assert_eq!(ids(report, "Gid:"), [100; 4], "{report}");
    assert!(report.contains("kcore=0\n"), "{report}");
}
