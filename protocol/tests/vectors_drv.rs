//! Every derivation vector in ../shared/vectors (nix, snix, nix-upstream): parse, byte-exact
//! round trip, drv paths, hash modulo, output paths, fill-in, JSON, and the expected failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use buildmesh_protocol::derivation::{Derivation, DrvError, DrvSet, Output};
use buildmesh_protocol::store_path::{StoreDir, StorePath};

fn vectors() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"));
    assert!(dir.is_dir(), "vectors not found at {}", dir.display());
    dir
}

fn nix_drv_dir() -> PathBuf {
    vectors().join("nix/drv")
}

fn snix_ok() -> PathBuf {
    vectors().join("snix/snix/nix-compat/src/derivation/tests/derivation_tests/ok")
}

fn upstream() -> PathBuf {
    vectors().join("nix-upstream/src/libstore-tests/data/derivation")
}

fn drv_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no .drv in {}", dir.display());
    v
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse_file(p: &Path) -> Derivation {
    let sd = StoreDir::nix();
    let bytes = read(p);
    let drv = Derivation::parse(&bytes, &sd).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(drv.to_aterm(&sd), bytes, "round trip of {}", p.display());
    drv
}

/// Every .drv of a directory in a DrvSet (keyed by computed drv path), plus path -> file.
fn load_set(dir: &Path) -> (DrvSet, BTreeMap<PathBuf, (StorePath, String, Derivation)>) {
    let mut set = DrvSet::new(StoreDir::nix());
    let mut files = BTreeMap::new();
    for f in drv_files(dir) {
        let drv = parse_file(&f);
        let name = drv.name().unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let path = set.insert(name.clone(), drv.clone()).unwrap();
        // Hashing the file's bytes gives the path that printing the parsed derivation gives.
        let (again, again_name, from_bytes) = Derivation::parse_with_path(&read(&f), set.store_dir(), None).unwrap();
        assert_eq!((&from_bytes, &again_name, &again), (&path, &name, &drv), "{}", f.display());
        files.insert(f, (path, name, drv));
    }
    (set, files)
}

/// Clear output paths and set the env vars named after outputs to "" (the hashing form).
fn hashing_form(drv: &Derivation) -> Derivation {
    let mut d = drv.clone();
    for (name, o) in d.outputs.iter_mut() {
        o.path = None;
        if let Some(v) = d.env.get_mut(name.as_bytes()) {
            v.clear();
        }
    }
    d
}

#[test]
fn nix_drv_vectors_paths_json_and_fill_in() {
    let sd = StoreDir::nix();
    let dir = nix_drv_dir();
    let index = std::fs::read_to_string(dir.join("index.tsv")).unwrap();
    // name -> (drv path, output -> path)
    let mut expected: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for line in index.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        let e = expected.entry(f[0].to_string()).or_insert_with(|| (f[1].to_string(), BTreeMap::new()));
        assert_eq!(e.0, f[1]);
        e.1.insert(f[2].to_string(), f[3].to_string());
    }
    let (mut set, files) = load_set(&dir);
    assert_eq!(files.len(), expected.len(), "one .drv per index name");
    for (file, (drv_path, name, drv)) in &files {
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let (exp_drv, exp_outs) = expected.get(stem).unwrap_or_else(|| panic!("{stem} not in index.tsv"));
        assert_eq!(&sd.display(drv_path), exp_drv, "drv path of {stem}");
        // Output paths computed from scratch, inputs resolved from the same folder.
        let outs = set.output_paths_of(drv, name).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let got: BTreeMap<String, String> =
            outs.iter().map(|(k, v)| (k.clone(), sd.display(v.as_ref().expect("known path")))).collect();
        assert_eq!(&got, exp_outs, "output paths of {stem}");
        // The recorded form checks, and the hashing form fills in to the identical derivation.
        set.fill_in(&mut drv.clone(), name).unwrap();
        let mut blank = hashing_form(drv);
        set.fill_in(&mut blank, name).unwrap();
        assert_eq!(&blank, drv, "fill-in of {stem}");
        // JSON byte for byte (raw-bytes.json is not UTF-8 and must match too).
        let json = drv.to_show_json(drv_path, &sd);
        let want = read(&file.with_extension("json"));
        assert!(
            json == want,
            "JSON of {stem}:\n{}\n---\n{}",
            String::from_utf8_lossy(&json),
            String::from_utf8_lossy(&want)
        );
        // Sanity of validation.
        drv.validate(&sd, name).unwrap();
    }
}

#[test]
fn nix_drv_tampered_output_is_named() {
    let sd = StoreDir::nix();
    let (mut set, files) = load_set(&nix_drv_dir());
    let (_, (_, name, drv)) =
        files.iter().find(|(_, (_, _, d))| d.outputs.len() > 1 && !d.input_drvs.is_empty()).unwrap();
    let mut bad = drv.clone();
    let (out, o) = bad.outputs.iter_mut().next().unwrap();
    let recorded = o.path.clone().unwrap();
    let wrong = StorePath::from_basename("00000000000000000000000000000000-wrong").unwrap();
    o.path = Some(wrong.clone());
    let out = out.clone();
    match set.fill_in(&mut bad, name) {
        Err(DrvError::OutputPathMismatch { output, recorded: r, computed }) => {
            assert_eq!(output, out);
            assert_eq!(r, sd.display(&wrong));
            assert_eq!(computed, sd.display(&recorded));
        }
        other => panic!("{other:?}"),
    }
}

/// snix README, section 1: drv paths = file names; hash modulo constants (as an input).
#[test]
fn snix_ok_vectors() {
    let sd = StoreDir::nix();
    let (mut set, files) = load_set(&snix_ok());
    let modulo: BTreeMap<&str, &str> = [
        (
            "0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv",
            "724f3e3634fce4cbbbd3483287b8798588e80280660b9a63fd13a1bc90485b33",
        ),
        (
            "ss2p4wmxijn652haqyd7dckxwl4c7hxx-bar.drv",
            "c79aebd0ce3269393d4a1fde2cbd1d975d879b40f0bf40a48f550edc107fd5df",
        ),
        (
            "4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv",
            "250a67c0fb68da9f9297421335b7c46243d25734d6e48f17564a6e9916819556",
        ),
        (
            "ch49594n9avinrf8ip0aslidkc4lxkqv-foo.drv",
            "af030d36d63d3d7f56a71adaba26b36f5fa1f9847da5eed953ed62e18192762f",
        ),
        (
            "h32dahq0bx5rp1krcdx3a53asj21jvhk-has-multi-out.drv",
            "0a5128a6e48a07f79892cb762a7c438fffc3b5c930945be08ae4cab266bfd4df",
        ),
        (
            "9lj1lkjm2ag622mh4h9rpy6j607an8g2-structured-attrs.drv",
            "e0650317f3cc4cc4f1efe6d2cfcc216af303c9b736d35bbbd311114b7a28cc5b",
        ),
        (
            "52a9id8hx688hvlnz4d1n25ml1jdykz0-unicode.drv",
            "e085d9429825dca8dde92758cb06e8b278a79632489f98d219b857e4574ea6f9",
        ),
        (
            "292w8yzv5nn7nhdpxcs8b7vby2p27s09-nested-json.drv",
            "f1e47d2ffc8eb1ebb28231d7d6d3bffb7ece1efcec79a15a59d51a3272dcf5ed",
        ),
        (
            "m1vfixn8iprlf0v9abmlrz7mjw1xj8kp-cp1252.drv",
            "0c43cefec10732ea6a5ba03e6c84b3ccbfe2adce48a0be8c9453f591f5ad8fb0",
        ),
        (
            "x6p0hg79i3wg0kkv7699935f7rrj9jf3-latin1.drv",
            "c24c485100f8898cd5233fe4b0c72bccb0840f8a2b12f3e7a8b470b8d0fec86c",
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(files.len(), modulo.len());
    for (file, (drv_path, name, drv)) in &files {
        let base = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(drv_path.to_string(), base, "drv path = file name");
        let h = set.hash_as_input(drv_path).unwrap();
        for v in h.hashes.values() {
            assert_eq!(hex::encode(v), modulo[base], "hash modulo of {base}");
        }
        // Output paths recomputed from the hashing form equal the recorded ones.
        let mut blank = hashing_form(drv);
        set.fill_in(&mut blank, name).unwrap();
        assert_eq!(&blank, drv, "{base}");
        drv.validate(&sd, name).unwrap();
    }
    // cp1252/latin1 hold raw bytes.
    let cp = &files[&snix_ok().join("m1vfixn8iprlf0v9abmlrz7mjw1xj8kp-cp1252.drv")].2;
    assert_eq!(cp.env_var("chars"), Some(&[0xc5u8, 0xc4, 0xd6][..]));
    // structured attrs: the name comes from __json.
    let sa = &files[&snix_ok().join("9lj1lkjm2ag622mh4h9rpy6j607an8g2-structured-attrs.drv")].2;
    assert!(sa.env_var("name").is_none() && sa.has_structured_attrs());
    assert_eq!(sa.name().unwrap(), "structured-attrs");
}

#[test]
fn snix_json_siblings_match_semantically() {
    // The snix .drv.json files are the old show-derivation shape without the drv-path key
    // (except cp1252/latin1, which are not valid JSON); compare field by field.
    let sd = StoreDir::nix();
    let mut checked = 0;
    for f in drv_files(&snix_ok()) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&read(&PathBuf::from(format!("{}.json", f.display()))))
        else {
            continue;
        };
        let drv = parse_file(&f);
        let path = StorePath::from_basename(f.file_name().unwrap().to_str().unwrap()).unwrap();
        let ours: serde_json::Value = serde_json::from_slice(&drv.to_show_json(&path, &sd)).unwrap();
        let ours = &ours[sd.display(&path)];
        for k in ["outputs", "inputSrcs", "inputDrvs", "system", "builder", "args", "env"] {
            assert_eq!(ours[k], v[k], "{k} of {}", f.display());
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn snix_negative_vectors() {
    let sd = StoreDir::nix();
    let dup = read(&snix_ok().join("../duplicate.drv"));
    match Derivation::parse(&dup, &sd) {
        Err(DrvError::Duplicate { list: "env vars", key, .. }) => assert_eq!(key, "name"),
        other => panic!("{other:?}"),
    }
    let mut trailer = read(&snix_ok().join("0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv"));
    let n = trailer.len();
    trailer.push(0);
    assert_eq!(Derivation::parse(&trailer, &sd), Err(DrvError::TrailingData { offset: n, len: 1 }));
}

#[test]
fn snix_glue_placeholders() {
    let sd = StoreDir::nix();
    let f = vectors().join("snix/snix/glue/src/tests/18m7y1d025lqgrzx8ypnhjbvq23z2kda-with-placeholders.drv");
    let drv = parse_file(&f);
    let name = drv.name().unwrap();
    assert_eq!(drv.drv_path(&sd, &name).unwrap().to_string(), "18m7y1d025lqgrzx8ypnhjbvq23z2kda-with-placeholders.drv");
    let outs = drv.output_paths(&sd, &name, &mut |_: &StorePath| None).unwrap();
    assert_eq!(outs["out"].as_ref().unwrap().to_string(), "dgapb8kh5gis4w7hzfl5725sx5gam0nz-with-placeholders");
}

#[test]
fn upstream_format_vectors() {
    let sd = StoreDir::nix();
    let d = upstream();
    let simple = parse_file(&d.join("simple-derivation.drv"));
    assert!(simple.outputs.is_empty());
    assert_eq!(simple.system, b"wasm-sel4");
    assert_eq!(simple.input_drvs.values().next().unwrap().iter().collect::<Vec<_>>(), ["cat", "dog"]);
    // Rejected with the reason Nix gives.
    assert!(matches!(
        Derivation::parse(&read(&d.join("bad-version.drv")), &sd),
        Err(DrvError::UnknownVersion { version, offset: 15 }) if version == "invalid-version"
    ));
    assert!(matches!(
        Derivation::parse(&read(&d.join("bad-old-version-dyn-deps.drv")), &sd),
        Err(DrvError::DynamicDerivation { .. })
    ));
    assert!(matches!(
        Derivation::parse(&read(&d.join("dyn-dep-derivation.drv")), &sd),
        Err(DrvError::DynamicDerivation { .. })
    ));
    // bad-ca-fixed-path parses structurally but fails the content-address check.
    let bytes = read(&d.join("bad-ca-fixed-path.drv"));
    Derivation::parse(&bytes, &sd).unwrap();
    match Derivation::parse_checked(&bytes, &sd, Some("fixed")) {
        Err(DrvError::FixedPathMismatch { output, recorded, computed }) => {
            assert_eq!(output, "out");
            assert_eq!(recorded, "/nix/store/c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-fixed");
            assert_eq!(computed, "/nix/store/v0jsp4anqgiibi8jw1saj2iimfhbq1m3-fixed");
        }
        other => panic!("{other:?}"),
    }
    let unterminated = read(&d.join("../../fuzz/data/derivations/unterminated-string.drv"));
    assert!(matches!(Derivation::parse(&unterminated, &sd), Err(DrvError::UnterminatedString { offset: 15 })));
    // The anonymised benchmark inputs have unsorted inputDrvs, which Nix never writes.
    for f in ["hello.drv", "firefox.drv"] {
        match Derivation::parse(&read(&d.join(f)), &sd) {
            Err(DrvError::Unsorted { list: "input derivations", .. }) => {}
            other => panic!("{f}: {other:?}"),
        }
    }
    // Real nixpkgs drvs (fuzz seeds) round-trip.
    for f in ["hello.drv", "hello-not-structured.drv"] {
        let drv = parse_file(&d.join("../../fuzz/data/derivations").join(f));
        assert!(drv.name().unwrap().starts_with("hello-2.12"));
    }
    // ia/ca advanced attributes round-trip; the ia ones without inputs recompute their outputs
    // (ca ones are floating: no paths, env vars hold placeholders).
    for sub in ["ia", "ca"] {
        for f in drv_files(&d.join(sub)) {
            let drv = parse_file(&f);
            let name = drv.name().unwrap();
            if drv.input_drvs.is_empty() && sub == "ia" {
                let mut blank = hashing_form(&drv);
                blank.fill_in_output_paths(&sd, &name, &mut |_: &StorePath| None).unwrap();
                assert_eq!(blank, drv, "{}", f.display());
            }
        }
    }
}

#[test]
fn upstream_hash_modulo() {
    let sd = StoreDir::nix();
    let d = upstream().join("hash-modulo");
    let mut set = DrvSet::new(sd.clone());
    let mut path_of = BTreeMap::new();
    for f in drv_files(&d).into_iter().filter(|f| !f.to_str().unwrap().ends_with("-modulo.drv")) {
        let drv = parse_file(&f);
        let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
        let name = if stem.starts_with("source") {
            "source"
        } else if stem.starts_with("intermediate") {
            "intermediate"
        } else {
            "parent"
        };
        path_of.insert(stem, (set.insert(name.to_string(), drv.clone()).unwrap(), name, drv));
    }
    let p = |s: &str| path_of[s].0.to_string();
    assert_eq!(p("source-first"), "q4mzjdlh5px6977h7v5fdsk1p33yg583-source.drv");
    assert_eq!(p("source-second"), "jwmbpldsdgfjhkxk317jn55jilyfl63f-source.drv");
    assert_eq!(p("intermediate-first"), "f8g8x4m83da3b2f79iv84q2r3qlc58lr-intermediate.drv");
    assert_eq!(p("intermediate-second"), "kp6i4n4bb3hlniwqjakhlf046qpdc0gl-intermediate.drv");
    let first = set.hash_as_input(&path_of["source-first"].0).unwrap();
    assert_eq!(first, set.hash_as_input(&path_of["source-second"].0).unwrap(), "FOD hash modulo is provenance-free");
    assert_eq!(hex::encode(first.hashes["out"]), "42cfa58bf5a281911b6c9471c67cf64f70a820b033415190db3da91710c5ff2c");
    // Source outputs.
    for s in ["source-first", "source-second"] {
        let outs = set.output_paths_of(&path_of[s].2, "source").unwrap();
        assert_eq!(outs["out"].as_ref().unwrap().to_string(), "i00sflxqsj37lfmf95m8mn0grv615hpj-source");
    }
    // Masked modulo ATerms equal the golden files.
    for s in ["intermediate-first", "intermediate-second", "parent-split", "parent-joined"] {
        let (_, _, drv) = &path_of[s];
        let (aterm, deferred) = drv.modulo_aterm(&sd, true, &mut set.lookup()).unwrap();
        assert!(!deferred);
        assert_eq!(aterm, read(&d.join(format!("{s}-modulo.drv"))), "{s}");
    }
    // Both parents hash the same (merged input output sets); hashed as the files are (their
    // output is left deferred, so this equals the hash of the golden modulo ATerm).
    let a = path_of["parent-split"].2.hash_modulo(&sd, "parent", false, &mut set.lookup()).unwrap();
    let b = path_of["parent-joined"].2.hash_modulo(&sd, "parent", false, &mut set.lookup()).unwrap();
    assert_eq!(a, b);
    assert_eq!(hex::encode(a.hashes["out"]), "24457124bc7a507ce4c48b412da65a24e726aa0e60164724b2468f4783ecae1b");
    // Caveat (README 1b): the intermediate paths were computed with no output env vars.
    let (_, _, inter) = &path_of["intermediate-first"];
    let mut no_env = inter.clone();
    no_env.env.clear();
    let outs = set.output_paths_of(&no_env, "intermediate").unwrap();
    assert_eq!(outs["dev"].as_ref().unwrap().to_string(), "xgskw9kbh807ah56r4f4kxdh0fa1i0ip-intermediate-dev");
    assert_eq!(outs["out"].as_ref().unwrap().to_string(), "jlzxv2xpqj0adi22cy93573vyf9xr6fw-intermediate");
    // ... and from the finished .drv (env vars present) a check names the output and both paths.
    match set.fill_in(&mut inter.clone(), "intermediate") {
        Err(DrvError::OutputPathMismatch { output, recorded, .. }) => {
            assert_eq!(output, "dev");
            assert_eq!(recorded, "/nix/store/xgskw9kbh807ah56r4f4kxdh0fa1i0ip-intermediate-dev");
        }
        other => panic!("{other:?}"),
    }
    // parent-split keeps its output deferred in the file; filling in gives a path.
    let (_, _, parent) = &path_of["parent-split"];
    let mut filled = parent.clone();
    set.fill_in(&mut filled, "parent").unwrap();
    assert!(filled.outputs["out"].path.is_some());
    assert_eq!(
        filled.env_var("out").map(|v| v.to_vec()),
        Some(sd.display(filled.outputs["out"].path.as_ref().unwrap()).into_bytes())
    );
}

/// nix-upstream `invariants/*.json` (new JSON format, version 4): the fill-in cases.
#[test]
fn upstream_invariants_fill_in() {
    let sd = StoreDir::nix();
    let d = upstream().join("invariants");
    let load = |f: &str| -> (String, Derivation) {
        let v: serde_json::Value = serde_json::from_slice(&read(&d.join(f))).unwrap();
        from_v4_json(&v, &sd)
    };
    let mut none = |_: &StorePath| None;
    for case in ["filled-in-deferred-empty-env-var", "filled-in-deferred-no-env-var"] {
        let (name, mut pre) = load(&format!("{case}-pre.json"));
        let (_, post) = load(&format!("{case}-post.json"));
        pre.fill_in_output_paths(&sd, &name, &mut none).unwrap();
        assert_eq!(pre, post, "{case}");
    }
    let (name, done) = load("filled-in-idempotent.json");
    let mut again = done.clone();
    again.fill_in_output_paths(&sd, &name, &mut none).unwrap();
    assert_eq!(again, done);
    let (name, mut bad) = load("bad-path.json");
    assert!(matches!(bad.fill_in_output_paths(&sd, &name, &mut none), Err(DrvError::OutputPathMismatch { .. })));
}

/// Just enough of the version-4 JSON to read the invariants fixtures (input-addressed/deferred
/// outputs, no inputs).
fn from_v4_json(v: &serde_json::Value, sd: &StoreDir) -> (String, Derivation) {
    let mut drv = Derivation::default();
    for (name, o) in v["outputs"].as_object().unwrap() {
        let path = o.get("path").map(|p| StorePath::from_basename(p.as_str().unwrap()).unwrap());
        drv.outputs.insert(name.clone(), Output::input_addressed(path));
    }
    assert!(v["inputs"]["drvs"].as_object().is_none_or(|m| m.is_empty()));
    for s in v["inputs"]["srcs"].as_array().into_iter().flatten() {
        drv.input_srcs.insert(sd.parse_path(&format!("{sd}/{}", s.as_str().unwrap())).unwrap());
    }
    drv.system = v["system"].as_str().unwrap().as_bytes().to_vec();
    drv.builder = v["builder"].as_str().unwrap().as_bytes().to_vec();
    drv.args = v["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().as_bytes().to_vec()).collect();
    for (k, val) in v["env"].as_object().unwrap() {
        drv.env.insert(k.as_bytes().to_vec(), val.as_str().unwrap().as_bytes().to_vec());
    }
    (v["name"].as_str().unwrap().to_string(), drv)
}

#[test]
fn guix_store_dir_is_a_parameter() {
    // The same derivation under /gnu/store: parse, print and compute with that store dir.
    let nix = StoreDir::nix();
    let gnu = StoreDir::guix();
    let bytes = read(&snix_ok().join("4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv"));
    let text = String::from_utf8(bytes).unwrap().replace("/nix/store/", "/gnu/store/");
    let drv = Derivation::parse(text.as_bytes(), &gnu).unwrap();
    assert_eq!(drv.to_aterm(&gnu), text.as_bytes());
    assert!(Derivation::parse(text.as_bytes(), &nix).is_err());
    let p = drv.drv_path(&gnu, "foo").unwrap();
    assert_ne!(p.to_string(), "4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv");
}
