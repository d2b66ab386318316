//! Fuzz the mesh message decoders: arbitrary bytes must never panic.
//!
//! - as a signed envelope: decode (size-checked first), then verify (signature, payload, checks);
//! - as a bare payload of the kind named by the first byte, bypassing the signature so that the
//!   payload decoders see arbitrary input; whatever decodes must re-encode to exactly the same
//!   bytes (the encoding is canonical). A `batch` payload is decoded as a `Batch`.
#![no_main]

use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::wire::{Batch, Encode, Kind, Message, Payload, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.to_bytes(), data, "envelope encoding is not canonical");
        let _ = envelope.verify();
        let _ = envelope.verify_as::<Batch>();
    }
    if let Some((&tag, payload)) = data.split_first() {
        let kind = Kind::ALL[usize::from(tag) % Kind::ALL.len()];
        if let Ok(message) = Message::decode_payload(kind, payload, 1) {
            assert_eq!(message.kind(), kind);
            assert_eq!(message.to_bytes(), payload, "payload encoding is not canonical");
            assert_eq!(message.encoded_len(), payload.len());
            let _ = message.check();
        }
        if kind == Kind::Batch {
            let mut r = Reader::with_base(payload, 1);
            if let Ok(batch) = Batch::decode_payload(&mut r)
                && r.finish().is_ok()
            {
                assert_eq!(batch.to_bytes(), payload, "batch encoding is not canonical");
                let _ = batch.check();
            }
        }
    }
});
