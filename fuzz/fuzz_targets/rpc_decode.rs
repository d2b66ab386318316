//! Fuzz the bodies of the mesh's request-response protocols (`node/src/mesh/rpc.rs`, compiled
//! here from the node's own source file): what a peer sends on `/buildmesh/closure/1`,
//! `/buildmesh/nar/1` and `/buildmesh/sync/1`, requests and responses alike, decoded with the
//! node's `rpc::decode` (size cap first, no trailing bytes). The first byte picks the type;
//! nothing may panic, and whatever decodes encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// What `rpc.rs` needs from the node's store module.
#[allow(dead_code)]
mod store {
    #[derive(Debug, Clone, Copy)]
    pub struct SetSummary {
        pub count: u64,
        pub xor: [u8; 32],
        pub next_seq: u64,
    }
}

#[allow(dead_code, clippy::all)]
#[path = "../../node/src/mesh/rpc.rs"]
mod rpc;

use rpc::{ClosureRequest, ClosureResponse, NarRequest, NarResponse, SyncRequest, SyncResponse};

/// The node's request and response caps (`NetConfig::default()`), the largest of them.
const MAX: usize = 32 * 1024 * 1024;

fn round_trip<T>(what: &'static str, bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = rpc::decode::<T>(what, bytes, MAX) {
        let again = rpc::encode(&v);
        let back: T = rpc::decode(what, &again, MAX).expect("an encoded body decodes");
        assert_eq!(back, v, "{what} changes through encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 6 {
        0 => round_trip::<ClosureRequest>("closure request", body),
        1 => round_trip::<ClosureResponse>("closure response", body),
        2 => round_trip::<NarRequest>("NAR request", body),
        3 => round_trip::<NarResponse>("NAR response", body),
        4 => round_trip::<SyncRequest>("sync request", body),
        _ => round_trip::<SyncResponse>("sync response", body),
    }
});
