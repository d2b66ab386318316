//! Whose attestations count towards k (issue 10, finding 13c): a node that trusts only itself
//! (no trusted keys configured) used to count only its own attestation, so every node built
//! every job. With [`ReplicaRule::Designated`] the attestations of the builders it designated
//! count too, and the mesh builds each job k times.

use super::*;

/// Each node trusts only itself, counting replicas by `rule`.
fn self_trusting(n: usize, rule: ReplicaRule) -> Net {
    let cfgs = (0..n)
        .map(|i| MeshConfig {
            trust: TrustConfig {
                trusted: Some([key(i).node_id()].into_iter().collect()),
                quorum: 2,
                needs_native: false,
                no_emulation_for: Default::default(),
            },
            replicas_from: rule,
            ..MeshConfig::default()
        })
        .collect();
    Net::with_configs(cfgs)
}

/// Run until nothing starts any more, finishing every build; every build started.
fn run_to_end(net: &mut Net, d: u8) -> Vec<usize> {
    let cfg = MeshConfig::default();
    let mut all = Vec::new();
    for _ in 0..10 {
        let started = Net::started(&net.take_log());
        for &i in &started {
            net.finish(i, d, [8; 32]);
        }
        all.extend(started);
        net.advance(cfg.lease_ms + cfg.claim_timeout_ms);
        if Net::started(&net.log).is_empty() {
            break;
        }
    }
    all
}

#[test]
fn without_trusted_keys_k_is_honoured() {
    for k in [1u8, 2] {
        let mut net = self_trusting(3, ReplicaRule::Designated);
        net.advance(MeshConfig::default().warmup_ms);
        let a = net.id(0);
        let d = 30 + k;
        net.input(0, Input::Submit { job: job(a, d, k), inputs: BTreeSet::new() });
        let builds = run_to_end(&mut net, d);
        assert_eq!(builds.len(), usize::from(k), "k = {k}: builds on {builds:?}");
        for i in 0..3 {
            let v = net.nodes[i].job(&drv(d)).unwrap();
            assert_eq!((v.state, v.attesters.len()), ("complete", usize::from(k)), "node {i}");
        }
    }
}

/// The cause of 13c, kept as a test of the rule: counting trusted attesters only, a node that
/// trusts only itself builds everything itself.
#[test]
fn counting_only_trusted_replicas_makes_every_self_trusting_node_build() {
    let mut net = self_trusting(3, ReplicaRule::Trusted);
    net.advance(MeshConfig::default().warmup_ms);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 40, 1), inputs: BTreeSet::new() });
    let mut builds = run_to_end(&mut net, 40);
    builds.sort();
    assert_eq!(builds, vec![0, 1, 2]);
}
