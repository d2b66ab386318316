//! Server-side acceptance of uploads (`buildmesh::submit::accept` and the `/api/v1/submit`
//! router) on a real store in a temp dir, with the Nix vectors.

mod submit_support;

use std::collections::BTreeSet;

use buildmesh::cli::submit_client as client;
use buildmesh::store::{BuildState, PathInfo};
use buildmesh::submit::{SubmitError, SubmitLimits, SubmitResponse, accept, router, wire};
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use submit_support::*;

fn all_vector_drvs() -> Vec<String> {
    vector_drvs().into_values().collect::<BTreeSet<_>>().into_iter().collect()
}

fn accept_body(ctx: &buildmesh::submit::SubmitContext, body: &[u8]) -> Result<SubmitResponse, SubmitError> {
    accept(ctx, &mut &body[..], Some(body.len() as u64), 1000)
}

#[test]
fn whole_vector_closure_is_accepted_and_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let drvs = all_vector_drvs();
    let args: Vec<&str> = drvs.iter().map(String::as_str).collect();
    let closure = vector_closure(&args);
    assert_eq!(closure.drvs.len(), drvs.len(), "every vector drv is in the closure");
    let sources = DrvGraph::load().source_closure(&args);
    assert!(!sources.is_empty(), "the vectors have input sources");
    let got: BTreeSet<String> = closure.sources.keys().map(|p| sd().display(p)).collect();
    assert_eq!(got, sources, "the input sources of every drv, with their references");
    let body = body_of(&closure, 5, 2);

    let resp = accept_body(&ctx, &body).expect("accepted");
    assert_eq!(resp.accepted, drvs);
    assert_eq!(resp.queued as usize, drvs.len(), "nothing is built yet, so everything is queued");
    assert!(resp.already_built.is_empty());
    assert_eq!(resp.drvs_stored as usize, drvs.len());
    assert_eq!(resp.sources_registered as usize, closure.sources.len());

    // Every .drv stored byte for byte.
    for (name, p) in vector_drvs() {
        let path = sd().parse_path(&p).unwrap();
        let stored = store.get_drv(&path).unwrap().expect("stored");
        assert_eq!(stored, std::fs::read(drv_dir().join(format!("{name}.drv"))).unwrap(), "{name}");
    }
    // Every source registered with the vectors' NarHash, references and content address.
    let nars = nar_index();
    for s in closure.sources.values() {
        let shown = sd().display(&s.path);
        let info = store.path_info(&s.path).unwrap().expect("registered");
        let row = &nars[&shown];
        assert_eq!(info.nar_hash.to_string(), row.nar_hash, "{shown}");
        assert_eq!(info.nar_size, row.nar_size);
        let refs: Vec<String> = info.references.iter().map(|r| sd().display(r)).collect();
        assert_eq!(refs, row.references, "{shown}");
        assert_eq!(info.ca, narinfo_ca(&shown), "{shown}: CA as in the vectors' narinfo");
        store.verify_nar(&info.blob).expect("blob intact");
    }
    // One queued build per derivation, requested priority and replicas, all outputs wanted.
    let queued = store.queued_builds(0).unwrap();
    assert_eq!(queued.len(), drvs.len());
    for b in &queued {
        assert_eq!((b.state, b.priority, b.replicas), (BuildState::Queued, 5, 2), "{}", b.drv);
        assert!(b.wanted_outputs.is_empty(), "requested: all outputs");
    }

    // Submitting again changes nothing but answers the same.
    let before = snapshot(&store, dir.path());
    let again = accept_body(&ctx, &body).expect("accepted again");
    assert_eq!((again.drvs_stored, again.sources_registered), (0, 0));
    assert_eq!(again.queued, resp.queued);
    assert_eq!(snapshot(&store, dir.path()), before);
}

#[test]
fn inputs_inherit_priority_and_want_only_the_used_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // A diamond: an input used by two derivations of the closure gets the union of what they use.
    let g = DrvGraph::load();
    let (root, shared) = g.diamond();
    let members = g.closure(&root);
    let closure = vector_closure(&[&root]);
    let got: BTreeSet<String> = closure.drvs.keys().map(|p| sd().display(p)).collect();
    assert_eq!(got, members, "the upload holds the whole closure");
    let resp = accept_body(&ctx, &body_of(&closure, -3, 1)).expect("accepted");
    assert_eq!(resp.queued as usize, members.len(), "nothing is built, so all of it is queued");
    // Wanted outputs of an input: every output that a derivation of the closure uses of it.
    let mut used: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for d in &members {
        for (input, outs) in g.get(d).inputs() {
            used.entry(input).or_default().extend(outs);
        }
    }
    if let Some(shared) = &shared {
        let users = members.iter().filter(|d| g.inputs(d).contains(shared)).count();
        assert!(users >= 2, "{shared} is used by {users} derivation(s) of the diamond");
    }
    for d in &members {
        let rec = store.get_build(&sd().parse_path(d).unwrap()).unwrap().unwrap_or_else(|| panic!("{d} queued"));
        assert_eq!(rec.priority, -3, "{d} inherits the priority");
        let want = if *d == root { BTreeSet::new() } else { used[d].clone() };
        assert_eq!(rec.wanted_outputs, want, "{d}: requested = all (empty), inputs = the used outputs");
    }

    // A second submission with a higher priority raises the whole closure.
    accept_body(&ctx, &body_of(&closure, 9, 1)).expect("accepted");
    assert!(store.queued_builds(0).unwrap().iter().all(|b| b.priority == 9));
}

/// Register an output from the vectors' NAR as if this node had built it (registered and
/// attested by the node's key: a registration alone does not count as built).
fn register_output(store: &buildmesh::store::Store, path: &str) {
    let row = nar_index()[path].clone();
    let hash = NixHash::parse(&row.nar_hash, None).unwrap();
    let blob = store.put_nar_expecting(&mut std::fs::File::open(row.file()).unwrap(), &hash, row.nar_size).unwrap();
    let info = PathInfo {
        path: sd().parse_path(path).unwrap(),
        nar_hash: hash.clone(),
        nar_size: row.nar_size,
        references: row.references.iter().map(|r| sd().parse_path(r).unwrap()).collect(),
        deriver: None,
        ca: None,
        blob: blob.blake3,
        registered_at: 1,
    };
    store.register_path(&info).unwrap();
    let report = buildmesh::build::BuildReport {
        outputs: [(
            "out".to_string(),
            buildmesh::build::BuiltOutput {
                path: info.path.clone(),
                nar_hash: hash,
                nar_size: row.nar_size,
                references: info.references.clone(),
                content_id: blob.blake3,
            },
        )]
        .into(),
        log: Vec::new(),
        emulated: false,
        started_at_ms: 1,
        finished_at_ms: 2,
    };
    let drv = sd().parse_path(&format!("/nix/store/{}-x.drv", info.path.hash_part())).unwrap();
    buildmesh::build::attest::commit_attestation(store, &node_key(), &sd(), &drv, &report).unwrap();
}

/// The derivations of `root`'s closure that must be built when the output paths in `registered`
/// exist: `root` unless all its outputs do, then, for every derivation that is built, each input
/// of which one of the outputs it uses is missing (worked out to a fixed point).
fn expected_builds(g: &DrvGraph, root: &str, registered: &BTreeSet<String>) -> BTreeSet<String> {
    let missing = |d: &str, outs: &BTreeSet<String>| {
        g.get(d).outputs().iter().any(|(o, p)| outs.contains(o) && !registered.contains(p))
    };
    let mut build = BTreeSet::new();
    if missing(root, &g.get(root).outputs().into_keys().collect()) {
        build.insert(root.to_string());
    }
    loop {
        let mut wanted: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for d in &build {
            for (input, outs) in g.get(d).inputs() {
                wanted.entry(input).or_default().extend(outs);
            }
        }
        let next: BTreeSet<String> = build
            .iter()
            .cloned()
            .chain(wanted.iter().filter(|(i, outs)| missing(i, outs)).map(|(i, _)| i.clone()))
            .collect();
        if next == build {
            return build;
        }
        build = next;
    }
}

#[test]
fn built_outputs_are_not_queued_and_already_built_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // A chain root -> ... -> built -> bottom: everything from `built` down is built already.
    let g = DrvGraph::load();
    let chain = g.chain();
    let (root, built) = (chain[0].clone(), chain[chain.len() - 2].clone());
    let mut registered = BTreeSet::new();
    for d in g.closure(&built) {
        for p in g.get(&d).outputs().into_values() {
            register_output(&store, &p);
            registered.insert(p);
        }
    }

    let resp = accept_body(&ctx, &body_of(&vector_closure(&[&root]), 0, 1)).expect("accepted");
    let expected = expected_builds(&g, &root, &registered);
    assert!(expected.contains(&root) && !expected.contains(&built), "{expected:?}");
    assert_eq!(resp.queued as usize, expected.len(), "{built} (and so its inputs) is built already");
    let queued: BTreeSet<String> = store.queued_builds(0).unwrap().iter().map(|b| sd().display(&b.drv)).collect();
    assert_eq!(queued, expected);

    let resp = accept_body(&ctx, &body_of(&vector_closure(&[&built]), 0, 1)).expect("accepted");
    assert_eq!(resp.queued, 0);
    assert_eq!(resp.already_built, vec![built.clone()]);
    let outputs = g.get(&built).outputs();
    assert_eq!(resp.outputs[&built].len(), outputs.len(), "every output of {built}");
    for (o, p) in outputs {
        let out = &resp.outputs[&built][&o];
        let row = g.nar(&p);
        assert_eq!(
            (out.path.as_str(), out.nar_hash.as_str(), out.nar_size),
            (row.path.as_str(), row.nar_hash.as_str(), row.nar_size),
            "{built} output {o}"
        );
    }
}

#[test]
fn failed_builds_are_retried_when_submitted_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let leaf = DrvGraph::load().leaf();
    let body = body_of(&vector_closure(&[&leaf]), 0, 1);
    accept_body(&ctx, &body).expect("accepted");
    let p = sd().parse_path(&leaf).unwrap();
    store.mark_running(&p, 1).unwrap();
    store.mark_failed(&p, 2, "boom").unwrap();
    accept_body(&ctx, &body).expect("accepted again");
    assert_eq!(store.get_build(&p).unwrap().unwrap().state, BuildState::Queued);
}

/// A submission rejected with an error naming `path`, leaving the store as it was.
fn assert_rejected(
    ctx: &buildmesh::submit::SubmitContext,
    data: &std::path::Path,
    body: &[u8],
    path: &str,
    check: impl Fn(&SubmitError) -> bool,
) -> SubmitError {
    let before = snapshot(&ctx.store, data);
    let err = accept_body(ctx, body).expect_err("must be rejected");
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(err.to_string().contains(path), "error {err} should name {path}");
    assert_eq!(err.path(), Some(path), "{err}");
    assert_eq!(snapshot(&ctx.store, data), before, "a rejected upload changed the store: {err}");
    err
}

/// The closure of the vector drv `orig` with its .drv replaced by `bytes` (declared as `path`).
fn with_drv_bytes(orig: &str, bytes: Vec<u8>, path: &str) -> Vec<u8> {
    let mut c = vector_closure(&[orig]);
    let orig_p = sd().parse_path(orig).unwrap();
    c.drvs.remove(&orig_p);
    let new_p = sd().parse_path(path).unwrap();
    c.drvs.insert(new_p.clone(), bytes);
    c.requested = vec![new_p];
    body_of(&c, 0, 1)
}

#[test]
fn malformed_aterm_is_rejected_naming_the_drv() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let path = DrvGraph::load().leaf();
    let mut bytes = drv_bytes(&path);
    bytes.truncate(bytes.len() - 3);
    let err = assert_rejected(&ctx, dir.path(), &with_drv_bytes(&path, bytes, &path), &path, |e| {
        matches!(e, SubmitError::MalformedDrv { .. })
    });
    assert_eq!(err.status(), 400);
}

#[test]
fn drv_declared_under_another_path_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // One leaf's bytes declared under another derivation's path (another leaf if there is one).
    let g = DrvGraph::load();
    let leaf = g.leaf();
    let other = g.leaves().into_iter().chain(g.drvs.keys().cloned()).find(|p| *p != leaf).expect("two derivations");
    let bytes = drv_bytes(&leaf);
    let err = assert_rejected(&ctx, dir.path(), &with_drv_bytes(&leaf, bytes, &other), &other, |e| {
        matches!(e, SubmitError::DrvPathMismatch { .. })
    });
    assert!(err.to_string().contains(&leaf), "{err}");
}

#[test]
fn wrong_recorded_output_path_is_rejected_naming_output_and_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // A derivation with an input derivation, one output path (and the matching env var) changed.
    let g = DrvGraph::load();
    let (orig, _) = g.dependent();
    let bytes = drv_bytes(&orig);
    let (output, right) = g.get(&orig).outputs().into_iter().next().expect("an output");
    let base = right.rsplit('/').next().unwrap();
    let wrong = format!("/nix/store/{}{}", "0".repeat(32), &base[32..]);
    let text = String::from_utf8(bytes).unwrap().replace(&right, &wrong);
    let drv = Derivation::parse(text.as_bytes(), &sd()).unwrap();
    let new_path = sd().display(&drv.drv_path(&sd(), &drv.name().unwrap()).unwrap());
    let err = assert_rejected(&ctx, dir.path(), &with_drv_bytes(&orig, text.into_bytes(), &new_path), &new_path, |e| {
        matches!(e, SubmitError::OutputPaths { .. })
    });
    let msg = err.to_string();
    assert!(msg.contains(&format!("{output:?}")) && msg.contains(&wrong) && msg.contains(&right), "{msg}");
}

#[test]
fn missing_input_drv_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // `dep` depends on `input`, and nothing else in its closure does.
    let g = DrvGraph::load();
    let (dep, input) = g.dependent();
    let mut c = vector_closure(&[&dep]);
    c.drvs.remove(&sd().parse_path(&input).unwrap());
    let err = assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &input, |e| {
        matches!(e, SubmitError::MissingInputDrv { .. })
    });
    assert!(err.to_string().contains(&dep), "names the dependent too: {err}");

    // Once the input is on the node (an earlier submission), the same upload is accepted.
    accept_body(&ctx, &body_of(&vector_closure(&[&input]), 0, 1)).expect("input accepted");
    accept_body(&ctx, &body_of(&c, 0, 1)).expect("dependent accepted, its input is stored");
    assert_eq!(store.queued_builds(0).unwrap().len(), g.closure(&dep).len(), "the whole closure of {dep}");
}

#[test]
fn missing_source_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let g = DrvGraph::load();
    let d = g.with_sources();
    let mut c = vector_closure(&[&d]);
    let (src, _) = c.sources.pop_first().expect("it has a source");
    let shown = sd().display(&src);
    assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &shown, |e| matches!(e, SubmitError::MissingSource { .. }));

    // A source whose reference is missing.
    let (d, lib) = g.source_with_referrer();
    let mut c = vector_closure(&[&d]);
    assert!(c.sources.remove(&sd().parse_path(&lib).unwrap()).is_some(), "{lib} is uploaded with {d}");
    let err =
        assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &lib, |e| matches!(e, SubmitError::MissingSource { .. }));
    // It names what needs it: a source referring to it, or a derivation having it as input.
    let needers: Vec<String> = c
        .sources
        .values()
        .filter(|s| s.references.contains(&sd().parse_path(&lib).unwrap()))
        .map(|s| sd().display(&s.path))
        .chain(g.closure(&d).into_iter().filter(|x| g.get(x).srcs().contains(&lib)))
        .collect();
    assert!(!needers.is_empty() && needers.iter().any(|n| err.to_string().contains(n)), "{err} / {needers:?}");
}

#[test]
fn nar_not_matching_its_hash_is_rejected_and_no_blob_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let d = DrvGraph::load().most_sources();
    let c = vector_closure(&[&d]);
    assert!(c.sources.len() >= 2, "several sources, so good NARs come before the bad one");
    // Flip one byte of a file's contents in the last NAR (still a NAR, same size, other hash).
    let mut body = body_of(&c, 0, 1);
    let last = c.sources.values().last().unwrap();
    let start = body.len() - last.nar_size as usize;
    let mut nar = buildmesh_protocol::nar::NarReader::new(&body[start..]);
    let contents_at = loop {
        match nar.next().expect("a valid NAR").expect("a file with contents") {
            buildmesh_protocol::nar::NarEvent::Regular { len, .. } if len > 0 => break nar.offset() as usize,
            _ => {}
        }
    };
    body[start + contents_at] ^= 0x01;
    let shown = sd().display(&last.path);
    assert_rejected(&ctx, dir.path(), &body, &shown, |e| matches!(e, SubmitError::NarHashMismatch { .. }));
    assert_eq!(snapshot(&store, dir.path()).blob_files, 0, "no blob file of the good NARs either");
}

#[test]
fn oversized_header_and_sizes_are_rejected_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let g = DrvGraph::load();
    let body = body_of(&vector_closure(&[&g.leaf()]), 0, 1);
    let ctx = context(&store, SubmitLimits { max_header_bytes: 64, ..SubmitLimits::default() });
    let before = snapshot(&store, dir.path());
    let err = accept_body(&ctx, &body).expect_err("header too large");
    assert!(matches!(err, SubmitError::HeaderTooLarge { max: 64, .. }), "{err}");
    assert_eq!(err.status(), 413);
    // A body that claims a huge header but is short: refused on the length alone.
    let mut huge = wire::MAGIC.to_vec();
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(accept(&ctx, &mut &huge[..], None, 0), Err(SubmitError::HeaderTooLarge { .. })));

    // Limits one byte below what the upload of a derivation with sources declares.
    let c = vector_closure(&[&g.most_sources()]);
    let body = body_of(&c, 0, 1);
    let ctx = context(&store, SubmitLimits { max_total_bytes: body.len() as u64 - 1, ..SubmitLimits::default() });
    let err = accept_body(&ctx, &body).expect_err("body too large");
    assert!(matches!(err, SubmitError::TooLarge { what: "body", .. }), "{err}");
    let largest = c.sources.values().map(|s| s.nar_size).max().expect("sources");
    let ctx = context(&store, SubmitLimits { max_nar_size: largest - 1, ..SubmitLimits::default() });
    let err = accept_body(&ctx, &body).expect_err("NAR too large");
    assert!(matches!(err, SubmitError::TooLarge { what: "source NAR", .. }), "{err}");
    let too_large: Vec<String> =
        c.sources.values().filter(|s| s.nar_size == largest).map(|s| sd().display(&s.path)).collect();
    assert!(err.path().is_some_and(|p| too_large.iter().any(|t| t == p)), "{err}: names one of {too_large:?}");
    assert_eq!(snapshot(&store, dir.path()), before);
}

#[test]
fn body_framing_errors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let d = DrvGraph::load().with_sources();
    let body = body_of(&vector_closure(&[&d]), 0, 1);
    let before = snapshot(&store, dir.path());
    // Truncated inside the NAR.
    let err = accept(&ctx, &mut &body[..body.len() - 5], None, 0).expect_err("truncated");
    assert!(matches!(err, SubmitError::Truncated { .. }) && err.to_string().contains("NAR of /nix/store/"), "{err}");
    // Extra bytes.
    let mut longer = body.clone();
    longer.extend_from_slice(b"xx");
    assert!(matches!(accept(&ctx, &mut &longer[..], None, 0), Err(SubmitError::TrailingBytes { .. })));
    // Content-Length disagreeing with the header.
    let err = accept(&ctx, &mut &body[..], Some(body.len() as u64 + 1), 0).expect_err("length");
    assert!(matches!(err, SubmitError::LengthMismatch { .. }), "{err}");
    // Another store dir.
    let c = vector_closure(&[&d]);
    let mut header = client::header_for(&c, 0, 1);
    header.store_dir = "/gnu/store".into();
    let mut other = header.encode_prefix().unwrap();
    other.extend_from_slice(&body[client::header_for(&c, 0, 1).encode_prefix().unwrap().len()..]);
    assert!(matches!(accept(&ctx, &mut &other[..], None, 0), Err(SubmitError::StoreDirMismatch { .. })));
    assert_eq!(snapshot(&store, dir.path()), before);
}

#[test]
fn router_answers_json_and_wakes_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let wake = ctx.wake.clone();
    let server = Server::start(router(ctx));
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/api/v1/submit", server.url());

    let g = DrvGraph::load();
    let leaf = g.leaf();
    let body = body_of(&vector_closure(&[&leaf]), 0, 1);
    let resp = http.post(&url).body(body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json_or_text();
    assert_eq!(json["accepted"], serde_json::json!([leaf]));
    assert_eq!(json["queued"], 1);
    assert_eq!(json["already_built"], serde_json::json!([]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await })
        .expect("the scheduler was woken");

    // A rejection early in a large body still reaches the client as JSON.
    let mut c = vector_closure(&[&g.with_sources()]);
    let src = c.sources.pop_first().unwrap().0;
    let mut bad = body_of(&c, 0, 1);
    bad.extend(std::iter::repeat_n(0u8, 4 << 20));
    // Chunked (no Content-Length), so the missing source is what the node finds first.
    let resp = http.post(&url).body(reqwest::blocking::Body::new(std::io::Cursor::new(bad))).send().unwrap();
    assert_eq!(resp.status(), 400);
    let json: serde_json::Value = resp.json_or_text();
    assert_eq!(json["path"], serde_json::json!(sd().display(&src)), "{json}");
    assert!(json["error"].as_str().unwrap().contains("needs source"), "{json}");

    // Not a submission at all.
    let resp = http.post(&url).body("GET / HTTP/1.1, not an upload").send().unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.json_or_text()["error"].as_str().unwrap().contains("not a buildmesh submit body"));
}

trait JsonOrText {
    fn json_or_text(self) -> serde_json::Value;
}

impl JsonOrText for reqwest::blocking::Response {
    fn json_or_text(self) -> serde_json::Value {
        let text = self.text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}
