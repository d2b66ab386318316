#![no_main]

//! Parse arbitrary bytes as a narinfo. The parser must never panic; anything it accepts must
//! render, parse back to an equal value, render identically again, and have a fingerprint.

use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::store_path::StoreDir;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for store_dir in [StoreDir::nix(), StoreDir::guix()] {
        let Ok(ni) = NarInfo::parse_bytes(data, &store_dir) else { continue };
        ni.validate().expect("a parsed narinfo is valid");
        let text = ni.to_string();
        let back = NarInfo::parse(&text, &store_dir).expect("a rendered narinfo parses");
        assert_eq!(back, ni);
        assert_eq!(back.to_string(), text);
        ni.fingerprint().expect("a parsed narinfo has NarSize > 0");
        let _ = ni.verify(&[]);
    }
});
