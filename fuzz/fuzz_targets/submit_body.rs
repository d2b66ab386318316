//! Fuzz the body of `POST /api/v1/submit` (`node/src/submit/wire.rs`, compiled here from the
//! node's own source file so that the fuzzer needs neither libp2p nor redb): arbitrary bytes are
//! read the way `submit/accept.rs` reads an upload (header, every `.drv`, every source NAR
//! checked as a NAR, the end of the body) and must never panic or allocate beyond the declared,
//! checked sizes. A body the reader accepts whole re-encodes, from its parts, to the same bytes
//! after the header.
#![no_main]

use buildmesh_protocol::nar::NarLimits;
use libfuzzer_sys::fuzz_target;

/// The error variants `wire.rs` builds (its `use super::SubmitError` finds this one). A variant
/// or field renamed in `node/src/submit/mod.rs` makes this fail to compile: update it here.
#[allow(dead_code)]
#[derive(Debug)]
pub enum SubmitError {
    NotASubmission { found: String },
    HeaderTooLarge { len: u64, max: u64 },
    BadHeader { reason: String },
    UnsupportedVersion { version: u32, supported: u32 },
    TooLarge { what: &'static str, path: String, size: u64, max: u64 },
    SizeOverflow,
    Truncated { what: String, expected: u64, got: u64 },
    TrailingBytes { after: u64 },
    Body { source: std::io::Error },
    Spool { source: std::io::Error },
    BadNar { path: String, error: String },
    Internal(String),
}

/// The node's submit body format, compiled from its own source file.
#[allow(dead_code, clippy::all)]
#[path = "../../node/src/submit/wire.rs"]
mod wire;

use wire::BodyReader;

/// The node's `max_header_bytes` default is 16 MiB; a smaller cap keeps each run fast and still
/// exercises the check.
const MAX_HEADER: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut r = BodyReader::new(data);
    let Ok(header) = r.read_header(MAX_HEADER) else { return };
    // The node compares the declared body length with the request's Content-Length before it
    // reads further (`SubmitError::LengthMismatch`); here the input is the whole body.
    let declared = header
        .drvs
        .iter()
        .map(|d| d.size)
        .chain(header.sources.iter().map(|s| s.nar_size))
        .try_fold(r.bytes_read(), u64::checked_add);
    if declared != Some(data.len() as u64) {
        return;
    }
    let mut drvs = Vec::new();
    for entry in &header.drvs {
        match r.read_drv(entry) {
            Ok(bytes) => {
                assert_eq!(bytes.len() as u64, entry.size);
                drvs.push(bytes);
            }
            Err(_) => return,
        }
    }
    let mut nars = Vec::new();
    for entry in &header.sources {
        let limits = NarLimits {
            max_total_size: entry.nar_size,
            max_file_size: entry.nar_size,
            max_depth: 256,
            max_entries: 1 << 16,
        };
        let mut nar = Vec::new();
        match r.copy_checked_nar(entry, &mut nar, &mut |_| {}, limits) {
            Ok(n) => {
                assert_eq!(n, entry.nar_size);
                assert_eq!(nar.len() as u64, n);
                nars.push(nar);
            }
            Err(_) => return,
        }
    }
    if r.finish().is_err() {
        return;
    }
    assert_eq!(r.bytes_read(), data.len() as u64, "an accepted body is consumed whole");
    let drv_refs: Vec<&[u8]> = drvs.iter().map(Vec::as_slice).collect();
    let nar_refs: Vec<&[u8]> = nars.iter().map(Vec::as_slice).collect();
    let again = wire::encode_body(&header, &drv_refs, &nar_refs).expect("an accepted body re-encodes");
    let prefix = header.encode_prefix().expect("an accepted header re-encodes");
    assert_eq!(&again[prefix.len()..], &data[data.len() - (again.len() - prefix.len())..]);
});
