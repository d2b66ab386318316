//! Who may submit jobs to this node and who may be designated to build: the `submitters` and
//! `builders` settings, resolved to node ids for the state machine
//! ([`buildmesh_protocol::mesh::MeshConfig::submitters`], `builders`).
//!
//! - `submitters`: a list of Nix public keys (`name:base64`), or `"any"`. Empty (the default)
//!   means the node's `trusted_keys`; the node's own key is always accepted. A job submission of
//!   another key is validated (envelope, signature) and then *ignored*: not stored, not tracked,
//!   not built, not forwarded, and no penalty for the peer that relayed it (another node may
//!   accept that submitter). `buildmesh explain` names the refused submitter.
//! - `builders`: a list of keys; empty (the default) is an open mesh where any member may be
//!   designated. When set, an announcement of another key does not make it a member.

use std::collections::BTreeSet;

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::nixkey::PublicKey;
use serde::{Deserialize, Serialize};

/// The `submitters` setting: `"any"`, or a list of keys (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub enum Submitters {
    /// Anyone's jobs are accepted (logged at start).
    Any,
    /// These keys' (empty: the trusted keys'), and the node's own.
    Keys(Vec<String>),
}

impl Default for Submitters {
    fn default() -> Self {
        Submitters::Keys(Vec::new())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Raw {
    Word(String),
    List(Vec<String>),
}

impl TryFrom<Raw> for Submitters {
    type Error = String;
    fn try_from(r: Raw) -> Result<Self, String> {
        match r {
            Raw::Word(w) if w == "any" => Ok(Submitters::Any),
            Raw::Word(w) => Err(format!("{w:?}: expected \"any\" or a list of keys `name:base64`")),
            Raw::List(l) => Ok(Submitters::Keys(l)),
        }
    }
}

impl From<Submitters> for Raw {
    fn from(s: Submitters) -> Raw {
        match s {
            Submitters::Any => Raw::Word("any".into()),
            Submitters::Keys(k) => Raw::List(k),
        }
    }
}

impl Submitters {
    /// From the repeatable flag `--submitter KEY` (`any` opens it); `None` when not given.
    pub fn from_flags(flags: &[String]) -> Option<Submitters> {
        if flags.is_empty() {
            None
        } else if flags.iter().any(|f| f == "any") {
            Some(Submitters::Any)
        } else {
            Some(Submitters::Keys(flags.to_vec()))
        }
    }
}

/// A Nix public key `name:base64` as a node id; the error names the key.
pub fn key_to_node(key: &str) -> Result<NodeId, String> {
    let pk = PublicKey::parse(key).map_err(|e| format!("{key:?}: {e}"))?;
    NodeId::from_bytes(&pk.verifying_key().to_bytes()).map_err(|e| format!("{key:?}: {e}"))
}

fn keys_to_nodes(keys: &[String]) -> Result<BTreeSet<NodeId>, String> {
    keys.iter().map(|k| key_to_node(k)).collect()
}

/// The submitters the machine accepts (`None`: anyone).
pub fn resolve_submitters(
    s: &Submitters,
    trusted_keys: &[String],
    me: NodeId,
) -> Result<Option<BTreeSet<NodeId>>, String> {
    match s {
        Submitters::Any => Ok(None),
        Submitters::Keys(k) => {
            let mut set = if k.is_empty() { keys_to_nodes(trusted_keys)? } else { keys_to_nodes(k)? };
            set.insert(me);
            Ok(Some(set))
        }
    }
}

/// The builders placement may designate (`None`: an open mesh).
pub fn resolve_builders(keys: &[String]) -> Result<Option<BTreeSet<NodeId>>, String> {
    if keys.is_empty() { Ok(None) } else { keys_to_nodes(keys).map(Some) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct T {
        submitters: Submitters,
    }

    #[test]
    fn any_or_a_list() {
        let t: T = toml::from_str("submitters = \"any\"").unwrap();
        assert_eq!(t.submitters, Submitters::Any);
        let t: T = toml::from_str("submitters = [\"a:b\"]").unwrap();
        assert_eq!(t.submitters, Submitters::Keys(vec!["a:b".into()]));
        let e = toml::from_str::<T>("submitters = \"all\"").unwrap_err().to_string();
        assert!(e.contains("any"), "{e}");
        assert_eq!(
            toml::from_str::<T>(&toml::to_string(&T { submitters: Submitters::Any }).unwrap()).unwrap().submitters,
            Submitters::Any
        );
        assert_eq!(Submitters::from_flags(&[]), None);
        assert_eq!(Submitters::from_flags(&["any".into()]), Some(Submitters::Any));
    }

    #[test]
    fn defaults_to_the_trusted_keys_and_self() {
        let me = buildmesh_protocol::identity::NodeKey::from_seed("me", [1; 32]).unwrap();
        let other = buildmesh_protocol::identity::NodeKey::from_seed("other", [2; 32]).unwrap();
        let trusted = vec![other.nix_public_key().to_string()];
        let set = resolve_submitters(&Submitters::default(), &trusted, me.node_id()).unwrap().unwrap();
        assert_eq!(set, BTreeSet::from([me.node_id(), other.node_id()]));
        let set = resolve_submitters(&Submitters::default(), &[], me.node_id()).unwrap().unwrap();
        assert_eq!(set, BTreeSet::from([me.node_id()]));
        assert_eq!(resolve_submitters(&Submitters::Any, &trusted, me.node_id()).unwrap(), None);
        assert!(
            resolve_submitters(&Submitters::Keys(vec!["nope".into()]), &[], me.node_id()).unwrap_err().contains("nope")
        );
        assert_eq!(resolve_builders(&[]).unwrap(), None);
        assert_eq!(resolve_builders(&trusted).unwrap(), Some(BTreeSet::from([other.node_id()])));
    }
}
