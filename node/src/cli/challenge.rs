//! `buildmesh challenge`: compare classic substitute servers (a Nix binary cache, `guix publish`,
//! nar-herder) with the mesh's attestations, the way `guix challenge` compares servers with a
//! local build.
//!
//! For each store path: the mesh's attestations come from a node's API (`/api/v1/query`, every
//! envelope re-verified by the node); each server's narinfo is fetched (`/<hash>.narinfo`, size
//! capped), its signature checked when `--trusted-key` is given (Nix `name:base64` keys against
//! `Sig:` lines; Guix public keys or ACL files against the `Signature:` line, with Guix's own
//! rules), and its `NarHash` compared:
//!
//! - **match**: the mesh's builders agree on one NarHash and every server that has the path says
//!   the same (`guix challenge`'s "local build" is the mesh's agreed NarHash);
//! - **mismatch**: a server says another NarHash, or the mesh's builders disagree among
//!   themselves;
//! - **inconclusive**: no server has it, or (as in `guix challenge` without a local build) the
//!   mesh has no attestation and fewer than two servers answer.
//!
//! Without `--trusted-key` narinfos are compared without being authenticated, as `guix challenge`
//! does by design; with it, a narinfo whose signature does not verify under those keys is
//! reported (`untrusted`) and left out of the comparison. Exit status as `guix challenge`: 0 when
//! every path matches, 2 when one differs, 1 otherwise.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use buildmesh_protocol::guix::{GuixPublicKey, parse_keys, verify_narinfo_in};
use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::nixkey::PublicKey;
use buildmesh_protocol::store_path::StoreDir;
use serde::Serialize;

use crate::audit::OutputReport;

/// The largest narinfo read from a server.
pub(super) const MAX_NARINFO: usize = 256 * 1024;

/// `buildmesh challenge` arguments.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("items").required(true).multiple(true).args(["paths", "revision"]))]
pub struct ChallengeArgs {
    /// A classic substitute server (repeatable): a Nix binary cache, `guix publish`, nar-herder.
    #[arg(long = "server", value_name = "URL", required = true)]
    pub servers: Vec<String>,
    /// A key narinfos must be signed with (repeatable): a Nix public key `name:base64`, or a file
    /// holding a Guix public key or ACL. Without it narinfos are not authenticated.
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// The node whose attestations are the reference.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Store directory of the paths (`/nix/store`, `/gnu/store`); default: the node's.
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<String>,
    /// Show matches too (as `guix challenge --verbose`).
    #[arg(long)]
    pub verbose: bool,
    /// Print JSON (`{"paths": [...], "totals": {...}}`).
    #[arg(long)]
    pub json: bool,
    /// Challenge every output of this revision's jobs (`C@ID` or `C:branch`, as `revision show`
    /// takes), as the node knows them from attestations.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// For each mismatch, show what differs inside the NARs (files added, removed, changed, with
    /// a unified diff of text files): between the mesh's disagreeing builders, and between a
    /// mesh builder's NAR and each server's that differs (downloaded, checked against their
    /// NarHashes, compared by streaming).
    #[arg(long)]
    pub diff: bool,
    /// The store paths to challenge.
    pub paths: Vec<String>,
}

/// One builder's attested NarHash for a path.
#[derive(Debug, Clone, Serialize)]
pub struct BuilderHash {
    /// The builder's peer id (its view on the node: `/builder/<peer id>/`).
    pub builder: String,
    /// Its key name.
    pub key: String,
    /// The NarHash it attested.
    pub nar_hash: String,
}

/// One server's answer for one path.
#[derive(Debug, Clone, Serialize)]
pub struct ServerAnswer {
    /// The server.
    pub server: String,
    /// `found`, `missing` (404), `untrusted` (signature not valid under `--trusted-key`), `error`.
    pub status: &'static str,
    /// Its NarHash (`sha256:<nix32>`), when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    /// Its NAR's URL, when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The signature check: `valid (<key>)`, `unchecked`, or why it failed.
    pub signature: String,
}

/// The verdict for one path.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// The store path.
    pub path: String,
    /// `match`, `mismatch` or `inconclusive`.
    pub verdict: &'static str,
    /// The NarHashes the mesh's builders attested (one when they agree).
    pub mesh_nar_hashes: Vec<String>,
    /// How many attestations the mesh holds.
    pub mesh_attestations: usize,
    /// Each builder's NarHash (the per-builder comparison).
    pub mesh_builders: Vec<BuilderHash>,
    /// Every server's answer.
    pub servers: Vec<ServerAnswer>,
    /// With `--diff` and a mismatch: what differs (text of the NAR diffs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The totals, as `guix challenge` prints them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Paths analyzed.
    pub analyzed: usize,
    /// Identical.
    pub identical: usize,
    /// Differed.
    pub differed: usize,
    /// Inconclusive.
    pub inconclusive: usize,
}

/// The keys narinfos must be signed with.
#[derive(Debug, Default)]
struct Keys {
    nix: Vec<PublicKey>,
    guix: Vec<GuixPublicKey>,
}

fn load_keys(specs: &[String]) -> Result<Keys> {
    let mut keys = Keys::default();
    for spec in specs {
        let path = PathBuf::from(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading key file {spec}"))?;
            let t = text.trim();
            if t.starts_with('(') {
                keys.guix.extend(parse_keys(t).with_context(|| format!("Guix key file {spec}"))?);
            } else {
                keys.nix.push(PublicKey::parse(t).with_context(|| format!("Nix key file {spec}"))?);
            }
        } else if spec.trim().starts_with('(') {
            keys.guix.extend(parse_keys(spec).with_context(|| format!("Guix key {spec}"))?);
        } else {
            keys.nix.push(PublicKey::parse(spec).with_context(|| {
                format!("--trusted-key {spec}: not a Nix public key `name:base64`, a Guix key, or a key file")
            })?);
        }
    }
    Ok(keys)
}

/// The fields of a narinfo `challenge` reads, whatever its layout (Nix or Guix).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

/// Whether `text` is signed by one of `keys`: `Ok(description)` or `Err(reason)`.
fn check_signature(text: &str, sd: &StoreDir, keys: &Keys) -> Result<String, String> {
    let mut reasons = Vec::new();
    if !keys.guix.is_empty() {
        let v = verify_narinfo_in(text, &keys.guix, &sd.to_string());
        if v.accepted() {
            return Ok(format!("valid Guix signature ({})", v.host.unwrap_or_default()));
        }
        reasons.push(format!("Guix: {}", v.describe()));
    }
    if !keys.nix.is_empty() {
        match NarInfo::parse(text, sd)
            .map_err(|e| e.to_string())
            .and_then(|ni| ni.verify(&keys.nix).map_err(|e| e.to_string()))
        {
            Ok(v) => match v.valid_keys().next() {
                Some(key) => return Ok(format!("valid Nix signature ({})", key.name())),
                None => reasons.push("Nix: no Sig line verifies under the trusted keys".to_string()),
            },
            Err(e) => reasons.push(format!("Nix: {e}")),
        }
    }
    Err(reasons.join("; "))
}

fn ask(client: &reqwest::blocking::Client, server: &str, hash_part: &str, sd: &StoreDir, keys: &Keys) -> ServerAnswer {
    let url = format!("{}/{hash_part}.narinfo", server.trim_end_matches('/'));
    let mut a = ServerAnswer {
        server: server.to_string(),
        status: "error",
        nar_hash: None,
        url: None,
        signature: String::new(),
    };
    let resp = match client.get(&url).send() {
        Ok(r) => r,
        Err(e) => {
            a.signature = format!("GET {url}: {e}");
            return a;
        }
    };
    if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::FORBIDDEN {
        a.status = "missing";
        a.signature = "no narinfo".into();
        return a;
    }
    if !resp.status().is_success() {
        a.signature = format!("GET {url}: HTTP {}", resp.status());
        return a;
    }
    // At most MAX_NARINFO + 1 bytes are read from the server, whatever it sends.
    let mut body = Vec::new();
    let body = match std::io::Read::read_to_end(&mut std::io::Read::take(resp, MAX_NARINFO as u64 + 1), &mut body) {
        Ok(_) if body.len() <= MAX_NARINFO => body,
        Ok(_) => {
            a.signature = format!("{url}: more than {MAX_NARINFO} bytes");
            return a;
        }
        Err(e) => {
            a.signature = format!("reading {url}: {e}");
            return a;
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        a.signature = format!("{url}: not UTF-8");
        return a;
    };
    let Some(hash) = field(text, "NarHash") else {
        a.signature = format!("{url}: no NarHash");
        return a;
    };
    a.nar_hash = Some(hash.to_string());
    a.url = field(text, "URL").map(|u| format!("{}/{u}", server.trim_end_matches('/')));
    if keys.nix.is_empty() && keys.guix.is_empty() {
        a.status = "found";
        a.signature = "unchecked".into();
        return a;
    }
    match check_signature(text, sd, keys) {
        Ok(d) => {
            a.status = "found";
            a.signature = d;
        }
        Err(why) => {
            a.status = "untrusted";
            a.signature = why;
        }
    }
    a
}

/// The mesh's reports of `target` (a store path: one report; a `.drv`: one per attested output)
/// from the node's `/api/v1/query`; none when the node knows nothing of it.
fn mesh_reports(client: &reqwest::blocking::Client, api: &str, target: &str) -> Result<Vec<OutputReport>> {
    let url = reqwest::Url::parse_with_params(&format!("{api}/api/v1/query"), &[("target", target)])?;
    let resp = client.get(url.clone()).send().with_context(|| format!("GET {url}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    let body = resp.bytes().with_context(|| format!("reading {url}"))?;
    Ok(match serde_json::from_slice::<serde_json::Value>(&body).with_context(|| format!("{url} is not JSON"))? {
        v @ serde_json::Value::Array(_) => serde_json::from_value(v)?,
        v => vec![serde_json::from_value(v)?],
    })
}

/// The `.drv` of every job of revision `rev`, from the node's `/api/v1/revisions/{rev}`.
fn revision_jobs(client: &reqwest::blocking::Client, api: &str, rev: &str) -> Result<Vec<String>> {
    let mut url = reqwest::Url::parse(&format!("{api}/api/v1/revisions/"))?;
    url.path_segments_mut().map_err(|()| anyhow::anyhow!("{api} cannot be a base URL"))?.pop_if_empty().push(rev);
    let resp = client.get(url.clone()).send().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("revision {rev}: GET {url}: HTTP {status}: {}", body.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{url} is not JSON"))?;
    let jobs = v["jobs"].as_array().with_context(|| format!("{url}: no `jobs`"))?;
    Ok(jobs.iter().filter_map(|j| j["drv"].as_str().map(str::to_string)).collect())
}

fn judge(mesh: &[String], servers: &[ServerAnswer]) -> &'static str {
    let found: Vec<&String> =
        servers.iter().filter(|s| s.status == "found").filter_map(|s| s.nar_hash.as_ref()).collect();
    if mesh.len() > 1 {
        return "mismatch";
    }
    match (mesh.first(), found.first()) {
        (_, None) => "inconclusive",
        (Some(m), Some(_)) => {
            if found.iter().all(|h| *h == m) {
                "match"
            } else {
                "mismatch"
            }
        }
        (None, Some(first)) if found.len() >= 2 => {
            if found.iter().all(|h| h == first) {
                "match"
            } else {
                "mismatch"
            }
        }
        (None, Some(_)) => "inconclusive",
    }
}

/// Run `buildmesh challenge`; returns the exit status (0 all match, 2 a mismatch, 1 otherwise).
pub fn run(args: ChallengeArgs) -> Result<u8> {
    let keys = load_keys(&args.trusted_keys)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("creating the HTTP client")?;
    let api = args.api.trim_end_matches('/');
    let sd = match &args.store_dir {
        Some(s) => StoreDir::new(s)?,
        None => {
            let body = client
                .get(format!("{api}/api/v1/node"))
                .send()
                .and_then(|r| r.bytes())
                .with_context(|| format!("asking {api} for its store dir"))?;
            let info: serde_json::Value =
                serde_json::from_slice(&body).with_context(|| format!("{api}/api/v1/node is not JSON"))?;
            StoreDir::new(info["store_dir"].as_str().unwrap_or("/nix/store"))?
        }
    };
    let mut reports = Vec::new();
    let mut items: Vec<(String, Vec<OutputReport>)> = Vec::new();
    for p in &args.paths {
        let path = sd.parse_path(p).with_context(|| format!("{p} is not a store path in {sd}"))?;
        let shown = sd.display(&path);
        let reps = mesh_reports(&client, api, &shown)?;
        items.push((shown, reps));
    }
    let mut unbuilt = Vec::new();
    if let Some(rev) = &args.revision {
        for drv in revision_jobs(&client, api, rev)? {
            let reps = mesh_reports(&client, api, &drv)?;
            if reps.is_empty() {
                unbuilt.push(drv);
            }
            for r in reps {
                if !items.iter().any(|(p, _)| *p == r.path) {
                    items.push((r.path.clone(), vec![r]));
                }
            }
        }
    }
    for (shown, reps) in items {
        let path = sd.parse_path(&shown).with_context(|| format!("{shown} is not a store path in {sd}"))?;
        let atts: Vec<_> = reps.iter().flat_map(|r| r.attestations.iter()).collect();
        let mut mesh_hashes: Vec<String> = atts.iter().map(|a| a.nar_hash.clone()).collect();
        mesh_hashes.sort();
        mesh_hashes.dedup();
        let mut mesh_builders: Vec<BuilderHash> = atts
            .iter()
            .map(|a| BuilderHash {
                builder: a.peer_id.clone(),
                key: a.builder_key.split(':').next().unwrap_or_default().to_string(),
                nar_hash: a.nar_hash.clone(),
            })
            .collect();
        mesh_builders.sort_by(|a, b| (&a.nar_hash, &a.builder).cmp(&(&b.nar_hash, &b.builder)));
        mesh_builders.dedup_by(|a, b| a.builder == b.builder && a.nar_hash == b.nar_hash);
        let servers: Vec<ServerAnswer> =
            args.servers.iter().map(|s| ask(&client, s, &path.hash_part(), &sd, &keys)).collect();
        let verdict = judge(&mesh_hashes, &servers);
        let mut report = PathReport {
            path: shown,
            verdict,
            mesh_nar_hashes: mesh_hashes,
            mesh_attestations: atts.len(),
            mesh_builders,
            servers,
            diff: None,
        };
        if args.diff && verdict == "mismatch" {
            report.diff = Some(super::challenge_diff::diffs(&client, api, &report));
        }
        reports.push(report);
    }
    let totals = Totals {
        analyzed: reports.len(),
        identical: reports.iter().filter(|r| r.verdict == "match").count(),
        differed: reports.iter().filter(|r| r.verdict == "mismatch").count(),
        inconclusive: reports.iter().filter(|r| r.verdict == "inconclusive").count(),
    };
    if args.json {
        let mut j = serde_json::json!({"paths": reports, "totals": totals});
        if args.revision.is_some() {
            j["unbuilt_jobs"] = serde_json::json!(unbuilt);
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!("{}", render(&reports, &totals, args.verbose));
        if let Some(rev) = &args.revision
            && !unbuilt.is_empty()
        {
            println!("  ({} job(s) of {rev} have no attested output yet and were not analyzed)", unbuilt.len());
        }
    }
    Ok(if totals.differed > 0 {
        2
    } else if totals.identical == totals.analyzed {
        0
    } else {
        1
    })
}

/// The text report, worded as `guix challenge`'s.
pub fn render(reports: &[PathReport], totals: &Totals, verbose: bool) -> String {
    let mut s = String::new();
    for r in reports {
        let head = match r.verdict {
            "mismatch" => format!("{} contents differ:\n", r.path),
            "match" if verbose => format!("{} contents match:\n", r.path),
            "match" => continue,
            _ => {
                let why =
                    if r.servers.iter().all(|a| a.status != "found") { "no substitutes" } else { "no mesh build" };
                format!("{} inconclusive: could not challenge it: {why}\n", r.path)
            }
        };
        s.push_str(&head);
        match r.mesh_nar_hashes.as_slice() {
            [] => s.push_str(&format!("  no mesh build for '{}'\n", r.path)),
            hashes => {
                for h in hashes {
                    s.push_str(&format!("  mesh hash ({} attestation(s)): {h}\n", r.mesh_attestations));
                }
            }
        }
        if r.mesh_nar_hashes.len() > 1 || verbose {
            for b in &r.mesh_builders {
                s.push_str(&format!("    builder {} ({}): {}\n", b.key, b.builder, b.nar_hash));
            }
        }
        for a in &r.servers {
            match (&a.nar_hash, a.status) {
                (Some(h), "found") => {
                    s.push_str(&format!("  {:<50}: {h}  [{}]\n", a.url.as_deref().unwrap_or(&a.server), a.signature))
                }
                (_, status) => s.push_str(&format!("  {:<50}: {status} ({})\n", a.server, a.signature)),
            }
        }
        if let Some(d) = &r.diff {
            s.push_str(d);
        }
    }
    let pct = |n: usize| if totals.analyzed == 0 { 0.0 } else { 100.0 * n as f64 / totals.analyzed as f64 };
    s.push_str(&format!("\n{} store items were analyzed:\n", totals.analyzed));
    s.push_str(&format!("  - {} ({:.1}%) were identical\n", totals.identical, pct(totals.identical)));
    s.push_str(&format!("  - {} ({:.1}%) differed\n", totals.differed, pct(totals.differed)));
    s.push_str(&format!("  - {} ({:.1}%) were inconclusive\n", totals.inconclusive, pct(totals.inconclusive)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(status: &'static str, h: &str) -> ServerAnswer {
        ServerAnswer { server: "s".into(), status, nar_hash: Some(h.into()), url: None, signature: String::new() }
    }

    #[test]
    fn verdicts_follow_guix_challenge() {
        let m = vec!["a".to_string()];
        assert_eq!(judge(&m, &[ans("found", "a"), ans("missing", "")]), "match");
        assert_eq!(judge(&m, &[ans("found", "a"), ans("found", "b")]), "mismatch");
        assert_eq!(judge(&m, &[ans("missing", "")]), "inconclusive");
        // An untrusted narinfo does not count.
        assert_eq!(judge(&m, &[ans("untrusted", "b")]), "inconclusive");
        // No mesh build: servers against each other, as guix challenge against the first server.
        assert_eq!(judge(&[], &[ans("found", "a")]), "inconclusive");
        assert_eq!(judge(&[], &[ans("found", "a"), ans("found", "b")]), "mismatch");
        // The mesh's own builders disagree.
        assert_eq!(judge(&["a".into(), "b".into()], &[ans("found", "a")]), "mismatch");
    }
}
