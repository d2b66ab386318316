//! The HTTP server's accept loop (hyper, HTTP/1.1): every connection gets `TCP_NODELAY`, a
//! request-head timeout that is also the keep-alive idle timeout, a write timeout and a
//! request-body timeout; connections are limited in all (and kept below the file-descriptor
//! limit) and per client address.
//!
//! | what | default | config key (`[server]`) |
//! |---|---|---|
//! | complete request head within, after opening or after the previous response | 15 s | `header_timeout_secs` |
//! | a client that takes no response byte for this long is dropped | 30 s | `write_timeout_secs` |
//! | a request body that sends nothing for this long is cut | 30 s | `read_timeout_secs` |
//! | open connections in all (further ones wait in the listen backlog) | 1024, at most the fd limit minus a reserve | `max_connections` |
//! | open connections per client (IPv4 address, IPv6 /64); more are closed at once | 64 | `max_connections_per_ip` |
//! | NAR downloads streamed at once / per client (more wait for a slot) | 32 / 8 | `max_downloads`, `max_downloads_per_ip` |
//! | how long a download waits for a slot before a 503 | 30 s | `download_wait_secs` |
//!
//! At start the node raises its soft `RLIMIT_NOFILE` to the hard limit ([`raise_fd_limit`]);
//! the connection limit is then at most the soft limit minus [`FD_RESERVE`] (half the limit when
//! it is smaller than twice that), so the database, blob files, builds and libp2p always have
//! descriptors left.
//!
//! Why `TCP_NODELAY`: a response is written as headers then body; without it the second write
//! waits for the client's delayed ACK (~40 ms) on every request after the first of a kept-alive
//! connection, which made a Nix client fetching many small paths 30 times slower.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::limits::{ConnCounter, DownloadLimiter};
use super::timeouts::{BodyTimeout, WriteTimeout};

/// File descriptors kept free for everything but HTTP connections.
pub const FD_RESERVE: u64 = 256;
/// Connections the kernel queues for [`serve`] to accept (capped by `net.core.somaxconn`);
/// while the connection limit is reached new clients wait here (tokio's default is 128, after
/// which new connections stall in SYN retries for seconds).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Bind the HTTP listener on `addr` with a [`LISTEN_BACKLOG`] queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The HTTP server's timeouts and limits (`[server]` in the config file; see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Seconds a connection has to send a complete request head, counted from when it opened or
    /// from the end of its previous response (so this is also the keep-alive idle timeout).
    pub header_timeout_secs: u64,
    /// Seconds a response may wait on a client that takes no byte before the connection is closed.
    pub write_timeout_secs: u64,
    /// Seconds a request body may send nothing (while the node waits for it) before the request
    /// is cut.
    pub read_timeout_secs: u64,
    /// Open connections at most; further clients wait in the listen backlog until one closes.
    /// Also kept below the file-descriptor limit.
    pub max_connections: usize,
    /// Open connections per client (IPv4 address or IPv6 /64); a client over it is disconnected
    /// at once. 0: no limit (behind a reverse proxy every client has the proxy's address).
    pub max_connections_per_ip: usize,
    /// NAR downloads streamed at once (each holds up to ~4 MiB of buffers).
    pub max_downloads: usize,
    /// NAR downloads per client at once; more wait for a slot. 0: no limit.
    pub max_downloads_per_ip: usize,
    /// Seconds a download waits for a slot before it is answered 503.
    pub download_wait_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_timeout_secs: 15,
            write_timeout_secs: 30,
            read_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_downloads: 32,
            max_downloads_per_ip: 8,
            download_wait_secs: 30,
        }
    }
}

impl ServerSettings {
    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("header_timeout_secs", self.header_timeout_secs as usize),
            ("write_timeout_secs", self.write_timeout_secs as usize),
            ("read_timeout_secs", self.read_timeout_secs as usize),
            ("max_connections", self.max_connections),
            ("max_downloads", self.max_downloads),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(format!("`{field}` must be at least 1"));
            }
        }
        Ok(())
    }

    /// The download limiter these settings describe.
    pub fn download_limiter(&self) -> Arc<DownloadLimiter> {
        DownloadLimiter::new(
            self.max_downloads,
            self.max_downloads_per_ip,
            Duration::from_secs(self.download_wait_secs),
        )
    }

    /// `max_connections`, lowered to fit a soft file-descriptor limit of `nofile`.
    pub fn connection_limit(&self, nofile: u64) -> usize {
        let reserve = FD_RESERVE.min(nofile / 2);
        let fit = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX).max(1);
        self.max_connections.min(fit)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (services often start with a soft limit of
/// 1,024 and a much higher hard one). Returns the soft limit in effect afterwards.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(e) => {
                tracing::warn!(cause = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then let open connections finish
/// their current request (the caller bounds that wait; dropping this future closes them all).
pub async fn serve(listener: TcpListener, app: Router, settings: &ServerSettings, shutdown: CancellationToken) {
    let nofile = raise_fd_limit();
    let max = settings.connection_limit(nofile);
    tracing::info!(
        max_connections = max,
        per_ip = settings.max_connections_per_ip,
        header_timeout_secs = settings.header_timeout_secs,
        write_timeout_secs = settings.write_timeout_secs,
        "HTTP server limits"
    );
    let slots = Arc::new(Semaphore::new(max));
    let clients = ConnCounter::new(settings.max_connections_per_ip);
    let conn = Arc::new(ConnSettings {
        header_timeout: Duration::from_secs(settings.header_timeout_secs),
        write_timeout: Duration::from_secs(settings.write_timeout_secs),
        read_timeout: Duration::from_secs(settings.read_timeout_secs),
    });
    let mut conns = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        while conns.try_join_next().is_some() {}
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let Some(client) = clients.try_open(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(client = %peer.ip(), refused, "refused connections over the per-address limit");
            }
            refuse(stream);
            continue;
        };
        let app = app.clone();
        let conn = conn.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            conn.serve(stream, peer, app, shutdown).await;
            drop((client, slot));
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// After a failed `accept`: a client that gave up is no reason to wait; running out of file
/// descriptors or memory is, briefly, so the loop does not spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock) {
        return;
    }
    tracing::warn!(cause = %e, "accepting an HTTP connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Tell a client over its limit why, without waiting for it, and close.
fn refuse(stream: TcpStream) {
    const BODY: &str = "too many connections from your address\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// What every connection is served with.
#[derive(Debug)]
struct ConnSettings {
    header_timeout: Duration,
    write_timeout: Duration,
    read_timeout: Duration,
}

impl ConnSettings {
    async fn serve(&self, stream: TcpStream, peer: SocketAddr, app: Router, shutdown: CancellationToken) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(WriteTimeout::new(stream, self.write_timeout));
        let read_timeout = self.read_timeout;
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|b| axum::body::Body::new(BodyTimeout::new(b, read_timeout)));
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                Ok::<_, Infallible>(tower_service::Service::call(&mut app, req).await.unwrap_or_else(|e| match e {}))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_timeout).keep_alive(true);
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %peer, cause = %e, "HTTP connection ended with an error");
        }
    }
}

/// The client address of a request served by [`serve`] (`None` elsewhere, e.g. in unit tests
/// that call the router directly).
pub fn client_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_descriptors_free() {
        let s = ServerSettings::default();
        assert_eq!(s.connection_limit(1_048_576), 1024);
        assert_eq!(s.connection_limit(1024), 768);
        assert_eq!(s.connection_limit(256), 128);
        assert_eq!(s.connection_limit(1), 1);
        s.validate().unwrap();
        let bad = ServerSettings { header_timeout_secs: 0, ..ServerSettings::default() };
        assert!(bad.validate().unwrap_err().contains("header_timeout_secs"));
    }
}
