//! narinfo vectors: the Nix 2.8 binary cache in `../shared/vectors/nix/narinfo` with its
//! `fingerprints.tsv` and key pair, the 978 cache.nixos.org narinfos of the snix corpus, and the
//! edge cases extracted from snix's tests.

use std::fs;
use std::path::{Path, PathBuf};

use buildmesh_protocol::narinfo::{Deriver, HashEncoding, NarInfo, ReferenceOrder, SigResult};
use buildmesh_protocol::nixkey::{PublicKey, SecretKey};
use buildmesh_protocol::store_path::StoreDir;

const CACHE_NIXOS_ORG: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

fn vectors() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors")).to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nix_narinfos() -> Vec<(PathBuf, String)> {
    let dir = vectors().join("nix/narinfo");
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .map(|p| {
            let text = read(&p);
            (p, text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no narinfo in {}", dir.display());
    out
}

#[test]
fn nix_cache_roundtrips_fingerprints_and_signatures() {
    let keys = vectors().join("nix/keys");
    let public = PublicKey::parse(&read(&keys.join("public-key"))).unwrap();
    let secret = SecretKey::parse(&read(&keys.join("secret-key"))).unwrap();
    assert_eq!(secret.public(), public);

    let tsv = read(&vectors().join("nix/fingerprints.tsv"));
    let mut rows: std::collections::BTreeMap<String, (String, String)> = tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "bad TSV row {l:?}");
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect();
    assert!(!rows.is_empty());

    for (path, text) in nix_narinfos() {
        let ni = NarInfo::parse(&text, &StoreDir::nix()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(ni.to_string(), text, "{} does not round-trip", path.display());
        // The file is named after the hash part of its store path.
        assert_eq!(path.file_stem().unwrap().to_str().unwrap(), ni.store_path.hash_part());
        let (fp, sig) = rows
            .remove(&ni.store_path_string())
            .unwrap_or_else(|| panic!("{}: no fingerprints.tsv row", path.display()));
        assert_eq!(ni.fingerprint().unwrap(), fp, "{}", path.display());
        assert_eq!(ni.sigs.len(), 1);
        assert_eq!(ni.sigs[0].to_string(), sig);
        let v = ni.verify(std::slice::from_ref(&public)).unwrap();
        assert!(v.is_valid(), "{}: {:?}", path.display(), v.checks);
        assert_eq!(v.checks[0].result, SigResult::Valid { key: public.clone(), order: ReferenceOrder::Sorted });
        // Ed25519 is deterministic: re-signing gives Nix's line, byte for byte.
        let mut resigned = ni.clone();
        resigned.sigs.clear();
        resigned.sign(&secret).unwrap();
        assert_eq!(resigned.to_string(), text, "{}", path.display());
    }
    assert!(rows.is_empty(), "fingerprints.tsv rows without a narinfo: {:?}", rows.keys().collect::<Vec<_>>());
}

/// The snix corpus: split with `split_inclusive("\n\n")`, then strip one trailing `\n` (snix README).
fn snix_corpus() -> Vec<String> {
    let path = vectors().join("snix/snix/nix-compat/testdata/narinfo.zst");
    let compressed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = zstd::decode_all(&compressed[..]).unwrap();
    let text = String::from_utf8(data).unwrap();
    text.split_inclusive("\n\n").map(|p| p.strip_suffix('\n').unwrap_or(p).to_string()).collect()
}

#[test]
fn snix_corpus_roundtrips_and_verifies() {
    let corpus = snix_corpus();
    assert_eq!(corpus.len(), 978);
    let key = PublicKey::parse(CACHE_NIXOS_ORG).unwrap();
    let (mut empty_refs, mut no_deriver, mut with_ca, mut with_system) = (0, 0, 0, 0);
    for (i, text) in corpus.iter().enumerate() {
        let ni = NarInfo::parse(text, &StoreDir::nix()).unwrap_or_else(|e| panic!("narinfo #{i}: {e}\n{text}"));
        assert_eq!(&ni.to_string(), text, "narinfo #{i} does not round-trip");
        let v = ni.verify(std::slice::from_ref(&key)).unwrap();
        assert!(v.is_valid(), "narinfo #{i}: {:?}", v.checks);
        empty_refs += usize::from(ni.references.is_empty() && !ni.omit_empty_references);
        no_deriver += usize::from(ni.deriver.is_none());
        with_ca += usize::from(ni.ca.is_some());
        with_system += usize::from(ni.system.is_some());
        assert!(ni.extra.is_empty());
    }
    // Counts from the snix vectors README.
    assert_eq!((empty_refs, no_deriver, with_ca, with_system), (139, 65, 8, 8));
}

fn extracted(name: &str) -> (String, NarInfo) {
    let text = read(&vectors().join("snix/extracted/narinfo").join(name));
    let ni = NarInfo::parse(&text, &StoreDir::nix()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(ni.to_string(), text, "{name} does not round-trip");
    (text, ni)
}

fn cache_key() -> PublicKey {
    PublicKey::parse(CACHE_NIXOS_ORG).unwrap()
}

#[test]
fn extracted_edge_cases() {
    let dir = vectors().join("snix/extracted/narinfo");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".narinfo") {
            extracted(&name);
            seen += 1;
        }
    }
    assert!(seen >= 9);

    let (_, ni) = extracted("references-out-of-order.narinfo");
    assert_ne!(ni.fingerprint().unwrap(), ni.fingerprint_file_order().unwrap());
    let v = ni.verify(&[cache_key()]).unwrap();
    assert_eq!(v.checks[0].result, SigResult::Valid { key: cache_key(), order: ReferenceOrder::FileOrder });

    let (_, ni) = extracted("ca-nar-hash-sha1.narinfo");
    let ca = ni.ca.as_ref().unwrap();
    assert_eq!(ca.hash().to_hex(), "5cba3c77236ae4f9650270a27fbad375551fa60a");
    assert!(ni.references.is_empty() && !ni.omit_empty_references);
    assert!(ni.verify(&[cache_key()]).unwrap().is_valid());

    let (_, ni) = extracted("compression-default.narinfo");
    assert_eq!(ni.compression, None);
    assert_eq!(ni.compression_or_default(), "bzip2");
    assert!(ni.verify(&[cache_key()]).unwrap().is_valid());

    let (_, ni) = extracted("compression-none.narinfo");
    assert_eq!(ni.compression.as_deref(), Some("none"));
    assert!(ni.verify(&[cache_key()]).unwrap().is_valid());

    let (_, ni) = extracted("explicit-unknown-deriver.narinfo");
    assert_eq!(ni.deriver, Some(Deriver::Unknown));
    let v = ni.verify(&[cache_key()]).unwrap();
    assert!(matches!(v.checks[0].result, SigResult::Valid { .. }));
    assert_eq!(v.checks[1].result, SigResult::UnknownKey);
    assert_eq!(v.checks[1].signature.key_name(), "hydra.other.net-1");

    let (_, ni) = extracted("nar-hash-hex.narinfo");
    assert_eq!(ni.nar_hash_encoding, HashEncoding::Hex);
    assert_eq!(ni.nar_hash().to_hex(), "60adfd293a4d81ad7cd7e47263cbb3fc846309ef91b154a08ba672b558f94ff3");
    assert!(ni.fingerprint().unwrap().contains(&format!(";{};", ni.nar_hash())));
    assert!(ni.verify(&[cache_key()]).unwrap().is_valid());

    let (_, ni) = extracted("references-missing.narinfo");
    assert!(ni.omit_empty_references && ni.references.is_empty());
    assert!(ni.verify(&[cache_key()]).unwrap().is_valid());

    let (text, ni) = extracted("fingerprint-curl-7.82.0-bin.narinfo");
    let fp = read(&dir.join("fingerprint-curl-7.82.0-bin.fingerprint.txt"));
    assert_eq!(ni.fingerprint().unwrap(), fp);
    let v = ni.verify(&[cache_key()]).unwrap();
    assert!(matches!(v.checks[0].result, SigResult::Valid { .. }));
    assert_eq!(v.checks[1].result, SigResult::UnknownKey);
    // A trusted key named like the second signature, but another key: bad signature.
    let impostor = SecretKey::from_seed("test1", [9; 32]).unwrap().public();
    let v = ni.verify(&[impostor]).unwrap();
    assert_eq!(v.checks[1].result, SigResult::BadSignature);
    assert!(!v.is_valid());
    assert!(text.contains("Sig: test1:"));

    // snix `sign`: sign the unsigned input with the snix test key and verify it.
    let (text, mut ni) = extracted("sign-unsigned-input.narinfo");
    assert!(ni.sigs.is_empty());
    let sk = SecretKey::parse(
        "cache.example.com-1:cCta2MEsRNuYCgWYyeRXLyfoFpKhQJKn8gLMeXWAb7vIpRKKo/3JoxJ24OYa3DxT2JVV38KjK/1ywHWuMe2JEw==",
    )
    .unwrap();
    let pk = PublicKey::parse("cache.example.com-1:yKUSiqP9yaMSduDmGtw8U9iVVd/Coyv9csB1rjHtiRM=").unwrap();
    let sig = ni.sign(&sk).unwrap();
    let signed = ni.to_string();
    // Sig goes before CA, as Nix writes it.
    assert_eq!(signed, text.replace("CA: ", &format!("Sig: {sig}\nCA: ")));
    let back = NarInfo::parse(&signed, &StoreDir::nix()).unwrap();
    assert!(back.verify(&[pk]).unwrap().is_valid());
}
