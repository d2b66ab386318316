//! Scheduler tests with a small in-process executor that really registers outputs in a real
//! (in-memory redb) store, so that attestations are signed and committed as in production.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildmesh_protocol::derivation::{Derivation, Output};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use tokio_util::sync::CancellationToken;

use super::{Scheduler, SchedulerHandle, SchedulerOptions};
use crate::build::{BuildError, BuildFuture, BuildReport, BuildRequest, BuiltOutput, Executor};
use crate::store::test_support::{memory_store, path};
use crate::store::{BuildState, EnqueueRequest, PathInfo, Store, unix_ms};
use crate::systems::Systems;

#[derive(Debug, Clone)]
enum Behaviour {
    Succeed,
    Fail,
    /// Fail transiently this many more times, then succeed.
    Transient(u32),
    /// Run until cancelled.
    Block,
    /// Run until cancelled, then take this long to stop (a builder process slow to die).
    SlowStop(Duration),
}

#[derive(Debug)]
struct TestExec {
    store: Store,
    behaviour: Mutex<HashMap<StorePath, Behaviour>>,
    started: Mutex<Vec<StorePath>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    delay: Duration,
}

impl TestExec {
    fn set(&self, drv: &StorePath, b: Behaviour) {
        self.behaviour.lock().unwrap().insert(drv.clone(), b);
    }

    fn started(&self) -> Vec<StorePath> {
        self.started.lock().unwrap().clone()
    }

    fn register(&self, req: &BuildRequest) -> BuildReport {
        let mut outputs = BTreeMap::new();
        for (name, o) in &req.drv.outputs {
            let p = o.path.clone().unwrap();
            let contents = format!("built {} output {name}\n", req.drv_path);
            let mut nar = Vec::new();
            let mut w = NarWriter::new(&mut nar).unwrap();
            w.regular(false, contents.len() as u64, &mut contents.as_bytes()).unwrap();
            w.finish().unwrap();
            let blob = self.store.put_nar(&mut nar.as_slice()).unwrap();
            self.store
                .register_path(&PathInfo {
                    path: p.clone(),
                    nar_hash: blob.nar_hash.clone(),
                    nar_size: blob.nar_size,
                    references: BTreeSet::new(),
                    deriver: Some(req.drv_path.clone()),
                    ca: None,
                    blob: blob.blake3,
                    registered_at: unix_ms(),
                })
                .unwrap();
            outputs.insert(
                name.clone(),
                BuiltOutput {
                    path: p,
                    nar_hash: blob.nar_hash,
                    nar_size: blob.nar_size,
                    references: BTreeSet::new(),
                    content_id: blob.blake3,
                },
            );
        }
        BuildReport { outputs, log: b"ok\n".to_vec(), emulated: false, started_at_ms: 1, finished_at_ms: 2 }
    }
}

impl Executor for TestExec {
    fn name(&self) -> &'static str {
        "test"
    }

    fn build(&self, req: BuildRequest, cancel: CancellationToken) -> BuildFuture<'_> {
        Box::pin(async move {
            self.started.lock().unwrap().push(req.drv_path.clone());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let b = self.behaviour.lock().unwrap().get(&req.drv_path).cloned().unwrap_or(Behaviour::Succeed);
            let result = match b {
                Behaviour::Block => {
                    cancel.cancelled().await;
                    Err(BuildError::Cancelled)
                }
                Behaviour::SlowStop(stop) => {
                    cancel.cancelled().await;
                    tokio::time::sleep(stop).await;
                    Err(BuildError::Cancelled)
                }
                other => {
                    tokio::select! {
                        _ = cancel.cancelled() => Err(BuildError::Cancelled),
                        _ = tokio::time::sleep(self.delay) => match other {
                            Behaviour::Fail => Err(BuildError::BuilderExit { code: 1, log: b"boom\n".to_vec() }),
                            Behaviour::Transient(n) if n > 0 => {
                                self.set(&req.drv_path, Behaviour::Transient(n - 1));
                                Err(BuildError::Executor { message: "flaky".into(), log: Vec::new() })
                            }
                            _ => Ok(self.register(&req)),
                        },
                    }
                }
            };
            self.running.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

fn drv_path(n: u8) -> StorePath {
    path(n, &format!("t{n}.drv"))
}

fn out_path(n: u8) -> StorePath {
    path(n, &format!("t{n}"))
}

struct Harness {
    store: Store,
    exec: Arc<TestExec>,
    handle: SchedulerHandle,
    shutdown: CancellationToken,
    scheduler: Option<Scheduler>,
    task: Option<tokio::task::JoinHandle<()>>,
    key: NodeKey,
    _dir: tempfile::TempDir,
}

fn sd() -> StoreDir {
    StoreDir::nix()
}

impl Harness {
    fn new(slots: usize, max_attempts: u32, delay: Duration) -> Harness {
        let (store, dir) = memory_store();
        let exec = Arc::new(TestExec {
            store: store.clone(),
            behaviour: Mutex::default(),
            started: Mutex::default(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            delay,
        });
        let key = NodeKey::from_seed("sched-test-1", [9; 32]).unwrap();
        let options = SchedulerOptions {
            slots,
            max_attempts,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..SchedulerOptions::default()
        };
        let scheduler =
            Scheduler::new(store.clone(), sd(), Arc::new(key.clone()), Systems::default(), exec.clone(), options);
        let handle = scheduler.handle();
        let shutdown = CancellationToken::new();
        Harness { store, exec, handle, shutdown, scheduler: Some(scheduler), task: None, key, _dir: dir }
    }

    /// Start the scheduler (after the initial queue is in place, so the first pass sees it all).
    fn start(&mut self) {
        if let Some(s) = self.scheduler.take() {
            self.task = Some(tokio::spawn(s.run(self.shutdown.clone())));
        }
    }

    /// Store derivation `n` (output `t<n>`) needing the `out` of each of `inputs`.
    fn add_drv(&self, n: u8, inputs: &[u8]) {
        let mut d = Derivation { system: b"x86_64-linux".to_vec(), builder: b"/bin/sh".to_vec(), ..Default::default() };
        d.outputs.insert("out".into(), Output::input_addressed(Some(out_path(n))));
        for &i in inputs {
            d.input_drvs.insert(drv_path(i), BTreeSet::from(["out".to_string()]));
        }
        self.store.put_drv(&drv_path(n), &d.to_aterm(&sd())).unwrap();
    }

    fn enqueue(&self, n: u8, priority: i32) {
        let req = EnqueueRequest { drv: drv_path(n), priority, wanted_outputs: BTreeSet::new(), replicas: 1 };
        self.store.enqueue(&req, unix_ms()).unwrap();
    }

    fn state(&self, n: u8) -> BuildState {
        self.store.get_build(&drv_path(n)).unwrap().unwrap().state
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_settled(&self, drvs: &[u8]) {
        self.wait_for("builds to settle", |h| {
            drvs.iter().all(|&n| matches!(h.state(n), BuildState::Done | BuildState::Failed | BuildState::Cancelled))
        })
        .await;
    }

    async fn stop(self) -> Store {
        self.shutdown.cancel();
        if let Some(t) = self.task {
            t.await.unwrap();
        }
        self.store
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_then_critical_path_then_queue_order() {
    let mut h = Harness::new(1, 1, Duration::from_millis(5));
    // A alone; chain B1 <- B2 <- B3; C alone with a higher priority.
    h.add_drv(1, &[]); // A
    h.add_drv(11, &[]); // B1
    h.add_drv(12, &[11]); // B2
    h.add_drv(13, &[12]); // B3
    h.add_drv(20, &[]); // C
    for (n, p) in [(1, 0), (11, 0), (12, 0), (13, 0), (20, 5)] {
        h.enqueue(n, p);
    }
    h.start();
    h.wait_settled(&[1, 11, 12, 13, 20]).await;
    let order = h.exec.started();
    assert_eq!(order, vec![drv_path(20), drv_path(11), drv_path(12), drv_path(1), drv_path(13)]);
    for n in [1, 11, 12, 13, 20] {
        assert_eq!(h.state(n), BuildState::Done);
        // Durable before reported: every done build has its attestation and outputs.
        assert_eq!(h.store.attestations_for_drv(&drv_path(n)).unwrap().len(), 1);
        assert!(h.store.has_path(&out_path(n)).unwrap());
        assert_eq!(h.store.get_log(&drv_path(n)).unwrap().unwrap(), b"ok\n");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_slots_at_once() {
    let mut h = Harness::new(2, 1, Duration::from_millis(60));
    for n in 1..=6 {
        h.add_drv(n, &[]);
        h.enqueue(n, 0);
    }
    h.start();
    h.wait_settled(&[1, 2, 3, 4, 5, 6]).await;
    assert_eq!(h.exec.max_running.load(Ordering::SeqCst), 2);
    assert_eq!(h.exec.started().len(), 6);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_first_and_failures_propagate_then_retry_fixes_them() {
    let mut h = Harness::new(4, 3, Duration::from_millis(5));
    // F fails for good; D needs F; E needs D; G needs nothing.
    h.add_drv(1, &[]); // F
    h.add_drv(2, &[1]); // D
    h.add_drv(3, &[2]); // E
    h.add_drv(4, &[]); // G
    h.exec.set(&drv_path(1), Behaviour::Fail);
    // Enqueued dependents first: order must still follow the inputs.
    for n in [3, 2, 1, 4] {
        h.enqueue(n, 0);
    }
    h.start();
    h.wait_settled(&[1, 2, 3, 4]).await;
    assert_eq!(h.state(1), BuildState::Failed);
    assert_eq!(h.state(4), BuildState::Done);
    let d = h.store.get_build(&drv_path(2)).unwrap().unwrap();
    assert_eq!(d.state, BuildState::Failed);
    let why = d.last_error.unwrap();
    assert!(why.contains(&drv_path(1).to_string()) && why.contains("failed"), "{why}");
    let e = h.store.get_build(&drv_path(3)).unwrap().unwrap();
    assert!(e.last_error.unwrap().contains(&drv_path(2).to_string()));
    // Only F ran (once: a builder failure is not transient); its signed failure is stored.
    assert_eq!(h.exec.started().iter().filter(|p| **p == drv_path(1)).count(), 1);
    assert!(!h.exec.started().contains(&drv_path(2)));
    assert_eq!(h.store.failures_for_drv(&drv_path(1)).unwrap().len(), 1);
    assert!(h.store.failures_for_drv(&drv_path(2)).unwrap().is_empty());

    // Fix F; retrying E queues E and its failed inputs D and F again.
    h.exec.set(&drv_path(1), Behaviour::Succeed);
    let again = tokio::task::spawn_blocking({
        let handle = h.handle.clone();
        move || handle.retry(&drv_path(3))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again[0], drv_path(3));
    assert_eq!(again.iter().collect::<BTreeSet<_>>(), [drv_path(1), drv_path(2), drv_path(3)].iter().collect());
    h.wait_settled(&[1, 2, 3]).await;
    for n in [1, 2, 3] {
        assert_eq!(h.state(n), BuildState::Done, "t{n}");
    }
    // A done build cannot be retried; an unknown one is reported as such.
    let handle = h.handle.clone();
    let errs =
        tokio::task::spawn_blocking(move || (handle.retry(&drv_path(4)), handle.retry(&drv_path(99)))).await.unwrap();
    assert!(errs.0.unwrap_err().to_string().contains("done"));
    assert!(errs.1.unwrap_err().to_string().contains("no build"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff_up_to_max_attempts() {
    let mut h = Harness::new(2, 3, Duration::from_millis(2));
    h.add_drv(1, &[]);
    h.add_drv(2, &[]);
    h.exec.set(&drv_path(1), Behaviour::Transient(2));
    h.exec.set(&drv_path(2), Behaviour::Transient(10));
    h.enqueue(1, 0);
    h.enqueue(2, 0);
    let t = Instant::now();
    h.start();
    h.wait_settled(&[1, 2]).await;
    let a = h.store.get_build(&drv_path(1)).unwrap().unwrap();
    assert_eq!((a.state, a.attempts), (BuildState::Done, 3));
    let b = h.store.get_build(&drv_path(2)).unwrap().unwrap();
    assert_eq!((b.state, b.attempts), (BuildState::Failed, 3));
    assert!(b.last_error.unwrap().contains("flaky"));
    // Backoffs of 20 ms then 40 ms were waited.
    assert!(t.elapsed() >= Duration::from_millis(60), "{:?}", t.elapsed());
    assert_eq!(h.store.failures_for_drv(&drv_path(2)).unwrap().len(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_build_and_fails_its_dependents() {
    let mut h = Harness::new(2, 3, Duration::from_millis(2));
    h.add_drv(1, &[]);
    h.add_drv(2, &[1]);
    h.exec.set(&drv_path(1), Behaviour::Block);
    h.enqueue(1, 0);
    h.enqueue(2, 0);
    h.start();
    h.wait_for("t1 to run", |h| h.state(1) == BuildState::Running).await;
    assert_eq!(h.handle.running(), vec![drv_path(1)]);
    let handle = h.handle.clone();
    let before = tokio::task::spawn_blocking(move || handle.cancel(&drv_path(1))).await.unwrap().unwrap();
    assert_eq!(before, BuildState::Running);
    h.wait_settled(&[1, 2]).await;
    assert_eq!(h.state(1), BuildState::Cancelled);
    let d = h.store.get_build(&drv_path(2)).unwrap().unwrap();
    assert_eq!(d.state, BuildState::Failed);
    assert!(d.last_error.unwrap().contains("cancelled"));
    h.wait_for("the cancelled build to leave its slot", |h| h.handle.running().is_empty()).await;
    // Cancelling a failed build is refused.
    let handle = h.handle.clone();
    let e = tokio::task::spawn_blocking(move || handle.cancel(&drv_path(2))).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("failed"), "{e}");
    h.stop().await;
}

/// A build cancelled and retried at once while its builder is still stopping: the new attempt
/// waits for the old one to end (never two builders of one derivation at once), and the old one's
/// end does not count against the new attempt (it once marked it failed: "cancelled by something
/// other than the API").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_right_after_a_cancel_waits_for_the_old_builder_and_keeps_running() {
    let mut h = Harness::new(2, 3, Duration::from_millis(2));
    h.add_drv(1, &[]);
    h.exec.set(&drv_path(1), Behaviour::SlowStop(Duration::from_millis(300)));
    h.enqueue(1, 0);
    h.start();
    h.wait_for("t1 to run", |h| h.state(1) == BuildState::Running).await;
    let handle = h.handle.clone();
    tokio::task::spawn_blocking(move || {
        handle.cancel(&drv_path(1)).unwrap();
        handle.retry(&drv_path(1)).unwrap();
    })
    .await
    .unwrap();
    h.wait_for("the retried t1 to start", |h| h.exec.started().len() == 2).await;
    assert_eq!(h.exec.max_running.load(Ordering::SeqCst), 1, "two builders of t1 ran at once");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h.store.get_build(&drv_path(1)).unwrap().unwrap();
    assert_eq!(r.state, BuildState::Running, "the retried attempt: {r:?}");
    assert_eq!(h.handle.running(), vec![drv_path(1)]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_inputs_without_a_build_are_enqueued() {
    let mut h = Harness::new(1, 1, Duration::from_millis(2));
    h.add_drv(1, &[]);
    h.add_drv(2, &[1]);
    h.enqueue(2, 7);
    h.start();
    h.wait_settled(&[2]).await;
    assert_eq!(h.state(1), BuildState::Done);
    assert_eq!(h.state(2), BuildState::Done);
    assert_eq!(h.store.get_build(&drv_path(1)).unwrap().unwrap().priority, 7, "inherits the dependent's priority");
    assert_eq!(h.exec.started(), vec![drv_path(1), drv_path(2)]);
    // An input that is not on the node at all fails the dependent with a clear reason.
    h.add_drv(3, &[42]);
    h.enqueue(3, 0);
    h.handle.wake();
    h.wait_settled(&[3]).await;
    let why = h.store.get_build(&drv_path(3)).unwrap().unwrap().last_error.unwrap();
    assert!(why.contains("not on this node"), "{why}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_running_builds_for_requeue_and_attested_builds_are_not_rebuilt() {
    let mut h = Harness::new(1, 1, Duration::from_millis(2));
    h.add_drv(1, &[]);
    h.add_drv(2, &[]);
    h.exec.set(&drv_path(2), Behaviour::Block);
    h.enqueue(1, 1);
    h.enqueue(2, 0);
    h.start();
    h.wait_for("t2 to run", |h| h.state(2) == BuildState::Running).await;
    let me = h.key.node_id();
    let store = h.stop().await;
    assert_eq!(store.get_build(&drv_path(2)).unwrap().unwrap().state, BuildState::Running);
    assert_eq!(store.requeue_interrupted().unwrap(), vec![drv_path(2)]);
    assert_eq!(store.get_build(&drv_path(2)).unwrap().unwrap().state, BuildState::Queued);
    // t1 was built and attested by this node: the crash-recovery shortcut recognises it.
    let d1 = Derivation::parse(&store.get_drv(&drv_path(1)).unwrap().unwrap(), &sd()).unwrap();
    assert!(super::already_attested(&store, &me, &drv_path(1), &d1).unwrap());
    let other = NodeKey::from_seed("other-1", [3; 32]).unwrap().node_id();
    assert!(!super::already_attested(&store, &other, &drv_path(1), &d1).unwrap());
    let d2 = Derivation::parse(&store.get_drv(&drv_path(2)).unwrap().unwrap(), &sd()).unwrap();
    assert!(!super::already_attested(&store, &me, &drv_path(2), &d2).unwrap());
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let o = SchedulerOptions {
        backoff_base: Duration::from_secs(5),
        backoff_max: Duration::from_secs(60),
        ..SchedulerOptions::default()
    };
    let got: Vec<u64> = (1..=6).map(|a| o.backoff(a).as_secs()).collect();
    assert_eq!(got, vec![5, 10, 20, 40, 60, 60]);
    assert_eq!(o.backoff(u32::MAX).as_secs(), 60);
}
