//! [`Announcement`]: what a node can build.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{
    Decode, DecodeError, Encode, Reader, Sink, put_len, put_str, put_str_set, put_u8, put_u32, put_u64,
};
use super::{Kind, Payload, read_features, read_label, read_system, read_systems};
use crate::id::NodeId;

/// A node's capabilities, gossiped periodically and on change.
///
/// Idempotence and replays: per node, receivers keep the announcement with the highest `seq`
/// (ties: the later `timestamp_ms`, then the larger message id) and drop any other.
///
/// Encoding: `node` ‖ `seq` u64 ‖ `timestamp_ms` u64 ‖ `version` ‖ `owner` ‖ `native_systems` ‖
/// `emulated_systems` ‖ `features` ‖ `mandatory_features` ‖ `slots` u32 ‖ `load` u32 ‖ extensions,
/// each a tag u8 then its value, tags strictly increasing, each optional (an announcement without
/// them encodes exactly as before they existed, so older decoders read it):
/// `1` ‖ the [`slowdown`](Announcement::slowdown) map: count u32 (1..=[`super::MAX_SYSTEMS`]), then
/// per system, strictly increasing, the system ‖ its slowdown u32 (issue 16);
/// `2` ‖ the [`disk_pressure`](Announcement::disk_pressure) reason, a string of 1..=
/// [`MAX_DISK_PRESSURE_LEN`] bytes without control characters (issue 15). An unknown tag does not
/// decode (a later version that adds one also teaches its decoders).
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
    /// The measured slowdown of each emulated system it announces, in hundredths (`850`: a build
    /// under emulation takes 8.5 times as long as natively): what lowers its placement weight
    /// for that system ([`crate::placement`]). Keys are emulated systems; values in
    /// [`MIN_SLOWDOWN`]..=[`MAX_SLOWDOWN`]. A system without an entry (not measured, or an older
    /// node) counts as [`crate::placement::DEFAULT_SLOWDOWN`].
    pub slowdown: BTreeMap<String, u32>,
    /// Why the node takes no new builds, when it is over its disk limits (`None`: it is not):
    /// placement gives it no new derivation while it says so, and others show the reason.
    pub disk_pressure: Option<String>,
}

/// The smallest slowdown an emulated system may announce (1x: as fast as native).
pub const MIN_SLOWDOWN: u32 = 100;
/// The largest slowdown an emulated system may announce (1000x).
pub const MAX_SLOWDOWN: u32 = 100_000;
/// Longest disk-pressure reason.
pub const MAX_DISK_PRESSURE_LEN: usize = 256;
/// The extension tag of the slowdown map.
const SLOWDOWN_TAG: u8 = 1;
/// The extension tag of the disk-pressure reason.
const DISK_PRESSURE_TAG: u8 = 2;

/// Check a slowdown map against an announcement's emulated systems (the rule receivers apply).
pub fn validate_slowdown(slowdown: &BTreeMap<String, u32>, emulated: &BTreeSet<String>) -> Result<(), String> {
    if slowdown.len() > super::MAX_SYSTEMS {
        return Err(format!("{} entries, at most {}", slowdown.len(), super::MAX_SYSTEMS));
    }
    for (system, &x) in slowdown {
        if !emulated.contains(system) {
            return Err(format!("system {system:?} is not an emulated system of the announcement"));
        }
        if !(MIN_SLOWDOWN..=MAX_SLOWDOWN).contains(&x) {
            return Err(format!("slowdown {x} of {system:?} is outside {MIN_SLOWDOWN}..={MAX_SLOWDOWN}"));
        }
    }
    Ok(())
}

/// Check a disk-pressure reason (1..=[`MAX_DISK_PRESSURE_LEN`] bytes, no control characters).
pub fn validate_disk_pressure(reason: &str) -> Result<(), String> {
    if reason.is_empty() || reason.len() > MAX_DISK_PRESSURE_LEN {
        return Err(format!("reason of {} bytes, 1..={MAX_DISK_PRESSURE_LEN} allowed", reason.len()));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason contains a control character".to_string());
    }
    Ok(())
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
        if !self.slowdown.is_empty() {
            put_u8(out, SLOWDOWN_TAG);
            put_len(out, self.slowdown.len());
            for (system, x) in &self.slowdown {
                put_str(out, system);
                put_u32(out, *x);
            }
        }
        if let Some(reason) = &self.disk_pressure {
            put_u8(out, DISK_PRESSURE_TAG);
            put_str(out, reason);
        }
    }
}

/// The extensions after the mandatory fields (see [`Announcement`]).
fn read_extensions(
    r: &mut Reader<'_>,
    emulated: &BTreeSet<String>,
) -> Result<(BTreeMap<String, u32>, Option<String>), DecodeError> {
    const F: &str = "announcement.extensions";
    let mut slowdown = BTreeMap::new();
    let mut disk_pressure = None;
    r.extensions(F, |r, tag, _| {
        match tag {
            SLOWDOWN_TAG => {
                const S: &str = "announcement.slowdown";
                let offset = r.offset();
                let n = r.len(S, super::MAX_SYSTEMS, 4 + 1 + 4)?;
                if n == 0 {
                    return Err(DecodeError::NotCanonical { field: S, offset });
                }
                for _ in 0..n {
                    let offset = r.offset();
                    let system = read_system(r, S)?;
                    if slowdown.last_key_value().is_some_and(|(last, _): (&String, _)| *last >= system) {
                        return Err(DecodeError::NotCanonical { field: S, offset });
                    }
                    let x = r.u32(S)?;
                    slowdown.insert(system, x);
                }
                validate_slowdown(&slowdown, emulated).map_err(|e| Reader::invalid(S, offset, e))?;
            }
            DISK_PRESSURE_TAG => {
                const D: &str = "announcement.disk_pressure";
                let offset = r.offset();
                let reason = r.str(D, MAX_DISK_PRESSURE_LEN)?;
                validate_disk_pressure(reason).map_err(|e| Reader::invalid(D, offset, e))?;
                disk_pressure = Some(reason.to_string());
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((slowdown, disk_pressure))
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
        let (slowdown, disk_pressure) = read_extensions(r, &emulated_systems)?;
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
            slowdown,
            disk_pressure,
        })
    }

    fn author(&self) -> &NodeId {
        &self.node
    }
}
