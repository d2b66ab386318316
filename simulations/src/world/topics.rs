//! Gossip topics: which nodes a published message reaches.
//!
//! One topic per shard of the mesh (`buildmesh_protocol::mesh::shard`): every node subscribes to
//! its own shard's topic, and a client also to the topics of the shards of the derivations it
//! submits (it observes them). A message goes to the subscribers of its shard's topic. With one
//! shard every node subscribes to the one topic, in node order, as before sharding.

use std::rc::Rc;

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::shard;
use buildmesh_protocol::wire::Message;

use crate::dag::Dag;

/// The subscribers of each shard's topic.
#[derive(Debug)]
pub(super) struct Topics {
    shards: u32,
    subscribers: Vec<Rc<[u32]>>,
}

impl Topics {
    /// Subscriptions of `nodes` (by index) with `shards` shards for the workload `dag`.
    pub(super) fn new(shards: u32, nodes: &[NodeId], dag: &Dag) -> Topics {
        let mut subscribers: Vec<Vec<u32>> = vec![Vec::new(); shards.max(1) as usize];
        for (i, id) in nodes.iter().enumerate() {
            subscribers[shard::node_shard(id, shards) as usize].push(i as u32);
        }
        if shards > 1 {
            for (client, drvs) in &dag.clients {
                for &d in drvs {
                    let s = shard::drv_shard(&dag.drvs[d as usize].path, shards) as usize;
                    if let Err(pos) = subscribers[s].binary_search(client) {
                        subscribers[s].insert(pos, *client);
                    }
                }
            }
        }
        Topics { shards, subscribers: subscribers.into_iter().map(Rc::from).collect() }
    }

    /// The nodes a message published now reaches (its author included: skip it).
    pub(super) fn subscribers(&self, m: &Message) -> Rc<[u32]> {
        Rc::clone(&self.subscribers[shard::message_shard(m, self.shards) as usize])
    }

    /// Number of shards.
    pub(super) fn shards(&self) -> u32 {
        self.shards
    }
}

/// Give each shard the mesh's mix of capabilities: the nodes of a shard, in index order, take the
/// capabilities `dag::node_info` gives the first nodes of the mesh (owners stay by index). Shards
/// are by key hash, so without this a shard of 50 could lack the builders a derivation needs (a
/// system feature 1 node in 10 has), and its jobs could never complete.
pub(super) fn mix_capabilities(nodes: &mut [super::SimNode], shards: u32) {
    let total = nodes.len();
    let mut seen = vec![0usize; shards.max(1) as usize];
    for (i, n) in nodes.iter_mut().enumerate() {
        let s = shard::node_shard(&n.id, shards) as usize;
        let mut info = crate::dag::node_info(seen[s], total);
        seen[s] += 1;
        info.owner = crate::dag::node_info(i, total).owner;
        n.info = info;
    }
}
