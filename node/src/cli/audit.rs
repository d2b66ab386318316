//! `buildmesh query`, `buildmesh audit` (through a node's API) and `buildmesh verify` (offline).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::audit::{AuditReport, OutputReport, VerifyReport};

/// Default API address of a local node.
const DEFAULT_API: &str = "http://127.0.0.1:7800";

/// `buildmesh query`: every attestation of an output (or of each output of a derivation).
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The node's API.
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// Print JSON: one object for an output path, a list for a `.drv`.
    #[arg(long)]
    pub json: bool,
    /// An output store path or a `.drv` store path.
    pub target: String,
}

/// `buildmesh audit`: every output in the node's view, classified.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The node's API.
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// Print JSON (`{"outputs": [...], "builders": [...], "totals": {...}}`).
    #[arg(long)]
    pub json: bool,
}

/// `buildmesh verify`: re-check an attestation export offline.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The export (`GET /api/v1/attestations?format=jsonl`), or `-` for standard input.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().context("creating the HTTP client")
}

fn get_json<T: serde::de::DeserializeOwned>(api: &str, path: &str, query: &[(&str, &str)]) -> Result<T> {
    let base = format!("{}{path}", api.trim_end_matches('/'));
    let url = reqwest::Url::parse_with_params(&base, query).with_context(|| format!("bad API address {base}"))?;
    let resp = client()?.get(url.clone()).send().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{url}: {status}: {msg}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: the answer is not the expected JSON"))
}

fn print_report(r: &OutputReport) {
    let note = if r.likely_emulation_bug { "  (likely emulation bug: the native builders agree)" } else { "" };
    println!("{}  {}{note}", r.path, r.verdict.as_str());
    for a in &r.attestations {
        println!(
            "  {}  {}  {} bytes  {}  {}",
            a.builder_key,
            a.nar_hash,
            a.nar_size,
            if a.emulated { "emulated" } else { "native" },
            a.signature
        );
    }
}

/// Run `buildmesh query`.
pub fn run_query(args: QueryArgs) -> Result<()> {
    let reports: Vec<OutputReport> = get_json(&args.api, "/api/v1/query", &[("target", &args.target)])?;
    let is_drv = args.target.ends_with(".drv");
    if args.json {
        if is_drv {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            let one = reports.first().context("the node answered with no report")?;
            println!("{}", serde_json::to_string_pretty(one)?);
        }
    } else {
        if reports.is_empty() {
            println!("{}: no attestations", args.target);
        }
        reports.iter().for_each(print_report);
    }
    Ok(())
}

fn print_audit(r: &AuditReport) {
    for o in &r.outputs {
        let note = if o.likely_emulation_bug { "  likely emulation bug (native builders agree)" } else { "" };
        println!("{:<12} {}  ({} builders){note}", o.class(), o.path, o.attestations.len());
    }
    println!();
    println!("{:<60} {:>7} {:>7} {:>9} {:>7} {:>9}", "builder", "outputs", "match", "mismatch", "single", "disagreed");
    for b in &r.builders {
        println!(
            "{:<60} {:>7} {:>7} {:>9} {:>7} {:>9}",
            b.builder_key, b.outputs, b.matched, b.mismatched, b.single, b.disagreed
        );
    }
    println!();
    let t = |k: &str| r.totals.get(k).copied().unwrap_or(0);
    println!("{} match, {} mismatch, {} inconclusive", t("match"), t("mismatch"), t("inconclusive"));
    let emulation = r.outputs.iter().filter(|o| o.likely_emulation_bug).count();
    if emulation > 0 {
        println!("{emulation} of the mismatches are likely emulation bugs (only emulated builders disagree)");
    }
}

/// Run `buildmesh audit`.
pub fn run_audit(args: AuditArgs) -> Result<()> {
    let report: AuditReport = get_json(&args.api, "/api/v1/audit", &[])?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_audit(&report);
    }
    Ok(())
}

/// Run `buildmesh verify`; fails when any line does not verify.
pub fn run_verify(args: VerifyArgs) -> Result<()> {
    let report: VerifyReport = if args.file.as_os_str() == "-" {
        crate::audit::verify_export(&mut std::io::stdin().lock())
    } else {
        let f = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        crate::audit::verify_export(&mut BufReader::new(f))
    }
    .with_context(|| format!("reading {}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &report.bad {
            println!("{}:{}: {}", args.file.display(), b.line, b.reason);
        }
        print_audit(&report.audit);
        println!("{} of {} attestations verified", report.valid, report.lines);
    }
    if !report.bad.is_empty() {
        bail!("{} of {} lines in {} do not verify", report.bad.len(), report.lines, args.file.display());
    }
    Ok(())
}
