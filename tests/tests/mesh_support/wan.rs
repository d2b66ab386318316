//! A wide-area network between the nodes' namespaces, emulated in user space: one-way delay per
//! pair of regions, jitter and random packet loss, applied to every IP packet of the mesh.
//!
//! Why not `tc netem`: the kernels the tests run on do not always have it (this machine's has
//! `CONFIG_NET_SCH_NETEM` unset, and neither `fq` nor any other qdisc that could hold a packet
//! back), while TUN devices are everywhere. So each node's namespace gets a TUN device `wan0`
//! holding its mesh address (10.x.200.i+1/24, the subnet routed through it) instead of a veth on
//! a bridge, and threads of the test process play the network between them: they read every
//! packet a node sends, drop it with probability `loss`, otherwise write it into the
//! destination node's TUN device after the one-way delay of their regions plus a uniform jitter.
//! The kernels' TCP stacks see real delay and real loss (retransmission timers, congestion
//! control, head-of-line blocking): this is what `netem delay D J loss L` on both ends would do,
//! except that packets of one direction of one pair are never reordered (jitter never lets a
//! packet overtake the one sent before it: netem's jitter reorders, which real paths rarely do).
//! A region may have an uplink cap ([`Uplink`]): every node in it sends through its own
//! router, a FIFO of bounded size drained at the cap, that drops a packet arriving at a full
//! queue (tail drop, like a home router's buffer), so TCP and QUIC see real queueing delay and
//! real drops. Without one, what limits throughput is TCP under the emulated delay and loss.
//!
//! Needs root, iproute2 and `/dev/net/tun`; the devices disappear with their file descriptors
//! when the [`Wan`] is dropped (and with the namespaces).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use super::netns::{Netns, ip};

/// The network between regions: one-way delays, jitter and loss.
#[derive(Clone, Debug)]
pub struct WanModel {
    /// Region names, for tables.
    pub regions: Vec<String>,
    /// One-way delay from region `a` to region `b` (`one_way[a][b]`), inside a region on the diagonal.
    pub one_way: Vec<Vec<Duration>>,
    /// Jitter: each packet's delay is uniform in `delay ± jitter` (at most `delay`), `jitter[a][b]`.
    pub jitter: Vec<Vec<Duration>>,
    /// Probability that a packet is dropped (every packet, either direction, any pair), unless
    /// `pair_loss` is given.
    pub loss: f64,
    /// Probability that a packet from region `a` to region `b` is dropped (`pair_loss[a][b]`),
    /// instead of `loss` (for paths that cross several lossy links: [`WanModel::access_links`]).
    pub pair_loss: Option<Vec<Vec<f64>>>,
    /// Seed of the loss and jitter draws.
    pub seed: u64,
    /// The uplink cap of each node in region `r` (`uplink[r]`), `None` for none: every packet a
    /// node sends (to any other node) passes its uplink first, then the delay and loss.
    pub uplink: Vec<Option<Uplink>>,
}

/// A node's uplink: packets leave at `bytes_per_s` (IP bytes) through a FIFO holding at most
/// `queue_bytes` waiting bytes; a packet that would overflow it is dropped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Uplink {
    /// The rate, in IP bytes per second.
    pub bytes_per_s: u64,
    /// The router's buffer, in bytes.
    pub queue_bytes: u64,
}

impl Uplink {
    /// A cap of `kbit_per_s` kbit/s (1000 bits) with a buffer of `queue_ms` milliseconds at
    /// that rate (at least 16 KiB).
    pub fn kbit(kbit_per_s: u64, queue_ms: u64) -> Uplink {
        let bytes_per_s = kbit_per_s * 1000 / 8;
        Uplink { bytes_per_s, queue_bytes: (bytes_per_s * queue_ms / 1000).max(16 * 1024) }
    }
}

impl WanModel {
    /// Three regions: "west" and "central" 20 ms apart one way, "east" 150 ms from "west" and
    /// 140 ms from "central" (no detour through a third region is shorter than the direct path),
    /// 2 ms inside a region; jitter 10% of the delay (0.5 ms inside); `loss` on every packet.
    pub fn three_regions(loss: f64) -> WanModel {
        let ms = Duration::from_millis;
        let between = [[2, 20, 150], [20, 2, 140], [150, 140, 2]];
        let one_way: Vec<Vec<Duration>> = between.iter().map(|r| r.iter().map(|&d| ms(d)).collect()).collect();
        let jitter = between
            .iter()
            .map(|r| r.iter().map(|&d| if d <= 2 { Duration::from_micros(500) } else { ms(d / 10) }).collect())
            .collect();
        WanModel {
            regions: vec!["west".into(), "central".into(), "east".into()],
            one_way,
            jitter,
            loss,
            pair_loss: None,
            seed: 18,
            uplink: vec![None; 3],
        }
    }

    /// A public network ("public", region 0, no delay inside) and `homes` homes (regions 1..),
    /// each on its own access link to it: `one_way` ± 10% and `loss` per packet on each link.
    /// A packet between two homes crosses both links (2 × `one_way` ± 20%, lost with
    /// 1 − (1 − `loss`)²), the same as one relayed through a public host, so relayed and direct
    /// paths between homes see the same delay and loss.
    pub fn access_links(homes: usize, one_way: Duration, loss: f64) -> WanModel {
        let n = homes + 1;
        // Access links a packet from region a to region b crosses (one host per home).
        let links = |a: usize, b: usize| if a == b { 0 } else { usize::from(a != 0) + usize::from(b != 0) };
        let links: Vec<Vec<usize>> = (0..n).map(|a| (0..n).map(|b| links(a, b)).collect()).collect();
        let by = |f: &dyn Fn(usize) -> Duration| links.iter().map(|r| r.iter().map(|&k| f(k)).collect()).collect();
        let pair_loss = links.iter().map(|r| r.iter().map(|&k| 1.0 - (1.0 - loss).powi(k as i32)).collect()).collect();
        let mut regions = vec!["public".to_string()];
        regions.extend((0..homes).map(|h| format!("home {h}")));
        WanModel {
            regions,
            one_way: by(&|k| one_way * k as u32),
            jitter: by(&|k| (one_way / 10) * k as u32),
            loss,
            pair_loss: Some(pair_loss),
            seed: 18,
            uplink: vec![None; n],
        }
    }

    /// Two regions `one_way` apart (± 10%, no loss), 1 ms inside each: "fast" (region 0) with no
    /// cap and "slow" (region 1), whose nodes send through `uplink` (a volunteer at home on an
    /// asymmetric line: its downlink is not capped).
    pub fn slow_uplink(one_way: Duration, uplink: Uplink) -> WanModel {
        let ms = Duration::from_millis;
        WanModel {
            regions: vec!["fast".into(), "slow".into()],
            one_way: vec![vec![ms(1), one_way], vec![one_way, ms(1)]],
            jitter: vec![vec![Duration::ZERO, one_way / 10], vec![one_way / 10, Duration::ZERO]],
            loss: 0.0,
            pair_loss: None,
            seed: 18,
            uplink: vec![None, Some(uplink)],
        }
    }

    /// The probability that a packet from region `a` to region `b` is dropped.
    pub fn loss_between(&self, a: usize, b: usize) -> f64 {
        self.pair_loss.as_ref().map_or(self.loss, |m| m[a][b])
    }

    /// The same regions with no delay, jitter or loss (a baseline: what the machine itself adds).
    pub fn without_delay_or_loss(&self) -> WanModel {
        let zero = |m: &Vec<Vec<Duration>>| m.iter().map(|r| vec![Duration::ZERO; r.len()]).collect();
        WanModel {
            one_way: zero(&self.one_way),
            jitter: zero(&self.jitter),
            loss: 0.0,
            pair_loss: None,
            uplink: vec![None; self.regions.len()],
            ..self.clone()
        }
    }

    /// The largest one-way delay between two regions.
    pub fn max_one_way(&self) -> Duration {
        self.one_way.iter().flatten().copied().max().unwrap_or_default()
    }

    /// One line describing the model, for tables.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for a in 0..self.regions.len() {
            for b in a..self.regions.len() {
                if a == b && self.pair_loss.is_some() {
                    continue;
                }
                let (d, j) = (self.one_way[a][b], self.jitter[a][b]);
                let loss = match self.pair_loss {
                    Some(_) => format!(", {:.2}% loss", self.loss_between(a, b) * 100.0),
                    None => String::new(),
                };
                parts.push(format!(
                    "{}–{} {} ± {} ms{loss}",
                    self.regions[a],
                    self.regions[b],
                    d.as_millis(),
                    j.as_secs_f64() * 1e3
                ));
            }
        }
        let caps: Vec<String> = (self.uplink.iter().enumerate())
            .filter_map(|(r, u)| {
                let u = (*u)?;
                Some(format!(
                    "; uplink of {} {} kbit/s, {} KiB buffer",
                    self.regions[r],
                    u.bytes_per_s * 8 / 1000,
                    u.queue_bytes / 1024
                ))
            })
            .collect();
        match self.pair_loss {
            Some(_) => format!("one way {}{}", parts.join("; "), caps.concat()),
            None => format!("one way {}; {}% loss per packet{}", parts.join(", "), self.loss * 100.0, caps.concat()),
        }
    }
}

/// Packets the emulator saw.
#[derive(Debug, Default)]
pub struct WanStats {
    /// Packets delivered.
    pub delivered: AtomicU64,
    /// Packets dropped by the loss draw.
    pub dropped: AtomicU64,
    /// Packets dropped at a full uplink queue.
    pub tail_dropped: AtomicU64,
    /// Packets with no known destination (IPv6, other subnets), discarded.
    pub discarded: AtomicU64,
}

/// The running emulator: one TUN device per node.
pub struct Wan {
    stop: Arc<AtomicBool>,
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
    /// Counters, readable while it runs.
    pub stats: Arc<WanStats>,
    /// The region of each node.
    pub region_of: Vec<usize>,
    /// The model it runs.
    pub model: WanModel,
}

/// One device of the emulated network: a TUN device `device` in network namespace `namespace`,
/// holding address `ip`.
#[derive(Clone, Debug)]
pub struct WanEnd {
    /// The namespace (`/run/netns/<namespace>`).
    pub namespace: String,
    /// The TUN device's name.
    pub device: String,
    /// Its IPv4 address (a /24, the subnet routed through it).
    pub ip: String,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, padding to the union's size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Open a new TUN device `name` (IP packets without the packet-information header) in the
/// network namespace this thread is in.
// The one unsafe call of the tests: TUNSETIFF, an ioctl that neither std nor nix (without its
// `ioctl` feature, off in this workspace) wraps.
#[allow(unsafe_code)]
fn open_tun(name: &str) -> io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req =
        IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes, laid out by `IfReq`) at
    // the pointer, which is valid and exclusive for the call; `file` is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// [`open_tun`] inside the named network namespace (`/run/netns/<ns>`), on a short-lived thread
/// so that the test's threads never change namespace.
fn open_tun_in(ns: &str, name: &str) -> io::Result<File> {
    let target = File::open(format!("/run/netns/{ns}"))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        open_tun(&name)
    })
    .join()
    .map_err(|_| io::Error::other("the TUN thread panicked"))?
}

/// A packet on its way.
struct InFlight {
    due: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

impl Wan {
    /// Give node `i` of `ns` (created with [`Netns::without_mesh_link`]) a TUN device `wan0`
    /// with its mesh address, in region `region_of[i]` of `model`, and start the network (see
    /// [`Wan::start_on`]).
    pub fn start(ns: &Netns, region_of: &[usize], model: WanModel) -> Wan {
        let ends: Vec<WanEnd> = (0..region_of.len())
            .map(|i| WanEnd { namespace: ns.namespace(i), device: "wan0".into(), ip: ns.mesh_ip(i).to_string() })
            .collect();
        Wan::start_on(&ends, region_of, model)
    }

    /// Give each of `ends` its TUN device (address `ip`/24, in its namespace), end `i` in region
    /// `region_of[i]` of `model`, and start the network between them: one reader thread per
    /// device (blocking reads), one thread delivering packets when due. A packet goes to the end
    /// that holds its destination address.
    pub fn start_on(ends: &[WanEnd], region_of: &[usize], model: WanModel) -> Wan {
        assert_eq!(ends.len(), region_of.len(), "one region per end");
        let mut files = Vec::new();
        let mut by_ip = HashMap::new();
        for (i, (end, &r)) in ends.iter().zip(region_of).enumerate() {
            assert!(r < model.regions.len(), "end {i}: region {r} of {}", model.regions.len());
            let (name, dev) = (&end.namespace, end.device.as_str());
            let tun = open_tun_in(name, dev).unwrap_or_else(|e| panic!("TUN device {dev} in {name}: {e}"));
            ip(&["-n", name, "addr", "add", &format!("{}/24", end.ip), "dev", dev]);
            ip(&["-n", name, "link", "set", dev, "up"]);
            let addr: Ipv4Addr = end.ip.parse().unwrap();
            // `BM_NET_TCP_CC=cubic`: TCP over the WAN uses that congestion control instead of the
            // host's default (BBR on the VM of docs/benchmarks.md), set on the subnet's route.
            if let Ok(cc) = std::env::var("BM_NET_TCP_CC") {
                let [a, b, c, _] = addr.octets();
                let net = format!("{a}.{b}.{c}.0/24");
                let route = ["-n", name, "route", "replace", &net, "dev", dev, "proto", "kernel", "scope", "link"];
                ip(&[&route[..], &["src", &end.ip, "congctl", &cc]].concat());
            }
            by_ip.insert(addr.octets(), i);
            files.push(Arc::new(tun));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WanStats::default());
        let shared = Arc::new(Queue {
            state: Mutex::new(QueueState {
                heap: BinaryHeap::new(),
                last: vec![Instant::now(); files.len() * files.len()],
                uplink_free: vec![Instant::now(); files.len()],
                seq: 0,
                rng: ChaCha8Rng::seed_from_u64(model.seed),
            }),
            wake: Condvar::new(),
        });
        let by_ip = Arc::new(by_ip);
        let regions = Arc::new(region_of.to_vec());
        for (from, tun) in files.iter().enumerate() {
            let (tun, q, by_ip, regions, m, st, stop) = (
                tun.clone(),
                shared.clone(),
                by_ip.clone(),
                regions.clone(),
                model.clone(),
                stats.clone(),
                stop.clone(),
            );
            // Detached: a reader blocked in read() ends when its device goes away with the
            // namespace (or with the test process).
            std::thread::Builder::new()
                .name(format!("wan-read-{from}"))
                .spawn(move || read_loop(from, &tun, &q, &by_ip, &regions, &m, &st, &stop))
                .expect("spawn a WAN reader");
        }
        let (q, st, s) = (shared.clone(), stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("wan-deliver".into())
            .spawn(move || deliver_loop(&files, &q, &st, &s))
            .expect("spawn the WAN thread");
        Wan { stop, queue: shared, thread: Some(thread), stats, region_of: region_of.to_vec(), model }
    }

    /// Node indices in region `r`.
    pub fn nodes_in(&self, r: usize) -> Vec<usize> {
        (0..self.region_of.len()).filter(|&i| self.region_of[i] == r).collect()
    }

    /// (delivered, dropped) packets so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.stats.delivered.load(Ordering::Relaxed), self.stats.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Packets in flight, shared by the readers and the delivering thread.
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

struct QueueState {
    heap: BinaryHeap<Reverse<InFlight>>,
    /// The latest delivery time queued per (from, to): jitter never reorders one direction.
    last: Vec<Instant>,
    /// When each node's uplink has sent every packet queued on it (in the past: idle).
    uplink_free: Vec<Instant>,
    seq: u64,
    rng: ChaCha8Rng,
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// When a packet of `len` bytes has left an uplink `u` that is busy until `free` (idle if that
/// is before `now`), or `None` if the bytes waiting before it leave no room in the buffer.
pub fn uplink_departure(free: Instant, now: Instant, len: usize, u: Uplink) -> Option<Instant> {
    let start = free.max(now);
    let waiting = (start - now).as_secs_f64() * u.bytes_per_s as f64;
    if waiting + len as f64 > u.queue_bytes as f64 {
        return None;
    }
    Some(start + Duration::from_secs_f64(len as f64 / u.bytes_per_s as f64))
}

/// Read the packets node `from` sends; drop, or queue each for its destination when due.
#[allow(clippy::too_many_arguments)]
fn read_loop(
    from: usize,
    tun: &File,
    q: &Queue,
    by_ip: &HashMap<[u8; 4], usize>,
    region_of: &[usize],
    model: &WanModel,
    stats: &WanStats,
    stop: &AtomicBool,
) {
    let n = region_of.len();
    let mut buf = vec![0u8; 65536];
    let mut reader = tun;
    while !stop.load(Ordering::Relaxed) {
        let Ok(got) = reader.read(&mut buf) else { return };
        if got == 0 {
            return;
        }
        let packet = &buf[..got];
        let to = (packet.len() >= 20 && packet[0] >> 4 == 4)
            .then(|| by_ip.get(&[packet[16], packet[17], packet[18], packet[19]]).copied())
            .flatten();
        let Some(to) = to.filter(|&t| t != from) else {
            stats.discarded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut s = q.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (a, b) = (region_of[from], region_of[to]);
        let now = Instant::now();
        // The uplink: the packet leaves once the packets queued before it have, or is dropped
        // if they fill the buffer.
        let departs = match model.uplink[a] {
            None => now,
            Some(u) => match uplink_departure(s.uplink_free[from], now, packet.len(), u) {
                Some(t) => {
                    s.uplink_free[from] = t;
                    t
                }
                None => {
                    stats.tail_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        if unit(&mut s.rng) < model.loss_between(a, b) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (d, j) = (model.one_way[a][b], model.jitter[a][b].min(model.one_way[a][b]));
        let spread = unit(&mut s.rng) * 2.0 - 1.0;
        let delay = if spread >= 0.0 { d + j.mul_f64(spread) } else { d - j.mul_f64(-spread) };
        let due = (departs + delay).max(s.last[from * n + to]);
        s.last[from * n + to] = due;
        s.seq += 1;
        let seq = s.seq;
        let earliest = s.heap.peek().is_none_or(|Reverse(p)| due < p.due);
        s.heap.push(Reverse(InFlight { due, seq, to, packet: packet.to_vec() }));
        drop(s);
        if earliest {
            q.wake.notify_one();
        }
    }
}

/// Write each queued packet into its destination's TUN device when it is due.
fn deliver_loop(tuns: &[Arc<File>], q: &Queue, stats: &WanStats, stop: &AtomicBool) {
    let mut s = q.state.lock().unwrap_or_else(PoisonError::into_inner);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match s.heap.peek() {
            Some(Reverse(p)) if p.due <= now => {
                let Reverse(p) = s.heap.pop().unwrap();
                drop(s);
                let mut w: &File = &tuns[p.to];
                match w.write(&p.packet) {
                    Ok(k) if k == p.packet.len() => stats.delivered.fetch_add(1, Ordering::Relaxed),
                    _ => stats.discarded.fetch_add(1, Ordering::Relaxed),
                };
                s = q.state.lock().unwrap_or_else(PoisonError::into_inner);
            }
            Some(Reverse(p)) => {
                let wait = p.due - now;
                s = q.wake.wait_timeout(s, wait).unwrap_or_else(PoisonError::into_inner).0;
            }
            None => {
                s = q.wake.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
    }
}

impl super::Cluster {
    /// `region_of.len()` nodes, node `i` in region `region_of[i]` of `model`, each in its own
    /// namespace whose only mesh link is the emulated WAN (the API stays on the undelayed control
    /// link). Returns the WAN with the cluster: keep both alive together.
    pub fn start_in_wan(
        dir: &std::path::Path,
        region_of: &[usize],
        model: WanModel,
        extra: &[&str],
        mesh: &str,
    ) -> (super::Cluster, Wan) {
        let ns = Netns::without_mesh_link(region_of.len());
        let wan = Wan::start(&ns, region_of, model);
        let c = super::Cluster::start_with(dir, region_of.len(), extra, mesh, Some(ns));
        (c, wan)
    }

    /// [`Cluster::start_in_wan`](super::Cluster::start_in_wan) with flags per node: node `i`
    /// gets `each[i]`.
    pub fn start_in_wan_each(
        dir: &std::path::Path,
        region_of: &[usize],
        model: WanModel,
        each: &[&[&str]],
        mesh: &str,
    ) -> (super::Cluster, Wan) {
        assert_eq!(region_of.len(), each.len(), "flags for each node");
        let ns = Netns::without_mesh_link(region_of.len());
        let wan = Wan::start(&ns, region_of, model);
        let node_extra = each.iter().enumerate().map(|(i, f)| (i, f.iter().map(|s| s.to_string()).collect())).collect();
        let c = super::Cluster::start_full(dir, region_of.len(), &[], mesh, Some(ns), true, node_extra);
        (c, wan)
    }
}

/// One attestation as a node's export lists it.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Message id (hex).
    pub id: String,
    /// The builder's peer id.
    pub builder: String,
    /// When the node received (or, on the builder, made) it, Unix ms.
    pub received_at_ms: u64,
}

/// Every attestation node `i` holds, with its arrival time there.
pub fn arrivals(c: &super::Cluster, i: usize) -> Vec<Arrival> {
    let (s, body) = super::get(&format!("{}/api/v1/attestations?format=jsonl", c.urls[i]));
    assert_eq!(s, 200, "export of node {i}");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Arrival {
                id: v["id"].as_str().unwrap().to_string(),
                builder: v["builder"].as_str().unwrap().to_string(),
                received_at_ms: v["received_at_ms"].as_u64().expect("received_at_ms in the export"),
            }
        })
        .collect()
}

/// Propagation of the attestations in `ids` across the running nodes: for each one and each
/// running node other than its builder, the time from the builder making it to the node
/// receiving it (ms), with the (builder's region, receiver's region). Attestations some running
/// node lacks are returned as `(node, id)` in the second list.
#[allow(clippy::type_complexity)]
pub fn propagation(
    c: &super::Cluster,
    wan: &Wan,
    ids: &std::collections::BTreeSet<String>,
) -> (Vec<(u64, usize, usize)>, Vec<(usize, String)>) {
    let running = c.running();
    let all: HashMap<usize, HashMap<String, Arrival>> =
        running.iter().map(|&i| (i, arrivals(c, i).into_iter().map(|a| (a.id.clone(), a)).collect())).collect();
    let node_of: HashMap<&str, usize> = c.peer_ids.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    let (mut delays, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        let origin = all.values().find_map(|m| m.get(id)).map(|a| a.builder.clone());
        let Some(b) = origin.as_deref().and_then(|p| node_of.get(p)).copied() else { continue };
        let Some(made) = all.get(&b).and_then(|m| m.get(id)).map(|a| a.received_at_ms) else { continue };
        for &i in running.iter().filter(|&&i| i != b) {
            match all[&i].get(id) {
                Some(a) => delays.push((a.received_at_ms.saturating_sub(made), wan.region_of[b], wan.region_of[i])),
                None => missing.push((i, id.clone())),
            }
        }
    }
    (delays, missing)
}

/// The value at quantile `q` of `sorted` (nearest rank), 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}
