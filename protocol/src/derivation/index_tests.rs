//! The indexed path computation ([`DrvSet::insert_aterm`], `index.rs`) gives what the owned one
//! ([`DrvSet::insert`] of a parsed [`Derivation`]) gives: paths, hashes, errors, on every vector
//! and on random derivations.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::tests::arb_drv;
use super::*;

fn vector_dirs() -> Vec<PathBuf> {
    let v = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"));
    assert!(v.is_dir(), "vectors not found at {}", v.display());
    vec![
        v.join("nix/drv"),
        v.join("snix/snix/nix-compat/src/derivation/tests/derivation_tests/ok"),
        v.join("nix-upstream/src/libstore-tests/data/derivation"),
    ]
}

fn drv_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no .drv in {}", dir.display());
    v.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Both sets over `files`: every result of the indexed set equals the owned set's.
fn assert_sets_agree(files: &[&[u8]], sd: &StoreDir) -> usize {
    let mut owned = DrvSet::new(sd.clone());
    let mut indexed = DrvSet::new(sd.clone());
    let mut members = Vec::new();
    for bytes in files {
        let by_parse = Derivation::parse_with_path(bytes, sd, None);
        let by_index = indexed.insert_aterm(bytes, None);
        match by_parse {
            Ok((drv, name, path)) => {
                assert_eq!(by_index.as_ref(), Ok(&path));
                assert_eq!(owned.insert(name, drv).unwrap(), path);
                members.push(path);
            }
            Err(e) => assert_eq!(by_index, Err(e)),
        }
    }
    for p in &members {
        assert_eq!(owned.get(p), indexed.get(p), "{p}");
        assert_eq!(owned.member_output_paths(p), indexed.member_output_paths(p), "output paths of {p}");
        assert_eq!(owned.hash_as_input(p), indexed.hash_as_input(p), "hash as input of {p}");
    }
    // Again, the other way around (memos filled in another order).
    let mut fresh = DrvSet::new(sd.clone());
    for bytes in files {
        let _ = fresh.insert_aterm(bytes, None);
    }
    for p in members.iter().rev() {
        assert_eq!(owned.hash_as_input(p), fresh.hash_as_input(p), "hash as input of {p}");
        assert_eq!(owned.member_output_paths(p), fresh.member_output_paths(p), "output paths of {p}");
    }
    members.len()
}

#[test]
fn indexed_and_owned_agree_on_every_vector() {
    let sd = StoreDir::nix();
    let mut checked = 0;
    for dir in vector_dirs() {
        let files = drv_files(&dir);
        let all: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        checked += assert_sets_agree(&all, &sd);
        // With members missing: missing inputs and failing inputs give the same errors.
        for skip in 0..3 {
            let some: Vec<&[u8]> = all.iter().enumerate().filter(|(i, _)| i % 3 != skip).map(|(_, b)| *b).collect();
            assert_sets_agree(&some, &sd);
        }
    }
    assert!(checked > 60, "only {checked} vector derivations checked");
}

/// A derivation with some env vars named after its outputs, holding `value` (masked by
/// `hashDerivationModulo`).
fn with_output_env(mut d: Derivation, value: &[u8], which: usize) -> Derivation {
    let names: Vec<String> = d.outputs.keys().cloned().collect();
    for (i, n) in names.iter().enumerate() {
        if (which >> i) & 1 == 1 {
            d.env.insert(n.as_bytes().to_vec(), value.to_vec());
        }
    }
    d.env.insert(b"name".to_vec(), b"x".to_vec());
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A random derivation `top` whose inputs include a random `child` (with the outputs `top`
    /// uses, or not): indexed and owned sets agree, whether `child` is in the set or not.
    #[test]
    fn indexed_and_owned_agree_on_random_derivations(
        child in arb_drv(),
        top in arb_drv(),
        which in 0usize..16,
        value in "[ -~\n\"\\\\]{0,8}",
        use_child_outputs in any::<bool>(),
        keep_other_inputs in any::<bool>(),
    ) {
        let sd = StoreDir::nix();
        let child = with_output_env(child, value.as_bytes(), which);
        let child_aterm = child.to_aterm(&sd);
        let mut top = with_output_env(top, value.as_bytes(), which.rotate_left(1));
        let child_path = child.drv_path(&sd, "x").unwrap();
        if !keep_other_inputs {
            top.input_drvs.clear();
        }
        let outs: BTreeSet<String> = if use_child_outputs && !child.outputs.is_empty() {
            child.outputs.keys().take(2).cloned().collect()
        } else {
            BTreeSet::from(["out".to_string()])
        };
        top.input_drvs.insert(child_path, outs);
        let top_aterm = top.to_aterm(&sd);
        assert_sets_agree(&[&child_aterm, &top_aterm], &sd);
        assert_sets_agree(&[&top_aterm], &sd);
    }

    /// Damaged files: the index accepts and rejects exactly what the parser does.
    #[test]
    fn indexed_parse_errors_are_the_parsers(d in arb_drv(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let sd = StoreDir::nix();
        let mut aterm = with_output_env(d, b"v", 1).to_aterm(&sd);
        let i = at.index(aterm.len());
        if cut { aterm.truncate(i) } else { aterm[i] = byte }
        let by_parse = Derivation::parse_with_path(&aterm, &sd, None).map(|(_, _, p)| p);
        prop_assert_eq!(DrvSet::new(sd.clone()).insert_aterm(&aterm, None), by_parse);
    }
}
