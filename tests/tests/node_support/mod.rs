//! Helpers of the `node_*` integration tests: real `buildmesh node` processes on free ports with
//! temp data dirs, HTTP helpers, and small derivations made on the fly (builders that sleep or
//! fail), written as `.drv` files for `buildmesh submit --from`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use buildmesh_protocol::derivation::{Derivation, DrvSet, Output};
use buildmesh_protocol::store_path::{StoreDir, StorePath};

pub fn bin() -> &'static str {
    buildmesh_tests::buildmesh_bin!()
}

pub fn vectors() -> PathBuf {
    buildmesh_tests::nix_vectors()
}

pub fn sd() -> StoreDir {
    StoreDir::nix()
}

/// The API token in `DATA/api.token` (what state-changing requests need), once the node created it.
pub fn token_of(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("api.token")).ok().map(|t| t.trim().to_string())
}

/// Data dirs of the nodes this test process started, by URL: [`cli`] sends the token of the node
/// its `--api` names.
static DATA_DIRS: std::sync::Mutex<BTreeMap<String, PathBuf>> = std::sync::Mutex::new(BTreeMap::new());

/// The token of the node at `url`, when this process started it.
pub fn token_for(url: &str) -> Option<String> {
    let dirs = DATA_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    dirs.get(url.trim_end_matches('/')).and_then(|d| token_of(d))
}

/// A `buildmesh node` process; killed (SIGKILL) when dropped.
pub struct NodeProc {
    pub child: Option<Child>,
    pub url: String,
    pub public_key: String,
    pub peer_id: String,
    pub log: PathBuf,
    /// Its data dir.
    pub data: PathBuf,
}

impl NodeProc {
    /// Start `buildmesh node --data-dir DATA --http 127.0.0.1:0 EXTRA...` and wait for its start
    /// lines on stdout. Its stderr goes to `DATA/../node-<n>.log`.
    pub fn start(data: &Path, extra: &[&str]) -> NodeProc {
        match NodeProc::try_start(data, extra) {
            Ok(n) => n,
            Err((msg, log)) => panic!("node did not start: {msg}\n--- log ---\n{log}"),
        }
    }

    /// Like [`NodeProc::start`]; on failure returns the reason and the log.
    pub fn try_start(data: &Path, extra: &[&str]) -> Result<NodeProc, (String, String)> {
        NodeProc::try_start_with(data, &[], "127.0.0.1:0", "/ip4/127.0.0.1/tcp/0", extra)
    }

    /// Like [`NodeProc::start`] with the command run under `wrapper` (e.g. `ip netns exec NS`,
    /// which execs it, so the pid is the node's) and the given `--http` and `--listen`.
    pub fn start_with(data: &Path, wrapper: &[String], http: &str, listen: &str, extra: &[&str]) -> NodeProc {
        match NodeProc::try_start_with(data, wrapper, http, listen, extra) {
            Ok(n) => n,
            Err((msg, log)) => panic!("node did not start: {msg}\n--- log ---\n{log}"),
        }
    }

    fn try_start_with(
        data: &Path,
        wrapper: &[String],
        http: &str,
        listen: &str,
        extra: &[&str],
    ) -> Result<NodeProc, (String, String)> {
        let parent = data.parent().expect("data dir has a parent");
        let mut n = 0;
        let log = loop {
            let l = parent.join(format!("node-{n}.log"));
            if !l.exists() {
                break l;
            }
            n += 1;
        };
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["node", "--data-dir"])
            .arg(data)
            .args(["--http", http, "--mdns", "false", "--listen", listen])
            .args(extra)
            // `BUILDMESH_TEST_LOG` (e.g. `info,libp2p_dcutr=debug`) lets one look closer at a run.
            .env("BUILDMESH_LOG", std::env::var("BUILDMESH_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn buildmesh node");
        let mut child = child;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut fields = BTreeMap::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((k, v)) = line.split_once(": ") {
                    fields.insert(k.to_string(), v.to_string());
                }
                if fields.contains_key("http") && fields.contains_key("public-key") && fields.contains_key("peer-id") {
                    let _ = tx.send(fields.clone());
                    fields.clear();
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(f) => {
                let url = f["http"].clone();
                DATA_DIRS.lock().unwrap_or_else(|e| e.into_inner()).insert(url.clone(), data.to_path_buf());
                Ok(NodeProc {
                    child: Some(child),
                    url,
                    public_key: f["public-key"].clone(),
                    peer_id: f["peer-id"].clone(),
                    log,
                    data: data.to_path_buf(),
                })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err((format!("no start lines (exit {status:?})"), std::fs::read_to_string(&log).unwrap_or_default()))
            }
        }
    }

    /// Its API token (`DATA/api.token`, created at its first start).
    pub fn token(&self) -> String {
        token_of(&self.data).unwrap_or_else(|| panic!("no api.token in {}", self.data.display()))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `signal` and wait (at most `within`) for the exit.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal, within: Duration) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::kill(pid, signal).expect("send signal");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not exit within {within:?} after {signal}\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// GET `url`, returning status and body.
pub fn get(url: &str) -> (u16, Vec<u8>) {
    let r = http().get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.bytes().expect("body").to_vec())
}

pub fn get_json(url: &str) -> (u16, serde_json::Value) {
    let (s, b) = get(url);
    (
        s,
        serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {}", String::from_utf8_lossy(&b))),
    )
}

/// Poll `f` every 50 ms until it returns `Some`, at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state of a build through the API (`None` when unknown).
pub fn build_state(url: &str, drv: &StorePath) -> Option<String> {
    let (s, j) = get_json(&format!("{url}/api/v1/builds/{drv}"));
    (s == 200).then(|| j["state"].as_str().expect("state").to_string())
}

pub fn build_json(url: &str, drv: &StorePath) -> serde_json::Value {
    let (s, j) = get_json(&format!("{url}/api/v1/builds/{drv}"));
    assert_eq!(s, 200, "{j}");
    j
}

/// Wait until the build of `drv` is in `state`.
pub fn wait_state(url: &str, drv: &StorePath, state: &str, limit: Duration) {
    wait_for(&format!("{drv} to be {state}"), limit, || {
        (build_state(url, drv).as_deref() == Some(state)).then_some(())
    });
}

/// POST `url` (no body) with the node's API token, returning status and body.
pub fn post_with(url: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut r = http().post(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.bytes().expect("body").to_vec())
}

/// Run `buildmesh ARGS` as the operator of the node its `--api URL` names: with that node's API
/// token in `BUILDMESH_TOKEN` when this process started it. Returns (status, stdout, stderr).
pub fn cli(args: &[&str]) -> (ExitStatus, String, String) {
    let token = args.windows(2).find(|w| w[0] == "--api").and_then(|w| token_for(w[1]));
    let envs: Vec<(&str, &str)> = token.as_deref().map(|t| ("BUILDMESH_TOKEN", t)).into_iter().collect();
    cli_env(args, &envs)
}

/// Run `buildmesh ARGS` with exactly the given token-related environment (`BUILDMESH_TOKEN`,
/// `BUILDMESH_TOKEN_FILE`, `BUILDMESH_CONFIG` removed unless given) plus `envs`.
pub fn cli_env(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut c = Command::new(bin());
    c.args(args).env("BUILDMESH_LOG", "warn");
    for k in ["BUILDMESH_TOKEN", "BUILDMESH_TOKEN_FILE", "BUILDMESH_CONFIG"] {
        c.env_remove(k);
    }
    c.envs(envs.iter().copied());
    let out = c.output().expect("run buildmesh");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Derivations made on the fly, written as `<name>.drv` files into `dir`.
pub struct Drvs {
    pub dir: PathBuf,
    set: DrvSet,
    pub paths: BTreeMap<String, (StorePath, StorePath)>,
}

impl Drvs {
    pub fn new(dir: &Path) -> Drvs {
        std::fs::create_dir_all(dir).expect("drv dir");
        Drvs { dir: dir.to_path_buf(), set: DrvSet::new(sd()), paths: BTreeMap::new() }
    }

    /// A derivation `name` running `/bin/sh -c SCRIPT` that needs the `out` of each of `inputs`
    /// (available to the script as `$input0`, `$input1`, ...). Returns (drv path, out path).
    pub fn add(&mut self, name: &str, script: &str, inputs: &[&str]) -> (StorePath, StorePath) {
        self.add_with_sources(name, script, inputs, &[])
    }

    /// Like [`Drvs::add`], with input sources too (available as `$src0`, `$src1`, ...).
    pub fn add_with_sources(
        &mut self,
        name: &str,
        script: &str,
        inputs: &[&str],
        sources: &[StorePath],
    ) -> (StorePath, StorePath) {
        self.add_full(name, script, inputs, sources, &[])
    }

    /// Like [`Drvs::add`], with `requiredSystemFeatures` (placement only designates nodes that
    /// offer every one of them).
    pub fn add_requiring(
        &mut self,
        name: &str,
        script: &str,
        inputs: &[&str],
        features: &[&str],
    ) -> (StorePath, StorePath) {
        self.add_full(name, script, inputs, &[], features)
    }

    fn add_full(
        &mut self,
        name: &str,
        script: &str,
        inputs: &[&str],
        sources: &[StorePath],
        features: &[&str],
    ) -> (StorePath, StorePath) {
        let mut d = Derivation {
            system: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![b"-c".to_vec(), script.as_bytes().to_vec()],
            ..Default::default()
        };
        d.outputs.insert("out".into(), Output::input_addressed(None));
        for (k, v) in
            [("builder", "/bin/sh"), ("name", name), ("system", "x86_64-linux"), ("PATH", "/usr/bin:/bin"), ("out", "")]
        {
            d.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        for (i, input) in inputs.iter().enumerate() {
            let (drv, out) = self.paths[*input].clone();
            d.input_drvs.insert(drv, BTreeSet::from(["out".to_string()]));
            d.env.insert(format!("input{i}").into_bytes(), sd().display(&out).into_bytes());
        }
        if !features.is_empty() {
            d.env.insert(b"requiredSystemFeatures".to_vec(), features.join(" ").into_bytes());
        }
        for (i, src) in sources.iter().enumerate() {
            d.input_srcs.insert(src.clone());
            d.env.insert(format!("src{i}").into_bytes(), sd().display(src).into_bytes());
        }
        self.set.fill_in(&mut d, name).expect("output paths");
        let drv = self.set.insert(name.to_string(), d.clone()).expect("drv path");
        let out = d.outputs["out"].path.clone().expect("out path");
        std::fs::write(self.dir.join(format!("{name}.drv")), d.to_aterm(&sd())).expect("write drv");
        self.paths.insert(name.to_string(), (drv.clone(), out.clone()));
        (drv, out)
    }

    pub fn drv(&self, name: &str) -> StorePath {
        self.paths[name].0.clone()
    }

    pub fn out(&self, name: &str) -> StorePath {
        self.paths[name].1.clone()
    }
}

/// `buildmesh submit --api URL --from DIR DRV...` (without waiting).
pub fn submit(url: &str, dir: &Path, drvs: &[StorePath], priority: i32) {
    let mut args: Vec<String> = vec![
        "submit".into(),
        "--api".into(),
        url.into(),
        "--from".into(),
        dir.display().to_string(),
        "--priority".into(),
        priority.to_string(),
        "--json".into(),
    ];
    args.extend(drvs.iter().map(|d| sd().display(d)));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = cli(&refs);
    assert!(status.success(), "submit failed: {out}\n{err}");
}

#[allow(unused_imports)] // not every test that includes this module reads a TSV
pub use buildmesh_tests::tsv;
