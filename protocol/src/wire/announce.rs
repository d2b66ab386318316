//! [`Announcement`]: what a node can build.

use std::collections::BTreeSet;

use super::codec::{Decode, DecodeError, Encode, Reader, Sink, put_str, put_str_set, put_u32, put_u64};
use super::{Kind, Payload, read_features, read_label, read_systems};
use crate::id::NodeId;

/// A node's capabilities, gossiped periodically and on change.
///
/// Idempotence and replays: per node, receivers keep the announcement with the highest `seq`
/// (ties: the later `timestamp_ms`, then the larger message id) and drop any other.
///
/// Encoding: `node` ‖ `seq` u64 ‖ `timestamp_ms` u64 ‖ `version` ‖ `owner` ‖ `native_systems` ‖
/// `emulated_systems` ‖ `features` ‖ `mandatory_features` ‖ `slots` u32 ‖ `load` u32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing node (must be the signer).
    pub node: NodeId,
    /// Sequence number, increasing with every announcement of this node (restart-safe when derived
    /// from the clock, e.g. the timestamp).
    pub seq: u64,
    /// When it was made (unix millis).
    pub timestamp_ms: u64,
    /// Software version, e.g. `buildmesh 0.1.0` (1–64 bytes, no control characters).
    pub version: String,
    /// Owner label for replica diversity (0–64 bytes; empty = unknown, treated as its own owner).
    pub owner: String,
    /// Systems built natively (`x86_64-linux`).
    pub native_systems: BTreeSet<String>,
    /// Systems built under emulation; disjoint from `native_systems`.
    pub emulated_systems: BTreeSet<String>,
    /// Supported `requiredSystemFeatures` (`kvm`, `big-parallel`).
    pub features: BTreeSet<String>,
    /// Features a derivation must require for this node to take it (Nix's mandatory features).
    pub mandatory_features: BTreeSet<String>,
    /// Concurrent build slots (its placement weight, clamped by placement; 0 = builds nothing;
    /// at most [`super::MAX_SLOTS`], larger values do not decode).
    pub slots: u32,
    /// Builds running now.
    pub load: u32,
}

impl Encode for Announcement {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.node.encode(out);
        put_u64(out, self.seq);
        put_u64(out, self.timestamp_ms);
        put_str(out, &self.version);
        put_str(out, &self.owner);
        put_str_set(out, &self.native_systems);
        put_str_set(out, &self.emulated_systems);
        put_str_set(out, &self.features);
        put_str_set(out, &self.mandatory_features);
        put_u32(out, self.slots);
        put_u32(out, self.load);
    }
}

impl Payload for Announcement {
    const KIND: Kind = Kind::Announcement;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let node = NodeId::decode(r, "announcement.node")?;
        let seq = r.u64("announcement.seq")?;
        let timestamp_ms = r.u64("announcement.timestamp_ms")?;
        let version = read_label(r, "announcement.version", false)?;
        let owner = read_label(r, "announcement.owner", true)?;
        let native_systems = read_systems(r, "announcement.native_systems")?;
        let offset = r.offset();
        let emulated_systems = read_systems(r, "announcement.emulated_systems")?;
        if let Some(s) = native_systems.intersection(&emulated_systems).next() {
            return Err(Reader::invalid(
                "announcement.emulated_systems",
                offset,
                format!("system {s:?} is listed as both native and emulated"),
            ));
        }
        let features = read_features(r, "announcement.features")?;
        let mandatory_features = read_features(r, "announcement.mandatory_features")?;
        let offset = r.offset();
        let slots = r.u32("announcement.slots")?;
        if slots > super::MAX_SLOTS {
            return Err(Reader::invalid(
                "announcement.slots",
                offset,
                format!("{slots} slots, at most {}", super::MAX_SLOTS),
            ));
        }
        let load = r.u32("announcement.load")?;
        Ok(Announcement {
            node,
            seq,
            timestamp_ms,
            version,
            owner,
            native_systems,
            emulated_systems,
            features,
            mandatory_features,
            slots,
            load,
        })
    }

    fn author(&self) -> &NodeId {
        &self.node
    }
}
