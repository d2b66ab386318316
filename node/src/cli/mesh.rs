//! `buildmesh status` and `buildmesh retry DRV --on PEER`: the mesh seen through a node's API.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// `buildmesh status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The node's HTTP address.
    #[arg(long, env = "BUILDMESH_API", default_value = "http://127.0.0.1:7800", value_name = "URL")]
    pub api: String,
    /// Print `{"node": …, "mesh": …, "peers": […], "systems": {SYSTEM: {"native": N, "emulated": N}}}`
    /// as JSON (`systems` counts this node and the peers that are members, by how they build).
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
    let systems = system_counts(&node, &peers);
    if args.json {
        let doc = serde_json::json!({ "node": node, "mesh": mesh, "peers": peers, "systems": systems });
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
    if let Some(systems) = systems.as_object() {
        for (system, c) in systems {
            println!("system   {system}: {} native, {} emulated", c["native"], c["emulated"]);
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

/// Per system, how many builders build it natively and how many under emulation: this node (from
/// `/api/v1/node`) and every peer that is a member (from `/api/v1/peers`).
pub fn system_counts(node: &serde_json::Value, peers: &serde_json::Value) -> serde_json::Value {
    let mut counts: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    let members = peers.as_array().into_iter().flatten().filter(|p| p["member"].as_bool() == Some(true));
    for builder in std::iter::once(node).filter(|n| !n.is_null()).chain(members) {
        for (mode, emulated) in [("native", false), ("emulated", true)] {
            for s in builder["systems"][mode].as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
                let c = counts.entry(s.to_string()).or_default();
                if emulated { c.1 += 1 } else { c.0 += 1 }
            }
        }
    }
    counts.into_iter().map(|(s, (n, e))| (s, serde_json::json!({ "native": n, "emulated": e }))).collect()
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
    // How the chosen peer builds the derivation's system (to check an emulated result, pick a
    // peer that builds it natively): from the node's view of its peers and of the derivation.
    let mode = retry_mode(api, drv, on).unwrap_or(None);
    if json {
        let mut v = v;
        if let (Some(obj), Some(mode)) = (v.as_object_mut(), mode) {
            obj.insert("mode".into(), serde_json::Value::String(mode.to_string()));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match mode {
            Some(mode) => println!("{drv}: retry requested on {on} (it builds this system {mode})"),
            None => println!("{drv}: retry requested on {on}"),
        }
    }
    Ok(())
}

/// `native` or `emulated`: how peer `on` announced it builds the system of `drv`, when the node
/// at `api` knows both (`None` otherwise).
fn retry_mode(api: &str, drv: &str, on: &str) -> anyhow::Result<Option<&'static str>> {
    let base = api.trim_end_matches('/');
    let c = client()?;
    let Some(explain) = get(&c, &format!("{base}/api/v1/explain?drv={drv}"))? else { return Ok(None) };
    let Some(system) = explain["system"].as_str() else { return Ok(None) };
    let peers = get(&c, &format!("{base}/api/v1/peers"))?.unwrap_or_default();
    let Some(peer) = peers.as_array().into_iter().flatten().find(|p| p["peer_id"] == on || p["key"] == on) else {
        return Ok(None);
    };
    let has = |mode: &str| peer["systems"][mode].as_array().is_some_and(|l| l.iter().any(|s| s == system));
    Ok(if has("native") {
        Some("native")
    } else if has("emulated") {
        Some("emulated")
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn counts_builders_per_system_by_mode() {
        let node = json!({"systems": {"native": ["x86_64-linux", "i686-linux"], "emulated": ["aarch64-linux"]}});
        let peers = json!([
            {"member": true, "systems": {"native": ["aarch64-linux"], "emulated": []}},
            {"member": true, "systems": {"native": ["x86_64-linux"], "emulated": ["aarch64-linux"]}},
            {"member": false, "systems": {"native": ["aarch64-linux"], "emulated": []}},
        ]);
        let c = super::system_counts(&node, &peers);
        assert_eq!(c["aarch64-linux"], json!({"native": 1, "emulated": 2}));
        assert_eq!(c["x86_64-linux"], json!({"native": 2, "emulated": 0}));
        assert_eq!(c["i686-linux"], json!({"native": 1, "emulated": 0}));
    }
}
