//! `buildmesh status` and `buildmesh retry DRV --on PEER`: the mesh seen through a node's API.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// `buildmesh status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The node's HTTP address.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Print `{"node": …, "mesh": …, "peers": […]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot create an HTTP client")
}

fn get(client: &reqwest::blocking::Client, url: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let resp = client.get(url).send().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = resp.text().with_context(|| format!("reading GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    Ok(Some(serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))?))
}

/// Run `buildmesh status`.
pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let base = args.api.trim_end_matches('/');
    let c = client()?;
    let node = get(&c, &format!("{base}/api/v1/node"))?.unwrap_or(serde_json::Value::Null);
    let mesh = get(&c, &format!("{base}/api/v1/mesh"))?;
    let peers = get(&c, &format!("{base}/api/v1/peers"))?.unwrap_or(serde_json::json!([]));
    if args.json {
        let doc = serde_json::json!({ "node": node, "mesh": mesh, "peers": peers });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    println!("node     {} ({})", s(&node, "peer_id"), s(&node, "public_key"));
    if let Some(b) = node.get("builds") {
        println!("builds   {b}");
    }
    let Some(mesh) = mesh else {
        println!("mesh     not running on this node (start it with --mesh or --bootstrap)");
        return Ok(());
    };
    if let Some(addrs) = mesh.get("addresses").and_then(|a| a.as_array()) {
        for a in addrs.iter().filter_map(|a| a.as_str()) {
            println!("address  {a}");
        }
    }
    let n = |k: &str| mesh.get(k).cloned().unwrap_or(serde_json::Value::Null);
    println!(
        "mesh     {} member(s), {} connected, {} derivation(s) tracked ({} active), quorum {}",
        n("members"),
        n("connected"),
        n("drvs_tracked"),
        n("drvs_active"),
        n("quorum")
    );
    println!("gossip   {}", n("gossip"));
    println!("sync     {}", n("sync"));
    if let Some(list) = mesh.get("building").and_then(|b| b.as_array())
        && !list.is_empty()
    {
        for d in list.iter().filter_map(|d| d.as_str()) {
            println!("building {d}");
        }
    }
    let peers = peers.as_array().cloned().unwrap_or_default();
    println!("peers    {}", peers.len());
    for p in &peers {
        let systems = p.pointer("/systems/native").cloned().unwrap_or(serde_json::json!([]));
        println!(
            "  {} {}{}slots {} load {} systems {} {}",
            s(p, "peer_id"),
            if p.get("connected").and_then(|c| c.as_bool()) == Some(true) { "connected " } else { "" },
            if p.get("trusted").and_then(|c| c.as_bool()) == Some(true) { "trusted " } else { "" },
            p.get("slots").cloned().unwrap_or_default(),
            p.get("load").cloned().unwrap_or_default(),
            systems,
            p.get("addresses")
                .and_then(|a| a.as_array())
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .unwrap_or("")
        );
    }
    Ok(())
}

/// `buildmesh retry DRV --on PEER`: ask the node at `api` to have `drv` built on `on` (sending
/// `token`, the node's API token, when given).
pub fn run_retry_on(api: &str, drv: &str, on: &str, json: bool, token: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/mesh/retry", api.trim_end_matches('/'));
    let mut request = client()?.post(&url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "drv": drv, "on": on }).to_string())
        .send()
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp.text().with_context(|| format!("reading the answer of POST {url}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if !status.is_success() {
        let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or(body);
        let hint = super::token::hint(status.as_u16(), token.is_some());
        bail!("retry {drv} --on {on}: {status}: {msg}{hint}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{drv}: retry requested on {on}");
    }
    Ok(())
}
