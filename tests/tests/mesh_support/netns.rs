//! Separate network namespaces for mesh tests: each node gets its own namespace with two links,
//! a "mesh" veth on a bridge (libp2p traffic only) and a point-to-point "control" veth to the
//! test's namespace (the HTTP API). A partition moves mesh ports to a second bridge, which drops
//! every packet between the sides as a real network split would; healing moves them back.
//! Needs root and `ip` (iproute2); everything is removed on drop.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One `Netns` at a time per test process: the names carry the process's tag, so two tests of
/// one binary running at once would create (and remove) each other's interfaces.
static NETNS: Mutex<()> = Mutex::new(());

/// The namespaces, bridges and addresses of one test.
pub struct Netns {
    /// Short unique tag in every interface and namespace name.
    tag: String,
    /// Second octet of the test's private addresses (10.`net`.x.y).
    net: u8,
    nodes: usize,
    /// Held until everything is removed (fields drop after `Drop::drop`).
    _one_at_a_time: MutexGuard<'static, ()>,
}

pub use buildmesh_tests::{ip, ip_program};

/// The tag in the names of a test's interfaces and namespaces: 4 hex digits of the process id,
/// or `$BM_NET_TAG` (at most 6 characters, e.g. a branch name, to tell whose they are on a
/// shared machine) followed by 2 of them.
pub fn net_tag() -> String {
    let pid = std::process::id();
    match std::env::var("BM_NET_TAG") {
        Ok(t) if !t.is_empty() && t.len() <= 6 && t.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("{t}{:02x}", pid % 0xff)
        }
        _ => format!("{:04x}", pid % 0xffff),
    }
}

impl Netns {
    /// Create namespaces for `nodes` nodes, every mesh port on bridge A.
    pub fn new(nodes: usize) -> Netns {
        Netns::create(nodes, true)
    }

    /// Namespaces with their control links but no mesh link: the caller gives each one (see
    /// `wan::Wan`, which adds a TUN device holding [`Netns::mesh_ip`]).
    pub fn without_mesh_link(nodes: usize) -> Netns {
        Netns::create(nodes, false)
    }

    fn create(nodes: usize, bridged: bool) -> Netns {
        assert!(nodes < 200);
        let serial = NETNS.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        // A 10.x.0.0/16 that no route of this machine uses yet.
        let routes =
            Command::new(ip_program()).args(["-4", "route", "show", "table", "all"]).output().expect("ip route");
        let routes = String::from_utf8_lossy(&routes.stdout).to_string();
        let net = (0..100)
            .map(|k| (100 + (pid + k) % 100) as u8)
            .find(|net| !routes.contains(&format!("10.{net}.")))
            .expect("a free 10.x.0.0/16");
        let n = Netns { tag: net_tag(), net, nodes, _one_at_a_time: serial };
        for bridge in [n.bridge('a'), n.bridge('b')] {
            ip(&["link", "add", &bridge, "type", "bridge"]);
            ip(&["link", "set", &bridge, "up"]);
        }
        for i in 0..nodes {
            let ns = n.namespace(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // Mesh link: eth0 in the namespace, its peer a port of bridge A.
            let port = n.port(i);
            if bridged {
                ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
                ip(&["link", "set", &port, "master", &n.bridge('a')]);
                ip(&["link", "set", &port, "up"]);
                ip(&["-n", &ns, "addr", "add", &format!("{}/24", n.mesh_ip(i)), "dev", "eth0"]);
                ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            }
            // Control link: ctl0 in the namespace, point to point with the test's namespace.
            let ctl = n.control(i);
            ip(&["link", "add", &ctl, "type", "veth", "peer", "name", "ctl0", "netns", &ns]);
            ip(&["addr", "add", &format!("10.{}.{i}.2/30", n.net), "dev", &ctl]);
            ip(&["link", "set", &ctl, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.{}.{i}.1/30", n.net), "dev", "ctl0"]);
            ip(&["-n", &ns, "link", "set", "ctl0", "up"]);
        }
        n
    }

    fn bridge(&self, side: char) -> String {
        format!("bm{}br{side}", self.tag)
    }

    fn port(&self, i: usize) -> String {
        format!("bm{}m{i}", self.tag)
    }

    fn control(&self, i: usize) -> String {
        format!("bm{}c{i}", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("bm{}-{i}", self.tag)
    }

    /// Node `i`'s address on the mesh bridge.
    pub fn mesh_ip(&self, i: usize) -> String {
        format!("10.{}.200.{}", self.net, i + 1)
    }

    /// The command prefix that runs a program in node `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec![ip_program(), "netns".into(), "exec".into(), self.namespace(i)]
    }

    /// `--http` of node `i`: its end of the control link.
    pub fn http(&self, i: usize) -> String {
        format!("10.{}.{i}.1:0", self.net)
    }

    /// `--listen` of node `i`: TCP on its mesh address only.
    pub fn listen(&self, i: usize) -> String {
        format!("/ip4/{}/tcp/0", self.mesh_ip(i))
    }

    /// Move the mesh ports of `side_b` to bridge B: packets between the sides are dropped.
    pub fn partition(&self, side_b: &[usize]) {
        for &i in side_b {
            ip(&["link", "set", &self.port(i), "master", &self.bridge('b')]);
        }
    }

    /// Cut the mesh path from node `i` to each of `others`: a `prohibit` route in `i`'s
    /// namespace per address, so that `i`'s dials to them, and its answers to their dials, fail
    /// at once (a dial does not hang in SYN retries that might succeed after [`Netns::join`]).
    /// Cut both ends of a pair.
    pub fn cut(&self, i: usize, others: &[usize]) {
        for &j in others {
            ip(&["-n", &self.namespace(i), "route", "add", "prohibit", &format!("{}/32", self.mesh_ip(j))]);
        }
    }

    /// Remove the routes [`Netns::cut`] added in node `i`'s namespace for `others`.
    pub fn join(&self, i: usize, others: &[usize]) {
        for &j in others {
            ip(&["-n", &self.namespace(i), "route", "del", "prohibit", &format!("{}/32", self.mesh_ip(j))]);
        }
    }

    /// Every mesh port back on bridge A.
    pub fn heal(&self) {
        for i in 0..self.nodes {
            ip(&["link", "set", &self.port(i), "master", &self.bridge('a')]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both (a namespace can outlive `ip netns del`
        // while something still refers to it, and its veths with it).
        for i in 0..self.nodes {
            for link in [self.port(i), self.control(i)] {
                let _ = Command::new(ip_program()).args(["link", "del", &link]).output();
            }
            let _ = Command::new(ip_program()).args(["netns", "del", &self.namespace(i)]).output();
        }
        for side in ['a', 'b'] {
            let _ = Command::new(ip_program()).args(["link", "del", &self.bridge(side)]).output();
        }
    }
}
