//! `GET /metrics` (issue 14): the node's metrics in the OpenMetrics text format (prometheus-client).
//! On a mesh node the libp2p counters come first (gossipsub per topic, transport bytes), then
//! the buildmesh families, all documented in docs/metrics.md:
//!
//! | family | labels | what |
//! |---|---|---|
//! | `buildmesh_revision_jobs` | `channel`, `branch`, `system`, `state` | jobs of the latest revision of each branch by state (`queued`, `building`, `succeeded`, `failed`, `blocked`, `unknown`) |
//! | `buildmesh_revision_availability_ratio` | `channel`, `branch`, `system` | substitutable share of those jobs (the weather) |
//! | `buildmesh_revision_outputs` | `channel`, `branch`, `system`, `verdict` | jobs by reproducibility verdict (`matching`, `not-matching`, `single`) |
//! | `buildmesh_local_builds` | `state` | this node's build queue (`queued`, `running`, `done`, `failed`, `cancelled`) |
//! | `buildmesh_attestations`, `buildmesh_failures` | | signed records stored here |
//! | `buildmesh_outputs` | `verdict` | every output known here by verdict (`match`, `mismatch`, `inconclusive`) |
//! | `buildmesh_peers` | `state` | `members` of the mesh, `connected` peers |
//! | `buildmesh_gossip_bytes_total` | `direction` | gossip bytes `in` and `out` |
//! | `buildmesh_build_duration_seconds` | | histogram of this node's builds since it started |
//! | `buildmesh_store_disk_bytes` | `part` | disk used by the store: `database`, `blobs` |
//!
//! The revision families, the output verdicts and the disk use cost a walk of the data; they are
//! computed at most once per [`SLOW_TTL`] and reused in between.

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::qa::{JobState, OutputVerdict, RevisionSummary, WeatherOptions};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::store::unix_ms;

/// How long the costly families are reused.
pub const SLOW_TTL: Duration = Duration::from_secs(30);

type Labels = Vec<(String, String)>;

/// One labelled sample.
#[derive(Debug, Clone)]
struct Sample {
    family: &'static str,
    labels: Labels,
    value: f64,
}

/// The costly samples and when they were computed.
type Cached = Option<(Instant, Vec<Sample>)>;

static SLOW: LazyLock<Mutex<Cached>> = LazyLock::new(|| Mutex::new(None));

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The samples that walk the data: revisions (latest of each branch), output verdicts, disk use.
async fn slow_samples(state: &AppState) -> Vec<Sample> {
    if let Some((at, s)) = SLOW.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        && at.elapsed() < SLOW_TTL
    {
        return s.clone();
    }
    let mut out = Vec::new();
    if let Some(qa) = state.inner.qa.clone()
        && let Ok(_slot) = qa.slot().await
    {
        let this = qa.clone();
        let revs = crate::qa::blocking(move || this.list(None, None)).await.unwrap_or_default();
        let mut latest: std::collections::BTreeMap<(String, String), crate::qa::Revision> = Default::default();
        for r in revs {
            let k = (r.header.channel.clone(), r.header.branch.clone());
            if latest.get(&k).is_none_or(|o| o.header.created_at_ms < r.header.created_at_ms) {
                latest.insert(k, r);
            }
        }
        for ((channel, branch), r) in latest {
            let Ok(e) = qa.evaluate(&RevisionSummary::new(&r.header).revision).await else { continue };
            let base = [("channel", channel.as_str()), ("branch", branch.as_str())];
            for (system, counts) in &e.status.counts {
                for st in JobState::ALL {
                    let mut labels = l(&base);
                    labels.extend(l(&[("system", system), ("state", st.as_str())]));
                    out.push(Sample { family: "revision_jobs", labels, value: counts.get(st) as f64 });
                }
            }
            let mut verdicts: std::collections::BTreeMap<(String, &str), u64> = Default::default();
            for j in &e.status.jobs {
                for v in [OutputVerdict::Matching, OutputVerdict::NotMatching, OutputVerdict::Single] {
                    *verdicts.entry((j.system.clone(), v.as_str())).or_default() += u64::from(j.verdict == Some(v));
                }
            }
            for ((system, v), n) in verdicts {
                let mut labels = l(&base);
                labels.extend(l(&[("system", &system), ("verdict", v)]));
                out.push(Sample { family: "revision_outputs", labels, value: n as f64 });
            }
            let w = buildmesh_protocol::qa::weather(&e.manifest, &e.facts, unix_ms(), WeatherOptions::default());
            for (system, sw) in &w.systems {
                let mut labels = l(&base);
                labels.extend(l(&[("system", system)]));
                out.push(Sample { family: "revision_availability_ratio", labels, value: sw.ratio });
            }
        }
    }
    let store = state.store().clone();
    let more = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if let Ok(d) = store.disk_use() {
            out.push(Sample {
                family: "store_disk_bytes",
                labels: l(&[("part", "database")]),
                value: d.database_bytes as f64,
            });
            out.push(Sample {
                family: "store_disk_bytes",
                labels: l(&[("part", "blobs")]),
                value: d.blob_bytes as f64,
            });
        }
        if let Ok(r) = crate::audit::audit(&store) {
            for (class, n) in r.totals {
                out.push(Sample { family: "outputs", labels: l(&[("verdict", &class)]), value: n as f64 });
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    out.extend(more);
    *SLOW.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), out.clone()));
    out
}

fn gauge(reg: &mut Registry, name: &str, help: &str, samples: &[Sample], family: &str) {
    let g = Gauge::<f64, AtomicU64>::default();
    if let Some(s) = samples.iter().find(|s| s.family == family) {
        g.set(s.value);
    }
    reg.register(name, help, g);
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str, samples: &[Sample], family: &str) {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for s in samples.iter().filter(|s| s.family == family) {
        f.get_or_create(&s.labels).set(s.value);
    }
    reg.register(name, help, f);
}

/// The buildmesh families as OpenMetrics text (ends with `# EOF`).
pub async fn buildmesh_text(state: &AppState) -> String {
    let mut samples = slow_samples(state).await;
    let store = state.store().clone();
    let fast = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if let Ok(c) = store.build_counts() {
            for (s, n) in [
                ("queued", c.queued),
                ("running", c.running),
                ("done", c.done),
                ("failed", c.failed),
                ("cancelled", c.cancelled),
            ] {
                out.push(Sample { family: "local_builds", labels: l(&[("state", s)]), value: n as f64 });
            }
        }
        if let Ok(a) = store.attestation_summary() {
            out.push(Sample { family: "attestations", labels: vec![], value: a.count as f64 });
        }
        if let Ok(f) = store.failure_summary() {
            out.push(Sample { family: "failures", labels: vec![], value: f.count as f64 });
        }
        out
    })
    .await
    .unwrap_or_default();
    samples.extend(fast);
    let mut reg = Registry::with_prefix("buildmesh");
    gauge_family(
        &mut reg,
        "revision_jobs",
        "Jobs of the latest revision of each branch, by system and state",
        &samples,
        "revision_jobs",
    );
    gauge_family(
        &mut reg,
        "revision_availability_ratio",
        "Substitutable share of the latest revision of each branch, by system",
        &samples,
        "revision_availability_ratio",
    );
    gauge_family(
        &mut reg,
        "revision_outputs",
        "Jobs of the latest revision of each branch by reproducibility verdict",
        &samples,
        "revision_outputs",
    );
    gauge_family(&mut reg, "local_builds", "This node's build queue by state", &samples, "local_builds");
    gauge(&mut reg, "attestations", "Signed attestations stored on this node", &samples, "attestations");
    gauge(&mut reg, "failures", "Signed build failures stored on this node", &samples, "failures");
    gauge_family(
        &mut reg,
        "outputs",
        "Outputs known here by verdict (match, mismatch, inconclusive)",
        &samples,
        "outputs",
    );
    gauge_family(&mut reg, "store_disk_bytes", "Disk used by the store", &samples, "store_disk_bytes");
    let peers = Family::<Labels, Gauge>::default();
    let gossip = Family::<Labels, Counter>::default();
    if let Some(m) = &state.inner.mesh {
        let s = m.status();
        peers.get_or_create(&l(&[("state", "members")])).set(s.members as i64);
        peers.get_or_create(&l(&[("state", "connected")])).set(s.connected as i64);
        gossip.get_or_create(&l(&[("direction", "in")])).inc_by(s.gossip.bytes_in);
        gossip.get_or_create(&l(&[("direction", "out")])).inc_by(s.gossip.bytes_out);
    }
    reg.register("peers", "Mesh members and connected peers", peers);
    reg.register("gossip_bytes", "Gossip bytes received and sent", gossip);
    reg.register(
        "build_duration_seconds",
        "Durations of this node's builds since it started",
        crate::metrics::BUILD_DURATIONS.clone(),
    );
    let mut text = String::new();
    let _ = encode(&mut text, &reg);
    text
}

/// The handler.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    if let Some(m) = &state.inner.mesh {
        let t = m.metrics_text();
        text.push_str(t.strip_suffix("# EOF\n").unwrap_or(&t));
    }
    text.push_str(&buildmesh_text(&state).await);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}
