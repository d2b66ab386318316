//! `buildmesh log`, `buildmesh diff` and `buildmesh export` (issue 14), through a node's API.
//!
//! Each prints what the node answers: the log (checked by the node against the builder's signed
//! digest when it came from a peer), the NAR diff of a disputed output, the in-toto export.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Default API address of a local node.
const DEFAULT_API: &str = "http://127.0.0.1:7800";

/// `buildmesh log DRV [--builder KEY]`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The node's API.
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// Only this builder's log: its peer id or node id (64 hex digits).
    #[arg(long)]
    pub builder: Option<String>,
    /// The derivation (`.drv` path or base name).
    pub drv: String,
}

/// `buildmesh diff PATH [--builders KEY KEY]`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The node's API.
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// The two builders to compare (peer ids or node ids); default: two that disagree.
    #[arg(long, num_args = 2, value_names = ["KEY", "KEY"])]
    pub builders: Option<Vec<String>>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The output store path.
    pub path: String,
}

/// `buildmesh export --format in-toto`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The node's API.
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// `in-toto` (DSSE envelopes, one JSON per line) or `jsonl` (the buildmesh export).
    #[arg(long, default_value = "in-toto")]
    pub format: String,
}

fn get(api: &str, path: &str, query: &[(&str, &str)]) -> Result<Vec<u8>> {
    get_with_headers(api, path, query).map(|(body, _)| body)
}

fn get_with_headers(api: &str, path: &str, query: &[(&str, &str)]) -> Result<(Vec<u8>, reqwest::header::HeaderMap)> {
    let base = format!("{}{path}", api.trim_end_matches('/'));
    let url = reqwest::Url::parse_with_params(&base, query).with_context(|| format!("bad API address {base}"))?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .context("creating the HTTP client")?;
    let resp =
        client.get(url.clone()).header("accept", "application/json").send().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{status}: {msg}");
    }
    Ok((body.to_vec(), headers))
}

/// Run `buildmesh log`.
pub fn run_log(a: LogArgs) -> Result<()> {
    let drv = urlencode(&a.drv);
    let q: Vec<(&str, &str)> = a.builder.as_deref().map(|b| ("builder", b)).into_iter().collect();
    let log = get(&a.api, &format!("/api/v1/builds/{drv}/log"), &q)?;
    std::io::stdout().write_all(&log).context("writing the log")?;
    Ok(())
}

/// Run `buildmesh diff`.
pub fn run_diff(a: DiffArgs) -> Result<()> {
    let mut q = vec![("path", a.path.as_str())];
    if let Some(b) = &a.builders {
        q.push(("a", b[0].as_str()));
        q.push(("b", b[1].as_str()));
    }
    let body = get(&a.api, "/api/v1/diff", &q)?;
    if a.json {
        std::io::stdout().write_all(&body).context("writing")?;
        println!();
        return Ok(());
    }
    let d: crate::audit::diff::DiffReport = serde_json::from_slice(&body).context("the answer is not a diff")?;
    print!("{}", d.to_text());
    Ok(())
}

/// Run `buildmesh export`. For `in-toto`, a line on stderr says how many attestations were
/// exported and how many of other builders were left out for want of their own envelope.
pub fn run_export(a: ExportArgs) -> Result<()> {
    let (body, headers) = get_with_headers(&a.api, "/api/v1/attestations", &[("format", a.format.as_str())])?;
    std::io::stdout().write_all(&body).context("writing the export")?;
    let count = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(left_out) = count(crate::http::api::NOT_EXPORTED_HEADER) {
        let exported = count("x-buildmesh-exported").unwrap_or_else(|| "?".into());
        eprintln!(
            "buildmesh export: {exported} envelopes, each signed by its builder; {left_out} attestations of other \
             builders not exported (no envelope signed by their builder: made by an older node, or too large)"
        );
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'+' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
