//! Homes behind NAT routers, in network namespaces: a "public" network (a bridge, 10.x.200.0/24)
//! with public hosts on it, and homes, each a host behind its own router namespace that
//! masquerades the home's private network (10.x.(100+h).0/24) with nftables and drops unsolicited
//! packets from the public side, as a home router does. A home's NAT is either
//! [`NatKind::Cone`] (Linux masquerade keeps the source port: one mapping per host port, which
//! hole punching can use) or [`NatKind::Symmetric`] (`masquerade fully-random`: a new random port
//! per connection, so the address a peer observed is useless to anyone else, and hole punching
//! fails). Every host also gets a point-to-point "control" link to the test's namespace for its
//! HTTP API. Needs root, `ip` and `nft`; everything is removed on drop.
//!
//! Over a WAN ([`NatNet::with_wan`]): the public network is then not a bridge but `wan.rs`'s
//! user-space emulator, each public host and each router holding a TUN device instead of a veth
//! on the bridge, so that every packet between them gets the model's one-way delay, jitter and
//! loss (e.g. [`WanModel::access_links`]: one lossy, delayed access link per home).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use buildmesh_protocol::identity::NodeKey;
pub use buildmesh_tests::{ip, ip_program};

use super::wan::{Wan, WanEnd, WanModel};
use super::{NodeArgs, NodeProc, get, get_json, key_seed, libp2p_address, wait_for};

/// How a home router maps ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping (Linux masquerade's port preservation): punchable.
    Cone,
    /// A random port per connection (`masquerade fully-random`): not punchable.
    Symmetric,
}

/// One host of the topology.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub namespace: String,
    /// Its own address (public for a public host, private in its home otherwise).
    pub ip: String,
    /// `None` for a public host, else the index of its home.
    pub home: Option<usize>,
    /// Its end of the control link (`--http`), port 0.
    pub http: String,
}

/// The namespaces, bridge and routers of one test.
pub struct NatNet {
    tag: String,
    net: u8,
    /// Every host: the public ones first, then one per home, in the order given.
    pub hosts: Vec<Host>,
    homes: Vec<NatKind>,
    /// The emulated public network, if any (else the bridge).
    wan: Option<Wan>,
    /// Held while the network exists: names and the 10.x range derive from the process id, so
    /// two `NatNet`s of one test binary (tests run in parallel threads) would collide.
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Serialises the `NatNet`s of one process (see `NatNet::_one_at_a_time`).
static NAT_NETS: Mutex<()> = Mutex::new(());

fn nft_program() -> String {
    for p in ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nft".to_string()
}

/// Runs `prog args` in namespace `ns`; panics with its stderr on failure.
fn in_ns(ns: &str, prog: &str, args: &[&str]) {
    let out = Command::new(ip_program()).args(["netns", "exec", ns, prog]).args(args).output().expect("ip netns exec");
    assert!(out.status.success(), "{ns}: {prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl NatNet {
    /// `public` hosts on the public network and one host in each home, behind a router of the
    /// given kind.
    pub fn new(public: usize, homes: &[NatKind]) -> NatNet {
        NatNet::create(public, homes, None)
    }

    /// [`NatNet::new`] with the public network emulated over a WAN: the public hosts in region 0
    /// of `model`, home `h`'s router in region `h + 1` (`model` has `homes.len() + 1` regions,
    /// as [`WanModel::access_links`] makes).
    pub fn with_wan(public: usize, homes: &[NatKind], model: WanModel) -> NatNet {
        assert_eq!(model.regions.len(), homes.len() + 1, "region 0 public, then one per home");
        NatNet::create(public, homes, Some(model))
    }

    fn create(public: usize, homes: &[NatKind], model: Option<WanModel>) -> NatNet {
        assert!(public + homes.len() < 90 && homes.len() < 50);
        // A test that panicked while holding it dropped its network first: go on.
        let serial = NAT_NETS.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        let routes =
            Command::new(ip_program()).args(["-4", "route", "show", "table", "all"]).output().expect("ip route");
        let routes = String::from_utf8_lossy(&routes.stdout).to_string();
        // Another range than `netns::Netns` picks for the same pid.
        let net = (0..100)
            .map(|k| (100 + (pid + 50 + k) % 100) as u8)
            .find(|net| !routes.contains(&format!("10.{net}.")))
            .expect("a free 10.x.0.0/16");
        let mut n = NatNet {
            tag: super::netns::net_tag(),
            net,
            hosts: Vec::new(),
            homes: homes.to_vec(),
            wan: None,
            _one_at_a_time: serial,
        };
        ip(&["link", "add", &n.bridge(), "type", "bridge"]);
        ip(&["link", "set", &n.bridge(), "up"]);
        // The public side of each public host and router: a port of the bridge, or over a WAN a
        // TUN device of the emulator (`ends`, in region `regions`).
        let (mut ends, mut regions) = (Vec::new(), Vec::new());
        let mut plug = |n: &NatNet, ns: &str, port: String, inner: &str, addr: &str, region: usize| match model {
            Some(_) => {
                let end = WanEnd { namespace: ns.into(), device: inner.into(), ip: addr.into() };
                ends.push(end);
                regions.push(region);
            }
            None => n.plug_public(ns, &port, inner, addr),
        };
        for i in 0..public {
            let ns = n.host_ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let addr = format!("10.{}.200.{}", n.net, i + 1);
            plug(&n, &ns, format!("bm{}p{i}", n.tag), "eth0", &addr, 0);
            n.hosts.push(Host { namespace: ns, ip: addr, home: None, http: String::new() });
        }
        for (h, kind) in homes.iter().enumerate() {
            let router = n.router_namespace(h);
            ip(&["netns", "add", &router]);
            ip(&["-n", &router, "link", "set", "lo", "up"]);
            let wan = format!("10.{}.200.{}", n.net, 100 + h);
            plug(&n, &router, format!("bm{}w{h}", n.tag), "wan0", &wan, h + 1);
            let i = public + h;
            let ns = n.host_ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // The home's link: eth0 in the host, lan0 in the router.
            ip(&["-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            let lan = format!("10.{}.{}", n.net, 100 + h);
            ip(&["-n", &router, "addr", "add", &format!("{lan}.1/24"), "dev", "lan0"]);
            ip(&["-n", &router, "link", "set", "lan0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{lan}.2/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &format!("{lan}.1")]);
            in_ns(&router, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
            let masquerade = match kind {
                NatKind::Cone => "masquerade",
                NatKind::Symmetric => "masquerade fully-random",
            };
            // NAT out of wan0; from the public side only replies (and what the router itself
            // sends) get in, silently: an unsolicited SYN or datagram is dropped, not refused.
            let rules = format!(
                "table ip home {{\n\
                 chain post {{ type nat hook postrouting priority srcnat; oifname \"wan0\" {masquerade}; }}\n\
                 chain forward_filter {{ type filter hook forward priority filter; policy accept; \
                 iifname \"wan0\" ct state established,related accept; iifname \"wan0\" drop; }}\n\
                 chain inp {{ type filter hook input priority filter; policy accept; \
                 iifname \"wan0\" ct state established,related accept; iifname \"wan0\" icmp type echo-request accept; \
                 iifname \"wan0\" drop; }}\n\
                 }}\n"
            );
            let file = std::env::temp_dir().join(format!("bm-nat-{}-{h}.nft", n.tag));
            std::fs::write(&file, rules).expect("nft rules file");
            in_ns(&router, &nft_program(), &["-f", &file.display().to_string()]);
            let _ = std::fs::remove_file(&file);
            n.hosts.push(Host { namespace: ns, ip: format!("{lan}.2"), home: Some(h), http: String::new() });
        }
        for i in 0..n.hosts.len() {
            let ns = n.hosts[i].namespace.clone();
            let ctl = format!("bm{}c{i}", n.tag);
            ip(&["link", "add", &ctl, "type", "veth", "peer", "name", "ctl0", "netns", &ns]);
            ip(&["addr", "add", &format!("10.{}.{i}.2/30", n.net), "dev", &ctl]);
            ip(&["link", "set", &ctl, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.{}.{i}.1/30", n.net), "dev", "ctl0"]);
            ip(&["-n", &ns, "link", "set", "ctl0", "up"]);
            n.hosts[i].http = format!("10.{}.{i}.1:0", n.net);
        }
        n.wan = model.map(|m| Wan::start_on(&ends, &regions, m));
        n
    }

    /// The emulated public network, when made [`NatNet::with_wan`].
    pub fn wan(&self) -> Option<&Wan> {
        self.wan.as_ref()
    }

    /// A veth from `ns` (named `inner`, address `addr`/24) to a port `port` of the public bridge.
    fn plug_public(&self, ns: &str, port: &str, inner: &str, addr: &str) {
        ip(&["link", "add", port, "type", "veth", "peer", "name", inner, "netns", ns]);
        ip(&["link", "set", port, "master", &self.bridge()]);
        ip(&["link", "set", port, "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", inner]);
        ip(&["-n", ns, "link", "set", inner, "up"]);
    }

    fn bridge(&self) -> String {
        format!("bm{}pub", self.tag)
    }

    fn host_ns(&self, i: usize) -> String {
        format!("bm{}-h{i}", self.tag)
    }

    /// The router namespace of home `h` (its public side is `wan0`, its home side `lan0`).
    pub fn router_namespace(&self, h: usize) -> String {
        format!("bm{}-r{h}", self.tag)
    }

    /// The public address of home `h`'s router.
    pub fn router_ip(&self, h: usize) -> String {
        format!("10.{}.200.{}", self.net, 100 + h)
    }

    /// The command prefix that runs a program on host `i`.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec![ip_program(), "netns".into(), "exec".into(), self.hosts[i].namespace.clone()]
    }

    /// `--listen` addresses of host `i`: TCP and QUIC on its own address (ports chosen by the
    /// kernel).
    pub fn listen(&self, i: usize) -> (String, String) {
        let ip = &self.hosts[i].ip;
        (format!("/ip4/{ip}/tcp/0"), format!("/ip4/{ip}/udp/0/quic-v1"))
    }

    /// Puts the test's own namespace on the public network (an address on the bridge), so that
    /// peers made in the test process (bare libp2p swarms) reach the public hosts the way a
    /// public machine would. Returns that address; it goes with the bridge on drop.
    pub fn join_public(&self) -> String {
        assert!(self.wan.is_none(), "join_public: the public network is an emulated WAN, not the bridge");
        let addr = format!("10.{}.200.250", self.net);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", &self.bridge()]);
        addr
    }

    /// The kind of NAT of home `h`.
    pub fn kind(&self, h: usize) -> NatKind {
        self.homes[h]
    }
}

/// How the other nodes are given the relay's address (`--bootstrap`, and `--relay` in homes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAddr {
    /// Its TCP address (`/ip4/…/tcp/…/p2p/<relay>`).
    Tcp,
    /// Its QUIC address (`/ip4/…/udp/…/quic-v1/p2p/<relay>`).
    Quic,
}

/// Real nodes on a [`NatNet`]: host 0 the relay, then the other public hosts, then one per home.
pub struct NatNodes {
    /// The namespaces (removed on drop, after the nodes: fields drop in order).
    pub procs: Vec<NodeProc>,
    pub net: NatNet,
    /// Every node's key (every node trusts every key).
    pub keys: Vec<NodeKey>,
    /// The relay's address as the others were given it.
    pub relay: String,
    /// Every node's flags and data directory (for [`NatNodes::restart`]).
    started: Vec<(NodeArgs, PathBuf)>,
}

impl NatNodes {
    /// Starts one node per host of `net`, each in its namespace, listening on TCP and QUIC, with
    /// `--private-as-public` (the "public" network is 10.x) and `config` as its `mesh.toml`:
    /// host 0 is the relay (`--relay-server`), the other public hosts bootstrap to it, and each
    /// home's node bootstraps to it and reserves a slot on it (`--relay`), given its `relay`
    /// address. Keys are named `{name}-{i}`; `more(i, args)` adds host `i`'s own flags.
    pub fn start(
        dir: &Path,
        net: NatNet,
        name: &str,
        config: &str,
        relay: RelayAddr,
        more: impl Fn(usize, NodeArgs) -> NodeArgs,
    ) -> NatNodes {
        let config_file = dir.join("mesh.toml");
        std::fs::write(&config_file, config).unwrap();
        let n = net.hosts.len();
        let keys: Vec<NodeKey> =
            (0..n).map(|i| NodeKey::from_seed(&format!("{name}-{i}"), key_seed(dir, i)).unwrap()).collect();
        let mut procs: Vec<NodeProc> = Vec::new();
        let mut started = Vec::new();
        let mut relay_addr = String::new();
        for i in 0..n {
            let key = dir.join(format!("key-{i}"));
            std::fs::write(&key, keys[i].to_file_string()).unwrap();
            let (tcp, udp) = net.listen(i);
            let args = NodeArgs::new(&config_file, &key, &keys).args([
                "--listen".into(),
                udp,
                "--admin-http".into(),
                net.hosts[i].http.clone(),
                "--private-as-public".into(),
            ]);
            let args = match (i, net.hosts[i].home) {
                (0, _) => args.args(["--relay-server", "--mesh"]),
                (_, None) => args.args(["--bootstrap", relay_addr.as_str()]),
                (_, Some(_)) => args.args(["--bootstrap", relay_addr.as_str(), "--relay", relay_addr.as_str()]),
            };
            let (args, data) = (more(i, args), dir.join(format!("node{i}")));
            let p = args.start_with(&data, &net.wrapper(i), &net.hosts[i].http, &tcp);
            started.push((args, data));
            if i == 0 {
                relay_addr = libp2p_address(&p.url);
                assert!(relay_addr.contains("/tcp/"), "the relay's first address is its TCP one: {relay_addr}");
                if relay == RelayAddr::Quic {
                    relay_addr = wait_for("the relay's QUIC address", Duration::from_secs(20), || {
                        let node = get_json(&format!("{}/api/v1/node", p.url)).1;
                        node["addresses"]
                            .as_array()?
                            .iter()
                            .filter_map(|a| a.as_str())
                            .find(|a| a.contains("/quic-v1"))
                            .map(String::from)
                    });
                }
            }
            procs.push(p);
        }
        NatNodes { procs, net, keys, relay: relay_addr, started }
    }

    /// Stops node `i` (SIGTERM) and starts it again with the same flags, key and data directory,
    /// listening on the TCP and UDP ports it had, so that the addresses the others know of it
    /// (a relay's, say) still reach it.
    pub fn restart(&mut self, i: usize) {
        let ip = format!("/ip4/{}/", self.net.hosts[i].ip);
        let node = get_json(&format!("{}/api/v1/node", self.procs[i].url)).1;
        let addrs: Vec<String> =
            node["addresses"].as_array().unwrap().iter().filter_map(|a| a.as_str().map(String::from)).collect();
        let own = |kind: &str| {
            let a = addrs.iter().find(|a| a.starts_with(&ip) && a.contains(kind) && !a.contains("p2p-circuit"));
            let a = a.unwrap_or_else(|| panic!("node {i} listens on {kind}: {addrs:?}"));
            a.split("/p2p/").next().unwrap().to_string()
        };
        let (tcp, udp) = (own("/tcp/"), own("/quic-v1"));
        let (_, udp_before) = self.net.listen(i);
        let (args, data) = &self.started[i];
        let args = args.clone().replaced(&udp_before, &udp);
        self.procs[i].stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
        self.procs[i] = args.start_with(data, &self.net.wrapper(i), &self.net.hosts[i].http, &tcp);
    }

    /// Node `i`'s metric series whose name starts with `prefix` and whose labels contain every
    /// one of `labels`, summed.
    pub fn metric(&self, i: usize, prefix: &str, labels: &[&str]) -> f64 {
        let (_, body) = get(&format!("{}/metrics", self.procs[i].url));
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// The last `n` network events and warnings of every node's log.
    pub fn logs(&self, n: usize) -> String {
        let mut s = String::new();
        for (i, p) in self.procs.iter().enumerate() {
            let log = p.log_text();
            let tail: Vec<&str> = log.lines().filter(|l| l.contains("_events::net") || l.contains("WARN")).collect();
            let tail = &tail[tail.len().saturating_sub(n)..];
            s.push_str(&format!("\n--- node {i} ({}) ---\n{}\n", p.peer_id, tail.join("\n")));
        }
        s
    }
}

impl Drop for NatNet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            let _ = Command::new(ip_program()).args(["link", "del", &format!("bm{}c{i}", self.tag)]).output();
            let _ = Command::new(ip_program()).args(["link", "del", &format!("bm{}p{i}", self.tag)]).output();
            let _ = Command::new(ip_program()).args(["netns", "del", &self.hosts[i].namespace]).output();
        }
        for h in 0..self.homes.len() {
            let _ = Command::new(ip_program()).args(["link", "del", &format!("bm{}w{h}", self.tag)]).output();
            let _ = Command::new(ip_program()).args(["netns", "del", &self.router_namespace(h)]).output();
        }
        let _ = Command::new(ip_program()).args(["link", "del", &self.bridge()]).output();
    }
}
