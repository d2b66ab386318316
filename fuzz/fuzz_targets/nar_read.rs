//! Decode arbitrary bytes as a NAR under tight limits. The reader must never panic, and anything
//! it accepts must re-encode to exactly the same bytes (the format is canonical).
#![no_main]

use buildmesh_protocol::nar::tree::Node;
use buildmesh_protocol::nar::{NarEvent, NarLimits, NarReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = NarLimits { max_total_size: 1 << 20, max_file_size: 1 << 16, max_depth: 64, max_entries: 4096 };
    // Streaming: read contents in odd-sized chunks, sometimes skip them.
    let mut r = NarReader::new(data).with_limits(limits);
    let mut buf = [0u8; 3];
    let mut skip = false;
    loop {
        match r.next() {
            Ok(Some(NarEvent::Regular { .. })) if !skip => while matches!(r.read_contents(&mut buf), Ok(n) if n > 0) {},
            Ok(Some(_)) => {}
            Ok(None) => {
                assert_eq!(r.offset(), data.len() as u64);
                break;
            }
            Err(_) => break,
        }
        skip = !skip;
    }
    // In memory: accepted archives are canonical.
    if let Ok(tree) = Node::read_nar(data, limits) {
        assert_eq!(tree.to_nar().expect("a decoded tree re-encodes"), data);
    }
});
