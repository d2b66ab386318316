//! Parse arbitrary bytes as a `.drv` (ATerm). The parser must never panic; whatever it accepts
//! must print back to exactly the same bytes, and the path computations and the JSON printer
//! must not panic on it either.
#![no_main]

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::nix();
    let Ok(drv) = Derivation::parse(data, &sd) else { return };
    assert_eq!(drv.to_aterm(&sd), data, "accepted input must round-trip byte for byte");
    assert_eq!(Derivation::parse(&drv.to_aterm(&sd), &sd).as_ref(), Ok(&drv));
    let name = drv.name().unwrap_or_else(|_| "fuzz".to_string());
    if let Ok(path) = drv.drv_path(&sd, &name) {
        let _ = drv.to_show_json(&path, &sd);
    }
    let _ = drv.validate(&sd, &name);
    let _ = drv.output_paths(&sd, &name, &mut |_: &StorePath| None);
    let mut filled = drv.clone();
    let _ = filled.fill_in_output_paths(&sd, &name, &mut |_: &StorePath| None);
});
