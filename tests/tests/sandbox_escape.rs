//! Issue 10, findings 1 and 5, replayed against a real `buildmesh node` (local executor, as root):
//!
//! 1. A submitted derivation tries to change host settings (`/proc/sys/kernel/core_pattern`,
//!    `kernel.printk_ratelimit`, `/proc/sysrq-trigger`), to remount, to become root (`setpriv`,
//!    a nested user namespace) and reports its ids and capabilities: every attempt is denied,
//!    the host values are unchanged, the builder runs as an unprivileged host uid (seen from the
//!    host in `/proc/<pid>/status` while it runs), holds no capability, and its setuid output is
//!    registered owned by the node without any setuid/writable bit.
//! 2. A fixed-output derivation tries to reach the node's own HTTP API and another listener on the
//!    host's loopback (directly and through slirp's gateway alias 10.0.2.2): it cannot, while a
//!    "remote host" (behind a veth pair) is reachable; of its `impureEnvVars` only the allowed one
//!    arrives.

mod node_support;
mod sandbox_support;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use buildmesh_protocol::derivation::{CaMethod, Derivation, DrvSet, Output, OutputHash};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::StorePath;
use node_support::*;
use sandbox_support::*;

const LONG: Duration = Duration::from_secs(120);

/// `buildmesh submit --api URL --from DIR DRV`, with the node's API token when it has one.
fn submit_one(node: &NodeProc, data: &Path, dir: &Path, drv: &StorePath) {
    let mut cmd = Command::new(bin());
    cmd.args(["submit", "--api", &node.url, "--from"]).arg(dir).arg(sd().display(drv)).env("BUILDMESH_LOG", "warn");
    if let Ok(token) = std::fs::read_to_string(data.join("api.token")) {
        cmd.env("BUILDMESH_TOKEN", token.trim());
    }
    let out = cmd.output().expect("run buildmesh submit");
    assert!(
        out.status.success(),
        "submit failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `/bin/sh -c SCRIPT` derivation `name` written as `DIR/<name>.drv`: input-addressed, or
/// fixed-output (flat sha256 of `fixed`) with `extra` env entries. Returns (drv, out).
fn write_drv(
    dir: &Path,
    name: &str,
    script: &str,
    fixed: Option<&[u8]>,
    extra: &[(&str, &str)],
) -> (StorePath, StorePath) {
    std::fs::create_dir_all(dir).unwrap();
    let mut d = Derivation {
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), script.as_bytes().to_vec()],
        ..Default::default()
    };
    let out = match fixed {
        None => Output::input_addressed(None),
        Some(content) => {
            let hash = NixHash::sha256_of(content);
            d.env.insert(b"outputHash".to_vec(), hash.to_hex().into_bytes());
            d.env.insert(b"outputHashAlgo".to_vec(), b"sha256".to_vec());
            d.env.insert(b"outputHashMode".to_vec(), b"flat".to_vec());
            Output { path: None, hash: OutputHash::Fixed { method: CaMethod::Flat, hash } }
        }
    };
    d.outputs.insert("out".into(), out);
    for (k, v) in
        [("builder", "/bin/sh"), ("name", name), ("system", "x86_64-linux"), ("PATH", "/usr/bin:/bin"), ("out", "")]
            .iter()
            .chain(extra)
    {
        d.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    let mut set = DrvSet::new(sd());
    set.fill_in(&mut d, name).expect("output paths");
    let drv = set.insert(name.to_string(), d.clone()).expect("drv path");
    std::fs::write(dir.join(format!("{name}.drv")), d.to_aterm(&sd())).unwrap();
    (drv, d.outputs["out"].path.clone().unwrap())
}

fn log_of(node: &NodeProc, drv: &StorePath) -> String {
    String::from_utf8_lossy(&get(&format!("{}/api/v1/builds/{drv}/log", node.url)).1).into_owned()
}

/// Wait until the build is done (panicking with its error and log when it failed).
fn wait_done(node: &NodeProc, drv: &StorePath) {
    wait_for(&format!("{drv} to finish"), LONG, || match build_state(&node.url, drv).as_deref() {
        Some("done") => Some(()),
        Some("failed") => panic!(
            "build failed: {}\n--- build log ---\n{}\n--- node log ---\n{}",
            build_json(&node.url, drv)["error"],
            log_of(node, drv),
            node.log_text()
        ),
        _ => None,
    });
}

#[test]
fn a_submitted_builder_cannot_touch_host_settings_and_runs_unprivileged() {
    let _printk = SysctlGuard::new("kernel/printk_ratelimit");
    let (core, printk) = (sysctl("kernel/core_pattern"), sysctl("kernel/printk_ratelimit"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = NodeProc::start(&data, &["--slots", "2"]);
    let salt = std::process::id();
    let marker = format!("4.{salt}");
    let script = format!(
        "({attack}) > $out 2>&1; chmod 6777 $out; cat $out; sleep {marker}",
        attack = attack_script(&core, &printk)
    );
    let (drv, out) = write_drv(&tmp.path().join("drvs"), &format!("escape-{salt}"), &script, None, &[]);
    submit_one(&node, &data, &tmp.path().join("drvs"), &drv);

    // The running builder, seen from the host: an unprivileged uid/gid, no capability.
    let status = host_status_of(&marker, LONG);
    let uids = ids(&status, "Uid:");
    assert!(uids.iter().all(|&u| u >= 30000 && u == uids[0]), "builder host uids {uids:?}\n{status}");
    assert!(ids(&status, "Gid:").iter().all(|&g| g >= 30000), "{status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(cap)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }

    wait_done(&node, &drv);
    // The builder's own report: every write and escalation denied.
    let installed = data.join("store").join(out.to_string());
    let report = std::fs::read_to_string(&installed).unwrap();
    assert_attack_denied(&report);
    assert_eq!(sysctl("kernel/core_pattern"), core, "core_pattern changed");
    assert_eq!(sysctl("kernel/printk_ratelimit"), printk, "printk_ratelimit changed");
    // The registered output belongs to the node, without setuid/setgid/writable bits.
    let md = std::fs::symlink_metadata(&installed).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0), "owner of {}", installed.display());
    assert_eq!(md.mode() & 0o7777, 0o555, "mode {:o}", md.mode());
    assert_eq!(get_json(&format!("{}/api/v1/node", node.url)).0, 200);
}

#[test]
fn a_fixed_output_builder_cannot_reach_the_host_loopback_but_reaches_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let remote = RemoteHost::new("e");
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let other_port = other.local_addr().unwrap().port();
    // The node's environment has a secret and an allowed proxy variable.
    let wrapper: Vec<String> =
        ["env", "SECRET_TOKEN=hunter2", "ftp_proxy=ftp://proxy.invalid:21"].iter().map(|s| s.to_string()).collect();
    let node = NodeProc::start_with(&data, &wrapper, "127.0.0.1:0", "/ip4/127.0.0.1/tcp/0", &["--slots", "1"]);
    let node_port = node.url.rsplit(':').next().unwrap().trim_end_matches('/').to_string();

    let salt = std::process::id();
    // Only when nothing on the host's loopback answered, the remote host did, and the
    // environment is as allowed, the output is "isolated\n" (the declared hash); otherwise the
    // build fails with a hash mismatch and its log says what happened.
    let script = format!(
        "ok=1; \
         for t in 127.0.0.1/{node_port} 127.0.0.1/{other_port} 10.0.2.2/{node_port} 10.0.2.2/{other_port}; do \
           if timeout 5 bash -c \"exec 3<>/dev/tcp/$t; printf 'GET /api/v1/node HTTP/1.0\\r\\n\\r\\n' >&3; \
              head -c 120 <&3\" 2>/dev/null; then echo REACHED $t; ok=0; else echo refused $t; fi; done; \
         timeout 5 bash -c 'exec 3<>/dev/tcp/{rip}/{rport}; echo hello-{salt} >&3' || {{ echo NO-OUTBOUND; ok=0; }}; \
         if [ -n \"${{SECRET_TOKEN+x}}\" ]; then echo SECRET-LEAKED; ok=0; fi; \
         [ \"$ftp_proxy\" = ftp://proxy.invalid:21 ] || {{ echo FTP-PROXY-MISSING; ok=0; }}; \
         if [ $ok = 1 ]; then echo isolated > $out; else echo attack-worked-{salt} > $out; fi",
        rip = remote.addr.ip(),
        rport = remote.addr.port()
    );
    let (drv, out) = write_drv(
        &tmp.path().join("drvs"),
        &format!("fetch-{salt}"),
        &script,
        Some(b"isolated\n"),
        &[("impureEnvVars", "SECRET_TOKEN ftp_proxy")],
    );
    submit_one(&node, &data, &tmp.path().join("drvs"), &drv);
    wait_done(&node, &drv);
    assert_eq!(std::fs::read_to_string(data.join("store").join(out.to_string())).unwrap(), "isolated\n");
    assert_eq!(remote.accept_text(Duration::from_secs(5)).as_deref(), Some(format!("hello-{salt}\n").as_str()));
    assert!(other.accept().is_err(), "the loopback listener got a connection");
    let log = log_of(&node, &drv);
    assert!(!log.contains("REACHED"), "{log}");
    assert!(log.contains(&format!("refused 127.0.0.1/{node_port}")), "{log}");
    // The node is unharmed.
    assert_eq!(get_json(&format!("{}/api/v1/node", node.url)).0, 200);
}
