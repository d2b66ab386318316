//! Fuzz the manifest decoder: arbitrary bytes must never panic; whatever decodes passes
//! `Manifest::validate` and re-encodes to exactly the same bytes (the encoding is canonical).
#![no_main]

use buildmesh_protocol::revision::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most inputs fail at the magic; give half of them a valid prefix to reach the body.
    let mut with_magic = b"buildmesh-manifest\0\x01".to_vec();
    with_magic.extend_from_slice(data);
    for bytes in [data, &with_magic[..]] {
        if let Ok(m) = Manifest::decode(bytes) {
            assert_eq!(m.validate(), Ok(()), "decoded manifest breaks a rule");
            assert_eq!(m.encode_to_vec(), bytes, "manifest encoding is not canonical");
            let _ = m.jobs_per_system();
            for job in &m.jobs {
                assert!(!m.job_system(job).is_empty());
            }
        }
    }
});
