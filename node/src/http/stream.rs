//! Response bodies streamed from a blocking reader (a NAR blob), one chunk ahead.
//!
//! Each chunk is read in a short `spawn_blocking` task, one chunk ahead: the next read starts as
//! soon as the previous one returned, so decompressing the next chunk overlaps sending the
//! previous one (issue 11 item 3: with verify-once-per-process, `.nar` on one connection is
//! bound by decompression, and the overlap is what brings it level with a server streaming from
//! the page cache). A client that stops reading holds no thread, only the chunks it has not
//! taken (at most one held back, one read ahead); the connection's write timeout then drops
//! them.
//!
//! The last chunk is sent only after the reader reported a clean end (`Ok(0)`), so a reader
//! that fails at its end, like [`crate::store::NarBlobReader`] when the blob does not hash to its
//! id, never yields a complete body: the response is cut instead.

use std::io::{self, Read};

use axum::body::{Body, Bytes};

/// Bytes per streamed chunk (one blocking read task each). A download holds about four: one
/// held back, one read ahead, two in the connection's write buffer (plus the zstd decoder's
/// window and its 256 KiB read buffer). 512 KiB rather than 256 KiB: half the task hops per body
/// (issue 11 item 3), at about 2-3 MiB per download (`max_downloads` 32 by default).
pub const CHUNK: usize = 512 * 1024;

/// A blocking reader of a response body.
pub type BodyReader = Box<dyn Read + Send>;

/// A body read from `reader` in [`CHUNK`]s (see the module docs).
pub fn stream_body(reader: BodyReader) -> Body {
    stream_body_with(reader, ())
}

/// A body read from `reader` in [`CHUNK`]s, the last one held back until the
/// reader ended cleanly (see the module docs). `guard` (e.g. a download slot) is dropped with the
/// body.
pub fn stream_body_with(reader: BodyReader, guard: impl Send + 'static) -> Body {
    let state = Pump { reader: Some(reader), reading: None, pending: None, _guard: Box::new(guard) };
    let stream = libp2p::futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    });
    Body::from_stream(stream)
}

/// What a read task gives back: the reader (for the next read) and the chunk, `None` at a clean
/// end.
type ReadResult = (BodyReader, io::Result<Option<Bytes>>);

/// The state of a [`stream_body_with`] stream.
struct Pump {
    /// The reader before the first read.
    reader: Option<BodyReader>,
    /// The read in flight (one chunk ahead); `None` once the reader ended or failed.
    reading: Option<tokio::task::JoinHandle<ReadResult>>,
    /// The chunk read last, held back until the next read shows it is not the last one (or the
    /// reader ended cleanly).
    pending: Option<Bytes>,
    _guard: Box<dyn Send>,
}

impl Pump {
    /// The next chunk to send; `None` at the end.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(reader) = self.reader.take() {
            self.reading = Some(tokio::task::spawn_blocking(move || read_chunk(reader)));
        }
        loop {
            let reading = self.reading.take()?;
            let (reader, read) = match reading.await {
                Ok(v) => v,
                Err(e) => return Some(Err(io::Error::other(format!("NAR reader task failed: {e}")))),
            };
            match read {
                Ok(Some(chunk)) => {
                    // Read the next chunk while this one's predecessor is sent.
                    self.reading = Some(tokio::task::spawn_blocking(move || read_chunk(reader)));
                    if let Some(prev) = self.pending.replace(chunk) {
                        return Some(Ok(prev));
                    }
                }
                Ok(None) => return self.pending.take().map(Ok),
                Err(e) => {
                    tracing::error!(cause = %e, "streaming a NAR failed; cutting the response");
                    self.pending = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Read up to [`CHUNK`] bytes (blocking): `Ok(None)` at a clean end.
fn read_chunk(mut reader: BodyReader) -> ReadResult {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (reader, Err(e)),
        }
    }
    buf.truncate(filled);
    (reader, Ok((filled > 0).then(|| Bytes::from(buf))))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FailAtEnd(io::Cursor<Vec<u8>>);
    impl Read for FailAtEnd {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(io::ErrorKind::InvalidData, "hash mismatch")),
                n => Ok(n),
            }
        }
    }

    async fn collect(body: Body) -> (usize, bool) {
        use libp2p::futures::StreamExt as _;
        let mut stream = body.into_data_stream();
        let mut bytes = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => bytes += b.len(),
                Err(_) => return (bytes, true),
            }
        }
        (bytes, false)
    }

    #[tokio::test]
    async fn the_last_chunk_of_a_failing_reader_is_held_back() {
        for len in [CHUNK + 10, 3 * CHUNK, 5 * CHUNK + 1] {
            let data = vec![7u8; len];
            assert_eq!(collect(stream_body(Box::new(io::Cursor::new(data.clone())))).await, (len, false));
            let (bytes, failed) = collect(stream_body(Box::new(FailAtEnd(io::Cursor::new(data))))).await;
            assert!(failed);
            assert!(bytes < len, "the last chunk must not be sent: {bytes} of {len}");
        }
        // A reader failing within its only chunk yields nothing at all.
        let (bytes, failed) = collect(stream_body(Box::new(FailAtEnd(io::Cursor::new(vec![1u8; 10]))))).await;
        assert_eq!((bytes, failed), (0, true));
        assert_eq!(collect(stream_body(Box::new(io::Cursor::new(Vec::new())))).await, (0, false));
    }

    #[tokio::test]
    async fn the_guard_lives_as_long_as_the_body() {
        let guard = std::sync::Arc::new(());
        let body = stream_body_with(Box::new(io::Cursor::new(vec![1u8; 3 * CHUNK])), guard.clone());
        assert_eq!(std::sync::Arc::strong_count(&guard), 2);
        assert_eq!(collect(body).await, (3 * CHUNK, false));
        assert_eq!(std::sync::Arc::strong_count(&guard), 1);
    }
}
