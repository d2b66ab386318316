//! Shards: the mesh split into `MeshConfig::shards` groups so that no node hears, tracks or
//! ranks the whole mesh.
//!
//! With one shard (the default) every node is in the one group: every node hears every message,
//! keeps every member in its view and every job in its table, so the work of a node grows with
//! the size of the mesh (N members announcing, every job's claims and attestations). With `S`
//! shards:
//! - a node belongs to the shard [`node_shard`] of its id; its view holds the members of its
//!   shard only (announcements of other shards are ignored, [`Ignored::OtherShard`]);
//! - a derivation belongs to the shard [`drv_shard`] of its store path; only the members of that
//!   shard designate, claim and build it, exactly as in an unsharded mesh of that shard's members;
//! - a node tracks the derivations of its shard, and *observes* those it submitted (or waits
//!   for as inputs of its submissions) in other shards: it records their claims, attestations and
//!   failures, resubmits them, and learns their completion, but never designates nor claims them.
//!   An observer counts the attestations of trusted builders (and its own) towards k, so a mesh
//!   whose nodes trust nobody but themselves ([`ReplicaRule::Designated`]) must keep one shard.
//!
//! The driver gives each shard a gossip topic ([`topic`]): a node subscribes to its own shard's
//! topic and to the topics of the shards of the derivations it observes; it publishes
//! announcements on its own shard's topic and each job message on its derivation's shard's topic.
//! Every node of a mesh must use the same number of shards (like k): nodes that disagree place
//! jobs in different groups.
//!
//! [`Ignored::OtherShard`]: super::Ignored::OtherShard
//! [`ReplicaRule::Designated`]: super::ReplicaRule::Designated

use crate::id::NodeId;
use crate::store_path::StorePath;
use crate::wire::Message;

fn bucket(context: &str, bytes: &[u8], shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let h = blake3::derive_key(context, bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    (u64::from_le_bytes(first) % u64::from(shards)) as u32
}

/// The shard of a node (0 with one shard).
pub fn node_shard(node: &NodeId, shards: u32) -> u32 {
    bucket("buildmesh v1 shard node", node.as_bytes(), shards)
}

/// The shard of a derivation (0 with one shard).
pub fn drv_shard(drv: &StorePath, shards: u32) -> u32 {
    bucket("buildmesh v1 shard derivation", drv.to_string().as_bytes(), shards)
}

/// The shard a message is published in: an announcement in its author's shard, a message about
/// a derivation in the derivation's shard.
pub fn message_shard(m: &Message, shards: u32) -> u32 {
    match m {
        Message::Announcement(a) => node_shard(&a.node, shards),
        Message::JobSubmission(j) => drv_shard(&j.drv, shards),
        Message::Claim(c) => drv_shard(&c.drv, shards),
        Message::Attestation(a) => drv_shard(&a.drv, shards),
        Message::BuildFailure(f) => drv_shard(&f.drv, shards),
        Message::Strike(s) => node_shard(&s.struck, shards),
    }
}

/// The gossip topic of a shard: `prefix` itself with one shard (the unsharded mesh keeps its
/// topic), else `prefix/shard-<n>-of-<shards>` (the count is in the name, so nodes configured
/// with different counts do not mix).
pub fn topic(prefix: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 { prefix.to_string() } else { format!("{prefix}/shard-{shard}-of-{shards}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn node(i: u32) -> NodeId {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        NodeKey::from_seed("n", seed).expect("key").node_id()
    }

    #[test]
    fn one_shard_is_shard_zero_and_the_plain_topic() {
        assert_eq!(node_shard(&node(1), 1), 0);
        assert_eq!(topic("buildmesh/mesh", 0, 1), "buildmesh/mesh");
        assert_eq!(topic("buildmesh/mesh", 3, 8), "buildmesh/mesh/shard-3-of-8");
    }

    #[test]
    fn nodes_and_derivations_spread_over_the_shards() {
        let shards = 16;
        let mut nodes = vec![0u32; shards as usize];
        let mut drvs = vec![0u32; shards as usize];
        for i in 0..1600u32 {
            nodes[node_shard(&node(i), shards) as usize] += 1;
            let mut d = [0u8; 20];
            d[..4].copy_from_slice(&i.to_le_bytes());
            let p = StorePath::new(d, "x.drv").expect("valid name");
            drvs[drv_shard(&p, shards) as usize] += 1;
        }
        // 100 expected per shard; a fair hash stays well within 50..150.
        assert!(nodes.iter().chain(&drvs).all(|&c| (50..150).contains(&c)), "{nodes:?} {drvs:?}");
    }
}
