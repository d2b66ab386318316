//! Answering peers' NAR chunk requests, one at a time.

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::Ctx;
use crate::mesh::rpc;
use crate::net::InboundId;

/// Serves NAR chunks one at a time, in arrival order (so readers can be continued).
pub(super) async fn nar_worker(ctx: Ctx, mut rx: mpsc::Receiver<(PeerId, InboundId, Vec<u8>)>) {
    while let Some((peer, id, body)) = rx.recv().await {
        let server = ctx.server.clone();
        let resp = match tokio::task::spawn_blocking(move || server.nar(peer, &body)).await {
            Ok(r) => r,
            Err(e) => rpc::encode(&rpc::NarResponse::Error(format!("task failed: {e}"))),
        };
        if let Err(e) = ctx.net.respond(id, resp).await {
            tracing::debug!(%peer, cause = %e, "could not answer a NAR request");
        }
    }
}
