//! Sybil *members* (`--sybil-members N`, issue 15 item 3): fresh identities that join the mesh as
//! real `Mesh` machines, announce like an honest node (the typical slots, every system and
//! feature of the mesh, each its own owner), claim what placement designates them for, and never
//! deliver: their builds never run, and only the first claim of each derivation is published
//! (no renewal), so the lease runs out. What that costs the honest nodes is the delay to complete
//! the workload:
//! - in an open mesh, every job placed on a Sybil waits for a lease or a claim timeout before
//!   another node takes it; the `no_delivery_penalty_ms` strikes (protocol `mesh/strikes.rs`)
//!   then designate the Sybils last for a while;
//! - under the `builders` policy (`--builders-policy`: every honest node lists the honest keys),
//!   their announcements do not make them members: they are never designated.
//!
//! Sybils never submit and are never trusted; their messages go through the simulated network
//! like anyone's.

use std::collections::{BTreeSet, VecDeque};

use anyhow::{Context as _, Result};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::{LocalInfo, MeshConfig, Output};
use buildmesh_protocol::wire::Message;

use super::{SimNode, World};
use crate::config::SimConfig;

/// Append the Sybil members to `nodes` (after the honest ones) and, with the builders policy,
/// list the honest keys as the only builders.
pub(super) fn add_members(cfg: &SimConfig, nodes: &mut Vec<SimNode>, mesh_cfg: &mut MeshConfig) -> Result<()> {
    if cfg.builders_policy {
        mesh_cfg.builders = Some(nodes.iter().map(|n| n.id).collect());
    }
    if cfg.sybil_members == 0 {
        return Ok(());
    }
    let mut info = LocalInfo::new("sybil", Vec::<String>::new(), crate::dag::node_info(1, cfg.nodes).slots);
    for n in nodes.iter() {
        info.native_systems.extend(n.info.native_systems.iter().cloned());
        info.features.extend(n.info.features.iter().cloned());
    }
    for i in 0..cfg.sybil_members {
        let mut seed = [0x77u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = NodeKey::from_seed(&format!("sybil-member-{i}"), seed).context("sybil key")?;
        let mut info = info.clone();
        info.owner = format!("sybil-{i}");
        nodes.push(SimNode {
            id: key.node_id(),
            key,
            info,
            mesh: None,
            inc: 0,
            timer_at: None,
            running: Vec::new(),
            queue: VecDeque::new(),
            persisted: Vec::new(),
            submits: Vec::new(),
            resolved: BTreeSet::new(),
            failed: BTreeSet::new(),
            byzantine: false,
            sybil_member: true,
            sybil_claimed: BTreeSet::new(),
        });
    }
    Ok(())
}

impl World {
    /// What a Sybil member's machine asks for: announcements and first claims go out; renewals,
    /// builds and everything else are dropped.
    pub(super) fn sybil_member_output(&mut self, i: u32, o: Output) {
        match o {
            Output::Publish(m @ Message::Announcement(_)) => self.publish(i, m),
            Output::Publish(Message::Claim(c)) if self.nodes[i as usize].sybil_claimed.insert(c.drv.clone()) => {
                self.publish(i, Message::Claim(c));
            }
            _ => {}
        }
    }
}
