//! The libp2p networking layer: one task owns the Swarm; a cloneable handle sends it commands.
