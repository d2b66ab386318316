//! Issue 15: revision headers of keys that are not `submitters` are not stored, by gossip or by
//! anti-entropy (both go through [`insert`]), while an accepted submitter's are.

use std::collections::BTreeSet;

use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::signed::Signed;

use super::*;
use crate::mesh::MeshSettings;
use crate::mesh::test_util::header;

#[test]
fn headers_of_refused_submitters_are_not_stored() {
    let me = NodeKey::from_seed("me", [1; 32]).unwrap();
    let friend = NodeKey::from_seed("friend", [2; 32]).unwrap();
    let stranger = NodeKey::from_seed("stranger", [3; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let trust = TrustConfig {
        trusted: Some(BTreeSet::from([me.node_id()])),
        quorum: 1,
        needs_native: false,
        no_emulation_for: Default::default(),
    };
    let quotas = Quotas::new(me.node_id(), trust, &MeshSettings::default())
        .with_submitters(Some(BTreeSet::from([friend.node_id()])));
    let verified = |k: &NodeKey, salt: u8| {
        let (h, _) = header(k, "c1", 1, 3, salt);
        Signed::sign(k, &h).unwrap().verify().unwrap()
    };
    let s = verified(&stranger, 1);
    assert_eq!(commit(&store, &s, &quotas).unwrap(), Stored::NotKept);
    assert_eq!(store.write(|w| insert(w, &s, &quotas)).unwrap(), Stored::NotKept, "the sync path too");
    assert!(!store.has_revision(&s.id()).unwrap(), "nothing of the stranger's header is stored");
    let f = verified(&friend, 2);
    assert_eq!(commit(&store, &f, &quotas).unwrap(), Stored::New);
    let own = verified(&me, 3);
    assert_eq!(commit(&store, &own, &quotas).unwrap(), Stored::New, "this node's own always");
    let open = Quotas::new(me.node_id(), TrustConfig::default(), &MeshSettings::default());
    assert_eq!(commit(&store, &s, &open).unwrap(), Stored::New, "submitters = any keeps it");
}
