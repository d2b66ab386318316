//! Issue 18: how long a designated member that does not claim is waited for.

use super::*;

/// Replays the transient k + 1 claims of the simulator (`sim --nodes 100 --drvs 10000
/// --shard-size 50 --max-finished-drvs 128 --seed 3`, drv 690). A and B rank first and never
/// claim; Z, O and W come next. The submission reaches O 80 ms after the others, so O's waits for
/// A and B end 80 ms after theirs. Z lapses both and claims; its claim reaches O before O's
/// lapses. Claims are sticky, so for O the claim of Z and the still-awaited A fill the two places
/// and B drops out of the designation for a few ms. When A lapses at O, B is designated again:
/// its wait must resume where it stopped. Started over, it gave B a fresh minute, O claimed a
/// minute late, after W had lapsed it and claimed: three claims on two places.
#[test]
fn a_wait_interrupted_by_a_claim_resumes() {
    let cfg = MeshConfig::default();
    let timeout = cfg.claim_timeout_ms;
    let mut net = Net::new(5, cfg.clone());
    net.advance(cfg.warmup_ms);
    let r = net.rank(3);
    let (a, b, z, o, w) = (r[0], r[1], r[2], r[3], r[4]);
    net.mute_claims.extend([a, b]);
    net.mute_strikes = true;
    let t = net.now;
    net.hold.insert((z, o));
    let submitter = net.id(z);
    net.input(z, Input::Submit { job: job(submitter, 3, 2), inputs: BTreeSet::new() });
    net.advance(80);
    net.release_held();
    net.hold.clear();
    // Z's claim (at t + timeout) reaches O 15 ms later, 65 ms before O's own lapses.
    net.advance_to(t + timeout - 1);
    net.hold.insert((z, o));
    net.advance_to(t + timeout + 15);
    assert_eq!(net.held.len(), 1, "Z's claim is on its way to O");
    net.release_held();
    net.hold.clear();
    // From now on W's messages reach O late (as gossip may).
    net.hold.insert((w, o));
    net.advance_to(t + timeout + 1_000);
    let builders = |log: &[(usize, Output)]| -> BTreeSet<usize> {
        Net::started(log).into_iter().filter(|i| ![a, b].contains(i)).collect()
    };
    let log = net.take_log();
    assert_eq!(builders(&log), BTreeSet::from([z, o]), "O claims when its waits for A and B end");
    net.advance_to(t + 2 * timeout + 1_000);
    net.release_held();
    net.hold.clear();
    net.advance(1_000);
    let log = net.take_log();
    assert!(builders(&log).is_empty(), "nobody else claims: {:?}", builders(&log));
    assert!(Net::cancelled(&log).is_empty(), "nobody yields: {:?}", Net::cancelled(&log));
    for i in [z, o, w] {
        let claimants = net.nodes[i].job(&drv(3)).unwrap().claimants;
        assert_eq!(claimants.into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([net.id(z), net.id(o)]), "node {i}");
    }
}
