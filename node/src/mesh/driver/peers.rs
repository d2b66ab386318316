//! The driver's side of the remembered peers ([`crate::mesh::peer_book`]): feeding the book from
//! connection and identify events, dialling remembered peers while the node has too few
//! connections (also right after start, so a node rejoins without a bootstrap address), and
//! writing the book's batches to the store from one writer task (in order, one commit per batch).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{Driver, EVENTS, MAX_KNOWN_PEERS};
use crate::mesh::fetch::node_of;
use crate::mesh::peer_book::{PeerBatch, PeerBook, PeerBookLimits};
use crate::net::{NetEvent, NetHandle};
use crate::store::{Reachability, Store, unix_ms};

/// The remembered peers of a running driver: the book, its writer task and the dials in flight.
pub(super) struct PeerStore {
    pub(super) book: PeerBook,
    /// Batches to the writer (capacity 1: a batch is taken from the book only when it can go).
    writes: Option<mpsc::Sender<PeerBatch>>,
    writer: Option<JoinHandle<()>>,
    /// Rows in the table after the last write.
    stored: Arc<AtomicU64>,
    dialled_tx: mpsc::Sender<(PeerId, bool)>,
    dialled_rx: mpsc::Receiver<(PeerId, bool)>,
}

impl PeerStore {
    /// Load the book of `local` from `store` and start its writer. `remember` is `[mesh]
    /// remember_peers`, `forget_after_days` is `forget_peers_after_days`, `target` is
    /// `target_peers` (remembered peers are dialled while fewer are connected).
    pub(super) fn load(
        store: &Store,
        local: PeerId,
        remember: usize,
        forget_after_days: u64,
        target: usize,
        is_trusted: impl Fn(&PeerId) -> bool,
    ) -> Result<PeerStore, crate::store::StoreError> {
        let limits = PeerBookLimits {
            max_peers: remember,
            forget_after_ms: forget_after_days.saturating_mul(24 * 3600 * 1000),
            target: target.max(1),
            ..PeerBookLimits::default()
        };
        let rows = store.list_peers()?;
        let stored = Arc::new(AtomicU64::new((rows.rows.len() + rows.corrupt.len()) as u64));
        let book = PeerBook::load(limits.clone(), local, rows, unix_ms(), is_trusted);
        tracing::info!(remembered = book.len(), max = limits.max_peers, "remembered peers loaded");
        let (writes, mut batches) = mpsc::channel::<PeerBatch>(1);
        let (store, count) = (store.clone(), stored.clone());
        let writer = tokio::spawn(
            async move {
                while let Some(b) = batches.recv().await {
                    let s = store.clone();
                    match tokio::task::spawn_blocking(move || s.write_peers(&b.put, &b.remove)).await {
                        Ok(Ok(n)) => count.store(n, Ordering::Relaxed),
                        Ok(Err(e)) => tracing::warn!(cause = %e, "remembered peers not written"),
                        Err(e) => tracing::warn!(cause = %e, "remembered peers writer failed"),
                    }
                }
            }
            .in_current_span(),
        );
        let (dialled_tx, dialled_rx) = mpsc::channel(2 * limits.max_in_flight.max(1));
        Ok(PeerStore { book, writes: Some(writes), writer: Some(writer), stored, dialled_tx, dialled_rx })
    }

    /// Rows in the table after the last write.
    pub(super) fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Hand the writer the book's due batch (all of it when `force`), if the writer is free.
    fn flush(&mut self, force: bool) {
        let Some(writes) = &self.writes else { return };
        let Ok(permit) = writes.try_reserve() else { return };
        if let Some(batch) = self.book.take_batch(unix_ms(), force) {
            permit.send(batch);
        }
    }

    /// Write what is left and wait for the writer (at shutdown).
    pub(super) async fn shutdown(&mut self) {
        if let Some(writes) = self.writes.take() {
            if let Some(batch) = self.book.take_batch(unix_ms(), true) {
                let _ = writes.send(batch).await;
            }
            drop(writes);
        }
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
    }

    /// Dial the due remembered peers (see [`PeerBook::due_dials`]).
    fn dial_due(&mut self, net: &NetHandle, connected: usize) {
        while let Ok((peer, ok)) = self.dialled_rx.try_recv() {
            self.book.dial_done(&peer, ok);
        }
        let due = self.book.due_dials(unix_ms(), connected);
        if !due.is_empty() {
            tracing::debug!(target: EVENTS, event = "remembered_peers_dialled", count = due.len(), connected);
        }
        for (peer, addrs) in due {
            let (net, tx) = (net.clone(), self.dialled_tx.clone());
            tokio::spawn(
                async move {
                    let mut ok = false;
                    for a in addrs {
                        match net.dial(a.clone()).await {
                            Ok(_) => {
                                ok = true;
                                break;
                            }
                            Err(e) => tracing::debug!(%peer, addr = %a, cause = %e, "remembered peer not reached"),
                        }
                    }
                    let _ = tx.send((peer, ok)).await;
                }
                .in_current_span(),
            );
        }
    }
}

impl Driver {
    /// Feed the peer book from a network event (before the driver handles the event itself).
    pub(super) fn peers_observe(&mut self, ev: &NetEvent) {
        let now = unix_ms();
        match ev {
            NetEvent::PeerConnected { peer, address } => self.peers.book.connected(*peer, address, now),
            NetEvent::PeerDisconnected { peer } => self.peers.book.disconnected(peer, now),
            NetEvent::PeerIdentified { peer, listen_addrs, .. } => {
                let trusted = node_of(peer).is_some_and(|n| self.trust.is_trusted(&n));
                self.peers.book.identified(*peer, listen_addrs, trusted, now);
            }
            _ => {}
        }
    }

    /// Every second: dial remembered peers while too few are connected, write due changes.
    pub(super) fn peers_tick(&mut self) {
        let connected = self.known.values().filter(|k| k.connected).count();
        self.peers.dial_due(&self.ctx.net, connected);
        self.peers.flush(false);
    }

    /// Set a remembered peer's reachability (the hook for AutoNAT and announcements).
    #[allow(dead_code)]
    pub(super) fn set_peer_reachability(&mut self, peer: &PeerId, reachability: Reachability) {
        self.peers.book.set_reachability(peer, reachability);
    }

    /// Note `peer` (connected now, or an address of it) for the API view and unblocking.
    pub(super) fn remember(&mut self, peer: PeerId, addr: Option<Multiaddr>, connected: bool) {
        if !self.known.contains_key(&peer) && self.known.len() >= MAX_KNOWN_PEERS {
            let stale: Option<PeerId> = self.known.iter().find(|(_, k)| !k.connected).map(|(p, _)| *p);
            if let Some(s) = stale {
                self.known.remove(&s);
            }
        }
        let k = self.known.entry(peer).or_default();
        if connected {
            k.connected = true;
        }
        if let Some(a) = addr
            && !k.addrs.contains(&a)
            && k.addrs.len() < 16
        {
            k.addrs.push(a);
        }
        self.dirty = true;
    }
}
