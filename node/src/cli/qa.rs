//! The QA commands: `buildmesh revision submit|list|show`, `compare`, `weather`, `history`,
//! `explain`, `ready`. Each is a thin client of one `/api/v1/…` route: with `--json` it prints
//! exactly the route's JSON (so scripts may use either), without it a short human summary.
//! Exit status: 0 on success; `weather` exits 1 when coverage is below 100 %, `ready` when the
//! target is not ready; 2 for an error (unknown revision, bad input, node unreachable).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use buildmesh_protocol::store_path::StoreDir;
use serde_json::Value;

use super::submit_client::{self as client, ClientOptions};
use crate::submit::closure::{self, Origin};

/// Where the node is.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the node's HTTP API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7800", env = "BUILDMESH_API")]
    pub api: String,
    /// Print the route's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `buildmesh revision …`.
#[derive(Debug, clap::Subcommand)]
pub enum RevisionCommand {
    /// Submit a revision (an evaluation of a channel at a commit): its jobs are built by the mesh
    /// and the revision is published to every node.
    Submit(SubmitArgs),
    /// List the revisions this node knows, newest first.
    List(ListArgs),
    /// One revision: its jobs with status and verdict, and counts per system.
    Show(ShowArgs),
}

/// `buildmesh revision submit` arguments.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The channel (`guix`, `nixpkgs`).
    #[arg(long)]
    pub channel: String,
    /// The branch (`master`, `staging`).
    #[arg(long)]
    pub branch: String,
    /// The commit id.
    #[arg(long)]
    pub commit: String,
    /// A JSON file of jobs, `[{"package", "version", "drv"}]`, giving package names and versions
    /// explicitly (jobs named only on the command line get them from their derivation).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Take derivations from the .drv files of DIR instead of the local Nix store.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// With --from: a directory of source NARs (as `buildmesh submit --sources`); repeatable.
    #[arg(long = "sources", value_name = "DIR", requires = "from")]
    pub sources: Vec<PathBuf>,
    /// The store directory of the derivations.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_dir: String,
    /// How many independent builders should build each job (default: the node's `replicas`).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Where the node's API token is (default: $BUILDMESH_TOKEN, or the local node's data dir).
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
    /// The jobs' derivations: .drv files or .drv store paths.
    #[arg(value_name = "DRV")]
    pub drvs: Vec<String>,
}

/// `buildmesh revision list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only this branch.
    #[arg(long)]
    pub branch: Option<String>,
}

/// `buildmesh revision show` arguments.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The revision: `C@ID` (or `C:branch` for the latest of a branch).
    pub revision: String,
    /// Only jobs of this system.
    #[arg(long)]
    pub system: Option<String>,
    /// Only jobs with this status (`succeeded`, `failed`, `blocked`, `building`, `queued`, `unknown`).
    #[arg(long)]
    pub status: Option<String>,
}

/// `buildmesh compare` arguments.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The base revision: `C@ID` or `C:branch`.
    pub base: String,
    /// The target revision: `C@ID` or `C:branch`.
    pub target: String,
    /// Only this system.
    #[arg(long)]
    pub system: Option<String>,
    /// List only the pairs whose derivation changed (or that are on one side only); the summary
    /// still counts every pair.
    #[arg(long)]
    pub changed_only: bool,
}

/// `buildmesh weather` arguments.
#[derive(Debug, clap::Args)]
#[group(id = "what", required = true, multiple = false)]
pub struct WeatherArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// A revision: `C@ID` or `C:branch`.
    #[arg(long, group = "what")]
    pub revision: Option<String>,
    /// A file of store paths or .drv paths, one per line (`#` comments).
    #[arg(long, value_name = "FILE", group = "what")]
    pub manifest: Option<PathBuf>,
    /// Rank the root causes of what is missing by how many derivations depend on them.
    #[arg(long)]
    pub coverage: bool,
    /// List every missing output.
    #[arg(long)]
    pub display_missing: bool,
    /// With --manifest (a POST): where the node's API token is.
    #[command(flatten)]
    pub token: crate::cli::token::TokenArgs,
}

/// `buildmesh history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// A package name, or a .drv path (every revision it belongs to).
    pub package: String,
    /// Only this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only this branch.
    #[arg(long)]
    pub branch: Option<String>,
}

/// `buildmesh explain` arguments.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The derivation (.drv store path or basename).
    pub drv: String,
}

/// `buildmesh ready` arguments.
#[derive(Debug, clap::Args)]
pub struct ReadyArgs {
    /// Node address and output format.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The target revision: `C@ID` or `C:branch`.
    pub target: String,
    /// The base revision: `C@ID` or `C:branch`.
    #[arg(long)]
    pub base: String,
}

/// What a command's run decided about the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the answer is "no" (coverage below 100 %, not ready).
    No,
}

fn http() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .context("cannot create an HTTP client")
}

/// The error message of a JSON error body (`{"error": …}`), or the body.
fn error_text(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

fn url(api: &str, path: &str, query: &[(&str, Option<&str>)]) -> anyhow::Result<reqwest::Url> {
    let base = format!("{}{path}", api.trim_end_matches('/'));
    let pairs: Vec<(&str, &str)> = query.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
    reqwest::Url::parse_with_params(&base, &pairs).with_context(|| format!("bad API address {api}"))
}

/// GET a route and return its JSON; a non-2xx answer is an error with the node's message.
fn get_json(api: &str, path: &str, query: &[(&str, Option<&str>)]) -> anyhow::Result<Value> {
    let u = url(api, path, query)?;
    let resp = http()?.get(u.clone()).send().with_context(|| format!("GET {u}"))?;
    read_json(resp, &format!("GET {u}"))
}

fn read_json(resp: reqwest::blocking::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let body = resp.text().with_context(|| format!("reading the answer to {what}"))?;
    if !status.is_success() {
        bail!("{}: {}", status.as_u16(), error_text(&body));
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: the answer is not JSON"))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// A job of `--manifest FILE` for `revision submit`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct FileJob {
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    version: Option<String>,
    drv: String,
}

fn read_manifest_file(path: &PathBuf) -> anyhow::Result<Vec<FileJob>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the manifest {}", path.display()))?;
    let jobs: Vec<FileJob> = serde_json::from_str(&text).with_context(|| {
        format!("{}: not a manifest (a JSON array of {{\"package\", \"version\", \"drv\"}})", path.display())
    })?;
    for (i, j) in jobs.iter().enumerate() {
        if !j.drv.ends_with(".drv") {
            bail!("{}: job {i}: drv {:?} is not a .drv path", path.display(), j.drv);
        }
    }
    Ok(jobs)
}

/// Run `buildmesh revision …`.
pub fn run_revision(c: RevisionCommand) -> anyhow::Result<Outcome> {
    match c {
        RevisionCommand::Submit(a) => submit(a),
        RevisionCommand::List(a) => {
            let v = get_json(
                &a.api.api,
                "/api/v1/revisions",
                &[("channel", a.channel.as_deref()), ("branch", a.branch.as_deref())],
            )?;
            if a.api.json {
                print_json(&v)?;
            } else {
                for r in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<40} {:<16} {:>7} jobs  {}",
                        s(r, "revision"),
                        s(r, "branch"),
                        n(r, "job_count"),
                        s(r, "manifest")
                    );
                }
            }
            Ok(Outcome::Success)
        }
        RevisionCommand::Show(a) => {
            let path = format!("/api/v1/revisions/{}", client::encode_segment(&a.revision));
            let v = get_json(&a.api.api, &path, &[("system", a.system.as_deref()), ("status", a.status.as_deref())])?;
            if a.api.json {
                print_json(&v)?;
            } else {
                println!("{} ({} {}) by {}", s(&v, "revision"), s(&v, "channel"), s(&v, "branch"), s(&v, "submitter"));
                print_counts(&v["counts"]);
                for j in v["jobs"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<10} {:<13} {:<14} {} {}",
                        s(j, "status"),
                        s(j, "verdict"),
                        s(j, "system"),
                        s(j, "package"),
                        s(j, "version")
                    );
                }
            }
            Ok(Outcome::Success)
        }
    }
}

fn print_counts(counts: &Value) {
    if let Some(m) = counts.as_object() {
        for (system, c) in m {
            let parts: Vec<String> =
                c.as_object().into_iter().flatten().map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0))).collect();
            println!("  {system}: {}", parts.join(", "));
        }
    }
}

fn submit(a: SubmitArgs) -> anyhow::Result<Outcome> {
    let sd = StoreDir::new(&a.store_dir)?;
    let mut jobs: Vec<FileJob> = match &a.manifest {
        Some(p) => read_manifest_file(p)?,
        None => Vec::new(),
    };
    for d in &a.drvs {
        jobs.push(FileJob { package: None, version: None, drv: d.clone() });
    }
    if jobs.is_empty() {
        bail!("no jobs: name derivations (DRV...) or give --manifest FILE");
    }
    let origin = match &a.from {
        Some(dir) => Origin::Directory { dir: dir.clone(), sources: a.sources.clone() },
        None => Origin::LocalStore,
    };
    let token = a.token.resolve(&a.api.api)?;
    let drv_args: Vec<String> = jobs.iter().map(|j| j.drv.clone()).collect();
    let closure = closure::collect(&drv_args, &origin, &sd)?;
    let control = crate::cli::control::control_api(&a.api.api);
    let opts = ClientOptions {
        api: control.clone(),
        priority: 0,
        replicas: a.replicas.unwrap_or(0),
        progress: false,
        token: token.clone(),
    };
    client::upload(&closure, &opts)?;
    // The jobs by store path (a .drv file given with --from becomes the path it hashes to):
    // `requested` is in argument order without duplicates.
    let mut by_arg: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    let mut next = closure.requested.iter();
    for j in &jobs {
        if !by_arg.contains_key(j.drv.as_str()) {
            let path = next.next().map(|p| sd.display(p)).unwrap_or_else(|| j.drv.clone());
            by_arg.insert(j.drv.as_str(), path);
        }
    }
    let body_jobs: Vec<FileJob> = jobs
        .iter()
        .map(|j| FileJob {
            package: j.package.clone(),
            version: j.version.clone(),
            drv: by_arg.get(j.drv.as_str()).cloned().unwrap_or_else(|| j.drv.clone()),
        })
        .collect();
    let body = serde_json::json!({
        "channel": a.channel,
        "branch": a.branch,
        "commit": a.commit,
        "replicas": a.replicas,
        "jobs": body_jobs,
    });
    let u = url(&control, "/api/v1/revisions", &[])?;
    let mut req = http()?
        .post(u.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?);
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let v = read_json(req.send().with_context(|| format!("POST {u}"))?, &format!("POST {u}"))?;
    if a.api.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("revision {} accepted: {} job(s)", s(&v, "revision"), n(&v, "jobs"));
    }
    Ok(Outcome::Success)
}

/// Run `buildmesh compare`.
pub fn run_compare(a: CompareArgs) -> anyhow::Result<Outcome> {
    let v = get_json(
        &a.api.api,
        "/api/v1/compare",
        &[
            ("base", Some(&a.base)),
            ("target", Some(&a.target)),
            ("system", a.system.as_deref()),
            ("changed_only", a.changed_only.then_some("true")),
        ],
    )?;
    if a.api.json {
        print_json(&v)?;
        return Ok(Outcome::Success);
    }
    println!("{} -> {}", s(&v, "base"), s(&v, "target"));
    if let Some(m) = v["summary"].as_object() {
        let parts: Vec<String> = m.iter().map(|(k, c)| format!("{k} {}", c.as_u64().unwrap_or(0))).collect();
        println!("  {}", parts.join(", "));
    }
    for key in ["new_packages", "removed_packages"] {
        let list: Vec<&str> = v[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !list.is_empty() {
            println!("  {key}: {}", list.join(" "));
        }
    }
    for c in v["derivation_changes"].as_array().into_iter().flatten() {
        let bc = s(c, "build_change");
        let rc = s(c, "repro_change");
        if bc != "still-working" || rc != "unchanged" {
            println!("  {:<14} {:<19} {:<14} {}", bc, rc, s(c, "system"), s(c, "package"));
        }
    }
    Ok(Outcome::Success)
}

/// Run `buildmesh weather`.
pub fn run_weather(a: WeatherArgs) -> anyhow::Result<Outcome> {
    let coverage = a.coverage.then_some("true");
    let missing = a.display_missing.then_some("true");
    let v = if let Some(r) = &a.revision {
        get_json(
            &a.api.api,
            "/api/v1/weather",
            &[("revision", Some(r)), ("coverage", coverage), ("display_missing", missing)],
        )?
    } else {
        let file = a.manifest.as_ref().context("--revision or --manifest is required")?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let paths: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let body = serde_json::json!({
            "paths": paths,
            "coverage": a.coverage,
            "display_missing": a.display_missing,
        });
        let u = url(&crate::cli::control::control_api(&a.api.api), "/api/v1/weather", &[])?;
        let mut req = http()?
            .post(u.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
        if let Some(t) = a.token.resolve(&a.api.api)? {
            req = req.bearer_auth(t);
        }
        read_json(req.send().with_context(|| format!("POST {u}"))?, "weather")?
    };
    let complete =
        v["systems"].as_object().is_some_and(|m| m.values().all(|sys| n(sys, "available") == n(sys, "total")));
    if a.api.json {
        print_json(&v)?;
    } else {
        for (system, w) in v["systems"].as_object().into_iter().flatten() {
            println!(
                "{system}: {}/{} outputs available ({:.1}%), {} queued, {} building, {} failed, {} NAR bytes, {:.1} builds/h",
                n(w, "available"),
                n(w, "total"),
                w["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                n(w, "queued"),
                n(w, "building"),
                n(w, "failed"),
                n(w, "nar_bytes"),
                w["builds_per_hour"].as_f64().unwrap_or(0.0)
            );
        }
        for c in v["coverage"].as_array().into_iter().flatten() {
            println!(
                "  {:>6} dependents  {} ({}) {}",
                n(c, "dependents"),
                s(c, "package"),
                s(c, "system"),
                s(c, "drv")
            );
        }
        for m in v["missing"].as_array().into_iter().flatten() {
            println!("  missing {}", m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string()));
        }
    }
    Ok(if complete { Outcome::Success } else { Outcome::No })
}

/// Run `buildmesh history`.
pub fn run_history(a: HistoryArgs) -> anyhow::Result<Outcome> {
    let is_drv = a.package.ends_with(".drv");
    let key = if is_drv { "drv" } else { "package" };
    let v = get_json(
        &a.api.api,
        "/api/v1/history",
        &[(key, Some(&a.package)), ("channel", a.channel.as_deref()), ("branch", a.branch.as_deref())],
    )?;
    if a.api.json {
        print_json(&v)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(Outcome::Success)
}

/// Run `buildmesh explain`.
pub fn run_explain(a: ExplainArgs) -> anyhow::Result<Outcome> {
    let v = get_json(&a.api.api, "/api/v1/explain", &[("drv", Some(&a.drv))])?;
    if a.api.json {
        print_json(&v)?;
    } else {
        println!("{}: {}", s(&v, "drv"), s(&v, "status"));
        for r in v["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            println!("  {r}");
        }
        if !s(&v, "unblock").is_empty() {
            println!("  to unblock: {}", s(&v, "unblock"));
        }
    }
    Ok(Outcome::Success)
}

/// Run `buildmesh ready`.
pub fn run_ready(a: ReadyArgs) -> anyhow::Result<Outcome> {
    let v = get_json(&a.api.api, "/api/v1/ready", &[("target", Some(&a.target)), ("base", Some(&a.base))])?;
    let ready = v["ready"].as_bool().unwrap_or(false);
    if a.api.json {
        print_json(&v)?;
    } else {
        println!("ready: {ready}");
        for r in v["reasons"].as_array().into_iter().flatten() {
            println!(
                "  {}",
                r.get("text").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| r.to_string())
            );
        }
        println!("rule: {}", v["rule"]);
    }
    Ok(if ready { Outcome::Success } else { Outcome::No })
}
