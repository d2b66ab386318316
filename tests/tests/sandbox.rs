//! The `local` executor's sandbox, run for real (needs root on Linux, like the node's executor).
//!
//! Each test starts the `buildmesh` binary's hidden `__sandbox-exec` helper through
//! [`SandboxRunner`]. The last tests build the vector derivations of `../shared/vectors/nix` by
//! hand-assembled specs and compare every output's NAR hash and references with what Nix 2.8
//! recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use buildmesh::build::refscan::scan_references;
use buildmesh::sandbox::{
    BuildOutcome, ExecutorError, InputPath, SandboxRunner, SandboxSpec, Termination, nix_builder_env,
    nix_fixed_output_builder_env, pass_as_file, structured_attrs,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

mod sandbox_support;
use sandbox_support::{RemoteHost, SysctlGuard, assert_attack_denied, attack_script, host_status_of, ids, sysctl};

const STORE: &str = "/nix/store";
const OUT: &str = "/nix/store/an8vyn8v0lxs937kjy709ghv3zp4wms6-sandbox-test";

fn runner() -> SandboxRunner {
    SandboxRunner::new(env!("CARGO_BIN_EXE_buildmesh-under-test")).with_kill_grace(Duration::from_millis(300))
}

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        Fixture { dir }
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn build(&self) -> PathBuf {
        self.dir.path().join("build")
    }
    fn out_host(&self) -> PathBuf {
        self.store().join(Path::new(OUT).file_name().unwrap())
    }
    /// `/bin/sh -c SCRIPT` with Nix's builder env, `out` and `PATH=/usr/bin:/bin`.
    fn sh(&self, script: &str) -> SandboxSpec {
        let mut spec = SandboxSpec::new("/bin/sh", STORE, self.store(), self.build());
        spec.args = vec![b"-c".to_vec(), script.as_bytes().to_vec()];
        let drv_env =
            BTreeMap::from([(b"out".to_vec(), OUT.as_bytes().to_vec()), (b"PATH".to_vec(), b"/usr/bin:/bin".to_vec())]);
        spec.env = nix_builder_env(&drv_env, STORE, "/build", 1);
        spec
    }
}

async fn run(spec: &SandboxSpec) -> BuildOutcome {
    runner().run(spec, std::future::pending()).await.unwrap()
}

fn log(o: &BuildOutcome) -> String {
    String::from_utf8_lossy(&o.log).into_owned()
}

#[tokio::test]
async fn output_appears_in_the_host_store() {
    let f = Fixture::new();
    let o = run(&f.sh("echo hello from $out > $out; echo to-log; echo to-err >&2")).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(f.out_host()).unwrap(), format!("hello from {OUT}\n"));
    assert_eq!(log(&o), "to-log\nto-err\n");
    assert!(!o.log_truncated);
}

#[tokio::test]
async fn identity_hostname_pid_and_mounts() {
    let f = Fixture::new();
    let o = run(&f.sh("echo pid=$$; echo uid=$(id -u) gid=$(id -g) user=$(id -un); \
         echo host=$(cat /proc/sys/kernel/hostname) domain=$(cat /proc/sys/kernel/domainname); \
         echo cwd=$(pwd); echo root=$(ls / | tr '\\n' ' '); \
         echo urandom=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' | wc -c); \
         echo null=$(echo x > /dev/null && echo ok); echo zero=$(head -c 4 /dev/zero | od -An -tx1 | tr -d ' ');\
         echo procs=$(ls /proc | grep -c '^[0-9]'); cat /etc/passwd /etc/group /etc/hosts"))
    .await;
    assert!(o.success(), "{}", log(&o));
    let l = log(&o);
    assert!(l.contains("pid=1\n"), "{l}");
    assert!(l.contains("uid=1000 gid=100 user=nixbld\n"), "{l}");
    assert!(l.contains("host=localhost domain=(none)\n"), "{l}");
    assert!(l.contains("cwd=/build\n"), "{l}");
    assert!(l.contains("urandom=32\n"), "{l}");
    assert!(l.contains("null=ok\n") && l.contains("zero=00000000\n"), "{l}");
    // Only the builder's own processes are visible (sh, plus the command substitution's).
    let procs: u32 = l.split("procs=").nth(1).unwrap().lines().next().unwrap().parse().unwrap();
    assert!(procs <= 4, "{l}");
    let mut expected: Vec<&str> = vec!["build", "dev", "etc", "nix", "proc", "tmp"];
    for p in ["bin", "usr", "lib", "lib64"] {
        if Path::new("/").join(p).exists() {
            expected.push(p);
        }
    }
    expected.sort();
    let root_line = l.lines().find(|x| x.starts_with("root=")).unwrap();
    let mut seen: Vec<&str> = root_line["root=".len()..].split_whitespace().collect();
    seen.sort();
    assert_eq!(seen, expected, "{l}");
    assert!(l.contains("nixbld:x:1000:100:Nix build user:/build:/noshell\n"), "{l}");
    assert!(l.contains("nixbld:!:100:\n"), "{l}");
    assert!(l.contains("127.0.0.1 localhost\n::1 localhost\n"), "{l}");
}

#[tokio::test]
async fn host_filesystem_is_invisible_and_read_only() {
    let f = Fixture::new();
    let o = run(&f.sh(
        "for p in /root /work /etc/shadow /home /var /nix/var /etc/nix; do test -e $p && echo VISIBLE $p; done; \
         touch /usr/x 2>/dev/null && echo WROTE /usr; touch /bin/x 2>/dev/null && echo WROTE /bin; \
         touch /x 2>/dev/null && echo WROTE /; touch /etc/passwd 2>/dev/null && echo WROTE /etc; \
         touch /tmp/ok /build/ok /dev/shm/ok && echo writable; mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED; \
         ls /build",
    ))
    .await;
    assert!(o.success(), "{}", log(&o));
    assert_eq!(log(&o), "writable\nok\n");
    assert!(f.build().join("ok").exists());
    for p in ["/usr/x", "/bin/x", "/x"] {
        assert!(!Path::new(p).exists());
    }
}

#[tokio::test]
async fn inputs_are_read_only_and_stubs_are_removed() {
    let f = Fixture::new();
    let inputs = tempfile::tempdir().unwrap();
    let dep_dir = inputs.path().join("dep");
    std::fs::create_dir(&dep_dir).unwrap();
    std::fs::write(dep_dir.join("file"), "dep content\n").unwrap();
    let dep_file = inputs.path().join("file");
    std::fs::write(&dep_file, "a text input\n").unwrap();
    let dep_link = inputs.path().join("link");
    std::os::unix::fs::symlink("/nix/store/fiarkh10612q6ypgx2zbg7r0n16h5drd-pipeline-s1/file", &dep_link).unwrap();
    let dir_path = "/nix/store/fiarkh10612q6ypgx2zbg7r0n16h5drd-pipeline-s1";
    let file_path = "/nix/store/gikyrmn2y4661ws4j7hl9lvs4h9rvmzv-aurora-build.sh";
    let link_path = "/nix/store/0l9jkh2syydr3gbsw3zpf2z5bs131mmb-link-root";
    let mut spec = f.sh(&format!(
        "cat {dir_path}/file {file_path} {link_path}; \
         {{ echo x >> {dir_path}/file; }} 2>/dev/null && echo WROTE-DIR; {{ echo x >> {file_path}; }} 2>/dev/null && echo WROTE-FILE; \
         touch {dir_path}/new 2>/dev/null && echo CREATED; rm -f {dir_path}/file 2>/dev/null; \
         test -e {dir_path}/file || echo REMOVED; echo done > $out"
    ));
    spec.inputs = vec![
        InputPath { host: dep_dir.clone(), path: dir_path.into() },
        InputPath { host: dep_file.clone(), path: file_path.into() },
        InputPath { host: dep_link, path: link_path.into() },
    ];
    let o = run(&spec).await;
    assert!(o.success(), "{}", log(&o));
    assert_eq!(log(&o), "dep content\na text input\ndep content\n");
    assert_eq!(std::fs::read_to_string(dep_dir.join("file")).unwrap(), "dep content\n");
    assert_eq!(std::fs::read_to_string(&dep_file).unwrap(), "a text input\n");
    // Only the output is left in the per-build store.
    let left: Vec<_> = std::fs::read_dir(f.store()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![f.out_host().file_name().unwrap().to_os_string()]);
}

#[tokio::test]
async fn environment_is_exactly_the_spec() {
    let f = Fixture::new();
    let mut spec = SandboxSpec::new("/usr/bin/env", STORE, f.store(), f.build());
    spec.args = vec![b"-0".to_vec()];
    spec.env = nix_builder_env(
        &BTreeMap::from([
            (b"raw".to_vec(), vec![0xff, 0xfe, b'\n', b'=']),
            (b"empty".to_vec(), Vec::new()),
            (b"out".to_vec(), OUT.as_bytes().to_vec()),
        ]),
        STORE,
        "/build",
        3,
    );
    let o = run(&spec).await;
    assert!(o.success(), "{}", log(&o));
    let mut got = BTreeMap::new();
    for entry in o.log.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let eq = entry.iter().position(|&b| b == b'=').unwrap();
        got.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
    }
    assert_eq!(got, spec.env);
}

#[tokio::test]
async fn argv0_is_the_builder_name_and_args_are_bytes() {
    let f = Fixture::new();
    let mut spec = f.sh(r#"printf '[%s]' "$0" "$@""#);
    spec.args.push(b"zero".to_vec());
    spec.args.push(vec![]);
    spec.args.push(b"with space \"q\" \xff".to_vec());
    let o = run(&spec).await;
    assert!(o.success());
    assert_eq!(o.log, b"[zero][][with space \"q\" \xff]".to_vec());
    // argv[0] is the builder's file name, as in Nix (seen as PID 1's command line).
    let o = run(&{
        let mut s = SandboxSpec::new("/bin/sh", STORE, f.store(), f.build());
        s.args = vec![b"-c".to_vec(), b"tr '\\0' ' ' < /proc/1/cmdline".to_vec()];
        s
    })
    .await;
    assert_eq!(log(&o), "sh -c tr '\\0' ' ' < /proc/1/cmdline ");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let f = Fixture::new();
    for code in [0, 1, 3, 125, 127, 255] {
        let o = run(&f.sh(&format!("exit {code}"))).await;
        assert_eq!(o.termination, Termination::Exited(code));
    }
    // A child killed by a signal: the shell reports 128+9.
    let o = run(&f.sh("sh -c 'kill -9 $$'")).await;
    assert_eq!(o.termination, Termination::Exited(137));
}

#[tokio::test]
async fn network_is_isolated_and_fixed_output_network_skips_host_loopback() {
    let f = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "if bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'; then echo CONNECTED; fi; \
         cat /proc/net/dev | grep -o '^ *[a-z0-9]*:' | tr -d ' :' | sort | tr '\\n' ' '"
    );
    let o = run(&f.sh(&script)).await;
    assert!(o.success());
    let l = log(&o);
    assert!(l.contains("Connection refused"), "lo must be up and empty: {l}");
    assert!(!l.contains("CONNECTED"), "{l}");
    assert!(l.ends_with("lo "), "only lo: {l}");
    assert!(listener.accept().is_err(), "the host listener got a connection");

    // With network (fixed-output builds): outbound works (a "remote host" behind a veth), but
    // neither the host's 127.0.0.1 nor slirp's gateway alias of it (10.0.2.2) is reachable.
    let remote = RemoteHost::new("s");
    let script = format!(
        "for t in 127.0.0.1/{port} 10.0.2.2/{port}; do \
           if bash -c \"exec 3<>/dev/tcp/$t\" 2>/dev/null; then echo REACHED $t; else echo refused $t; fi; done; \
         bash -c 'exec 3<>/dev/tcp/{ip}/{rport}; echo hello-from-sandbox >&3' && echo outbound-ok; \
         cat /proc/net/dev | grep -o '^ *[a-z0-9]*:' | tr -d ' :' | sort | tr '\\n' ' '",
        ip = remote.addr.ip(),
        rport = remote.addr.port()
    );
    let mut spec = f.sh(&script);
    spec.network = true;
    let o = run(&spec).await;
    let l = log(&o);
    assert!(o.success(), "{l}");
    assert!(!l.contains("REACHED"), "{l}");
    assert!(l.contains("outbound-ok"), "{l}");
    assert!(l.ends_with("lo tap0 "), "{l}");
    assert_eq!(remote.accept_text(Duration::from_secs(5)).as_deref(), Some("hello-from-sandbox\n"));
    assert!(listener.accept().is_err(), "the host loopback listener got a connection");

    // Without slirp4netns a network build is refused, not run on the host's network.
    let r = runner().with_slirp4netns(None).run(&spec, std::future::pending()).await;
    assert!(matches!(r, Err(ExecutorError::NoNetwork)), "{r:?}");
}

#[tokio::test]
async fn builder_has_no_privileges_and_runs_as_a_build_user() {
    let _printk = SysctlGuard::new("kernel/printk_ratelimit");
    let (core, printk) = (sysctl("kernel/core_pattern"), sysctl("kernel/printk_ratelimit"));
    // Two builders at once: each its own unprivileged host uid.
    let (f1, f2) = (Fixture::new(), Fixture::new());
    let script =
        |marker: &str| format!("{}; echo x > $out; chmod 6777 $out; sleep {marker}", attack_script(&core, &printk));
    let (s1, s2) = (f1.sh(&script("3.987661")), f2.sh(&script("3.987662")));
    let r = runner();
    let (h1, h2) = (r.clone(), r);
    let t1 = tokio::spawn(async move { h1.run(&s1, std::future::pending()).await });
    let t2 = tokio::spawn(async move { h2.run(&s2, std::future::pending()).await });
    let st1 = tokio::task::spawn_blocking(|| host_status_of("3.987661", Duration::from_secs(20))).await.unwrap();
    let st2 = tokio::task::spawn_blocking(|| host_status_of("3.987662", Duration::from_secs(20))).await.unwrap();
    let (o1, o2) = (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap());
    assert!(o1.success() && o2.success(), "{}\n{}", log(&o1), log(&o2));
    eprintln!("builder 1 report:\n{}", log(&o1));
    assert_attack_denied(&log(&o1));
    assert_attack_denied(&log(&o2));
    let (u1, u2) = (ids(&st1, "Uid:"), ids(&st2, "Uid:"));
    assert!(u1.iter().all(|&u| u >= 30000 && u == u1[0]), "host uids {u1:?}");
    assert!(u2.iter().all(|&u| u >= 30000 && u == u2[0]), "host uids {u2:?}");
    assert_ne!(u1[0], u2[0], "two running builds share a host uid");
    assert!(ids(&st1, "Gid:").iter().all(|&g| g >= 30000), "{st1}");
    assert_eq!(sysctl("kernel/core_pattern"), core);
    assert_eq!(sysctl("kernel/printk_ratelimit"), printk);
    // What the builder made is the node's again once the run is over (no setuid bit left).
    for f in [&f1, &f2] {
        use std::os::unix::fs::MetadataExt as _;
        let md = std::fs::symlink_metadata(f.out_host()).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0));
        assert_eq!(md.mode() & 0o6000, 0, "{:o}", md.mode());
        assert_eq!(std::fs::symlink_metadata(f.build()).unwrap().uid(), 0);
    }
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test]
async fn timeout_kills_the_whole_sandbox() {
    let f = Fixture::new();
    let mut spec = f.sh("sleep 987651 & setsid sleep 987651 & echo started; sleep 987651");
    spec.timeout = Some(Duration::from_millis(800));
    let t = Instant::now();
    let o = run(&spec).await;
    assert_eq!(o.termination, Termination::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // SIGTERM reaches the builder's children first, so the shell may still report them.
    assert!(log(&o).starts_with("started\n"), "{}", log(&o));
    // The kernel reaps the namespace asynchronously; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_with("987651").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(processes_with("987651").is_empty(), "{:?}", processes_with("987651"));
}

#[tokio::test]
async fn cancellation_kills_the_sandbox() {
    let f = Fixture::new();
    let spec = f.sh("trap '' TERM; sleep 987652 & sleep 987652");
    let t = Instant::now();
    let o = runner().run(&spec, tokio::time::sleep(Duration::from_millis(500))).await.unwrap();
    assert_eq!(o.termination, Termination::Cancelled);
    assert!(t.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_with("987652").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(processes_with("987652").is_empty());
}

#[tokio::test]
async fn log_is_capped() {
    let f = Fixture::new();
    let mut spec = f.sh("seq 1 200000");
    spec.max_log_bytes = 1000;
    let o = run(&spec).await;
    assert!(o.success());
    let full: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(o.log_bytes, full.len() as u64);
    assert!(o.log_truncated);
    assert!(o.log.starts_with(&full.as_bytes()[..500]));
    assert!(o.log.ends_with(&full.as_bytes()[full.len() - 500..]));
    assert!(log(&o).contains(&format!("[buildmesh: log truncated: {} bytes omitted]", full.len() - 1000)));
}

#[tokio::test]
async fn setup_errors_are_typed() {
    let f = Fixture::new();
    let spec = SandboxSpec::new("/nonexistent/builder", STORE, f.store(), f.build());
    match runner().run(&spec, std::future::pending()).await {
        Err(ExecutorError::SetupFailed { message, .. }) => {
            assert!(message.contains("/nonexistent/builder"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut spec = f.sh("true");
    spec.inputs.push(InputPath { host: "/nonexistent/input".into(), path: "/nix/store/x".into() });
    assert!(matches!(runner().run(&spec, std::future::pending()).await, Err(ExecutorError::MissingInput { .. })));
    let mut spec = f.sh("true");
    spec.build_dir_host = f.dir.path().join("missing");
    assert!(matches!(runner().run(&spec, std::future::pending()).await, Err(ExecutorError::NotADirectory { .. })));
    let mut spec = f.sh("true");
    spec.env.insert(b"BAD=NAME".to_vec(), Vec::new());
    assert!(matches!(runner().run(&spec, std::future::pending()).await, Err(ExecutorError::InvalidSpec(_))));
}

// ---------------------------------------------------------------------------------------------
// Real builds of the Nix vectors.

fn vectors() -> PathBuf {
    buildmesh_tests::nix_vectors()
}

use buildmesh_tests::tsv;

/// One row of nar/index.tsv.
struct NarRow {
    name: String,
    nar_hash: String,
    references: Vec<String>,
}

struct Vectors {
    /// drv store path -> vector name
    drv_names: HashMap<String, String>,
    /// store path -> NAR rows (twins share a path)
    nar: HashMap<String, Vec<NarRow>>,
}

impl Vectors {
    fn load() -> Vectors {
        let mut drv_names = HashMap::new();
        for r in tsv(&vectors().join("drv/index.tsv")) {
            drv_names.insert(r[1].clone(), r[0].clone());
        }
        let mut nar: HashMap<String, Vec<NarRow>> = HashMap::new();
        for r in tsv(&vectors().join("nar/index.tsv")) {
            let references = r[4].split(',').filter(|s| !s.is_empty()).map(String::from).collect();
            nar.entry(r[1].clone()).or_default().push(NarRow {
                name: r[0].clone(),
                nar_hash: r[2].clone(),
                references,
            });
        }
        Vectors { drv_names, nar }
    }

    /// `paths` and everything they reference, per the recorded references.
    fn closure(&self, paths: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = paths.into_iter().collect();
        while let Some(p) = todo.pop() {
            if out.insert(p.clone())
                && let Some(rows) = self.nar.get(&p)
            {
                todo.extend(rows[0].references.iter().cloned());
            }
        }
        out
    }
}

struct Drv {
    outputs: BTreeMap<String, String>,
    fixed: bool,
    input_drvs: BTreeMap<String, Vec<String>>,
    input_srcs: Vec<String>,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

fn load_drv(name: &str) -> Drv {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors().join(format!("drv/{name}.json"))).unwrap()).unwrap();
    let d = v.as_object().unwrap().values().next().unwrap();
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let outs = d["outputs"].as_object().unwrap();
    Drv {
        outputs: outs.iter().map(|(k, o)| (k.clone(), o["path"].as_str().unwrap().to_string())).collect(),
        fixed: outs.values().any(|o| o.get("hash").is_some()),
        input_drvs: d["inputDrvs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), strs(v))).collect(),
        input_srcs: strs(&d["inputSrcs"]),
        builder: d["builder"].as_str().unwrap().to_string(),
        args: strs(&d["args"]),
        env: d["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect(),
    }
}

fn nar_hash_of(path: &Path) -> String {
    let mut child = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nix-store (Nix 2.8) must be installed for this test");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut out = child.stdout.take().unwrap();
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
    format!("sha256:{}", buildmesh_protocol::nixbase32::encode(&h.finalize()))
}

/// Builds vectors in a shared work dir; every output stays in its per-build store.
struct VectorBuilder {
    v: Vectors,
    work: TempDir,
    /// store path -> host path
    built: HashMap<String, PathBuf>,
    count: usize,
}

impl VectorBuilder {
    fn new() -> VectorBuilder {
        VectorBuilder { v: Vectors::load(), work: tempfile::tempdir().unwrap(), built: HashMap::new(), count: 0 }
    }

    fn source(&mut self, path: &str) -> PathBuf {
        if let Some(p) = self.built.get(path) {
            return p.clone();
        }
        let row = &self.v.nar[path][0];
        let dir = self.work.path().join("srcs");
        std::fs::create_dir_all(&dir).unwrap();
        let host = dir.join(Path::new(path).file_name().unwrap());
        let nar = std::fs::File::open(vectors().join(format!("nar/{}.nar", row.name))).unwrap();
        let st = Command::new("nix-store").arg("--restore").arg(&host).stdin(nar).status().unwrap();
        assert!(st.success());
        self.built.insert(path.to_string(), host.clone());
        host
    }

    /// Build `name` (after its inputs) and check each output against the recorded NAR hash and
    /// references. Returns the number of outputs checked.
    async fn build(&mut self, name: &str) -> usize {
        let drv = load_drv(name);
        if drv.outputs.values().all(|p| self.built.contains_key(p)) {
            return 0;
        }
        let mut checked = 0;
        let mut direct = Vec::new();
        for (drv_path, outs) in &drv.input_drvs {
            let dep = self.v.drv_names[drv_path].clone();
            checked += Box::pin(self.build(&dep)).await;
            let dep_drv = load_drv(&dep);
            direct.extend(outs.iter().map(|o| dep_drv.outputs[o].clone()));
        }
        for s in &drv.input_srcs {
            direct.push(s.clone());
        }
        let closure = self.v.closure(direct);
        let mut inputs = Vec::new();
        for p in &closure {
            let host = match self.built.get(p) {
                Some(h) => h.clone(),
                None => self.source(p),
            };
            inputs.push(InputPath { host, path: p.into() });
        }

        self.count += 1;
        let base = self.work.path().join(format!("b{}", self.count));
        let (store, build) = (base.join("store"), base.join("build"));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        let drv_env: BTreeMap<Vec<u8>, Vec<u8>> =
            drv.env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        let drv_env = match structured_attrs(&drv_env, &drv.outputs, &build, "/build").unwrap() {
            Some(env) => env,
            None => pass_as_file(&drv_env, &build, "/build").unwrap(),
        };
        let mut spec = SandboxSpec::new(&drv.builder, STORE, &store, &build);
        spec.args = drv.args.iter().map(|a| a.as_bytes().to_vec()).collect();
        spec.env = if drv.fixed {
            let impure: BTreeMap<Vec<u8>, Vec<u8>> = drv
                .env
                .get("impureEnvVars")
                .map(|s| s.split_whitespace().map(|k| (k.as_bytes().to_vec(), Vec::new())).collect())
                .unwrap_or_default();
            nix_fixed_output_builder_env(&drv_env, STORE, "/build", 1, &impure)
        } else {
            nix_builder_env(&drv_env, STORE, "/build", 1)
        };
        spec.network = drv.fixed;
        spec.inputs = inputs;
        spec.timeout = Some(Duration::from_secs(60));
        let o = runner().run(&spec, std::future::pending()).await.unwrap();
        assert!(o.success(), "{name}: {:?}\n{}", o.termination, log(&o));

        let own: Vec<String> = drv.outputs.values().cloned().collect();
        let candidates: Vec<String> = closure.iter().cloned().chain(own.iter().cloned()).collect();
        for (out_name, path) in &drv.outputs {
            let host = store.join(Path::new(path).file_name().unwrap());
            let rows = self.v.nar.get(path).unwrap_or_else(|| panic!("{name}.{out_name}: no recorded NAR"));
            let got = nar_hash_of(&host);
            assert_eq!(got, rows[0].nar_hash, "{name}.{out_name}: NAR hash differs from Nix's");
            let refs = scan_references(&host, &candidates).unwrap();
            let want: BTreeSet<String> = rows[0].references.iter().cloned().collect();
            if !drv.fixed {
                assert_eq!(refs, want, "{name}.{out_name}: references differ from Nix's");
            }
            self.built.insert(path.clone(), host);
            checked += 1;
        }
        checked
    }
}

#[tokio::test]
async fn builds_every_deterministic_vector_bit_identically() {
    let names: Vec<String> = tsv(&vectors().join("drv/index.tsv"))
        .into_iter()
        .map(|r| r[0].clone())
        // Unreproducible ones (the vectors' `unrepro-` convention) cannot match, and a derivation
        // whose JSON is not UTF-8 cannot be loaded from its JSON.
        .filter(|n| !n.starts_with("unrepro-"))
        .filter(|n| {
            std::fs::read(vectors().join("drv").join(format!("{n}.json")))
                .is_ok_and(|j| std::str::from_utf8(&j).is_ok())
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let mut b = VectorBuilder::new();
    let mut outputs = 0;
    let t = Instant::now();
    for name in &names {
        outputs += b.build(name).await;
    }
    eprintln!("built {} derivations, {outputs} outputs checked, in {:?}", b.count, t.elapsed());
    // Every recorded output of a built derivation was checked (twins share an output path).
    assert!(outputs >= names.len(), "{outputs} outputs for {} derivations", names.len());
}
