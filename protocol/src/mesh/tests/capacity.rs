//! Build slots: a node claims no more derivations than it has slots, takes the next one as a slot
//! frees up, and leaves to others what it could not start within half of `claim_timeout_ms`.

use super::*;

/// The derivation `d` (1..=`n`) a build order is for.
fn which(order: &BuildOrder, n: u8) -> u8 {
    (1..=n).find(|d| drv(*d) == order.drv).expect("a submitted derivation")
}

/// The builds started in `log`, as (node, derivation).
fn starts(log: &[(usize, Output)], n: u8) -> Vec<(usize, u8)> {
    log.iter()
        .filter_map(|(i, o)| match o {
            Output::StartBuild(order) => Some((*i, which(order, n))),
            _ => None,
        })
        .collect()
}

const JOBS: u8 = 12;

fn submit_all(net: &mut Net) {
    let a = net.id(0);
    for d in 1..=JOBS {
        net.input(0, Input::Submit { job: job(a, d, 1), inputs: BTreeSet::new() });
    }
}

#[test]
fn a_node_claims_only_as_many_builds_as_it_has_slots() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    submit_all(&mut net);
    let mut running: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut built: Vec<u8> = Vec::new();
    // Every node finishes whatever it runs, round after round, until everything is built.
    for _round in 0..JOBS {
        for (i, d) in starts(&net.take_log(), JOBS) {
            running.entry(i).or_default().push(d);
        }
        for (i, ds) in &running {
            assert!(ds.len() <= 2, "node {i} runs {ds:?} with 2 slots");
        }
        if running.values().all(Vec::is_empty) {
            break;
        }
        for (i, ds) in std::mem::take(&mut running) {
            for d in ds {
                net.finish(i, d, [d; 32]);
                built.push(d);
            }
        }
    }
    built.sort_unstable();
    assert_eq!(built, (1..=JOBS).collect::<Vec<_>>(), "each derivation built once (k = 1)");
    assert!(Net::cancelled(&net.log).is_empty(), "nothing started twice and cancelled");
    for i in 0..3 {
        assert_eq!(net.nodes[i].drv_counts().1, 0, "node {i} sees every job complete");
    }
}

#[test]
fn a_busy_node_leaves_its_waiting_builds_to_idle_nodes() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    submit_all(&mut net);
    let first = starts(&net.take_log(), JOBS);
    // Which node was designated for which derivation (rank order, k = 1).
    let mut designated: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for d in 1..=JOBS {
        designated.entry(net.rank(d)[0]).or_default().push(d);
    }
    let (busy, busy_drvs) = designated.iter().max_by_key(|(_, ds)| ds.len()).map(|(i, ds)| (*i, ds.clone())).unwrap();
    assert!(busy_drvs.len() > 2, "the test needs a node designated for more builds than its 2 slots");
    let busy_started: Vec<u8> = first.iter().filter(|(i, _)| *i == busy).map(|(_, d)| *d).collect();
    assert_eq!(busy_started.len(), 2, "the busy node fills its slots and waits for the rest");
    // The others finish everything they start; the busy node never finishes. A node that
    // waited for a slot of its own takes it as soon as its first build is done.
    let mut todo: Vec<(usize, u8)> = first.iter().copied().filter(|(i, _)| *i != busy).collect();
    let mut taken: Vec<u8> = Vec::new();
    let mut timed_out = false;
    for _round in 0..4 * JOBS {
        let started = starts(&net.take_log(), JOBS);
        assert!(started.iter().all(|(i, _)| *i != busy), "the busy node starts nothing more: {started:?}");
        todo.extend(started);
        if todo.is_empty() {
            if timed_out {
                break;
            }
            // After the claim timeout, the idle nodes take over what the busy node could not start.
            net.advance(cfg.claim_timeout_ms + 1);
            timed_out = true;
            continue;
        }
        for (i, d) in std::mem::take(&mut todo) {
            net.finish(i, d, [d; 32]);
            if busy_drvs.contains(&d) {
                taken.push(d);
            }
        }
    }
    taken.sort_unstable();
    let waiting: Vec<u8> = busy_drvs.iter().copied().filter(|d| !busy_started.contains(d)).collect();
    assert_eq!(taken, waiting, "the busy node's waiting builds went to the others");
    // The busy node finishes its two; nothing else starts there and no one yields.
    for d in busy_started {
        net.finish(busy, d, [d; 32]);
    }
    assert!(starts(&net.take_log(), JOBS).is_empty());
    assert!(Net::cancelled(&net.log).is_empty());
    assert_eq!(net.nodes[busy].drv_counts().1, 0, "every job complete");
}
