//! Remembered peers (table `peers`): the mesh peers this node completed identify with, their
//! dialable addresses, when it last saw them and their reachability, so that after a restart the
//! node rejoins the mesh without a bootstrap address (issue 18 item 4).
//!
//! The store only keeps rows; what is worth remembering (bounds, address filters, expiry) is
//! decided by the mesh's peer book (`mesh::peer_book`), which writes its changes in batches
//! through [`Store::write_peers`]. A row that does not decode is reported by
//! [`Store::list_peers`] and skipped, never fatal: losing a remembered peer costs one bootstrap.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::records::{decode, encode};
use super::tables::PEERS;
use super::{DbResultExt, Store, StoreError};

/// Table name, as it appears in errors.
const PEERS_NAME: &str = "peers";

/// Whether a peer can be reached from the internet, as far as this node knows. Stored as a
/// postcard variant index: variants are only ever appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Not known (the default until AutoNAT or the peer's announcement says otherwise).
    #[default]
    Unknown,
    /// Publicly reachable.
    Public,
    /// Behind a NAT or firewall: reachable through a relay or hole punching only.
    Private,
}

impl Reachability {
    /// `"unknown"`, `"public"` or `"private"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// One remembered peer (the key is its base58 peer id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Its dialable addresses (multiaddrs without the trailing `/p2p/<id>`), best first.
    pub addrs: Vec<String>,
    /// When this node last saw it (connected, identified or disconnected), Unix ms.
    pub last_seen_ms: u64,
    /// When this node first remembered it, Unix ms.
    pub first_seen_ms: u64,
    /// Its reachability.
    pub reachability: Reachability,
    /// The IP address its connection came from when it was remembered (the per-IP bound).
    pub seen_from: String,
}

/// The rows of [`Store::list_peers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRows {
    /// Rows that decode, in peer id order.
    pub rows: Vec<(String, PeerRecord)>,
    /// Keys of rows that do not decode (remove them with [`Store::write_peers`]).
    pub corrupt: Vec<String>,
}

impl Store {
    /// Every remembered peer. A row that does not decode is listed in
    /// [`PeerRows::corrupt`] with a warning instead of failing the whole list.
    pub fn list_peers(&self) -> Result<PeerRows, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(PEERS).ctx("opening table peers")?;
        let mut out = PeerRows::default();
        for item in table.iter().ctx("scanning peers")? {
            let (k, v) = item.ctx("scanning peers")?;
            let peer = k.value().to_string();
            match decode::<PeerRecord>(PEERS_NAME, &peer, v.value()) {
                Ok(rec) => out.rows.push((peer, rec)),
                Err(e) => {
                    tracing::warn!(cause = %e, "skipping a remembered peer that does not decode");
                    out.corrupt.push(peer);
                }
            }
        }
        Ok(out)
    }

    /// Write (insert or replace) `put` and delete `remove` in one durable transaction: the
    /// batch of the peer book's changes since its last flush. Returns the rows in the table
    /// afterwards.
    pub fn write_peers(&self, put: &[(String, PeerRecord)], remove: &[String]) -> Result<u64, StoreError> {
        self.write(|w| {
            let mut table = w.txn.open_table(PEERS).ctx("opening table peers")?;
            for peer in remove {
                table.remove(peer.as_str()).ctx("writing peers")?;
            }
            for (peer, rec) in put {
                let bytes = encode(PEERS_NAME, peer, rec)?;
                table.insert(peer.as_str(), bytes.as_slice()).ctx("writing peers")?;
            }
            table.len().ctx("counting peers")
        })
    }

    /// Forget every remembered peer (`[mesh] remember_peers = 0`); how many rows there were.
    pub fn clear_peers(&self) -> Result<u64, StoreError> {
        self.write(|w| {
            let mut table = w.txn.open_table(PEERS).ctx("opening table peers")?;
            let n = table.len().ctx("counting peers")?;
            table.retain(|_, _| false).ctx("clearing peers")?;
            Ok(n)
        })
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
