//! Server-side acceptance of uploads (`buildmesh::submit::accept` and the `/api/v1/submit`
//! router) on a real store in a temp dir, with the Nix vectors.

mod submit_support;

use std::collections::BTreeSet;

use buildmesh::store::{BuildState, PathInfo};
use buildmesh::submit::{SubmitError, SubmitLimits, SubmitResponse, accept, client, router, wire};
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
    assert!(closure.sources.len() >= 7, "the vectors have input sources");
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
    let bottom = &vector_drvs()["diamond-bottom"];
    let closure = vector_closure(&[bottom]);
    assert_eq!(closure.drvs.len(), 4, "diamond: bottom, left, right, top");
    let resp = accept_body(&ctx, &body_of(&closure, -3, 1)).expect("accepted");
    assert_eq!(resp.queued, 4);
    let top = sd().parse_path(&vector_drvs()["diamond-top"]).unwrap();
    let rec = store.get_build(&top).unwrap().expect("top queued");
    assert_eq!(rec.priority, -3);
    // left uses top.out and top.dev, right uses top.lib and top.out, bottom uses top.dev.
    assert_eq!(rec.wanted_outputs, BTreeSet::from(["dev".to_string(), "lib".to_string(), "out".to_string()]));
    let left = sd().parse_path(&vector_drvs()["diamond-left"]).unwrap();
    let rec = store.get_build(&left).unwrap().expect("left queued");
    assert_eq!(rec.wanted_outputs, BTreeSet::from(["doc".to_string(), "out".to_string()]));

    // A second submission with a higher priority raises the whole closure.
    accept_body(&ctx, &body_of(&closure, 9, 1)).expect("accepted");
    assert!(store.queued_builds(0).unwrap().iter().all(|b| b.priority == 9));
}

/// Register an output from the vectors' NAR as if it had been built.
fn register_output(store: &buildmesh::store::Store, path: &str) {
    let row = nar_index()[path].clone();
    let hash = NixHash::parse(&row.nar_hash, None).unwrap();
    let blob = store.put_nar_expecting(&mut std::fs::File::open(row.file()).unwrap(), &hash, row.nar_size).unwrap();
    store
        .register_path(&PathInfo {
            path: sd().parse_path(path).unwrap(),
            nar_hash: hash,
            nar_size: row.nar_size,
            references: row.references.iter().map(|r| sd().parse_path(r).unwrap()).collect(),
            deriver: None,
            ca: None,
            blob: blob.blake3,
            registered_at: 1,
        })
        .unwrap();
}

fn output_of(drv_name: &str) -> String {
    let bytes = std::fs::read(drv_dir().join(format!("{drv_name}.drv"))).unwrap();
    let drv = Derivation::parse(&bytes, &sd()).unwrap();
    sd().display(drv.outputs["out"].path.as_ref().unwrap())
}

#[test]
fn built_outputs_are_not_queued_and_already_built_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    register_output(&store, &output_of("pipeline-s1"));
    register_output(&store, &output_of("pipeline-s2"));

    let s5 = vector_drvs()["pipeline-s5"].clone();
    let resp = accept_body(&ctx, &body_of(&vector_closure(&[&s5]), 0, 1)).expect("accepted");
    assert_eq!(resp.queued, 3, "s3, s4, s5: s2 (and so s1) is built already");
    let queued: BTreeSet<String> = store.queued_builds(0).unwrap().iter().map(|b| b.drv.name().to_string()).collect();
    assert_eq!(
        queued,
        BTreeSet::from(["pipeline-s3.drv".to_string(), "pipeline-s4.drv".into(), "pipeline-s5.drv".into()])
    );

    let s2 = vector_drvs()["pipeline-s2"].clone();
    let resp = accept_body(&ctx, &body_of(&vector_closure(&[&s2]), 0, 1)).expect("accepted");
    assert_eq!(resp.queued, 0);
    assert_eq!(resp.already_built, vec![s2.clone()]);
    let out = &resp.outputs[&s2]["out"];
    let row = &nar_index()[&output_of("pipeline-s2")];
    assert_eq!(
        (out.path.as_str(), out.nar_hash.as_str(), out.nar_size),
        (row.path.as_str(), row.nar_hash.as_str(), row.nar_size)
    );
}

#[test]
fn failed_builds_are_retried_when_submitted_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let hello = vector_drvs()["hello-2.12.1"].clone();
    let body = body_of(&vector_closure(&[&hello]), 0, 1);
    accept_body(&ctx, &body).expect("accepted");
    let p = sd().parse_path(&hello).unwrap();
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

/// The closure of `name` with the .drv of `name` replaced by `bytes` (declared as `path`).
fn with_drv_bytes(name: &str, bytes: Vec<u8>, path: &str) -> Vec<u8> {
    let orig = vector_drvs()[name].clone();
    let mut c = vector_closure(&[&orig]);
    let orig_p = sd().parse_path(&orig).unwrap();
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
    let path = vector_drvs()["hello-2.12.1"].clone();
    let mut bytes = std::fs::read(drv_dir().join("hello-2.12.1.drv")).unwrap();
    bytes.truncate(bytes.len() - 3);
    let err = assert_rejected(&ctx, dir.path(), &with_drv_bytes("hello-2.12.1", bytes, &path), &path, |e| {
        matches!(e, SubmitError::MalformedDrv { .. })
    });
    assert_eq!(err.status(), 400);
}

#[test]
fn drv_declared_under_another_path_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let other = vector_drvs()["argv-64"].clone();
    let bytes = std::fs::read(drv_dir().join("hello-2.12.1.drv")).unwrap();
    let err = assert_rejected(&ctx, dir.path(), &with_drv_bytes("hello-2.12.1", bytes, &other), &other, |e| {
        matches!(e, SubmitError::DrvPathMismatch { .. })
    });
    assert!(err.to_string().contains(&vector_drvs()["hello-2.12.1"]), "{err}");
}

#[test]
fn wrong_recorded_output_path_is_rejected_naming_output_and_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    // pipeline-s2 with its output path (and the matching env var) changed.
    let bytes = std::fs::read(drv_dir().join("pipeline-s2.drv")).unwrap();
    let right = output_of("pipeline-s2");
    let base = right.rsplit('/').next().unwrap();
    let wrong = format!("/nix/store/{}{}", "0".repeat(32), &base[32..]);
    let text = String::from_utf8(bytes).unwrap().replace(&right, &wrong);
    let drv = Derivation::parse(text.as_bytes(), &sd()).unwrap();
    let new_path = sd().display(&drv.drv_path(&sd(), &drv.name().unwrap()).unwrap());
    let err = assert_rejected(
        &ctx,
        dir.path(),
        &with_drv_bytes("pipeline-s2", text.into_bytes(), &new_path),
        &new_path,
        |e| matches!(e, SubmitError::OutputPaths { .. }),
    );
    let msg = err.to_string();
    assert!(msg.contains("\"out\"") && msg.contains(&wrong) && msg.contains(&right), "{msg}");
}

#[test]
fn missing_input_drv_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let s2 = vector_drvs()["pipeline-s2"].clone();
    let s1 = vector_drvs()["pipeline-s1"].clone();
    let mut c = vector_closure(&[&s2]);
    c.drvs.remove(&sd().parse_path(&s1).unwrap());
    let err = assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &s1, |e| {
        matches!(e, SubmitError::MissingInputDrv { .. })
    });
    assert!(err.to_string().contains(&s2), "names the dependent too: {err}");

    // Once s1 is on the node (an earlier submission), the same upload is accepted.
    accept_body(&ctx, &body_of(&vector_closure(&[&s1]), 0, 1)).expect("s1 accepted");
    accept_body(&ctx, &body_of(&c, 0, 1)).expect("s2 accepted, its input is stored");
    assert_eq!(store.queued_builds(0).unwrap().len(), 2);
}

#[test]
fn missing_source_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let d = vector_drvs()["from-tofile"].clone();
    let mut c = vector_closure(&[&d]);
    let (src, _) = c.sources.pop_first().expect("from-tofile has a source");
    let shown = sd().display(&src);
    assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &shown, |e| matches!(e, SubmitError::MissingSource { .. }));

    // A source whose reference is missing.
    let d = vector_drvs()["tofile-chain"].clone();
    let mut c = vector_closure(&[&d]);
    let lib = c.sources.keys().find(|p| p.name() == "aurora-lib.sh").cloned().expect("aurora-lib.sh");
    c.sources.remove(&lib);
    let shown = sd().display(&lib);
    let err = assert_rejected(&ctx, dir.path(), &body_of(&c, 0, 1), &shown, |e| {
        matches!(e, SubmitError::MissingSource { .. })
    });
    assert!(err.to_string().contains("aurora-main.sh") || err.to_string().contains("tofile-chain"), "{err}");
}

#[test]
fn nar_not_matching_its_hash_is_rejected_and_no_blob_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let d = vector_drvs()["local-sources"].clone();
    let c = vector_closure(&[&d]);
    assert!(c.sources.len() >= 2, "several sources, so good NARs come before the bad one");
    // Flip one byte in the last NAR (same size, other hash).
    let mut body = body_of(&c, 0, 1);
    let last = c.sources.values().last().unwrap();
    let n = body.len();
    body[n - 20] ^= 0x01;
    let shown = sd().display(&last.path);
    assert_rejected(&ctx, dir.path(), &body, &shown, |e| matches!(e, SubmitError::NarHashMismatch { .. }));
    assert_eq!(snapshot(&store, dir.path()).blob_files, 0, "no blob file of the good NARs either");
}

#[test]
fn oversized_header_and_sizes_are_rejected_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hello = vector_drvs()["hello-2.12.1"].clone();
    let body = body_of(&vector_closure(&[&hello]), 0, 1);
    let ctx = context(&store, SubmitLimits { max_header_bytes: 64, ..SubmitLimits::default() });
    let before = snapshot(&store, dir.path());
    let err = accept_body(&ctx, &body).expect_err("header too large");
    assert!(matches!(err, SubmitError::HeaderTooLarge { max: 64, .. }), "{err}");
    assert_eq!(err.status(), 413);
    // A body that claims a huge header but is short: refused on the length alone.
    let mut huge = wire::MAGIC.to_vec();
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(accept(&ctx, &mut &huge[..], None, 0), Err(SubmitError::HeaderTooLarge { .. })));

    let ctx = context(&store, SubmitLimits { max_total_bytes: 1000, ..SubmitLimits::default() });
    let d = vector_drvs()["local-sources"].clone();
    let err = accept_body(&ctx, &body_of(&vector_closure(&[&d]), 0, 1)).expect_err("body too large");
    assert!(matches!(err, SubmitError::TooLarge { what: "body", .. }), "{err}");
    let ctx = context(&store, SubmitLimits { max_nar_size: 100, ..SubmitLimits::default() });
    let err = accept_body(&ctx, &body_of(&vector_closure(&[&d]), 0, 1)).expect_err("NAR too large");
    assert!(matches!(err, SubmitError::TooLarge { what: "source NAR", .. }) && err.path().is_some(), "{err}");
    assert_eq!(snapshot(&store, dir.path()), before);
}

#[test]
fn body_framing_errors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ctx = context(&store, SubmitLimits::default());
    let d = vector_drvs()["from-tofile"].clone();
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

    let hello = vector_drvs()["hello-2.12.1"].clone();
    let body = body_of(&vector_closure(&[&hello]), 0, 1);
    let resp = http.post(&url).body(body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json_or_text();
    assert_eq!(json["accepted"], serde_json::json!([hello]));
    assert_eq!(json["queued"], 1);
    assert_eq!(json["already_built"], serde_json::json!([]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await })
        .expect("the scheduler was woken");

    // A rejection early in a large body still reaches the client as JSON.
    let d = vector_drvs()["from-tofile"].clone();
    let mut c = vector_closure(&[&d]);
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
