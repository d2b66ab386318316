//! Length-prefixed request-response codec: opaque bytes with separate size caps for requests and
//! responses.
//!
//! Frame format (one per stream direction): `len: u32 little-endian` followed by `len` bytes. The
//! length is checked against the cap *before* any buffer is allocated, so a peer cannot make us
//! allocate more than the cap. libp2p's bundled cbor codec caps at 1 MiB / 10 MiB, which is too
//! small for `.drv` closures and too coarse for NAR chunks, hence this codec.

use std::fmt;
use std::io;

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;

/// Which direction of a request-response exchange a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// The request (requester to responder).
    Request,
    /// The response (responder to requester).
    Response,
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Request => "request",
            FrameKind::Response => "response",
        })
    }
}

/// A frame longer than the configured cap (carried inside an [`io::Error`] so that libp2p can
/// report it; recovered with [`FrameTooLarge::from_io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} frame of {len} bytes exceeds the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// Request or response.
    pub kind: FrameKind,
    /// The announced (or attempted) length.
    pub len: u64,
    /// The configured cap.
    pub max: usize,
}

impl FrameTooLarge {
    /// Finds a `FrameTooLarge` inside an I/O error produced by this codec.
    pub fn from_io(err: &io::Error) -> Option<FrameTooLarge> {
        err.get_ref().and_then(|inner| inner.downcast_ref::<FrameTooLarge>()).copied()
    }

    fn into_io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }
}

/// The codec: opaque `Vec<u8>` requests and responses, each with its own cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LengthPrefixedCodec {
    pub(crate) max_request: usize,
    pub(crate) max_response: usize,
}

/// Reads one frame, refusing (before allocating) a length above `max`.
pub(crate) async fn read_frame<T>(io: &mut T, kind: FrameKind, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len_bytes = [0u8; 4];
    io.read_exact(&mut len_bytes).await?;
    let len = u32::from_le_bytes(len_bytes);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Err(FrameTooLarge { kind, len: u64::from(len), max }.into_io(io::ErrorKind::InvalidData));
    }
    let mut buf = vec![0u8; len_usize];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A request as it travels through the codec. A request whose announced length is above the
/// cap is not an I/O error but [`RequestFrame::TooLarge`], so that the event loop learns which
/// peer sent it (libp2p reports a failed `read_request` to nobody) and can count it against
/// that peer; its body is never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestFrame {
    /// A request within the cap.
    Data(Vec<u8>),
    /// A request above the cap (read side only; never written).
    TooLarge(FrameTooLarge),
}

/// Reads the length prefix of one request and, when it is within `max`, its bytes.
pub(crate) async fn read_request_frame<T>(io: &mut T, max: usize) -> io::Result<RequestFrame>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len_bytes = [0u8; 4];
    io.read_exact(&mut len_bytes).await?;
    let len = u32::from_le_bytes(len_bytes);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Ok(RequestFrame::TooLarge(FrameTooLarge { kind: FrameKind::Request, len: u64::from(len), max }));
    }
    let mut buf = vec![0u8; len_usize];
    io.read_exact(&mut buf).await?;
    Ok(RequestFrame::Data(buf))
}

/// Writes one frame, refusing data longer than `max` (or than `u32::MAX`).
pub(crate) async fn write_frame<T>(io: &mut T, kind: FrameKind, max: usize, data: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let too_large = FrameTooLarge { kind, len: data.len() as u64, max };
    if data.len() > max {
        return Err(too_large.into_io(io::ErrorKind::InvalidInput));
    }
    let len = u32::try_from(data.len()).map_err(|_| too_large.into_io(io::ErrorKind::InvalidInput))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

impl request_response::Codec for LengthPrefixedCodec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<RequestFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, FrameKind::Response, self.max_response).await
    }

    async fn write_request<T>(&mut self, _: &Self::Protocol, io: &mut T, req: RequestFrame) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            RequestFrame::Data(data) => write_frame(io, FrameKind::Request, self.max_request, &data).await,
            RequestFrame::TooLarge(t) => Err(t.into_io(io::ErrorKind::InvalidInput)),
        }
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, res: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, FrameKind::Response, self.max_response, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;
    use libp2p::futures::io::Cursor;
    use proptest::prelude::*;

    fn roundtrip(data: &[u8], max: usize) -> io::Result<Vec<u8>> {
        let mut out = Cursor::new(Vec::new());
        block_on(write_frame(&mut out, FrameKind::Request, max, data))?;
        let mut input = Cursor::new(out.into_inner());
        block_on(read_frame(&mut input, FrameKind::Request, max))
    }

    #[test]
    fn frame_layout_is_u32_le_length_then_bytes() {
        let mut out = Cursor::new(Vec::new());
        block_on(write_frame(&mut out, FrameKind::Response, 16, b"abc")).unwrap();
        assert_eq!(out.into_inner(), vec![3, 0, 0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn oversize_write_is_refused_with_typed_error() {
        let mut out = Cursor::new(Vec::new());
        let err = block_on(write_frame(&mut out, FrameKind::Request, 4, b"hello")).unwrap_err();
        assert_eq!(FrameTooLarge::from_io(&err), Some(FrameTooLarge { kind: FrameKind::Request, len: 5, max: 4 }));
        assert!(out.into_inner().is_empty(), "nothing written for an oversize frame");
    }

    #[test]
    fn oversize_read_is_refused_before_allocating() {
        // Announces 4 GiB - 1 with no body: must fail on the length, not try to allocate.
        let mut input = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = block_on(read_frame(&mut input, FrameKind::Response, 1024)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let too_large = FrameTooLarge::from_io(&err).unwrap();
        assert_eq!(too_large.len, u64::from(u32::MAX));
        assert_eq!(too_large.kind, FrameKind::Response);
    }

    #[test]
    fn oversize_request_is_reported_not_read() {
        // 5,000 bytes announced, a cap of 1,000: the body is not read (here it is not even there).
        let mut input = Cursor::new(5000u32.to_le_bytes().to_vec());
        let frame = block_on(read_request_frame(&mut input, 1000)).unwrap();
        assert_eq!(frame, RequestFrame::TooLarge(FrameTooLarge { kind: FrameKind::Request, len: 5000, max: 1000 }));
        let mut ok = Cursor::new(vec![2, 0, 0, 0, 7, 8]);
        assert_eq!(block_on(read_request_frame(&mut ok, 1000)).unwrap(), RequestFrame::Data(vec![7, 8]));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut input = Cursor::new(vec![5, 0, 0, 0, b'a', b'b']);
        let err = block_on(read_frame(&mut input, FrameKind::Request, 16)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut short_len = Cursor::new(vec![5, 0]);
        assert!(block_on(read_frame(&mut short_len, FrameKind::Request, 16)).is_err());
    }

    proptest! {
        #[test]
        fn decode_encode_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert_eq!(roundtrip(&data, 4096).unwrap(), data);
        }

        #[test]
        fn exceeding_cap_always_fails(data in proptest::collection::vec(any::<u8>(), 1..512), slack in 1usize..64) {
            let max = data.len().saturating_sub(slack);
            prop_assert!(roundtrip(&data, max).is_err());
        }
    }
}
