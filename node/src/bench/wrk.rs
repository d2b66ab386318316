//! wrk runs: the rotation script over every small path's narinfo and the parse of wrk's output.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use buildmesh_protocol::store_path::StorePath;

/// What wrk reported.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WrkResult {
    pub(super) requests_per_sec: f64,
    pub(super) bytes_per_sec: f64,
    pub(super) errors: u64,
}

/// A wrk Lua script requesting every small path's narinfo in turn.
pub(super) fn write_rotation_script(path: &Path, small: &[StorePath]) -> anyhow::Result<()> {
    let mut s = String::from("paths = {\n");
    for p in small {
        let _ = writeln!(s, "  \"/{}.narinfo\",", p.hash_part());
    }
    s.push_str("}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(nil, paths[(counter % #paths) + 1])\nend\n");
    std::fs::write(path, s)?;
    Ok(())
}

/// Run a prepared wrk command and parse what it printed.
pub(super) fn wrk(mut cmd: Command) -> anyhow::Result<WrkResult> {
    let out = cmd.stdin(Stdio::null()).output().context("run wrk (scripts/install-deps.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot parse wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Transfer/sec:") {
            r.bytes_per_sec = parse_size(v.trim())?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().ok()?;
        }
    }
    (r.requests_per_sec > 0.0).then_some(r)
}

/// wrk's sizes: `123.45MB` with binary units.
fn parse_size(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 4 connections\n\
            Requests/sec:  41234.56\nTransfer/sec:      1.25GB\n  Socket errors: connect 0, read 2, write 0, timeout 1\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests_per_sec, 41234.56);
        assert!((r.bytes_per_sec - 1.25 * 1024.0 * 1024.0 * 1024.0).abs() < 1.0);
        assert_eq!(r.errors, 3);
        assert_eq!(parse_size("512.00KB"), Some(512.0 * 1024.0));
        assert!(parse_wrk("garbage").is_none());
    }
}
