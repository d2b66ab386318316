//! What this node announces about itself to the mesh (systems, features, slots), from its
//! parameters.

use buildmesh_protocol::mesh::LocalInfo;

use super::super::MeshParams;

/// The announcement fields of this node.
pub(super) fn local_info(params: &MeshParams) -> LocalInfo {
    let c = params;
    let native = params.systems.native.clone();
    LocalInfo {
        version: format!("buildmesh {}", env!("CARGO_PKG_VERSION")),
        owner: c.owner.clone().unwrap_or_default(),
        emulated_systems: params.systems.emulated.difference(&native).cloned().collect(),
        native_systems: native,
        features: c.features.iter().cloned().collect(),
        mandatory_features: c.mandatory_features.iter().cloned().collect(),
        slots: u32::try_from(params.slots).unwrap_or(u32::MAX),
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    }
}
