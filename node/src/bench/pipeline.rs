//! A pipelining HTTP/1.1 client for `buildmesh bench narinfo`: on one keep-alive connection it
//! sends a whole batch of `GET`s back to back and reads the answers in order, as `guix substitute`
//! does with its narinfo lookups (`http-multiple-get` in `guix/substitutes.scm`, batches of 1,000
//! on one connection). Answers are framed by their `Content-Length` only (what the gateway sends);
//! anything else is an error, since Guix's client needs it too.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// What one connection measured.
#[derive(Debug, Default, Clone)]
pub(super) struct ConnResult {
    /// For every answer: the time from its batch's start to the end of its body.
    pub(super) latencies: Vec<Duration>,
    /// For every batch: the time from its first byte sent to its last answer read.
    pub(super) batch_times: Vec<Duration>,
    /// Answers by status: 200.
    pub(super) ok: u64,
    /// Answers by status: 404.
    pub(super) not_found: u64,
    /// Answers with another status.
    pub(super) other: u64,
    /// The first 200 body seen (to check the layout).
    pub(super) sample: Option<String>,
}

/// Send `batches` batches of `batch` requests for `targets` (cycled, starting at `offset`) on one
/// connection to `addr` (`host:port`), each batch written while its answers are read.
pub(super) fn run_connection(
    addr: &str,
    targets: &[String],
    offset: usize,
    batch: usize,
    batches: usize,
) -> anyhow::Result<ConnResult> {
    anyhow::ensure!(!targets.is_empty() && batch > 0, "nothing to request");
    let stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).context("read timeout")?;
    let mut writer = stream.try_clone().context("clone the socket")?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut res = ConnResult::default();
    let mut next = offset;
    for _ in 0..batches {
        let mut requests = Vec::with_capacity(batch * 80);
        for _ in 0..batch {
            let target = &targets[next % targets.len()];
            next += 1;
            write!(requests, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: GNU Guile\r\n\r\n")
                .context("format a request")?;
        }
        let start = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let sender = s.spawn(|| writer.write_all(&requests).and_then(|()| writer.flush()));
            for _ in 0..batch {
                let (status, body) = read_response(&mut reader)?;
                res.latencies.push(start.elapsed());
                match status {
                    200 => {
                        res.ok += 1;
                        if res.sample.is_none() {
                            res.sample = Some(String::from_utf8_lossy(&body).into_owned());
                        }
                    }
                    404 => res.not_found += 1,
                    _ => res.other += 1,
                }
            }
            sender.join().map_err(|_| anyhow::anyhow!("the request writer panicked"))?.context("send the batch")?;
            Ok(())
        })?;
        res.batch_times.push(start.elapsed());
    }
    Ok(res)
}

/// Read one answer: its status and body (framed by `Content-Length`).
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).context("read a status line")? == 0 {
        bail!("the server closed the connection in the middle of a batch");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {:?}", line.trim_end()))?;
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).context("read a header")?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(value.trim().parse::<usize>().context("Content-Length")?);
        }
    }
    let length = length.context("an answer without Content-Length (a pipelining client cannot frame it)")?;
    anyhow::ensure!(length <= 1 << 20, "a {length}-byte narinfo answer");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).context("read a body")?;
    Ok((status, body))
}

/// The `q`-quantile (0..=1) of sorted durations, in milliseconds.
pub(super) fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipelined_answers_by_content_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        assert_eq!(read_response(&mut r).unwrap(), (200, b"hello".to_vec()));
        assert_eq!(read_response(&mut r).unwrap(), (404, Vec::new()));
        assert!(read_response(&mut r).is_err());
        let mut r = BufReader::new(&b"HTTP/1.1 200 OK\r\n\r\n"[..]);
        assert!(read_response(&mut r).unwrap_err().to_string().contains("Content-Length"));
    }

    #[test]
    fn quantiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&d, 0.5).round(), 51.0);
        assert_eq!(quantile_ms(&d, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
