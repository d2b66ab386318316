//! Request-response on the event loop: sending requests, answering them, and admitting
//! inbound ones within the per-peer limits ([`super::super::peer_limits`]).

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundFailure};
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::super::codec::{FrameTooLarge, RequestFrame};
use super::super::handle::{RequestError, RespondError};
use super::super::{InboundId, NetEvent, RequestProtocol};
use super::{EVENTS, EventLoop, Reply};

impl EventLoop {
    pub(super) fn rr(
        &mut self,
        protocol: RequestProtocol,
    ) -> &mut request_response::Behaviour<super::super::codec::LengthPrefixedCodec> {
        let b = self.swarm.behaviour_mut();
        match protocol {
            RequestProtocol::Closure => &mut b.closure,
            RequestProtocol::Nar => &mut b.nar,
            RequestProtocol::Sync => &mut b.sync,
        }
    }

    pub(super) fn cmd_send_request(
        &mut self,
        peer: PeerId,
        protocol: RequestProtocol,
        data: Vec<u8>,
        reply: Reply<Result<Vec<u8>, RequestError>>,
    ) {
        let max = protocol.limits(&self.cfg).max_request;
        if data.len() > max {
            let _ = reply.send(Err(RequestError::RequestTooLarge { protocol, len: data.len(), max }));
            return;
        }
        if peer == self.local_peer_id {
            let _ = reply.send(Err(RequestError::DialFailure { protocol, peer }));
            return;
        }
        let len = data.len();
        let id = self.rr(protocol).send_request(&peer, RequestFrame::Data(data));
        trace!(%peer, %protocol, request_id = %id, len, "request sent");
        self.pending_requests.insert((protocol, id), (peer, reply));
    }

    pub(super) fn cmd_respond(&mut self, id: InboundId, data: Vec<u8>) -> Result<(), RespondError> {
        let (peer, channel) = self.pending_inbound.remove(&id).ok_or(RespondError::UnknownRequest(id))?;
        self.peer_limits.done(&peer);
        let max = id.protocol.limits(&self.cfg).max_response;
        if data.len() > max {
            // Dropping the channel makes libp2p close the stream: the requester gets an error.
            drop(channel);
            return Err(RespondError::TooLarge { protocol: id.protocol, len: data.len(), max });
        }
        self.rr(id.protocol).send_response(channel, data).map_err(|_| RespondError::ChannelClosed(id))
    }

    pub(super) fn on_rr(&mut self, protocol: RequestProtocol, ev: request_response::Event<RequestFrame, Vec<u8>>) {
        match ev {
            request_response::Event::Message { peer, connection_id, message } => match message {
                request_response::Message::Request { request_id, request, channel } => {
                    let request = match request {
                        RequestFrame::Data(data) => data,
                        RequestFrame::TooLarge(t) => {
                            // Its body was never read; dropping the channel closes the stream.
                            drop(channel);
                            self.peer_limits.oversized(peer);
                            warn!(target: EVENTS, event = "oversized_request", %peer, %protocol, len = t.len, max = t.max, "a peer sent a request above the limit");
                            self.tell_app_score(peer);
                            return;
                        }
                    };
                    let id = InboundId { protocol, id: request_id };
                    if self.pending_inbound.len() >= self.cfg.max_pending_inbound {
                        warn!(%peer, %protocol, "too many unanswered inbound requests; dropping one");
                        drop(channel);
                        return;
                    }
                    let graylisted = self.is_graylisted(&peer);
                    if let Err(why) = self.peer_limits.admit(peer, protocol, graylisted, Instant::now()) {
                        // Dropping the channel closes the stream: the requester sees its request fail.
                        drop(channel);
                        self.refused(peer, protocol, why.as_str());
                        return;
                    }
                    debug!(target: EVENTS, event = "inbound_request", %peer, %protocol, %id, len = request.len());
                    self.pending_inbound.insert(id, (peer, channel));
                    self.emit(NetEvent::InboundRequest { peer, protocol, id, data: request });
                }
                request_response::Message::Response { request_id, response } => {
                    self.nat.count_response(protocol, &peer, &connection_id, response.len());
                    if let Some((_, reply)) = self.pending_requests.remove(&(protocol, request_id)) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                debug!(%peer, %protocol, cause = %error, "outbound request failed");
                if let Some((_, reply)) = self.pending_requests.remove(&(protocol, request_id)) {
                    let _ = reply.send(Err(map_outbound_failure(protocol, peer, error)));
                }
            }
            request_response::Event::InboundFailure { peer, request_id, error, .. } => {
                debug!(%peer, %protocol, cause = %error, "inbound request failed");
                if self.pending_inbound.remove(&InboundId { protocol, id: request_id }).is_some() {
                    self.peer_limits.done(&peer);
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

impl EventLoop {
    /// Counts and logs a refused inbound request (every refusal at debug level; a peer's 1st,
    /// 10th, 100th, ... at warn) and updates the peer's application score.
    fn refused(&mut self, peer: PeerId, protocol: RequestProtocol, reason: &'static str) {
        let total = self.peer_limits.conduct(&peer).requests_refused;
        debug!(target: EVENTS, event = "request_refused", %peer, %protocol, reason, total);
        if super::is_power_of_ten(total) {
            warn!(target: EVENTS, event = "requests_refused", %peer, %protocol, reason, total, "refusing a peer's requests");
        }
        self.tell_app_score(peer);
    }

    /// Tells gossipsub the application score `peer` earned here.
    pub(super) fn tell_app_score(&mut self, peer: PeerId) {
        let score = self.peer_limits.app_score(&peer);
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
    }
}

fn map_outbound_failure(protocol: RequestProtocol, peer: PeerId, error: OutboundFailure) -> RequestError {
    match error {
        OutboundFailure::DialFailure => RequestError::DialFailure { protocol, peer },
        OutboundFailure::Timeout => RequestError::Timeout { protocol, peer },
        OutboundFailure::ConnectionClosed => RequestError::ConnectionClosed { protocol, peer },
        OutboundFailure::UnsupportedProtocols => RequestError::UnsupportedProtocol { protocol, peer },
        OutboundFailure::Io(e) => match FrameTooLarge::from_io(&e) {
            Some(t) if t.kind == crate::net::FrameKind::Response => {
                RequestError::ResponseTooLarge { protocol, len: t.len, max: t.max }
            }
            Some(t) => RequestError::RequestTooLarge { protocol, len: t.len as usize, max: t.max },
            None => RequestError::Io { protocol, peer, reason: e.to_string() },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_response_io_error_maps_to_typed_error() {
        let peer = PeerId::random();
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            FrameTooLarge { kind: crate::net::FrameKind::Response, len: 5_000_000, max: 1_000_000 },
        );
        assert_eq!(
            map_outbound_failure(RequestProtocol::Nar, peer, OutboundFailure::Io(e)),
            RequestError::ResponseTooLarge { protocol: RequestProtocol::Nar, len: 5_000_000, max: 1_000_000 }
        );
    }
}
