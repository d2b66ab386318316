//! QA across revisions (issue 13, item 9): two revisions of the package set in
//! `tests/fixtures/qa/default.nix`, made by real `nix-instantiate`, built by a mesh of three real
//! `buildmesh node` processes with k = 2; then every QA answer (revision status, compare, weather,
//! history, explain, ready) through the CLI of issue 13 item 8, each equal to its HTTP route, and
//! asserted against what the fixture's table and the derivation graph say.

mod mesh_support;
mod qa_support;

use std::collections::BTreeMap;
use std::time::Duration;

use buildmesh::submit::closure::{self, Origin};
use buildmesh_protocol::store_path::StoreDir;
use mesh_support::*;
use qa_support::*;

/// The two revisions, instantiated into a throwaway store under `dir`.
fn instantiate(dir: &std::path::Path) -> (QaStore, Revision, Revision) {
    buildmesh_tests::require_nix();
    let store = QaStore::new(&dir.join("nix"));
    let r1 = store.instantiate(1);
    let r2 = store.instantiate(2);
    check_fixture_shape(&r1, &r2);
    (store, r1, r2)
}

/// Real `nix-instantiate` makes both revisions; they have the shape the expectations rest on,
/// and buildmesh's submit code collects each revision's closure from the `.drv` directory alone
/// (what `--from DIR` hands to a node): every job, no other derivation, no source.
#[test]
fn fixture_instantiates_both_revisions_with_real_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, r1, r2) = instantiate(tmp.path());
    let sd = StoreDir::nix();
    for r in [&r1, &r2] {
        let drvs = r.drvs();
        let origin = Origin::Directory { dir: store.drv_dir(), sources: Vec::new() };
        let c = closure::collect(&drvs, &origin, &sd).unwrap_or_else(|e| panic!("rev {}: {e}", r.rev));
        let requested: Vec<String> = c.requested.iter().map(|p| sd.display(p)).collect();
        assert_eq!(requested, drvs);
        let all: Vec<String> = c.drvs.keys().map(|p| sd.display(p)).collect();
        assert_eq!(all, drvs, "rev {}: the closure is the jobs", r.rev);
        assert!(c.sources.is_empty(), "no input sources: {:?}", c.sources.keys());
    }
}

/// Every derivation of both revisions with how it ends (a derivation in both has one fate).
fn fates(revs: &[&Revision]) -> BTreeMap<String, (Package, End)> {
    let mut out: BTreeMap<String, (Package, End)> = BTreeMap::new();
    for r in revs {
        for p in r.packages.values() {
            let end = expected_end(r.rev, &p.package);
            if let Some((_, before)) = out.insert(p.drv.clone(), (p.clone(), end)) {
                assert_eq!(before, end, "{} has two fates", p.drv);
            }
        }
    }
    out
}

/// Wait until the mesh did all it can with the derivations of `revs` (submitted through node 0),
/// and check that the mesh's own records say what the fixture's table says: agreed outputs
/// attested by two builders with one NarHash, unreproducible ones with two NarHashes, failed
/// ones given up with the builder's exit (never attested), blocked ones failed on the submitter
/// for their failed input, the foreign system's job never taken. These are the facts the QA
/// answers are computed from.
fn wait_for_mesh_facts(c: &Cluster, revs: &[&Revision]) {
    let fates = fates(revs);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let Err(why) = mesh_facts(c, &fates) else { return };
        assert!(std::time::Instant::now() < deadline, "the mesh did not end as the table says: {why}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One look at the facts of [`wait_for_mesh_facts`]: `Err` names the first that does not hold
/// (yet). A state is not final on the submitter (its own build of an unreproducible derivation
/// is `done` until the second builder's attestation disagrees), hence the whole is re-checked.
fn mesh_facts(c: &Cluster, fates: &BTreeMap<String, (Package, End)>) -> Result<(), String> {
    let url = &c.urls[0];
    for (drv, (p, end)) in fates {
        let (status, j) = get_json(&format!("{url}/api/v1/builds/{}", base(drv)));
        if status == 404 && *end == End::Queued {
            // A mesh job that nobody takes leaves no build record on the submitter.
        } else if status != 200 {
            return Err(format!("{} ({drv}): no build record on the submitter yet: {j}", p.package));
        }
        let state = j["state"].as_str().unwrap_or_default();
        let error = j["error"].as_str().unwrap_or_default();
        let ok = match end {
            End::Matching => state == "done",
            End::NotMatching => state == "failed" && error.contains("disagree"),
            // Given up by the mesh (the submitter's record may show its own builder's exit, when
            // it was one of the two; its dependents failing for their input show that the mesh
            // gave it up), or never published because an input failed.
            End::Failed => state == "failed" && !error.contains("InputFailed"),
            End::Blocked => state == "failed" && error.contains("InputFailed"),
            End::Queued => !["done", "failed"].contains(&state),
        };
        if !ok {
            return Err(format!("{} ({drv}) should be {end:?} on the submitter: {j}", p.package));
        }
        for out in p.outputs.values() {
            let att = c.attesters(0, out);
            let builders: std::collections::BTreeSet<&String> = att.values().flatten().collect();
            let ok = match end {
                End::Matching => att.len() == 1 && builders.len() == 2,
                End::NotMatching => att.len() == 2 && builders.len() == 2,
                End::Failed | End::Blocked | End::Queued => att.is_empty(),
            };
            if !ok {
                return Err(format!("{} {out} should be {end:?}: attestations {att:?}", p.package));
            }
        }
    }
    Ok(())
}

/// The fixture does on today's mesh what its table says (plain `buildmesh submit` of both
/// revisions through node 0 of a 3-node mesh, k = 2): the facts every QA answer below rests on.
#[test]
fn fixture_builds_on_a_mesh_as_its_table_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, r1, r2) = instantiate(tmp.path());
    let c = Cluster::start(tmp.path(), 3, &[]);
    c.submit(0, &store.drv_dir(), &r1.drvs(), 2);
    c.submit(0, &store.drv_dir(), &r2.drvs(), 2);
    wait_for_mesh_facts(&c, &[&r1, &r2]);
}

// ---------------------------------------------------------------------------------------------
// The QA interface of issue 13 item 8, through the CLI and its HTTP twins.

/// The channel of every revision of the test.
const CHANNEL: &str = "qa";

/// The HTTP route of `revision show C@ID` (item 8 names only `/api/v1/revisions`).
fn show_route(id: &str) -> String {
    format!("/api/v1/revisions/{id}")
}

/// `buildmesh ARGS --api URL --json`: (exit status, stdout, stderr).
fn run(url: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api", url, "--json"]);
    cli(&all)
}

/// Stdout of a `--json` command as JSON (the whole of it).
fn parse(args: &[&str], out: &str, err: &str) -> serde_json::Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("buildmesh {}: stdout is not one JSON value ({e}):\n{out}\n{err}", args.join(" ")))
}

/// Percent-encode a query component (everything but the unreserved characters of RFC 3986).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `url` + `path` with the query pairs: (status, JSON body, or the body as a JSON string when
/// it is not JSON).
fn route(url: &str, path: &str, query: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    let full = if q.is_empty() { format!("{url}{path}") } else { format!("{url}{path}?{}", q.join("&")) };
    let r = http().get(&full).send().unwrap_or_else(|e| panic!("GET {full}: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().expect("body");
    // An error body that is not JSON is kept as a string (its text still has to name the culprit).
    let j = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, j)
}

/// The CLI's JSON (exit status 0 or not, as `succeeds` says when it says), which must equal what the HTTP
/// route answers (200). Asked up to three times, so that an answer that moves on between the two
/// requests (a clock-dependent field) does not fail it; a real difference does.
fn twin(
    url: &str,
    args: &[&str],
    succeeds: impl Into<Option<bool>>,
    path: &str,
    query: &[(&str, &str)],
) -> serde_json::Value {
    let succeeds: Option<bool> = succeeds.into();
    let mut last = None;
    for _ in 0..3 {
        let (st, out, err) = run(url, args);
        if let Some(ok) = succeeds {
            assert_eq!(st.success(), ok, "buildmesh {}: {st}\n{out}\n{err}", args.join(" "));
        }
        let from_cli = parse(args, &out, &err);
        let (status, from_route) = route(url, path, query);
        assert_eq!(status, 200, "GET {path} {query:?}: {from_route}");
        if from_cli == from_route {
            return from_cli;
        }
        last = Some((from_cli, from_route));
        std::thread::sleep(Duration::from_millis(300));
    }
    let (a, b) = last.unwrap();
    panic!("buildmesh {} and GET {path} {query:?} differ:\nCLI:   {a}\nroute: {b}", args.join(" "));
}

/// An unknown or malformed name gets a clear error naming it: the CLI exits non-zero with
/// `needle` on stderr, the route answers 4xx naming it.
fn refused(url: &str, args: &[&str], path: &str, query: &[(&str, &str)], needle: &str) {
    let (st, out, err) = run(url, args);
    assert!(!st.success(), "buildmesh {} succeeded: {out}", args.join(" "));
    assert!(err.contains(needle), "buildmesh {}: the error does not name {needle}: {err}", args.join(" "));
    let (status, body) = route(url, path, query);
    assert!((400..500).contains(&status), "GET {path} {query:?}: {status} {body}");
    assert!(mentions(&body, needle), "GET {path} {query:?}: the error does not name {needle}: {body}");
}

/// `buildmesh revision submit` of `drvs` (from the fixture's store) through node `i`: it prints
/// `{"revision": "qa@COMMIT", "jobs": N}`.
fn submit_revision(c: &Cluster, i: usize, store: &QaStore, branch: &str, commit: &str, drvs: &[String]) {
    let dir = store.drv_dir().display().to_string();
    let mut args = vec![
        "revision",
        "submit",
        "--channel",
        CHANNEL,
        "--branch",
        branch,
        "--commit",
        commit,
        "--from",
        dir.as_str(),
    ];
    args.extend(["--replicas", "2"]);
    args.extend(drvs.iter().map(String::as_str));
    let (st, out, err) = run(&c.urls[i], &args);
    assert!(st.success(), "revision submit {commit}: {out}\n{err}\n{}", c.logs());
    let j = parse(&args, &out, &err);
    assert_eq!(j["revision"], format!("{CHANNEL}@{commit}"), "{j}");
    assert_eq!(j["jobs"], drvs.len(), "{j}");
}

/// How node `i` (or its key) may be named as a submitter or builder: peer id, `name:base64` key,
/// the key's base64 alone, NodeId hex.
fn names_of(c: &Cluster, i: usize) -> Vec<String> {
    let key = c.keys[i].nix_public_key().to_string();
    let base64 = key.split_once(':').map(|(_, k)| k.to_string()).unwrap_or_default();
    vec![c.peer_ids[i].clone(), key, base64, c.keys[i].node_id().to_string()]
}

/// A `null` or absent field reads as `None`.
fn opt_str(v: &serde_json::Value) -> Option<&str> {
    v.as_str()
}

/// `revision show` says what the table says of every job of `rev` (a revision made of the
/// packages `rev` lists), with the per-system counts; `Err` names the first difference.
fn show_says(j: &serde_json::Value, rev: &Revision, commit: &str) -> Result<(), String> {
    let jobs = j["jobs"].as_array().ok_or_else(|| format!("no jobs: {j}"))?;
    if jobs.len() != rev.packages.len() {
        return Err(format!("{} jobs, expected {}: {j}", jobs.len(), rev.packages.len()));
    }
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for p in rev.packages.values() {
        let end = expected_end(rev.rev, &p.package);
        *counts.entry(p.system.clone()).or_default().entry(end.status().to_string()).or_default() += 1;
        let job = jobs
            .iter()
            .find(|x| x["drv"] == p.drv.as_str())
            .ok_or_else(|| format!("{commit}: no job for {} ({})", p.package, p.drv))?;
        let want = (p.package.as_str(), p.version.as_str(), p.system.as_str(), Some(end.status()), end.verdict());
        let got = (
            job["package"].as_str().unwrap_or_default(),
            job["version"].as_str().unwrap_or_default(),
            job["system"].as_str().unwrap_or_default(),
            opt_str(&job["status"]),
            opt_str(&job["verdict"]),
        );
        if got != want {
            return Err(format!("{commit}: {} is {got:?}, expected {want:?}", p.package));
        }
    }
    for (system, by_status) in &counts {
        for (status, n) in by_status {
            if j["counts"][system][status].as_u64() != Some(*n) {
                return Err(format!("{commit}: counts.{system}.{status} should be {n}: {}", j["counts"]));
            }
        }
    }
    let listed: u64 = j["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, s)| s.as_object())
        .flatten()
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    if listed != rev.packages.len() as u64 {
        return Err(format!("{commit}: the counts add up to {listed}, not {}: {}", rev.packages.len(), j["counts"]));
    }
    Ok(())
}

/// Poll `f` every 500 ms until it is `Ok`, at most `limit`; on timeout, panic with its last `Err`.
fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) => {
                assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {why}")
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The packages `names` of `rev`, as a revision of their own (for a smaller revision).
fn subset(rev: &Revision, names: &[&str]) -> Revision {
    let packages = names.iter().map(|n| (n.to_string(), rev.pkg(n).clone())).collect();
    Revision { rev: rev.rev, packages }
}

/// A version field read as text (a string, or a list of them joined by `,`).
fn version_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","),
        other => other.as_str().unwrap_or_default().to_string(),
    }
}

/// The parts of a compare answer that do not name its two sides.
fn compare_body(j: &serde_json::Value) -> serde_json::Value {
    let mut j = j.clone();
    if let Some(o) = j.as_object_mut() {
        o.remove("base");
        o.remove("target");
    }
    j
}

/// compare(qa@r1 → qa@r2) says what the fixture's table says, and every class appears.
fn check_compare(j: &serde_json::Value, r1: &Revision, r2: &Revision) {
    assert_eq!(j["new_packages"], serde_json::json!(["newpkg"]), "{j}");
    assert_eq!(j["removed_packages"], serde_json::json!(["oldpkg"]), "{j}");
    let versions: Vec<(String, String, String)> = j["version_changes"]
        .as_array()
        .expect("version_changes")
        .iter()
        .map(|v| {
            (
                v["package"].as_str().unwrap().to_string(),
                version_text(&v["base_version"]),
                version_text(&v["target_version"]),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let want: Vec<(String, String, String)> =
        EXPECTED_VERSION_CHANGES.iter().map(|(p, a, b)| (p.to_string(), a.to_string(), b.to_string())).collect();
    assert_eq!(versions, want, "{j}");

    let changes = j["derivation_changes"].as_array().expect("derivation_changes");
    for (package, build, repro) in EXPECTED_CHANGES {
        let (a, b) = (r1.pkg(package), r2.pkg(package));
        let row: Vec<&serde_json::Value> =
            changes.iter().filter(|c| c["package"] == *package && c["system"] == b.system.as_str()).collect();
        assert_eq!(row.len(), 1, "{package}: {row:?}");
        let row = row[0];
        assert_eq!(
            (row["base_drv"].as_str(), row["target_drv"].as_str()),
            (Some(a.drv.as_str()), Some(b.drv.as_str())),
            "{row}"
        );
        assert_eq!(
            (row["build_change"].as_str(), row["repro_change"].as_str()),
            (Some(*build), Some(*repro)),
            "{package}: {row}"
        );
    }
    // A package on one side only, when listed, has no result to compare.
    for row in changes {
        let package = row["package"].as_str().unwrap();
        if !EXPECTED_CHANGES.iter().any(|(p, _, _)| *p == package) {
            assert!(["newpkg", "oldpkg"].contains(&package), "unexpected row {row}");
            assert_eq!(row["build_change"], "unknown", "{row}");
        }
    }
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut repro_seen = std::collections::BTreeSet::new();
    for row in changes {
        *seen.entry(row["build_change"].as_str().unwrap()).or_default() += 1;
        repro_seen.insert(row["repro_change"].as_str().unwrap());
    }
    for class in ["broken", "fixed", "still-failing", "still-working", "blocked", "unknown"] {
        assert!(seen.contains_key(class), "build_change {class} does not appear: {j}");
        assert_eq!(j["summary"][class].as_u64(), Some(seen[class]), "summary.{class}: {}", j["summary"]);
    }
    for class in ["newly-not-matching", "newly-matching", "still-not-matching", "unchanged", "unknown"] {
        assert!(repro_seen.contains(class), "repro_change {class} does not appear: {j}");
    }
    assert_eq!(
        (seen["broken"], seen["fixed"], seen["still-failing"], seen["still-working"], seen["blocked"]),
        (1, 1, 1, 7, 3),
        "{}",
        j["summary"]
    );
}

/// One system's weather as the table and the graph say it.
#[derive(Default)]
struct Weather<'a> {
    /// Outputs of the jobs.
    total: u64,
    /// Of them, substitutable (agreed by two builders).
    available: u64,
    /// NarSize of the available ones.
    nar_bytes: u64,
    /// Failed jobs.
    failed: u64,
    /// Queued jobs.
    queued: u64,
    /// Derivations built (in the last 24 h: the test's).
    built: std::collections::BTreeSet<&'a str>,
}

/// Weather of `rev` (with --coverage --display-missing) against the table and the graph: per
/// system the outputs of the jobs, the available ones (agreed by two builders) and their NAR
/// bytes (from the node's narinfos), failed and queued jobs, the build rate; the root causes
/// ranked by their dependents in the graph; every missing output displayed.
fn check_weather(c: &Cluster, j: &serde_json::Value, rev: &Revision) {
    let url = &c.urls[0];
    let mut per_system: BTreeMap<&str, Weather> = BTreeMap::new();
    let mut missing = Vec::new();
    for p in rev.packages.values() {
        let end = expected_end(rev.rev, &p.package);
        let s = per_system.entry(p.system.as_str()).or_default();
        for out in p.outputs.values() {
            s.total += 1;
            if end.available() {
                s.available += 1;
                let (st, body) = get(&format!("{url}/{}.narinfo", base(out).hash_part()));
                assert_eq!(st, 200, "{out} is available, but its narinfo is not served");
                let text = String::from_utf8(body).unwrap();
                let size: u64 = text.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap().parse().unwrap();
                s.nar_bytes += size;
            } else {
                missing.push(out.clone());
            }
        }
        match end {
            End::Failed => s.failed += 1,
            End::Queued => s.queued += 1,
            End::Matching | End::NotMatching => {
                s.built.insert(p.drv.as_str());
            }
            End::Blocked => {}
        }
    }
    let systems = j["systems"].as_object().expect("systems");
    assert_eq!(systems.keys().map(String::as_str).collect::<Vec<_>>(), per_system.keys().copied().collect::<Vec<_>>());
    for (system, Weather { total, available, nar_bytes: bytes, failed, queued, built }) in &per_system {
        let w = &j["systems"][system];
        let got = (
            w["total"].as_u64(),
            w["available"].as_u64(),
            w["failed"].as_u64(),
            w["queued"].as_u64(),
            w["building"].as_u64(),
        );
        assert_eq!(got, (Some(*total), Some(*available), Some(*failed), Some(*queued), Some(0)), "{system}: {w}");
        let ratio = *available as f64 / *total as f64;
        assert!((w["ratio"].as_f64().unwrap() - ratio).abs() < 1e-6, "{system}: ratio {w}");
        assert_eq!(w["nar_bytes"].as_u64(), Some(*bytes), "{system}: NAR bytes of the available outputs {w}");
        assert!(w["nar_bytes_compressed"].is_null() || w["nar_bytes_compressed"].is_u64(), "{w}");
        let rate = built.len() as f64 / 24.0;
        assert!(
            (w["builds_per_hour"].as_f64().unwrap() - rate).abs() < 1e-6,
            "{system}: {} built in 24 h: {w}",
            built.len()
        );
    }

    // Root causes: failed derivations, and derivations with a missing output whose inputs are
    // all available; ranked by dependents (descending), then by path.
    let available = |drv: &str| rev.by_drv(drv).is_some_and(|p| expected_end(rev.rev, &p.package).available());
    let mut causes: Vec<(u64, String, String, String)> = rev
        .packages
        .values()
        .filter(|p| {
            let end = expected_end(rev.rev, &p.package);
            end == End::Failed || (!end.available() && p.inputs.iter().all(|i| available(i.as_str())))
        })
        .map(|p| (rev.dependents(&p.drv) as u64, p.drv.clone(), p.package.clone(), p.system.clone()))
        .collect();
    causes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let got: Vec<(u64, String, String, String)> = j["coverage"]
        .as_array()
        .expect("coverage")
        .iter()
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
            (x["dependents"].as_u64().unwrap_or(u64::MAX), s("drv"), s("package"), s("system"))
        })
        .collect();
    assert_eq!(got, causes, "coverage of {}", rev.rev);
    for out in &missing {
        assert!(mentions(j, out), "--display-missing does not show {out}: {j}");
    }
}

/// Two revisions by real `nix-instantiate`, built by 3 nodes with k = 2, then every QA answer.
#[test]
fn two_revisions_compared_weathered_explained_and_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, r1, r2) = instantiate(tmp.path());
    let mut c = Cluster::start(tmp.path(), 3, &[]);
    let url = c.urls[0].clone();
    let (id1, id2, id3) = ("qa@r1", "qa@r2", "qa@r3");

    // rev 1 on branch `release`, rev 2 on `main`; both built by the mesh.
    submit_revision(&c, 0, &store, "release", "r1", &r1.drvs());
    submit_revision(&c, 0, &store, "main", "r2", &r2.drvs());
    wait_for_mesh_facts(&c, &[&r1, &r2]);
    // rev 3 (branch `stable`): three packages of rev 2, all built and agreed already.
    let r3 = subset(&r2, &["hello", "lib", "app"]);
    submit_revision(&c, 0, &store, "stable", "r3", &r3.drvs());

    // Status of every job (item 2), once the node's QA view caught up with the mesh.
    for (id, rev, commit) in [(id1, &r1, "r1"), (id2, &r2, "r2"), (id3, &r3, "r3")] {
        wait_until(&format!("{id}'s jobs to show their end states"), Duration::from_secs(60), || {
            let (st, out, err) = run(&url, &["revision", "show", id]);
            if !st.success() {
                return Err(format!("revision show {id}: {st}: {err}"));
            }
            show_says(&parse(&["revision", "show", id], &out, &err), rev, commit)
        });
        let j = twin(&url, &["revision", "show", id], true, &show_route(id), &[]);
        show_says(&j, rev, commit).unwrap();
        let branch = match commit {
            "r1" => "release",
            "r2" => "main",
            _ => "stable",
        };
        assert_eq!(
            (j["revision"].as_str(), j["channel"].as_str(), j["commit"].as_str()),
            (Some(id), Some(CHANNEL), Some(commit)),
            "{j}"
        );
        assert_eq!(j["branch"], branch, "{j}");
        assert!(names_of(&c, 0).iter().any(|n| j["submitter"] == n.as_str()), "submitter: {j}");
    }
    let list = twin(&url, &["revision", "list"], true, "/api/v1/revisions", &[]);
    for id in [id1, id2, id3] {
        assert_eq!(objects_with(&list, "revision", id).len(), 1, "{id} in {list}");
    }
    let main_only = twin(
        &url,
        &["revision", "list", "--channel", CHANNEL, "--branch", "main"],
        true,
        "/api/v1/revisions",
        &[("channel", CHANNEL), ("branch", "main")],
    );
    assert_eq!(objects_with(&main_only, "revision", id2).len(), 1, "{main_only}");
    assert!(
        objects_with(&main_only, "revision", id1).is_empty() && objects_with(&main_only, "revision", id3).is_empty(),
        "{main_only}"
    );

    // Compare (item 3), by commit and by branch; --system narrows it.
    let cmp = twin(&url, &["compare", id1, id2], true, "/api/v1/compare", &[("base", id1), ("target", id2)]);
    assert_eq!((cmp["base"].as_str(), cmp["target"].as_str()), (Some(id1), Some(id2)), "{cmp}");
    check_compare(&cmp, &r1, &r2);
    let by_branch = twin(
        &url,
        &["compare", "qa:release", "qa:main"],
        true,
        "/api/v1/compare",
        &[("base", "qa:release"), ("target", "qa:main")],
    );
    assert_eq!(compare_body(&by_branch), compare_body(&cmp), "compare by branch differs from by commit");
    let darwin = twin(
        &url,
        &["compare", id1, id2, "--system", FOREIGN_SYSTEM],
        true,
        "/api/v1/compare",
        &[("base", id1), ("target", id2), ("system", FOREIGN_SYSTEM)],
    );
    let rows: Vec<&str> =
        darwin["derivation_changes"].as_array().unwrap().iter().map(|r| r["package"].as_str().unwrap()).collect();
    assert_eq!(rows, ["darwin-tool"], "{darwin}");
    // --changed-only: only the pairs whose derivation changed (or on one side only), same summary.
    let changed = twin(
        &url,
        &["compare", id1, id2, "--changed-only"],
        true,
        "/api/v1/compare",
        &[("base", id1), ("target", id2), ("changed_only", "true")],
    );
    assert_eq!(changed["summary"], cmp["summary"], "{changed}");
    let all = cmp["derivation_changes"].as_array().unwrap();
    let kept = changed["derivation_changes"].as_array().unwrap();
    let expected: Vec<&serde_json::Value> = all.iter().filter(|c| c["drv_changed"] == true).collect();
    assert!(!kept.is_empty() && kept.len() < all.len(), "{} of {}", kept.len(), all.len());
    assert_eq!(kept.iter().collect::<Vec<_>>(), expected, "{changed}");

    // Weather (item 4): rev 2 is not fully covered (exit status non-zero), rev 3 is.
    let w2 = twin(
        &url,
        &["weather", "--revision", id2, "--coverage", "--display-missing"],
        false,
        "/api/v1/weather",
        &[("revision", id2), ("coverage", "true"), ("display_missing", "true")],
    );
    check_weather(&c, &w2, &r2);
    let causes: Vec<&str> = w2["coverage"].as_array().unwrap().iter().map(|x| x["package"].as_str().unwrap()).collect();
    assert_eq!(&causes[..2], ["broken", "stillfail"], "the ranking puts the failures with most dependents first");
    let w3 = twin(
        &url,
        &["weather", "--revision", id3, "--coverage"],
        true,
        "/api/v1/weather",
        &[("revision", id3), ("coverage", "true")],
    );
    check_weather(&c, &w3, &r3);
    assert!(w3["coverage"].as_array().unwrap().is_empty(), "{w3}");
    // A manifest file of .drv paths.
    let manifest = tmp.path().join("weather-manifest");
    std::fs::write(&manifest, format!("{}\n{}\n", r2.pkg("hello").drv, r2.pkg("multi").drv)).unwrap();
    let m = manifest.display().to_string();
    let (st, out, err) = run(&url, &["weather", "--manifest", m.as_str()]);
    assert!(st.success(), "weather --manifest at 100%: {out}\n{err}");
    let wm = parse(&["weather"], &out, &err);
    assert_eq!(
        (wm["systems"]["x86_64-linux"]["total"].as_u64(), wm["systems"]["x86_64-linux"]["available"].as_u64()),
        (Some(3), Some(3)),
        "{wm}"
    );

    // History (item 5): a package across revisions, and on one branch.
    let h = twin(&url, &["history", "app"], true, "/api/v1/history", &[("package", "app")]);
    for needle in [r1.pkg("app").drv.as_str(), r2.pkg("app").drv.as_str(), id1, id2, id3, "succeeded", "matching"] {
        assert!(mentions(&h, needle), "history app does not mention {needle}: {h}");
    }
    let h = twin(
        &url,
        &["history", "broken", "--channel", CHANNEL, "--branch", "main"],
        true,
        "/api/v1/history",
        &[("package", "broken"), ("channel", CHANNEL), ("branch", "main")],
    );
    assert!(mentions(&h, &r2.pkg("broken").drv) && mentions(&h, "failed"), "{h}");
    assert!(!mentions(&h, &r1.pkg("broken").drv), "rev 1 is on another branch: {h}");

    // Explain (item 6): the foreign system, a blocked job, a failed one.
    let explain = |drv: &str| twin(&url, &["explain", drv], true, "/api/v1/explain", &[("drv", drv)]);
    let e = explain(r2.pkg("darwin-tool").drv.as_str());
    assert!(mentions(&e, &format!("no live member builds {FOREIGN_SYSTEM}")), "{e}");
    let e = explain(r2.pkg("needs-broken-cli").drv.as_str());
    let failed_input = r2.pkg("broken").drv.rsplit('/').next().unwrap().to_string();
    assert!(mentions(&e, &failed_input), "explain of a blocked job names its failed input: {e}");
    let e = explain(r2.pkg("stillfail").drv.as_str());
    let named = (0..3).filter(|i| names_of(&c, *i).iter().any(|n| mentions(&e, n))).count();
    assert!(named >= 2, "explain of a failed job names the builders that failed it: {e}");

    // Ready (item 7): rev 2 is not (broken, newly-not-matching, darwin unavailable), rev 3 is.
    // (Item 8 does not say the exit status of a negative verdict: not checked.)
    let ready = twin(&url, &["ready", id2, "--base", id1], None, "/api/v1/ready", &[("target", id2), ("base", id1)]);
    assert_eq!(ready["ready"], false, "{ready}");
    for needle in ["broken", "stamp-a", FOREIGN_SYSTEM] {
        assert!(mentions(&ready["reasons"], needle), "the reasons do not mention {needle}: {ready}");
    }
    let rule = &ready["rule"];
    assert_eq!(
        (
            rule["max_broken"].as_u64(),
            rule["max_newly_not_matching"].as_u64(),
            rule["min_availability"].as_f64(),
            rule["max_unknown_age_hours"].as_u64()
        ),
        (Some(0), Some(0), Some(0.95), Some(24)),
        "{rule}"
    );
    let ready = twin(&url, &["ready", id3, "--base", id1], true, "/api/v1/ready", &[("target", id3), ("base", id1)]);
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["reasons"].as_array().map(Vec::len), Some(0), "{ready}");

    // Bad input: clear errors, nothing stored.
    refused(&url, &["revision", "show", "qa@nope"], &show_route("qa@nope"), &[], "qa@nope");
    refused(&url, &["compare", "qa@nope", id2], "/api/v1/compare", &[("base", "qa@nope"), ("target", id2)], "qa@nope");
    refused(
        &url,
        &["compare", id1, "qa:nobranch"],
        "/api/v1/compare",
        &[("base", id1), ("target", "qa:nobranch")],
        "nobranch",
    );
    refused(
        &url,
        &["compare", "not-a-revision", id2],
        "/api/v1/compare",
        &[("base", "not-a-revision"), ("target", id2)],
        "not-a-revision",
    );
    refused(&url, &["weather", "--revision", "qa@nope"], "/api/v1/weather", &[("revision", "qa@nope")], "qa@nope");
    refused(
        &url,
        &["ready", id2, "--base", "qa@nope"],
        "/api/v1/ready",
        &[("target", id2), ("base", "qa@nope")],
        "qa@nope",
    );
    let before = route(&url, "/api/v1/revisions", &[]);
    let bad = tmp.path().join("bad-manifest");
    std::fs::write(&bad, b"this is not a manifest\n{\"jobs\": [ {\"package\": \x00\xff").unwrap();
    let bad_s = bad.display().to_string();
    let hello = r2.pkg("hello").drv.clone();
    let dir = store.drv_dir().display().to_string();
    let args = [
        "revision",
        "submit",
        "--channel",
        CHANNEL,
        "--branch",
        "main",
        "--commit",
        "bad",
        "--manifest",
        bad_s.as_str(),
        "--from",
        dir.as_str(),
        hello.as_str(),
    ];
    let (st, out, err) = run(&url, &args);
    assert!(!st.success(), "a malformed manifest was accepted: {out}");
    assert!(err.contains("bad-manifest"), "the error does not name the manifest file: {err}");
    assert_eq!(route(&url, "/api/v1/revisions", &[]), before, "a refused revision changed the list");
    refused(&url, &["revision", "show", "qa@bad"], &show_route("qa@bad"), &[], "qa@bad");

    // A node that joins after both revisions were built answers the same compare (sync carries
    // the revision headers, the manifests are fetched, the results are synced).
    let key = buildmesh_protocol::identity::NodeKey::from_seed(
        "mesh-test-3",
        *blake3::hash(tmp.path().as_os_str().as_encoded_bytes()).as_bytes(),
    )
    .unwrap();
    c.keys.push(key);
    c.nodes.push(None);
    c.urls.push(String::new());
    c.peer_ids.push(String::new());
    c.restart(3);
    c.peer_ids[3] = c.node(3).peer_id.clone();
    let late = c.urls[3].clone();
    wait_until("the late node to answer the same compare", Duration::from_secs(120), || {
        let (s, j) = route(&late, "/api/v1/compare", &[("base", id1), ("target", id2)]);
        (s == 200 && j == cmp).then_some(()).ok_or(format!("{s} {j}"))
    });
    let late_cmp = twin(&late, &["compare", id1, id2], true, "/api/v1/compare", &[("base", id1), ("target", id2)]);
    assert_eq!(late_cmp, cmp);
    let late_list = twin(&late, &["revision", "list"], true, "/api/v1/revisions", &[]);
    for id in [id1, id2, id3] {
        assert_eq!(objects_with(&late_list, "revision", id).len(), 1, "{id} on the late node: {late_list}");
    }
    assert!(objects_with(&late_list, "revision", "qa@bad").is_empty(), "{late_list}");
}
