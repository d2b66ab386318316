//! Issue 15 item 4 on a real standalone `buildmesh node` (one build slot, the real sandboxed
//! executor, real `buildmesh submit` over HTTP), with two submitters holding their own tokens
//! (`DATA/submitters/NAME.token`):
//!
//! - fair share: alice uploads 12 builds, then bob 2; bob's builds finish while most of alice's
//!   backlog still waits (without the fair share they would run after all of alice's);
//! - the closure-byte quota: with alice's backlog unfinished, her next upload, which alone fits in
//!   `max_closure_bytes_per_submitter`, is refused with 429 naming the limit, alice and the
//!   numbers; bob's upload of the same size is accepted (the quota is per submitter: alice's and
//!   bob's bytes together are over it); once alice's builds are done her upload is accepted;
//! - a submitter's token uploads but cannot use the other control routes (403);
//! - the ledger of who uploaded what is durable: the node is killed (`SIGKILL`) and restarted
//!   right after alice's and bob's uploads, and every check above runs on the restarted node (an
//!   in-memory ledger would count the left-over queue as the operator's: bob would wait for all
//!   of alice's builds, and alice's quota would be free).

mod node_support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use node_support::*;

const LONG: Duration = Duration::from_secs(120);
const ALICE_JOBS: usize = 12;
/// Bytes of unfinished uploads each submitter may have.
const QUOTA: u64 = 64 << 10;

fn write_token(data: &std::path::Path, name: &str) -> String {
    let dir = data.join("submitters");
    std::fs::create_dir_all(&dir).unwrap();
    let token = format!("{name}-token-0123456789abcdef");
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    token
}

/// `buildmesh submit` of `names` from `drvs` with `token`: (success, stdout, stderr).
fn submit_as(url: &str, drvs: &Drvs, names: &[String], token: &str) -> (bool, String, String) {
    let mut args: Vec<String> =
        vec!["submit".into(), "--api".into(), url.into(), "--from".into(), drvs.dir.display().to_string()];
    args.extend(names.iter().map(|n| sd().display(&drvs.drv(n))));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, out, err) = cli_env(&refs, &[("BUILDMESH_TOKEN", token)]);
    (st.success(), out, err)
}

fn done(url: &str, drvs: &Drvs, names: &[String]) -> usize {
    names.iter().filter(|n| build_state(url, &drvs.drv(n)).as_deref() == Some("done")).count()
}

#[test]
fn two_submitters_share_the_slot_and_closure_bytes_are_limited_per_submitter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let alice = write_token(&data, "alice");
    let bob = write_token(&data, "bob");
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, format!("[submit]\nmax_closure_bytes_per_submitter = {QUOTA}\n")).unwrap();

    let mut drvs = Drvs::new(&tmp.path().join("drvs"));
    let alice_jobs: Vec<String> = (0..ALICE_JOBS).map(|i| format!("alice-{i}")).collect();
    for n in &alice_jobs {
        drvs.add(n, &format!("sleep 0.5; echo {n} > $out"), &[]);
    }
    let bob_jobs: Vec<String> = (0..2).map(|i| format!("bob-{i}")).collect();
    for n in &bob_jobs {
        drvs.add(n, &format!("sleep 0.5; echo {n} > $out"), &[]);
    }
    // Uploads of a little less than the quota (a `.drv` and its header line are well under 3,000
    // bytes without the padding): each fits alone, not on top of a 12-build backlog (at least
    // 12 x 400 bytes).
    let padding = "#".repeat(QUOTA as usize - 3000);
    drvs.add("alice-big", &format!("echo alice > $out # {padding}"), &[]);
    drvs.add("bob-big", &format!("echo bob > $out # {padding}"), &[]);
    let big = vec!["alice-big".to_string()];

    let args = ["--slots", "1", "--config", config.to_str().unwrap()];
    let mut node = NodeProc::start(&data, &args);
    let (ok, out, err) = submit_as(&node.url, &drvs, &alice_jobs, &alice);
    assert!(ok, "alice's upload: {out}\n{err}");
    let (ok, out, err) = submit_as(&node.url, &drvs, &bob_jobs, &bob);
    assert!(ok, "bob's upload: {out}\n{err}");

    // kill -9 and restart: what follows runs on the ledger read back from the database.
    node.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
    drop(node);
    let node = NodeProc::start(&data, &args);
    assert!(
        node.log_text().contains("restored the unfinished uploads"),
        "the restarted node did not restore the ledger:\n{}",
        node.log_text()
    );

    // The quota, while alice's backlog is unfinished: 429 naming the limit, alice and the numbers.
    let (ok, out, err) = submit_as(&node.url, &drvs, &big, &alice);
    assert!(!ok, "alice's upload over her quota was accepted: {out}");
    for needle in ["429", "submit.max_closure_bytes_per_submitter", "submitter `alice`", &QUOTA.to_string()] {
        assert!(err.contains(needle), "the refusal lacks {needle:?}: {err}");
    }
    assert_eq!(build_state(&node.url, &drvs.drv("alice-big")), None, "nothing of a refused upload is queued");
    // Bob's bytes are his own: the same size is accepted from him.
    let (ok, out, err) = submit_as(&node.url, &drvs, &["bob-big".to_string()], &bob);
    assert!(ok, "bob's upload under his own quota: {out}\n{err}");

    // Fair share: bob's three builds are done while most of alice's twelve still wait.
    for n in bob_jobs.iter().chain(["bob-big".to_string()].iter()) {
        wait_state(&node.url, &drvs.drv(n), "done", LONG);
    }
    let alice_done = done(&node.url, &drvs, &alice_jobs);
    assert!(alice_done <= 6, "bob waited for {alice_done} of alice's {ALICE_JOBS} builds");

    // A submitter's token is for uploads only.
    let cancel = format!("{}/api/v1/builds/{}/cancel", node.url, drvs.drv("alice-11"));
    let (status, body) = post_with(&cancel, Some(&bob));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("submitter `bob`"));

    // Once alice's builds are done her bytes are given back: the same upload is accepted.
    for n in &alice_jobs {
        wait_state(&node.url, &drvs.drv(n), "done", LONG);
    }
    let (ok, out, err) = submit_as(&node.url, &drvs, &big, &alice);
    assert!(ok, "alice's upload after her backlog: {out}\n{err}");
    wait_state(&node.url, &drvs.drv("alice-big"), "done", LONG);
}
