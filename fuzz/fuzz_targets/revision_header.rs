//! Fuzz the revision header: arbitrary bytes as a signed envelope (decode, verify as a
//! `RevisionHeader`) and as a bare payload (bypassing the signature so that the decoder sees
//! arbitrary input); whatever decodes re-encodes to the same bytes and passes `validate`.
#![no_main]

use buildmesh_protocol::revision::RevisionHeader;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::wire::{Encode, Payload, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let _ = envelope.verify_as::<RevisionHeader>();
    }
    let mut r = Reader::new(data);
    if let Ok(h) = RevisionHeader::decode_payload(&mut r)
        && r.finish().is_ok()
    {
        assert_eq!(h.to_bytes(), data, "revision header encoding is not canonical");
        assert_eq!(h.validate(), Ok(()));
        let _ = h.id().to_string();
    }
});
