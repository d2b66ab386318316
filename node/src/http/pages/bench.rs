//! `buildmesh bench pages`: every dashboard page on revisions of 100,000 jobs, served over real
//! HTTP on loopback by the pages' router, asked by 50 concurrent clients; prints per page the
//! first (cold) answer, p50 and p99 with the clients, and the HTML size.
//!
//! The data is `buildmesh bench qa`'s ([`crate::qa::bench::setup`]): signed revisions and
//! attestations of three builders (1 % not matching, 2 % never built) in a temporary store; no
//! mesh, so the facts come from the store. The goals (issue 14 item 10): p99 ≤ 100 ms with 50
//! clients, no HTML page over 200 KB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::ReadyRule;
use buildmesh_protocol::store_path::StoreDir;

use super::PagesContext;
use crate::http::api::NodeInfo;
use crate::qa::{QaContext, QaParams};

/// `buildmesh bench pages` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PagesBenchArgs {
    /// Jobs per revision.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Revisions of the branch (the first two attested).
    #[arg(long, default_value_t = 3)]
    pub revisions: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Requests per page (spread over the clients).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Measure only the pages whose route starts with this (repeatable, e.g. `--page
    /// /reproducibility`; `/` is the overview alone); every page when none is given.
    #[arg(long = "page")]
    pub only: Vec<String>,
}

/// Goal: p99 at most this with the clients.
const GOAL_P99_MS: f64 = 100.0;
/// Goal: no HTML page larger.
const GOAL_HTML_BYTES: usize = 200 * 1024;

struct Row {
    page: String,
    cold_ms: f64,
    p50: f64,
    p99: f64,
    max: f64,
    bytes: usize,
    status: u16,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    client: &reqwest::Client,
    base: &str,
    page: &str,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Row> {
    let url = format!("{base}{page}");
    let t = Instant::now();
    let first = client.get(&url).header("accept", "text/html").send().await.with_context(|| format!("GET {url}"))?;
    let status = first.status().as_u16();
    let bytes = first.bytes().await?.len();
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let per_client = requests.div_ceil(clients.max(1));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let r = client.get(&url).header("accept", "text/html").send().await?;
                r.bytes().await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, reqwest::Error>(ms)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    all.sort_by(f64::total_cmp);
    Ok(Row {
        page: page.to_string(),
        cold_ms,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or(0.0),
        bytes,
        status,
    })
}

/// Run `buildmesh bench pages`.
pub fn run(args: PagesBenchArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let data = crate::qa::bench::setup(args.jobs, args.revisions, None)?;
    let setup = t0.elapsed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let qa = QaContext::new(QaParams {
        store: data.store.clone(),
        store_dir: StoreDir::nix(),
        key: data.submitter.clone(),
        mesh: None,
        trust: TrustConfig {
            trusted: Some(data.trusted.clone()),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        },
        rule: ReadyRule::default(),
        replicas: 2,
        local: crate::qa::explain::LocalCapabilities::default(),
    });
    qa.warm_up()?;
    let info = Arc::new(NodeInfo {
        peer_id: data.submitter.node_id().to_peer_id(),
        key_name: "bench-submitter".into(),
        public_key: data.submitter.nix_public_key().to_string(),
        guix_public_key: data.submitter.guix_public_key().to_sexp(),
        systems: crate::systems::Systems::default(),
        store_dir: "/nix/store".into(),
        executor: "local".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        addresses: Vec::new(),
        reachability: Default::default(),
        http: String::new(),
        admin_http: String::new(),
        slots: 2,
    });
    let ctx = PagesContext::new(qa.clone(), data.store.clone(), None, info);
    let drv =
        rt.block_on(qa.show("bench@rev1", None, None))?.status.jobs.get(12).map(|j| j.drv.clone()).unwrap_or_default();
    let drv_base = drv.rsplit('/').next().unwrap_or_default().to_string();
    let pages = [
        "/".to_string(),
        "/revisions".to_string(),
        "/revision/bench@rev1".to_string(),
        "/revision/bench@rev1?status=succeeded&page=50".to_string(),
        "/revision/bench@rev1?q=pkg99".to_string(),
        "/compare?base=bench@rev0&target=bench@rev1".to_string(),
        "/compare?base=bench@rev0&target=bench@rev1&class=unknown&page=3".to_string(),
        "/weather?revision=bench@rev1".to_string(),
        "/reproducibility?revision=bench@rev1".to_string(),
        "/builders".to_string(),
        format!("/drv/{drv_base}"),
        "/package/pkg12".to_string(),
    ];
    let rows = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding loopback")?;
        let addr = listener.local_addr()?;
        let app = super::router(ctx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.clients)
            .timeout(Duration::from_secs(120))
            .build()
            .context("HTTP client")?;
        let base = format!("http://{addr}");
        let mut rows = Vec::new();
        // `/` names the overview only; other routes name themselves and their variants.
        let wanted = |p: &str| args.only.iter().any(|o| if o == "/" { p == "/" } else { p.starts_with(o.as_str()) });
        for p in pages.iter().filter(|p| args.only.is_empty() || wanted(p)) {
            rows.push(measure(&client, &base, p, args.clients, args.requests).await?);
        }
        anyhow::Ok(rows)
    })?;
    println!(
        "buildmesh bench pages: {} jobs per revision, {} revisions, {} attestations by 3 builders (set up in {:.1} s); \
         {} concurrent clients, {} requests per page, HTML",
        args.jobs,
        args.revisions.max(2),
        data.attested,
        setup.as_secs_f64(),
        args.clients,
        args.requests
    );
    println!();
    println!("| page | status | first (cold) ms | p50 ms | p99 ms | max ms | HTML KB | goal |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let ok = r.p99 <= GOAL_P99_MS && r.bytes <= GOAL_HTML_BYTES && r.status == 200;
        println!(
            "| `{}` | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {} |",
            r.page,
            r.status,
            r.cold_ms,
            r.p50,
            r.p99,
            r.max,
            r.bytes as f64 / 1024.0,
            if ok { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
