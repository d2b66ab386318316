//! The announcement's optional extensions: the slowdown of emulated systems (issue 16) and the
//! disk-pressure reason (issue 15).

use std::collections::{BTreeMap, BTreeSet};

use super::tests::key;
use super::*;
use crate::signed::Signed;

fn base() -> Announcement {
    Announcement {
        node: key(3).node_id(),
        seq: 9,
        timestamp_ms: 1000,
        version: "buildmesh 0.1.0".into(),
        owner: "lab".into(),
        native_systems: ["x86_64-linux".to_string()].into_iter().collect(),
        emulated_systems: ["aarch64-linux".to_string(), "armv7l-linux".to_string()].into_iter().collect(),
        features: BTreeSet::new(),
        mandatory_features: BTreeSet::new(),
        slots: 4,
        load: 1,
        slowdown: BTreeMap::new(),
        disk_pressure: None,
    }
}

fn decode(bytes: &[u8]) -> Result<Announcement, DecodeError> {
    let mut r = Reader::new(bytes);
    let a = Announcement::decode_payload(&mut r)?;
    r.finish()?;
    Ok(a)
}

/// Without extensions an announcement encodes exactly as before they existed (so a node that
/// emulates nothing and has disk to spare stays readable by older decoders); with them, the older
/// fields keep their bytes and the extensions follow, tag 1 then tag 2; both round-trip and verify.
#[test]
fn extensions_are_optional_and_trailing() {
    let old = base();
    let old_bytes = old.to_bytes();
    // The pre-extension layout ends with slots u32 ‖ load u32.
    assert_eq!(&old_bytes[old_bytes.len() - 8..], &[4, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(decode(&old_bytes).unwrap(), old);

    let slowdown: BTreeMap<String, u32> =
        [("aarch64-linux".to_string(), 850), ("armv7l-linux".to_string(), 1370)].into();
    let new = Announcement {
        slowdown: slowdown.clone(),
        disk_pressure: Some("store 2.1 GB over max_store_bytes".into()),
        ..old.clone()
    };
    let new_bytes = new.to_bytes();
    assert_eq!(&new_bytes[..old_bytes.len()], &old_bytes[..], "older fields keep their encoding");
    assert_eq!(new_bytes[old_bytes.len()], 1, "slowdown first");
    assert_eq!(decode(&new_bytes).unwrap(), new);
    let signed = Signed::sign(&key(3), &new).unwrap().verify().unwrap();
    assert_eq!(signed.slowdown, slowdown);
    assert_eq!(signed.disk_pressure.as_deref(), Some("store 2.1 GB over max_store_bytes"));

    let only_pressure = Announcement { disk_pressure: Some("disk full".into()), ..old.clone() };
    let b = only_pressure.to_bytes();
    assert_eq!(b[old_bytes.len()], 2);
    assert_eq!(decode(&b).unwrap(), only_pressure);
}

/// What does not decode, naming the field: a slowdown for a system the node does not emulate (or
/// builds natively), a factor below 1x or above 1000x, an empty map, unsorted systems, an empty
/// or control-character reason, tags out of order or unknown.
#[test]
fn bad_extensions_are_refused() {
    let with = |f: &dyn Fn(&mut Announcement)| {
        let mut a = base();
        f(&mut a);
        a.to_bytes()
    };
    let field = |bytes: &[u8]| match decode(bytes).unwrap_err() {
        DecodeError::InvalidValue { field, .. }
        | DecodeError::NotCanonical { field, .. }
        | DecodeError::InvalidTag { field, .. } => field,
        e => panic!("unexpected {e}"),
    };
    let native = with(&|a| {
        a.slowdown.insert("x86_64-linux".into(), 300);
    });
    assert_eq!(field(&native), "announcement.slowdown");
    for x in [MIN_SLOWDOWN - 1, MAX_SLOWDOWN + 1, 0] {
        let b = with(&|a| {
            a.slowdown.insert("aarch64-linux".into(), x);
        });
        assert_eq!(field(&b), "announcement.slowdown", "factor {x}");
    }
    let old_len = base().to_bytes().len();
    // An empty map: tag 1, count 0.
    let mut empty = base().to_bytes();
    empty.extend_from_slice(&[1, 0, 0, 0, 0]);
    assert_eq!(field(&empty), "announcement.slowdown");
    // Two systems swapped.
    let two = with(&|a| {
        a.slowdown.insert("aarch64-linux".into(), 200);
        a.slowdown.insert("armv7l-linux".into(), 300);
    });
    let mut swapped = two[..old_len + 1 + 4].to_vec();
    let first = 4 + "aarch64-linux".len() + 4;
    let entries = &two[old_len + 5..];
    swapped.extend_from_slice(&entries[first..]);
    swapped.extend_from_slice(&entries[..first]);
    assert_eq!(field(&swapped), "announcement.slowdown");
    for reason in ["", "line\nbreak"] {
        let b = with(&|a| a.disk_pressure = Some(reason.into()));
        assert_eq!(field(&b), "announcement.disk_pressure", "{reason:?}");
    }
    let mut reversed = base().to_bytes();
    reversed.extend_from_slice(&[2, 1, 0, 0, 0, b'x', 1, 1, 0, 0, 0]);
    assert_eq!(field(&reversed), "announcement.extensions");
    let mut unknown = base().to_bytes();
    unknown.push(7);
    assert_eq!(field(&unknown), "announcement.extensions");
}

/// The local node's info is checked by the same rules before it is announced.
#[test]
fn local_info_validates_the_extensions() {
    use crate::mesh::LocalInfo;
    let mut l = LocalInfo::new("buildmesh 0.1.0", ["x86_64-linux"], 2);
    l.emulated_systems.insert("aarch64-linux".into());
    l.slowdown.insert("aarch64-linux".into(), 640);
    l.validate().unwrap();
    l.slowdown.insert("riscv64-linux".into(), 640);
    assert!(l.validate().unwrap_err().to_string().contains("slowdown"));
    l.slowdown.remove("riscv64-linux");
    l.disk_pressure = Some(String::new());
    assert!(l.validate().unwrap_err().to_string().contains("disk_pressure"));
}
