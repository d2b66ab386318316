//! Helpers of the `mesh_*` tests: a local mesh of real `buildmesh node` processes on loopback
//! (no mDNS, every node bootstrapped to the first, every key trusted, quorum 2, short timers).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StorePath;

#[path = "../node_support/mod.rs"]
pub mod node_support;

pub use node_support::*;

pub mod answering;
pub mod intruder;
pub mod natns;
pub mod netns;
pub mod wan;

/// The `[mesh]` timers of the tests (seconds instead of minutes).
pub const FAST_MESH: &str = buildmesh::cli::demo::DEMO_MESH;

/// The key seed of node `i` of the cluster in `dir`: distinct per cluster, so that clusters of
/// tests running at once in one test binary never share a peer id.
pub fn key_seed(dir: &Path, i: usize) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update(&(i as u64).to_le_bytes());
    *h.finalize().as_bytes()
}

/// The command line of one mesh test node: the `[mesh]` configuration file, its key, quorum 2,
/// 2 build slots, no mDNS and `--trusted-key` for each of `trusted`; more flags with
/// [`NodeArgs::args`]. [`Cluster`] starts its nodes with it, and so do tests that lay out their
/// nodes themselves (`mesh_nat`).
#[derive(Debug, Clone)]
pub struct NodeArgs(Vec<String>);

impl NodeArgs {
    pub fn new(config: &Path, key: &Path, trusted: &[NodeKey]) -> NodeArgs {
        let mut args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--quorum".into(),
            "2".into(),
            "--slots".into(),
            "2".into(),
            "--no-mdns".into(),
        ];
        for k in trusted {
            args.push("--trusted-key".into());
            args.push(k.nix_public_key().to_string());
        }
        NodeArgs(args)
    }

    /// Another quorum than 2 (`--quorum q`).
    pub fn quorum(mut self, q: usize) -> NodeArgs {
        let at = self.0.iter().position(|a| a == "--quorum").expect("--quorum") + 1;
        self.0[at] = q.to_string();
        self
    }

    /// These flags after the ones so far.
    pub fn args<S: Into<String>>(mut self, more: impl IntoIterator<Item = S>) -> NodeArgs {
        self.0.extend(more.into_iter().map(Into::into));
        self
    }

    /// The flags with every `from` replaced by `to`.
    pub fn replaced(mut self, from: &str, to: &str) -> NodeArgs {
        for a in &mut self.0 {
            if a == from {
                *a = to.to_string();
            }
        }
        self
    }

    fn refs(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }

    /// Start the node on loopback with the data dir `data`.
    pub fn start(&self, data: &Path) -> NodeProc {
        NodeProc::start(data, &self.refs())
    }

    /// Start the node through `wrapper` (a network namespace), its API on `http`, listening on
    /// `listen` ([`NodeProc::start_with`]).
    pub fn start_with(&self, data: &Path, wrapper: &[String], http: &str, listen: &str) -> NodeProc {
        NodeProc::start_with(data, wrapper, http, listen, &self.refs())
    }
}

/// Keys of the cluster in `dir` (picked among its seeds in order) with `per_shard` in each of
/// `shards` shards.
pub fn sharded_keys(dir: &Path, per_shard: usize, shards: u32) -> Vec<NodeKey> {
    let mut count = vec![0usize; shards as usize];
    let mut keys = Vec::new();
    for j in 0.. {
        if keys.len() == per_shard * shards as usize {
            break;
        }
        let k = NodeKey::from_seed(&format!("mesh-test-{j}"), key_seed(dir, j)).unwrap();
        let s = buildmesh_protocol::mesh::shard::node_shard(&k.node_id(), shards) as usize;
        if count[s] < per_shard {
            count[s] += 1;
            keys.push(k);
        }
    }
    keys
}

/// A running local mesh.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Option<NodeProc>>,
    pub keys: Vec<NodeKey>,
    pub urls: Vec<String>,
    pub peer_ids: Vec<String>,
    pub config: PathBuf,
    pub bootstrap: String,
    extra: Vec<String>,
    /// When set, every node runs in its own network namespace.
    pub netns: Option<netns::Netns>,
    /// Whether every node trusts every node's key (`false`: each trusts only itself).
    pub trust_each_other: bool,
    /// Flags of single nodes, after `extra` ([`Cluster::start_each`]).
    pub node_extra: BTreeMap<usize, Vec<String>>,
}

impl Cluster {
    /// Start `n` nodes in `dir` (node 0 first, the others bootstrapped to it), each with `extra`
    /// flags, and wait until every node sees every other one in its view.
    pub fn start(dir: &Path, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(dir, n, extra, FAST_MESH, None)
    }

    /// Like [`Cluster::start`] with another `[mesh]` configuration.
    pub fn start_with_mesh(dir: &Path, n: usize, extra: &[&str], mesh: &str) -> Cluster {
        Cluster::start_with(dir, n, extra, mesh, None)
    }

    /// Like [`Cluster::start`] with flags per node: node `i` gets `each[i]` (and the cluster has
    /// `each.len()` nodes).
    pub fn start_each(dir: &Path, each: &[&[&str]]) -> Cluster {
        let node_extra = each.iter().enumerate().map(|(i, f)| (i, f.iter().map(|s| s.to_string()).collect())).collect();
        Cluster::start_full(dir, each.len(), &[], FAST_MESH, None, true, node_extra)
    }

    /// Like [`Cluster::start`] without `--trusted-key`: each node trusts only its own key.
    pub fn start_trusting_nobody(dir: &Path, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full(dir, n, extra, FAST_MESH, None, false, BTreeMap::new())
    }

    /// Like [`Cluster::start`], each node in its own network namespace of `netns` (mesh traffic
    /// over a bridge, the API over a control link).
    pub fn start_in_namespaces(dir: &Path, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(dir, n, extra, FAST_MESH, Some(netns::Netns::new(n)))
    }

    fn start_with(dir: &Path, n: usize, extra: &[&str], mesh: &str, netns: Option<netns::Netns>) -> Cluster {
        Cluster::start_full(dir, n, extra, mesh, netns, true, BTreeMap::new())
    }

    /// Like [`Cluster::start`] with `--mesh-shards shards` and `per_shard` nodes in each shard
    /// (keys picked among the cluster's seeds so that the shards are even); waits until every
    /// node sees its shard's `per_shard` members.
    pub fn start_sharded(dir: &Path, per_shard: usize, shards: u32, extra: &[&str]) -> Cluster {
        let keys = sharded_keys(dir, per_shard, shards);
        let mut flags: Vec<&str> = vec!["--mesh-shards"];
        let shards_text = shards.to_string();
        flags.push(&shards_text);
        flags.extend_from_slice(extra);
        Cluster::start_keys(dir, keys, &flags, FAST_MESH, None, true, BTreeMap::new(), per_shard)
    }

    /// Like [`Cluster::start_sharded`] with the `[mesh]` configuration `mesh`, without waiting
    /// for the views (the caller waits for what it expects).
    pub fn start_sharded_with_mesh(dir: &Path, per_shard: usize, shards: u32, extra: &[&str], mesh: &str) -> Cluster {
        let keys = sharded_keys(dir, per_shard, shards);
        let shards_text = shards.to_string();
        let mut flags: Vec<&str> = vec!["--mesh-shards", &shards_text];
        flags.extend_from_slice(extra);
        Cluster::start_keys(dir, keys, &flags, mesh, None, true, BTreeMap::new(), 0)
    }

    /// Like [`Cluster::start_sharded_with_mesh`] with the keys `keys` (see [`sharded_keys`]),
    /// each node in its own namespace of `netns`, where the caller may have cut paths first.
    pub fn start_sharded_in(dir: &Path, keys: Vec<NodeKey>, shards: u32, mesh: &str, netns: netns::Netns) -> Cluster {
        let shards_text = shards.to_string();
        Cluster::start_keys(dir, keys, &["--mesh-shards", &shards_text], mesh, Some(netns), true, BTreeMap::new(), 0)
    }

    fn start_full(
        dir: &Path,
        n: usize,
        extra: &[&str],
        mesh: &str,
        netns: Option<netns::Netns>,
        trust_each_other: bool,
        node_extra: BTreeMap<usize, Vec<String>>,
    ) -> Cluster {
        let keys: Vec<NodeKey> =
            (0..n).map(|i| NodeKey::from_seed(&format!("mesh-test-{i}"), key_seed(dir, i)).unwrap()).collect();
        Cluster::start_keys(dir, keys, extra, mesh, netns, trust_each_other, node_extra, n)
    }

    /// Start one node per key of `keys`; wait until each sees `members` members (0: no wait).
    #[allow(clippy::too_many_arguments)]
    fn start_keys(
        dir: &Path,
        keys: Vec<NodeKey>,
        extra: &[&str],
        mesh: &str,
        netns: Option<netns::Netns>,
        trust_each_other: bool,
        node_extra: BTreeMap<usize, Vec<String>>,
        members: usize,
    ) -> Cluster {
        let n = keys.len();
        let config = dir.join("mesh.toml");
        std::fs::write(&config, mesh).unwrap();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            keys,
            urls: Vec::new(),
            peer_ids: Vec::new(),
            config,
            bootstrap: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
            trust_each_other,
            node_extra,
        };
        for i in 0..n {
            let node = c.spawn(i);
            c.urls.push(node.url.clone());
            c.peer_ids.push(node.peer_id.clone());
            if i == 0 {
                c.bootstrap = libp2p_address(&node.url);
            }
            c.nodes.push(Some(node));
        }
        if members > 0 {
            c.wait_members(members, Duration::from_secs(30));
        }
        c
    }

    fn key_file(&self, i: usize) -> PathBuf {
        let path = self.dir.join(format!("key-{i}"));
        if !path.exists() {
            std::fs::write(&path, self.keys[i].to_file_string()).unwrap();
        }
        path
    }

    /// Start (or restart) node `i` with its data dir, key, the mesh config and (unless
    /// `trust_each_other` is off) every key trusted.
    pub fn spawn(&mut self, i: usize) -> NodeProc {
        let key = self.key_file(i);
        let data = self.dir.join(format!("node{i}"));
        let trusted = if self.trust_each_other { &self.keys[..] } else { &[] };
        let mut args: Vec<String> = Vec::new();
        // An empty `bootstrap` (set by a test) starts a node without a bootstrap address.
        if i > 0 && !self.bootstrap.is_empty() {
            args.push("--bootstrap".into());
            args.push(self.bootstrap.clone());
        }
        if let Some(ns) = &self.netns {
            // The API is reached over the control link, not the namespace's loopback: one
            // listener serves everything there (`admin_http` = `http`).
            args.push("--admin-http".into());
            args.push(ns.http(i));
        }
        args.extend(self.extra.iter().cloned());
        args.extend(self.node_extra.get(&i).into_iter().flatten().cloned());
        let args = NodeArgs::new(&self.config, &key, trusted).args(args);
        match &self.netns {
            Some(ns) => args.start_with(&data, &ns.wrapper(i), &ns.http(i), &ns.listen(i)),
            None => args.start(&data),
        }
    }

    /// Restart a stopped node (node 0 comes back on a new port: later nodes bootstrap to that).
    pub fn restart(&mut self, i: usize) {
        let node = self.spawn(i);
        self.urls[i] = node.url.clone();
        if i == 0 {
            self.bootstrap = libp2p_address(&node.url);
        }
        self.nodes[i] = Some(node);
    }

    pub fn node(&self, i: usize) -> &NodeProc {
        self.nodes[i].as_ref().expect("node running")
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    /// Wait until every running node has `n` members in its view; on a timeout, panic with what
    /// every node sees (its members, its connected peers) and the tail of its log.
    pub fn wait_members(&self, n: usize, limit: Duration) {
        for i in self.running() {
            let url = self.urls[i].clone();
            let deadline = Instant::now() + limit;
            loop {
                let (s, j) = get_json(&format!("{url}/api/v1/mesh"));
                if s == 200 && j["members"].as_u64() == Some(n as u64) {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "timed out after {limit:?} waiting for node {i} to see {n} members\n{}{}",
                        self.views(),
                        self.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Each running node's member count and connected peers (for failure messages).
    pub fn views(&self) -> String {
        let mut s = String::new();
        for i in self.running() {
            let (_, mesh) = get_json(&format!("{}/api/v1/mesh", self.urls[i]));
            let (_, peers) = get_json(&format!("{}/api/v1/peers", self.urls[i]));
            s.push_str(&format!(
                "node {i} ({}): members {} mesh {mesh}\n  peers {peers}\n",
                self.peer_ids[i], mesh["members"]
            ));
        }
        s
    }

    pub fn mesh(&self, i: usize) -> serde_json::Value {
        get_json(&format!("{}/api/v1/mesh", self.urls[i])).1
    }

    /// Node `i`'s `GET /metrics` (Prometheus text): each series (name with labels) and its value.
    pub fn metric_series(&self, i: usize) -> BTreeMap<String, f64> {
        let (status, body) = get(&format!("{}/metrics", self.urls[i]));
        assert_eq!(status, 200, "GET /metrics on node {i}");
        String::from_utf8(body)
            .expect("UTF-8 metrics")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("`series value` line");
                (series.to_string(), value.parse::<f64>().unwrap_or(0.0))
            })
            .collect()
    }

    /// Node `i`'s metrics, each summed over the series whose labels contain `label` ("" for all).
    pub fn metrics(&self, i: usize, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (series, value) in self.metric_series(i) {
            let (name, labels) = series.split_once('{').unwrap_or((&series, ""));
            if labels.contains(label) {
                *out.entry(name.to_string()).or_insert(0.0) += value;
            }
        }
        out
    }

    /// The builders (peer ids) of every attestation of `path` that node `i` holds, by NarHash.
    pub fn attesters(&self, i: usize, path: &str) -> BTreeMap<String, BTreeSet<String>> {
        let (s, j) = get_json(&format!("{}/api/v1/attestations?path={}", self.urls[i], path));
        assert_eq!(s, 200, "{j}");
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for a in j.as_array().unwrap() {
            out.entry(a["nar_hash"].as_str().unwrap().to_string())
                .or_default()
                .insert(a["peer_id"].as_str().unwrap().to_string());
        }
        out
    }

    /// The message ids of every attestation node `i` holds (from the export).
    pub fn attestation_ids(&self, i: usize) -> BTreeSet<String> {
        let (s, body) = get(&format!("{}/api/v1/attestations?format=jsonl", self.urls[i]));
        assert_eq!(s, 200);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.get("message_id").or_else(|| v.get("id")).and_then(|x| x.as_str()).unwrap_or(l).to_string()
            })
            .collect()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                let log = n.log_text();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                s.push_str(&format!("\n--- node {i} ({}) ---\n", n.peer_id));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// `buildmesh submit --api <node i> --from DIR --replicas K DRV...` (no wait).
    pub fn submit(&self, i: usize, from: &Path, drvs: &[String], replicas: u32) {
        let mut args: Vec<String> = vec![
            "submit".into(),
            "--api".into(),
            self.urls[i].clone(),
            "--from".into(),
            from.display().to_string(),
            "--replicas".into(),
            replicas.to_string(),
            "--json".into(),
        ];
        args.extend(drvs.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (st, out, err) = cli(&refs);
        assert!(st.success(), "submit failed: {out}\n{err}\n{}", self.logs());
    }

    /// Node `i`'s API token (`DATA/api.token`).
    pub fn token(&self, i: usize) -> String {
        token_of(&self.dir.join(format!("node{i}"))).unwrap_or_else(|| panic!("node {i} has no api.token"))
    }

    /// Block (or unblock) `peer` on node `i` through the API.
    pub fn block(&self, i: usize, peer: &str, blocked: bool) {
        let action = if blocked { "block" } else { "unblock" };
        let url = format!("{}/api/v1/peers/{peer}/{action}", self.urls[i]);
        let (status, body) = post_with(&url, Some(&self.token(i)));
        assert!((200..300).contains(&status), "{action} {peer} on node {i}: {}", String::from_utf8_lossy(&body));
    }
}

/// A node's first libp2p address (`/ip4/…/tcp/…/p2p/<id>`), from its API.
pub fn libp2p_address(url: &str) -> String {
    wait_for("a node's libp2p address", Duration::from_secs(20), || {
        let (s, j) = get_json(&format!("{url}/api/v1/node"));
        (s == 200)
            .then(|| j["addresses"].as_array().and_then(|a| a.first()).and_then(|a| a.as_str()).map(String::from))
            .flatten()
    })
}

/// The vector derivations by name: (drv path, output name -> output path).
pub fn vector_drvs() -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let mut out: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for r in tsv(&vectors().join("drv/index.tsv")) {
        let e = out.entry(r[0].clone()).or_insert_with(|| (r[1].clone(), BTreeMap::new()));
        e.1.insert(r[2].clone(), r[3].clone());
    }
    out
}

pub fn base(p: &str) -> StorePath {
    StorePath::from_basename(p.rsplit('/').next().unwrap()).unwrap()
}

/// The partition scenario shared by the partition tests: `cut(true)` splits the mesh into
/// `left` and `right` (by whatever means), each side's view shrinks to itself and each side
/// builds a job of its own with k = 2 that the other side cannot see; `cut(false)` heals it and
/// every node ends with the same attestation set, both jobs attested by 2 builders everywhere.
/// Returns the derivation directory (for further jobs).
pub fn partition_and_heal(c: &Cluster, dir: &Path, left: &[usize], right: &[usize], cut: impl Fn(bool)) -> Drvs {
    cut(true);
    for (side, members) in [(left, left.len()), (right, right.len())] {
        for &i in side {
            let url = c.urls[i].clone();
            wait_for(&format!("node {i} to see {members} members"), Duration::from_secs(30), || {
                (get_json(&format!("{url}/api/v1/mesh")).1["members"] == members).then_some(())
            });
        }
    }

    let mut d = Drvs::new(dir);
    let (x, x_out) = d.add("left-side-job", "echo left > $out", &[]);
    let (y, y_out) = d.add("right-side-job", "echo right > $out", &[]);
    c.submit(left[0], dir, &[sd().display(&x)], 2);
    c.submit(right[0], dir, &[sd().display(&y)], 2);
    wait_state(&c.urls[left[0]], &x, "done", Duration::from_secs(60));
    wait_state(&c.urls[right[0]], &y, "done", Duration::from_secs(60));
    let (x_out, y_out) = (sd().display(&x_out), sd().display(&y_out));
    assert!(c.attesters(left[0], &y_out).is_empty(), "the left side cannot know the right side's result yet");
    assert!(c.attesters(right[1], &x_out).is_empty(), "the right side cannot know the left side's result yet");

    cut(false);
    let n = left.len() + right.len();
    c.wait_members(n, Duration::from_secs(60));
    let all: Vec<BTreeSet<String>> =
        wait_for("every node to hold the same attestations", Duration::from_secs(60), || {
            let sets: Vec<BTreeSet<String>> = (0..n).map(|i| c.attestation_ids(i)).collect();
            (sets.iter().all(|s| s == &sets[0]) && sets[0].len() >= 4).then_some(sets)
        });
    assert!(all[0].len() >= 4, "{:?}", all[0]);
    for i in 0..n {
        let bx: BTreeSet<String> = c.attesters(i, &x_out).values().flatten().cloned().collect();
        let by: BTreeSet<String> = c.attesters(i, &y_out).values().flatten().cloned().collect();
        assert!(bx.len() >= 2 && by.len() >= 2, "node {i}: {bx:?} {by:?}");
    }
    d
}
