//! Shards (`shard.rs`): a node's view holds its shard only, a job is built in its derivation's
//! shard, its submitter in another shard observes it to completion; finished jobs are forgotten
//! beyond `max_finished_drvs`.

use super::*;
use crate::mesh::shard::{drv_shard, node_shard};

const JOBS: u8 = 8;

#[test]
fn a_job_is_built_in_its_shard_and_observed_by_its_submitter() {
    let shards = 2;
    let cfg = MeshConfig { shards, ..MeshConfig::default() };
    let mut net = Net::new(10, cfg);
    net.advance(70_000);
    for i in 0..10 {
        let mine = node_shard(&net.id(i), shards);
        let same = (0..10).filter(|j| node_shard(&net.id(*j), shards) == mine).count();
        assert_eq!(net.nodes[i].member_count(), same, "node {i}: its view is its shard");
    }
    let a = net.id(0);
    let home = node_shard(&a, shards);
    assert!((1..=JOBS).any(|d| drv_shard(&drv(d), shards) != home), "some job lies in the other shard");
    for d in 1..=JOBS {
        net.input(0, Input::Submit { job: job(a, d, 1), inputs: BTreeSet::new() });
    }
    let mut complete = BTreeSet::new();
    let mut builds = 0;
    for _ in 0..20 {
        net.advance(30_000);
        for (i, o) in net.take_log() {
            match o {
                Output::StartBuild(order) => {
                    let d = (1..=JOBS).find(|d| drv(*d) == order.drv).expect("a submitted derivation");
                    assert_eq!(node_shard(&net.id(i), shards), drv_shard(&order.drv, shards), "node {i} built drv {d}");
                    builds += 1;
                    net.finish(i, d, [d; 32]);
                }
                Output::Event(Event::JobComplete { drv, .. }) if i == 0 => {
                    complete.insert(drv);
                }
                _ => {}
            }
        }
    }
    assert_eq!(builds, usize::from(JOBS), "k = 1 build per job");
    assert_eq!(complete.len(), usize::from(JOBS), "the submitter saw every job complete, in both shards");
}

#[test]
fn finished_jobs_beyond_the_limit_are_forgotten() {
    let cfg = MeshConfig { max_finished_drvs: 2, ..MeshConfig::default() };
    let mut net = Net::new(3, cfg);
    net.advance(70_000);
    let a = net.id(0);
    for d in 1..=JOBS {
        net.input(0, Input::Submit { job: job(a, d, 1), inputs: BTreeSet::new() });
    }
    net.advance(1_000);
    let log = net.take_log();
    for (i, o) in &log {
        if let Output::StartBuild(order) = o {
            let d = (1..=JOBS).find(|d| drv(*d) == order.drv).expect("a submitted derivation");
            net.finish(*i, d, [d; 32]);
        }
    }
    net.advance(200_000);
    for (i, o) in net.take_log() {
        if let Output::StartBuild(order) = o {
            let d = (1..=JOBS).find(|d| drv(*d) == order.drv).expect("a submitted derivation");
            net.finish(i, d, [d; 32]);
        }
    }
    for i in 0..3 {
        assert_eq!(net.nodes[i].drv_counts(), (2, 0), "node {i} keeps the 2 latest finished jobs only");
    }
}
