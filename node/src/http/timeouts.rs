//! Timeouts on what a client must do: take the bytes we send ([`WriteTimeout`]) and send the
//! request body it announced ([`BodyTimeout`]). The request-head (and keep-alive idle) timeout is
//! hyper's `header_read_timeout`, set in [`super::server`].
//!
//! Both count only stalls that are the client's: the write timer runs while the socket refuses
//! bytes, the body timer while a handler waits for body bytes, and any progress restarts them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose writes fail with [`io::ErrorKind::TimedOut`] once the peer has taken no byte for
/// `timeout` (its receive window stayed full), so a client that stops reading cannot hold a
/// connection, its response and what feeds it for ever.
#[derive(Debug)]
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, timeout: Duration) -> WriteTimeout<S> {
        WriteTimeout { inner, timeout, stalled: None }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Pass a ready result through (progress: the stall timer stops); on `Pending`, start or
    /// check the stall timer.
    fn guard<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client took no data for {} s", timeout.as_secs_f32()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}

/// A request body that fails once the client has sent nothing for `timeout` while a handler
/// waits for it (a slow-loris upload), instead of holding the handler and its resources.
#[derive(Debug)]
pub struct BodyTimeout<B> {
    inner: B,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<B> BodyTimeout<B> {
    /// Wrap `inner`.
    pub fn new(inner: B, timeout: Duration) -> BodyTimeout<B> {
        BodyTimeout { inner, timeout, stalled: None }
    }
}

/// The error of a [`BodyTimeout`] whose client stalled.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyStalled(Duration);

impl<B> Body for BodyTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_reads_nothing_times_the_write_out_and_a_reader_does_not() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(a, Duration::from_millis(200));
        let data = vec![1u8; 64 * 1024];
        let t = std::time::Instant::now();
        let e = w.write_all(&data).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(200));

        // A slow reader that keeps taking bytes is never cut.
        let (a, mut b2) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(a, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                got += b2.read(&mut buf).await.unwrap();
            }
            got
        });
        w.write_all(&data[..16 * 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 16 * 1024);
        let _ = b.read(&mut [0u8; 1]).await;
    }

    #[tokio::test]
    async fn a_stalled_body_fails() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(1);
        let stream = libp2p::futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let mut b = BodyTimeout::new(axum::body::Body::from_stream(stream), Duration::from_millis(100));
        tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        let first = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await;
        assert!(first.unwrap().unwrap().is_data());
        let e = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("no request body"), "{e}");
        drop(tx);
    }
}
