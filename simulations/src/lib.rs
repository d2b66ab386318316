//! Deterministic discrete-event simulation of buildmesh nodes (virtual clock and network).
//! The harness arrives with the protocol state machine (issue 4).
