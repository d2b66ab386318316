//! Commands from the [`NetHandle`](super::super::NetHandle) on the event loop: dialling,
//! subscribing and unsubscribing, publishing (with the queue of messages waiting for a
//! subscriber), providers, and the small queries.

use std::collections::BTreeSet;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, gossipsub, kad};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::super::behaviour::message_id;
use super::super::config::peer_id_of;
use super::super::handle::{Command, DialError, NetError, PublishError, Published};
use super::{EVENTS, EventLoop, PendingProviders, QueuedPublish, Reply};

impl EventLoop {
    pub(super) fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => self.cmd_dial(addr, reply),
            Command::AddPeerAddress { peer, addr, reply } => {
                self.swarm.add_peer_address(peer, addr.clone());
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                let _ = reply.send(());
            }
            Command::Subscribe { topic, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(topic))
                    .map_err(|e| NetError::Gossipsub(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Unsubscribe { topic, reply } => {
                let left = self.swarm.behaviour_mut().gossipsub.unsubscribe(&gossipsub::IdentTopic::new(topic.clone()));
                // Messages queued for a topic this node left would only expire.
                let hash = gossipsub::IdentTopic::new(topic).hash();
                if let Some(q) = self.publish_queue.remove(&hash) {
                    self.queued_publishes -= q.len();
                }
                let _ = reply.send(left);
            }
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.cmd_publish(topic, data));
            }
            Command::ReportValidation { id, source, acceptance, reply } => {
                debug!(target: EVENTS, event = "validation", msg_id = %id, %source, ?acceptance);
                let found =
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
                let _ = reply.send(found);
            }
            Command::SendRequest { peer, protocol, data, reply } => self.cmd_send_request(peer, protocol, data, reply),
            Command::Respond { id, data, reply } => {
                let _ = reply.send(self.cmd_respond(id, data));
            }
            Command::StartProviding { key, reply } => {
                match self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key)) {
                    Ok(qid) => {
                        self.pending_start_providing.insert(qid, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Kad(e.to_string())));
                    }
                }
            }
            Command::StopProviding { key, reply } => {
                self.swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(&key));
                let _ = reply.send(());
            }
            Command::GetProviders { key, reply } => {
                let qid = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
                self.pending_get_providers.insert(qid, PendingProviders { found: BTreeSet::new(), dialled: 0, reply });
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Addresses { reply } => {
                let addrs: Vec<Multiaddr> =
                    self.swarm.listeners().chain(self.swarm.external_addresses()).cloned().collect();
                let mut full: Vec<Multiaddr> = addrs.into_iter().map(|a| self.with_p2p(a)).collect();
                full.dedup();
                let _ = reply.send(full);
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Malformed { peer, what } => {
                self.peer_limits.malformed(peer);
                let total = self.peer_limits.conduct(&peer).malformed;
                warn!(target: EVENTS, event = "malformed_body", %peer, what, total, "a peer sent a malformed body; one strike");
                self.tell_app_score(peer);
            }
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::Block { peer, blocked, reply } => {
                let list = &mut self.swarm.behaviour_mut().blocked;
                let changed = if blocked { list.block_peer(peer) } else { list.unblock_peer(peer) };
                debug!(target: EVENTS, event = "block_list", %peer, blocked, changed);
                let _ = reply.send(changed);
            }
        }
    }

    fn cmd_dial(&mut self, addr: Multiaddr, reply: Reply<Result<PeerId, DialError>>) {
        let peer = peer_id_of(&addr);
        if let Some(peer) = peer
            && self.swarm.is_connected(&peer)
        {
            let _ = reply.send(Ok(peer));
            return;
        }
        let opts = match peer {
            Some(peer) => {
                DialOpts::peer_id(peer).addresses(vec![addr.clone()]).condition(PeerCondition::Always).build()
            }
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let connection_id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_dials.insert(connection_id, (addr, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(DialError::Failed { addr, reason: e.to_string() }));
            }
        }
    }

    fn cmd_publish(&mut self, topic: String, data: Vec<u8>) -> Result<Published, PublishError> {
        if data.len() > self.cfg.max_gossip_size {
            return Err(PublishError::TooLarge { len: data.len(), max: self.cfg.max_gossip_size });
        }
        let hash = gossipsub::IdentTopic::new(topic.clone()).hash();
        // Keep FIFO order per topic: while older messages wait, newer ones wait behind them.
        if self.publish_queue.get(&hash).is_some_and(|q| !q.is_empty()) {
            return self.enqueue_publish(topic, hash, data);
        }
        match self.swarm.behaviour_mut().gossipsub.publish(hash.clone(), data.clone()) {
            Ok(id) => {
                debug!(target: EVENTS, event = "published", msg_id = %id, %topic, len = data.len());
                Ok(Published::Sent(id))
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => self.enqueue_publish(topic, hash, data),
            Err(gossipsub::PublishError::Duplicate) => Err(PublishError::Duplicate(message_id(&data))),
            Err(gossipsub::PublishError::MessageTooLarge) => {
                Err(PublishError::TooLarge { len: data.len(), max: self.cfg.max_gossip_size })
            }
            Err(gossipsub::PublishError::AllQueuesFull(n)) => Err(PublishError::AllQueuesFull(n)),
            Err(e) => Err(PublishError::Other(e.to_string())),
        }
    }

    fn enqueue_publish(
        &mut self,
        topic: String,
        hash: gossipsub::TopicHash,
        data: Vec<u8>,
    ) -> Result<Published, PublishError> {
        if self.queued_publishes >= self.cfg.publish_queue_cap {
            return Err(PublishError::QueueFull { topic, cap: self.cfg.publish_queue_cap });
        }
        let id = message_id(&data);
        debug!(target: EVENTS, event = "publish_queued", msg_id = %id, %topic, len = data.len());
        self.publish_queue.entry(hash).or_default().push_back(QueuedPublish { data, queued_at: Instant::now() });
        self.queued_publishes += 1;
        Ok(Published::Queued(id))
    }

    /// Sends queued messages for `topic` now that a peer subscribed to it.
    pub(super) fn flush_publish_queue(&mut self, hash: &gossipsub::TopicHash) {
        let Some(mut queue) = self.publish_queue.remove(hash) else { return };
        while let Some(q) = queue.pop_front() {
            match self.swarm.behaviour_mut().gossipsub.publish(hash.clone(), q.data.clone()) {
                Ok(id) => {
                    self.queued_publishes -= 1;
                    debug!(target: EVENTS, event = "published", msg_id = %id, topic = %hash, len = q.data.len(), queued = true);
                }
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                    // The subscriber is below the publish score threshold: keep waiting.
                    queue.push_front(q);
                    break;
                }
                Err(e) => {
                    self.queued_publishes -= 1;
                    warn!(topic = %hash, cause = %e, "dropping queued gossip message");
                }
            }
        }
        if !queue.is_empty() {
            self.publish_queue.insert(hash.clone(), queue);
        }
    }
}
