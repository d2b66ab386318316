//! `buildmesh challenge --diff`: what differs in a mismatch, with the streaming NAR diff of
//! [`crate::audit::diff`].
//!
//! - The mesh's own builders disagree: the node's `GET /api/v1/diff?path=` (the node fetches and
//!   verifies both builders' NARs).
//! - A server says another NarHash than the mesh: its NAR (the narinfo's `URL`, `Compression`
//!   `none`, `zstd`, `gzip` or `xz`: what `guix publish`, nar-herder and Nix caches store; not
//!   Guix's `lzip` nor an old Nix cache's `bzip2`) and the NAR of a builder with the mesh's NarHash (that builder's view on
//!   the node, `/builder/<peer id>/<hash>.narinfo` and its `URL`) are downloaded into temporary
//!   files, each checked against the NarHash it claims (a NAR that does not have its claimed hash
//!   is reported, not compared), then compared.

use std::io::{BufReader, Read, Write};

use anyhow::{Context, Result, bail};
use buildmesh_protocol::hash::NixHash;
use sha2::Digest as _;

use super::challenge::{MAX_NARINFO, PathReport};
use crate::audit::diff::{DiffLimits, DiffReport, Side, diff_nars};

/// The largest NAR downloaded for a diff.
const MAX_NAR: u64 = 8 << 30;

/// The diffs of one path's mismatch, as text (one block per comparison, or why there is none).
pub(super) fn diffs(client: &reqwest::blocking::Client, api: &str, report: &PathReport) -> String {
    let mut out = String::new();
    if report.mesh_nar_hashes.len() > 1 {
        out += &match mesh_diff(client, api, &report.path) {
            Ok(d) => d.to_text(),
            Err(e) => format!("{}: no diff between the mesh's builders: {e:#}\n", report.path),
        };
    }
    let Some(mesh_hash) = report.mesh_nar_hashes.first() else { return out };
    let Some(builder) = report.mesh_builders.iter().find(|b| &b.nar_hash == mesh_hash) else { return out };
    for s in report.servers.iter().filter(|s| s.status == "found") {
        let Some(hash) = s.nar_hash.as_ref().filter(|h| *h != mesh_hash) else { continue };
        out += &match server_diff(client, api, report, &builder.builder, mesh_hash, &s.server, hash) {
            Ok(d) => d.to_text(),
            Err(e) => format!("{}: no diff with {}: {e:#}\n", report.path, s.server),
        };
    }
    out
}

fn mesh_diff(client: &reqwest::blocking::Client, api: &str, path: &str) -> Result<DiffReport> {
    let url = reqwest::Url::parse_with_params(&format!("{api}/api/v1/diff"), &[("path", path)])?;
    let resp = client.get(url.clone()).send().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url} is not a diff report"))
}

fn server_diff(
    client: &reqwest::blocking::Client,
    api: &str,
    report: &PathReport,
    builder: &str,
    mesh_hash: &str,
    server: &str,
    server_hash: &str,
) -> Result<DiffReport> {
    let hash_part = report
        .path
        .rsplit('/')
        .next()
        .and_then(|b| b.get(..32))
        .with_context(|| format!("{} is not a store path", report.path))?;
    let view = format!("{api}/builder/{builder}");
    let (mesh_nar, mesh_size) = fetch_nar(client, &view, hash_part, mesh_hash)?;
    let (server_nar, server_size) = fetch_nar(client, server.trim_end_matches('/'), hash_part, server_hash)?;
    let diff = diff_nars(
        |side| {
            let f = if side == "a" { mesh_nar.reopen()? } else { server_nar.reopen()? };
            Ok(BufReader::with_capacity(256 << 10, f))
        },
        &DiffLimits::default(),
    )?;
    Ok(DiffReport {
        path: report.path.clone(),
        a: Side { builder: format!("mesh builder {builder}"), nar_hash: mesh_hash.to_string(), nar_size: mesh_size },
        b: Side { builder: server.to_string(), nar_hash: server_hash.to_string(), nar_size: server_size },
        diff,
    })
}

/// Download the NAR that `base/<hash_part>.narinfo` names into a temporary file and check it
/// has `nar_hash`; returns the file and the NAR's size.
fn fetch_nar(
    client: &reqwest::blocking::Client,
    base: &str,
    hash_part: &str,
    nar_hash: &str,
) -> Result<(tempfile::NamedTempFile, u64)> {
    let ni_url = format!("{base}/{hash_part}.narinfo");
    let resp = client.get(&ni_url).send().with_context(|| format!("GET {ni_url}"))?;
    if !resp.status().is_success() {
        bail!("GET {ni_url}: HTTP {}", resp.status());
    }
    let mut text = String::new();
    resp.take(MAX_NARINFO as u64 + 1).read_to_string(&mut text).with_context(|| format!("reading {ni_url}"))?;
    if text.len() > MAX_NARINFO {
        bail!("{ni_url}: more than {MAX_NARINFO} bytes");
    }
    let (url, compression) =
        nar_url(&text).with_context(|| format!("{ni_url}: no NAR uncompressed or in zstd, gzip or xz"))?;
    let nar_url = format!("{base}/{url}");
    let expected = NixHash::parse(nar_hash, None).with_context(|| format!("NarHash {nar_hash}"))?;
    let resp = client.get(&nar_url).send().with_context(|| format!("GET {nar_url}"))?;
    if !resp.status().is_success() {
        bail!("GET {nar_url}: HTTP {}", resp.status());
    }
    let mut file = tempfile::NamedTempFile::new().context("a temporary file for a NAR")?;
    let limited = resp.take(MAX_NAR + 1);
    let mut reader = decoder(compression, limited).with_context(|| format!("{nar_url}: {compression}"))?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {nar_url}"))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > MAX_NAR {
            bail!("{nar_url}: more than {MAX_NAR} bytes");
        }
        sha.update(&buf[..n]);
        file.write_all(&buf[..n]).context("writing a NAR to a temporary file")?;
    }
    file.flush().context("writing a NAR to a temporary file")?;
    let got = NixHash::sha256(sha.finalize().into());
    if got != expected {
        bail!("{nar_url} has NarHash {}, not the {nar_hash} its narinfo says", got);
    }
    Ok((file, size))
}

/// The NAR read from `compressed`, stored with `compression` (one [`nar_url`] returns).
fn decoder<'a>(compression: &str, compressed: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        "none" => Box::new(compressed),
        "zstd" => Box::new(zstd::Decoder::new(compressed)?),
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        "xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(compressed)),
        other => bail!("compression {other:?} is not read here"),
    })
}

/// The first NAR URL of a narinfo (any layout) that `--diff` can read: `(url, compression)`.
fn nar_url(text: &str) -> Option<(&str, &'static str)> {
    // Nix: one URL/Compression pair; Guix: one pair per compression, in triples.
    let mut url = None;
    for line in text.lines() {
        if let Some(u) = line.strip_prefix("URL: ") {
            url = Some(u);
        } else if let (Some(c), Some(u)) = (line.strip_prefix("Compression: "), url) {
            match c {
                "none" => return Some((u, "none")),
                "zstd" => return Some((u, "zstd")),
                "gzip" => return Some((u, "gzip")),
                "xz" => return Some((u, "xz")),
                _ => url = None,
            }
        }
    }
    // A Nix narinfo may leave out `Compression` (it then means bzip2): not readable here.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_readable_nar_url() {
        let guix = "StorePath: /gnu/store/x\nURL: nar/lzip/x\nCompression: lzip\nFileSize: 3\n\
                    URL: nar/zstd/x\nCompression: zstd\nFileSize: 2\nURL: nar/x\nCompression: none\n";
        assert_eq!(nar_url(guix), Some(("nar/zstd/x", "zstd")));
        assert_eq!(nar_url("URL: nar/a.nar\nCompression: none\n"), Some(("nar/a.nar", "none")));
        assert_eq!(nar_url("URL: nar/a.nar.xz\nCompression: xz\n"), Some(("nar/a.nar.xz", "xz")));
        assert_eq!(nar_url("URL: nar/gzip/x\nCompression: gzip\n"), Some(("nar/gzip/x", "gzip")));
        assert_eq!(nar_url("URL: nar/lzip/x\nCompression: lzip\nFileSize: 3\n"), None);
        assert_eq!(nar_url("URL: nar/a.nar.bz2\nCompression: bzip2\n"), None);
    }

    #[test]
    fn reads_every_compression_it_names() {
        let nar: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        };
        let zstd = zstd::encode_all(&nar[..], 3).unwrap();
        for (c, bytes) in [("none", nar.clone()), ("zstd", zstd), ("gzip", gzip), ("xz", xz.clone())] {
            let mut out = Vec::new();
            decoder(c, &bytes[..]).unwrap().read_to_end(&mut out).unwrap();
            assert!(out == nar, "{c}");
        }
        // A damaged stream is an error, not a short NAR.
        let mut bad = xz;
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(decoder("xz", &bad[..]).unwrap().read_to_end(&mut Vec::new()).is_err());
        assert!(decoder("lzip", &b""[..]).is_err());
    }
}
