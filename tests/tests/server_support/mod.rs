//! Helpers of the `server_*` tests: a store seeded before the node starts, raw TCP clients from
//! chosen loopback source addresses (the whole 127/8 is loopback on Linux, so one test can play
//! several client addresses), a minimal HTTP/1.1 exchange, the node's memory, and config files.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildmesh::store::{PathInfo, Store};
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StoreDir, StorePath, make_text_path};
use sha2::Digest as _;

/// A path put into a store before its node starts.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub path: StorePath,
    /// `/nar/<nix32 NarHash>.nar`.
    pub nar_url: String,
    /// `/<hash part>.narinfo`.
    pub narinfo_url: String,
    pub nar_size: u64,
}

/// Deterministic bytes that do not compress (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Register text files (content-addressed, like `builtins.toFile`) in the store of `data`.
pub fn seed(data: &Path, files: &[(&str, Vec<u8>)]) -> Vec<Seeded> {
    let sd = StoreDir::nix();
    let store = Store::open(data).expect("open store");
    let mut out = Vec::new();
    for (name, contents) in files {
        let mut w = NarWriter::new(Vec::new()).expect("nar writer");
        w.regular(false, contents.len() as u64, &mut &contents[..]).expect("nar file");
        let nar = w.finish().expect("nar");
        let blob = store.put_nar(&mut &nar[..]).expect("put nar");
        let path = make_text_path(&sd, name, contents, []).expect("text path");
        let digest: [u8; 32] = sha2::Sha256::digest(contents).into();
        let info = PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash.clone(),
            nar_size: blob.nar_size,
            references: Default::default(),
            deriver: None,
            ca: Some(format!("text:sha256:{}", nixbase32::encode(&digest))),
            blob: blob.blake3,
            registered_at: 1,
        };
        store.register_path(&info).expect("register");
        let base = path.to_string();
        out.push(Seeded {
            nar_url: format!("/nar/{}.nar", nixbase32::encode(blob.nar_hash.digest())),
            narinfo_url: format!("/{}.narinfo", &base[..32]),
            nar_size: blob.nar_size,
            path,
        });
    }
    out
}

/// Write `text` as the node's config file next to `data`; returns `["--config", FILE]`.
pub fn config_args(data: &Path, text: &str) -> Vec<String> {
    let file = data.parent().expect("parent").join("node.toml");
    std::fs::write(&file, text).expect("write config");
    vec!["--config".into(), file.display().to_string()]
}

/// The `host:port` of a node URL `http://host:port`.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().expect("node address")
}

/// A TCP connection to `dst` from source address `src` (any 127.x.y.z), with a receive buffer
/// of `rcvbuf` bytes when given (set before connecting, so the window stays that small).
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt};
    let SocketAddr::V4(dst) = dst else { panic!("IPv4 only") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if let Some(n) = rcvbuf {
        setsockopt(&fd, sockopt::RcvBuf, &n)?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// The `i`-th attacker address: 127.0.<1 + i/200>.<1 + i%200> (never 127.0.0.1's client key).
pub fn attacker(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8)
}

/// One HTTP/1.1 answer read from a kept-alive connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Send `GET path` on `s` (kept alive) and read the answer (which must have a Content-Length).
pub fn exchange(s: &mut TcpStream, path: &str) -> io::Result<Answer> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
    read_answer(s)
}

/// Read one answer with a Content-Length body.
pub fn read_answer(s: &mut TcpStream) -> io::Result<Answer> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the head ended"));
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other(format!("no content-length in {head:?}")))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Answer { status, head, body })
}

/// GET `url` on a fresh connection from 127.0.0.1 with a `limit` on the whole exchange; returns
/// the answer and how long it took.
pub fn timed_get(url: &str, path: &str, limit: Duration) -> io::Result<(Answer, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr_of(url), limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    let a = exchange(&mut s, path)?;
    Ok((a, t.elapsed()))
}

/// Whether the server closed `s`: reads what is buffered (at most `budget` bytes, waiting at most
/// `wait` for more) and reports whether the stream ended or was reset.
pub fn closed_by_server(s: &mut TcpStream, wait: Duration, budget: usize) -> bool {
    s.set_read_timeout(Some(wait)).expect("read timeout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < budget {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Whether the server closed `s` by now (without waiting): drains what is buffered (at most
/// `budget` bytes) and reports whether the stream ended or was reset.
pub fn closed_now(s: &mut TcpStream, budget: usize) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    let closed = loop {
        if read >= budget {
            break false;
        }
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).expect("blocking");
    closed
}

/// Resident memory of process `pid` in bytes.
pub fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A tmpfs mounted for a test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. `"32m"`) at `dir` (created).
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {} failed (the test needs root)", dir.display());
        Tmpfs { dir: dir.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The node's API token, when the node has one (`DATA/api.token`).
pub fn token(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("api.token")).ok().map(|t| t.trim().to_string())
}
