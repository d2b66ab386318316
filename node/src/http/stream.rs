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
//! Chunks are read into buffers of the download's own small pool ([`ChunkPool`]): a chunk's
//! buffer goes back to the pool when the connection has written it (the [`Bytes`] handed to hyper
//! owns it), so a download zero-fills its few buffers once, not every chunk (perf, issue 11 item
//! 3: the `memset` of a fresh zeroed buffer per chunk was 13% of the node's CPU on four
//! connections).
//!
//! A reader that can read **without blocking** ([`BodySource::read_at_hand`]: a plain copy of a
//! large NAR, whose bytes are normally in the page cache) is read in the connection's task instead,
//! one chunk at a time, and goes to a blocking task only for a chunk that is not cached (issue 11
//! item 3: a blocking task per chunk cost two futex wake-ups and a thread hop per 512 KiB, about a
//! tenth of the node's CPU per byte on four connections; harmonia reads in its worker threads).
//!
//! The last chunk is sent only after the reader reported a clean end (`Ok(0)`), so a reader
//! that fails at its end, like [`crate::store::NarBlobReader`] when the blob does not hash to its
//! id, never yields a complete body: the response is cut instead.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};

use crate::store::{PlainReader, ServedNar};

/// Bytes per streamed chunk (one blocking read task each). A download holds about four: one
/// held back, one read ahead, two in the connection's write buffer (plus the zstd decoder's
/// window and its 256 KiB read buffer). 512 KiB rather than 256 KiB: half the task hops per body
/// (issue 11 item 3), at about 2-3 MiB per download (`max_downloads` 32 by default).
pub const CHUNK: usize = 512 * 1024;

/// A blocking reader of a response body.
pub type BodyReader = Box<dyn BodySource>;

/// A reader of a response body: a blocking [`Read`], and optionally a read that never blocks.
pub trait BodySource: Read + Send + 'static {
    /// Whether [`BodySource::read_at_hand`] may give bytes (then chunks are read in the
    /// connection's task first); `false` keeps every read in a blocking task, one chunk ahead.
    fn reads_at_hand(&self) -> bool {
        false
    }

    /// Read without blocking: `Some(Ok(0))` at the end, `None` when the bytes are not at hand
    /// (the chunk is then read with [`Read::read`] in a blocking task).
    fn read_at_hand(&mut self, _buf: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }
}

/// Bytes of a file read with positioned reads, at hand when they are in the page cache (a
/// `.nar.zst` blob served as it is on disk). A file shorter than the slice is an error, never a
/// short clean end.
#[derive(Debug)]
pub struct FileSlice {
    file: std::fs::File,
    pos: u64,
    left: u64,
}

impl FileSlice {
    /// `len` bytes of `file` from `start`.
    pub fn new(file: std::fs::File, start: u64, len: u64) -> FileSlice {
        FileSlice { file, pos: start, left: len }
    }

    fn took(&mut self, n: usize) -> io::Result<usize> {
        if n == 0 && self.left > 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file is shorter than the body"));
        }
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }

    fn want(&self, buf_len: usize) -> usize {
        buf_len.min(usize::try_from(self.left).unwrap_or(usize::MAX))
    }
}

impl Read for FileSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let want = self.want(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.took(n)
    }
}

impl BodySource for FileSlice {
    fn reads_at_hand(&self) -> bool {
        true
    }

    fn read_at_hand(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let want = self.want(buf.len());
        if want == 0 {
            return Some(Ok(0));
        }
        Some(crate::store::plain::pread_at_hand(&self.file, &mut buf[..want], self.pos)?.and_then(|n| self.took(n)))
    }
}

impl BodySource for io::Cursor<Vec<u8>> {}

impl<R: Read + Send + 'static> BodySource for super::range::RangeReader<R> {}

impl BodySource for PlainReader {
    fn reads_at_hand(&self) -> bool {
        true
    }

    fn read_at_hand(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        PlainReader::read_at_hand(self, buf)
    }
}

impl BodySource for ServedNar {
    fn reads_at_hand(&self) -> bool {
        matches!(self, ServedNar::Plain(_))
    }

    fn read_at_hand(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self {
            ServedNar::Plain(r) => r.read_at_hand(buf),
            ServedNar::Blob(_) => None,
        }
    }
}

/// A body read from `reader` in [`CHUNK`]s (see the module docs).
pub fn stream_body(reader: BodyReader) -> Body {
    stream_body_with(reader, ())
}

/// A body read from `reader` in [`CHUNK`]s, the last one held back until the
/// reader ended cleanly (see the module docs). `guard` (e.g. a download slot) is dropped with the
/// body.
pub fn stream_body_with(reader: BodyReader, guard: impl Send + 'static) -> Body {
    let state = Pump {
        reader: Some(reader),
        reading: None,
        pending: None,
        pool: ChunkPool::default(),
        _guard: Box::new(guard),
    };
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
    /// The reader when no read is in flight (before the first read, and between reads of a
    /// reader that reads at hand).
    reader: Option<BodyReader>,
    /// The read in flight (one chunk ahead); `None` once the reader ended or failed.
    reading: Option<tokio::task::JoinHandle<ReadResult>>,
    /// The chunk read last, held back until the next read shows it is not the last one (or the
    /// reader ended cleanly).
    pending: Option<Bytes>,
    /// The buffers of this download.
    pool: ChunkPool,
    _guard: Box<dyn Send>,
}

/// Chunk buffers kept per download: one held back, one read ahead, and the ones the connection
/// is still writing.
const POOLED: usize = 4;

/// The reusable chunk buffers of one download (see the module docs).
#[derive(Clone, Default)]
struct ChunkPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl ChunkPool {
    /// A buffer of [`CHUNK`] bytes (initialized; a reused one holds old bytes).
    fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_else(|| vec![0u8; CHUNK])
    }

    /// Give a buffer back (dropped when the pool is full).
    fn give(&self, buf: Vec<u8>) {
        let mut free = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOLED {
            free.push(buf);
        }
    }
}

/// The first `len` bytes of a pooled buffer, as the owner of a [`Bytes`]; the buffer returns to
/// its pool when the last [`Bytes`] of it is dropped.
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
    pool: ChunkPool,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl Pump {
    /// The next chunk to send; `None` at the end.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let read = if let Some(mut reader) = self.reader.take() {
                let at_hand = if reader.reads_at_hand() { read_chunk_at_hand(&mut *reader, &self.pool) } else { None };
                match at_hand {
                    Some(read) => {
                        self.reader = Some(reader);
                        read
                    }
                    None => {
                        let pool = self.pool.clone();
                        self.reading = Some(tokio::task::spawn_blocking(move || read_chunk(reader, &pool)));
                        continue;
                    }
                }
            } else {
                let reading = self.reading.take()?;
                let (reader, read) = match reading.await {
                    Ok(v) => v,
                    Err(e) => return Some(Err(io::Error::other(format!("NAR reader task failed: {e}")))),
                };
                if matches!(read, Ok(Some(_))) {
                    if reader.reads_at_hand() {
                        self.reader = Some(reader);
                    } else {
                        // Read the next chunk while this one's predecessor is sent.
                        let pool = self.pool.clone();
                        self.reading = Some(tokio::task::spawn_blocking(move || read_chunk(reader, &pool)));
                    }
                }
                read
            };
            match read {
                Ok(Some(chunk)) => {
                    if let Some(prev) = self.pending.replace(chunk) {
                        return Some(Ok(prev));
                    }
                }
                Ok(None) => {
                    self.reader = None;
                    return self.pending.take().map(Ok);
                }
                Err(e) => {
                    tracing::error!(cause = %e, "streaming a NAR failed; cutting the response");
                    self.reader = None;
                    self.pending = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Read up to [`CHUNK`] bytes at hand (see [`BodySource::read_at_hand`]): `None` when not even the
/// first byte was at hand, `Some(Ok(None))` at a clean end; a chunk may be short when the rest
/// was not at hand.
fn read_chunk_at_hand(reader: &mut dyn BodySource, pool: &ChunkPool) -> Option<io::Result<Option<Bytes>>> {
    let mut buf = pool.take();
    let mut filled = 0;
    while filled < CHUNK {
        match reader.read_at_hand(&mut buf[filled..]) {
            Some(Ok(0)) => break,
            Some(Ok(n)) => filled += n,
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => {
                pool.give(buf);
                return Some(Err(e));
            }
            None if filled == 0 => {
                pool.give(buf);
                return None;
            }
            None => break,
        }
    }
    if filled == 0 {
        pool.give(buf);
        return Some(Ok(None));
    }
    Some(Ok(Some(Bytes::from_owner(PooledChunk { buf, len: filled, pool: pool.clone() }))))
}

/// Read up to [`CHUNK`] bytes into a buffer of `pool` (blocking): `Ok(None)` at a clean end.
fn read_chunk(mut reader: BodyReader, pool: &ChunkPool) -> ReadResult {
    let mut buf = pool.take();
    let mut filled = 0;
    while filled < CHUNK {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                pool.give(buf);
                return (reader, Err(e));
            }
        }
    }
    if filled == 0 {
        pool.give(buf);
        return (reader, Ok(None));
    }
    (reader, Ok(Some(Bytes::from_owner(PooledChunk { buf, len: filled, pool: pool.clone() }))))
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

    impl BodySource for FailAtEnd {}

    /// A reader with bytes at hand on two calls of four (at most 100,000 bytes each), not at
    /// hand on the other two; `fail_at_end` makes its end an error, like a damaged blob's.
    struct SometimesAtHand {
        data: io::Cursor<Vec<u8>>,
        calls: usize,
        fail_at_end: bool,
        blocking_reads: Arc<Mutex<usize>>,
        at_hand_bytes: Arc<Mutex<usize>>,
    }
    impl SometimesAtHand {
        fn end(&self, n: usize) -> io::Result<usize> {
            if n == 0 && self.fail_at_end {
                Err(io::Error::new(io::ErrorKind::InvalidData, "hash mismatch"))
            } else {
                Ok(n)
            }
        }
    }
    impl Read for SometimesAtHand {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            *self.blocking_reads.lock().unwrap() += 1;
            let n = self.data.read(buf)?;
            self.end(n)
        }
    }
    impl BodySource for SometimesAtHand {
        fn reads_at_hand(&self) -> bool {
            true
        }
        fn read_at_hand(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
            self.calls += 1;
            // Two calls in a row not at hand: the first ends a chunk short, the second comes at
            // the start of the next chunk, which then goes to a blocking task.
            if self.calls % 4 < 2 {
                return None;
            }
            let want = buf.len().min(100_000);
            let read = self.data.read(&mut buf[..want]).and_then(|n| self.end(n));
            if let Ok(n) = read {
                *self.at_hand_bytes.lock().unwrap() += n;
            }
            Some(read)
        }
    }

    #[tokio::test]
    async fn readers_at_hand_are_read_in_the_task_and_whole() {
        use libp2p::futures::StreamExt as _;
        let data: Vec<u8> = (0..(3 * CHUNK + 777) as u64).map(|i| (i * 13 + i / 997) as u8).collect();
        let blocking = Arc::new(Mutex::new(0));
        let at_hand = Arc::new(Mutex::new(0));
        let reader = SometimesAtHand {
            data: io::Cursor::new(data.clone()),
            calls: 0,
            fail_at_end: false,
            blocking_reads: blocking.clone(),
            at_hand_bytes: at_hand.clone(),
        };
        let mut stream = stream_body(Box::new(reader)).into_data_stream();
        let mut got = Vec::new();
        while let Some(b) = stream.next().await {
            got.extend_from_slice(&b.unwrap());
        }
        assert!(got == data, "the body differs from what was read ({} of {} bytes)", got.len(), data.len());
        let blocking = *blocking.lock().unwrap();
        assert!(blocking > 0, "a read not at hand goes to a blocking task");
        let at_hand = *at_hand.lock().unwrap();
        assert!(at_hand > data.len() / 4, "only {at_hand} of {} bytes were read at hand", data.len());
        // A reader at hand that fails at its end never yields a complete body.
        for len in [10, CHUNK + 10, 3 * CHUNK] {
            let reader = SometimesAtHand {
                data: io::Cursor::new(vec![5u8; len]),
                calls: 0,
                fail_at_end: true,
                blocking_reads: Arc::default(),
                at_hand_bytes: Arc::default(),
            };
            let (bytes, failed) = collect(stream_body(Box::new(reader))).await;
            assert!(failed && bytes < len, "{bytes} of {len} bytes sent, failed: {failed}");
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
    async fn reused_buffers_carry_exactly_what_was_read() {
        use libp2p::futures::StreamExt as _;
        // Distinct bytes in every chunk and a short last one: a reused buffer's old bytes
        // must not show.
        let data: Vec<u8> = (0..(4 * CHUNK + 1000) as u64).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut stream = stream_body(Box::new(io::Cursor::new(data.clone()))).into_data_stream();
        let mut got = Vec::new();
        while let Some(b) = stream.next().await {
            got.extend_from_slice(&b.unwrap()); // each chunk dropped here goes back to the pool
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the body differs from what was read");
        // A pool hands back what it was given and keeps at most POOLED buffers.
        let pool = ChunkPool::default();
        let bufs: Vec<_> = (0..POOLED + 2).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.0.lock().unwrap().len(), POOLED);
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
