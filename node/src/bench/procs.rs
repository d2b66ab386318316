//! The processes the bench runs: the node, nginx, and the `nix copy` that fills nginx's cache.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Kills the child when dropped.
pub(super) struct Guard(pub(super) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops nginx when dropped: SIGTERM to its master, which stops its workers too (a SIGKILL
/// would leave them serving the port after the bench), then SIGKILL if it is still there 5 s
/// later.
pub(super) struct NginxGuard(Child);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            for _ in 0..50 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `buildmesh node` serving `data`.
pub(super) struct Node {
    pub(super) guard: Guard,
    pub(super) pid: u32,
    pub(super) url: String,
    pub(super) public_key: String,
}

/// Start this executable as a node on a free loopback port; its log goes to `log`.
pub(super) fn start_node(data: &Path, log: &Path, log_level: &str) -> anyhow::Result<Node> {
    start_node_with(data, log, log_level, &[])
}

/// [`start_node`] with more flags for `buildmesh node` (e.g. `--store-dir /gnu/store`).
pub(super) fn start_node_with(data: &Path, log: &Path, log_level: &str, extra: &[&str]) -> anyhow::Result<Node> {
    let exe = std::env::current_exe().context("cannot find the buildmesh executable")?;
    let log = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(&exe)
        .args(["node", "--data-dir"])
        .arg(data)
        .args(["--http", "127.0.0.1:0", "--slots", "1"])
        .args(extra)
        .env("BUILDMESH_LOG", log_level)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("start buildmesh node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let pid = child.id();
    let guard = Guard(child);
    let (url, public_key) = read_start_lines(stdout)?;
    Ok(Node { guard, pid, url, public_key })
}

/// Read `http: URL` and `public-key: KEY` from the node's stdout.
fn read_start_lines(stdout: std::process::ChildStdout) -> anyhow::Result<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut url = None;
        let mut key = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(u) = line.strip_prefix("http: ") {
                url = Some(u.to_string());
            } else if let Some(k) = line.strip_prefix("public-key: ") {
                key = Some(k.to_string());
            }
            if let (Some(u), Some(k)) = (&url, &key) {
                let _ = tx.send((u.clone(), k.clone()));
                url = None;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).context("the node did not print its address within 30 s (see node.log)")
}

/// `VmRSS`, `VmHWM`, ... of a process, in KiB.
pub(super) fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `nix copy --from FROM --to TO PATHS`, checking signatures against `key`, with its own `HOME`
/// under `dir` (no narinfo disk cache shared with anything else).
pub(super) fn nix_copy(
    nix: &Path,
    dir: &Path,
    from: &str,
    to: &str,
    key: &str,
    paths: &[String],
) -> anyhow::Result<()> {
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let out = Command::new(nix)
        .args(["--extra-experimental-features", "nix-command", "copy", "--from", from, "--to", to])
        .args(["--option", "trusted-public-keys", key])
        .args(paths)
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .output()
        .context("run nix copy")?;
    if !out.status.success() {
        bail!("nix copy --from {from} --to {to} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A free loopback TCP port.
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx serving `root` as static files on `port` (sendfile, long keep-alive, no access log).
pub(super) fn start_nginx(nginx: &Path, dir: &Path, root: &Path, port: u16) -> anyhow::Result<NginxGuard> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let conf = format!(
        "user root;\nworker_processes {workers};\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fcgi;\n\
           uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
           types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}\n\
           server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        p = prefix.display(),
        root = root.display(),
    );
    let conf_path: PathBuf = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} (scripts/install-deps.sh installs nginx)", nginx.display()))?;
    Ok(NginxGuard(child))
}

/// Wait until `url` answers 2xx (10 s at most).
pub(super) fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for _ in 0..100 {
        if client.get(url).send().map(|r| r.status().is_success()).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 10 s")
}
