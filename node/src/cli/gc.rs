//! `buildmesh gc`, `buildmesh pin`, `buildmesh unpin`: the node's garbage collector through its
//! API (`POST /api/v1/gc`, `/api/v1/pins`; see [`crate::gc`]).

use std::time::Duration;

use anyhow::{Context as _, bail};

/// `buildmesh gc` arguments.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The node's HTTP address.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Only say what would be collected.
    #[arg(long)]
    pub dry_run: bool,
    /// Print `{"freed_bytes", "store_bytes", "pinned_bytes", "collected": [paths]}`.
    #[arg(long)]
    pub json: bool,
    /// Where the node's API token is (default: $BUILDMESH_TOKEN, or the local node's data dir).
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
}

/// `buildmesh pin` / `buildmesh unpin` arguments.
#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The store path (full, or its base name).
    pub path: String,
    /// The node's HTTP address.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Print the node's JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Where the node's API token is.
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
}

fn post(
    api: &str,
    route: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{route}", api.trim_end_matches('/'));
    // A collection of a large store takes a while.
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(3600)).build().context("HTTP client")?;
    let mut request = client.post(&url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_string());
    }
    let resp = request.send().with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().with_context(|| format!("reading the answer of POST {url}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
    if !status.is_success() {
        let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or(text);
        bail!("POST {url}: {status}: {msg}{}", super::token::hint(status.as_u16(), token.is_some()));
    }
    Ok(v)
}

/// Run `buildmesh gc`.
pub fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let token = args.token.resolve(&args.api)?;
    let route = if args.dry_run { "/api/v1/gc?dry_run=1" } else { "/api/v1/gc" };
    let v = post(&args.api, route, token.as_deref(), None)?;
    let report: crate::gc::GcReport = serde_json::from_value(v).context("the node's answer is not a gc report")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for p in &report.collected {
        println!("{} {p}", if args.dry_run { "would collect" } else { "collected" });
    }
    println!(
        "{} {} bytes in {} path(s); the store takes {} bytes, {} of them pinned",
        if args.dry_run { "would free" } else { "freed" },
        report.freed_bytes,
        report.collected.len(),
        report.store_bytes,
        report.pinned_bytes
    );
    Ok(())
}

/// Run `buildmesh pin` (`add`) or `buildmesh unpin`.
pub fn run_pin(args: PinArgs, add: bool) -> anyhow::Result<()> {
    let token = args.token.resolve(&args.api)?;
    let route = if add { "/api/v1/pins" } else { "/api/v1/pins/remove" };
    let v = post(&args.api, route, token.as_deref(), Some(serde_json::json!({ "path": args.path })))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let path = v.get("path").and_then(|p| p.as_str()).unwrap_or(&args.path);
    let changed = v.get("changed").and_then(|c| c.as_bool()).unwrap_or(false);
    match (add, changed) {
        (true, true) => println!("pinned {path}"),
        (true, false) => println!("{path} was already pinned"),
        (false, true) => println!("unpinned {path}"),
        (false, false) => println!("{path} was not pinned"),
    }
    Ok(())
}
