//! `buildmesh drv show` and `buildmesh drv bench`, run as the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_buildmesh-under-test")
}

fn vectors() -> PathBuf {
    buildmesh_tests::vectors_dir()
}

fn nix_drv() -> PathBuf {
    vectors().join("nix/drv")
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run buildmesh")
}

fn show(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["drv", "show", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

fn drv_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .collect();
    v.sort();
    v
}

/// Vector names (from `drv/index.tsv`) with the number of input derivations of each, for the
/// derivations whose `.drv` and JSON are UTF-8 (choosing by structure, not by name).
fn vectors_by_inputs() -> Vec<(usize, String)> {
    use buildmesh_protocol::derivation::Derivation;
    use buildmesh_protocol::store_path::StoreDir;
    let index = std::fs::read_to_string(nix_drv().join("index.tsv")).unwrap();
    let names: std::collections::BTreeSet<String> =
        index.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split('\t').next()).map(String::from).collect();
    let mut out = Vec::new();
    for name in names {
        let drv = std::fs::read(nix_drv().join(format!("{name}.drv"))).unwrap();
        let json = std::fs::read(nix_drv().join(format!("{name}.json"))).unwrap();
        if std::str::from_utf8(&drv).is_err() || std::str::from_utf8(&json).is_err() {
            continue;
        }
        let parsed = Derivation::parse(&drv, &StoreDir::nix()).unwrap();
        out.push((parsed.input_drvs.len(), name));
    }
    out
}

/// The derivation with the most input derivations.
fn drv_with_most_inputs() -> String {
    vectors_by_inputs().into_iter().max_by_key(|(n, name)| (*n, std::cmp::Reverse(name.clone()))).unwrap().1
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn show_equals_nix_json_for_every_vector() {
    let files = drv_files(&nix_drv());
    assert!(files.len() >= 50);
    for f in files {
        let o = show(&f, &[]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        let want = std::fs::read(f.with_extension("json")).unwrap();
        assert!(o.stdout == want, "{}: JSON differs from nix show-derivation's", f.display());
    }
}

/// Replace `from` by `to` in the outputs tuple (the first occurrence) of a .drv.
fn replace_first(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(s.contains(from));
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn tampered_output_path_fails_naming_both_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = std::fs::read(nix_drv().join(format!("{}.drv", drv_with_most_inputs()))).unwrap();
    let s = String::from_utf8(orig.clone()).unwrap();
    // The recorded out path (first tuple), and a different valid one.
    let start = s.find("\"/nix/store/").unwrap() + 1;
    let recorded = &s[start..start + s[start..].find('"').unwrap()];
    let forged = format!("/nix/store/{}{}", "0".repeat(32), &recorded[11 + 32..]);
    let file = tmp.path().join("x.drv");
    std::fs::write(&file, replace_first(&orig, recorded, &forged)).unwrap();
    let o = show(&file, &["--inputs", nix_drv().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("output \"") && err.contains(&forged) && err.contains(recorded), "{err}");
}

#[test]
fn emptied_output_paths_are_filled_in() {
    let tmp = tempfile::tempdir().unwrap();
    for (_, name) in vectors_by_inputs() {
        let orig = std::fs::read(nix_drv().join(format!("{name}.drv"))).unwrap();
        let want = std::fs::read(nix_drv().join(format!("{name}.json"))).unwrap();
        // Blank every recorded output path (tuple and env var) the way the hashing form has them.
        let index = std::fs::read_to_string(nix_drv().join("index.tsv")).unwrap();
        let mut blank = orig.clone();
        for line in index.lines().filter(|l| l.starts_with(&format!("{name}\t"))) {
            let out_path = line.split('\t').nth(3).unwrap();
            let s = String::from_utf8(blank).unwrap();
            blank = s.replace(&format!("\"{out_path}\""), "\"\"").into_bytes();
        }
        assert_ne!(blank, orig);
        let file = tmp.path().join(format!("{name}.drv"));
        std::fs::write(&file, &blank).unwrap();
        let o = show(&file, &["--inputs", nix_drv().to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(o.stdout == want, "{name}: {}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn inputs_are_found_whatever_their_file_names() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    for (i, f) in drv_files(&nix_drv()).iter().enumerate() {
        std::fs::copy(f, inputs.join(format!("input-{i}.drv"))).unwrap();
    }
    std::fs::write(inputs.join("garbage.drv"), b"not a derivation").unwrap();
    let file = tmp.path().join("bottom.drv");
    let pick = drv_with_most_inputs();
    std::fs::copy(nix_drv().join(format!("{pick}.drv")), &file).unwrap();
    // Without --inputs the file's own directory has no inputs: a clear error.
    let o = show(&file, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bottom.drv") && err.contains("not found") && err.contains(".drv"), "{err}");
    // With --inputs: same JSON as Nix.
    let o = show(&file, &["--inputs", inputs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, std::fs::read(nix_drv().join(format!("{pick}.json"))).unwrap());
}

#[test]
fn bad_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.drv");
    std::fs::write(&f, b"Derive([(\"out\",\"/nix/store/x\",\"\",\"\")],[],[],\"s\",\"b\",[],[])").unwrap();
    let o = show(&f, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bad.drv") && err.contains("at byte 15"), "{err}");
    let o = show(&tmp.path().join("missing.drv"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("missing.drv"));
    let upstream = vectors().join("nix-upstream/src/libstore-tests/data/derivation/bad-ca-fixed-path.drv");
    let o = show(&upstream, &["--name", "fixed"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-fixed")
            && err.contains("v0jsp4anqgiibi8jw1saj2iimfhbq1m3-fixed")
    );
}

#[test]
fn snix_vectors_show_their_file_name_as_drv_path() {
    let dir = vectors().join("snix/snix/nix-compat/src/derivation/tests/derivation_tests/ok");
    for f in drv_files(&dir) {
        let o = show(&f, &[]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        let head = format!("{{\n  \"/nix/store/{}\": {{", f.file_name().unwrap().to_str().unwrap());
        assert!(o.stdout.starts_with(head.as_bytes()), "{}", f.display());
    }
}

#[test]
fn bench_prints_a_table() {
    let o = run(&["drv", "bench", "--count", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("parse + drv path + output paths") && out.contains("drv/s"), "{out}");
    assert!(!out.contains("failed"), "{out}");
}

/// Interop with a real Nix 2.8: `nix-instantiate` writes fresh derivations (multi-output,
/// a fixed-output input, an input's non-default output, control characters in env) into a
/// private store; our `drv show` on its .drv must equal `nix show-derivation` byte for byte.
#[test]
fn interop_with_real_nix() {
    for tool in ["nix-instantiate", "nix"] {
        let ok = Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "`{tool}` is not installed (Debian nix-bin); the test command installs it");
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let expr = tmp.path().join("t.nix");
    std::fs::write(
        &expr,
        r#"let
  dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo > $out"]; outputs = ["out" "dev"]; };
  fod = derivation { name = "fod"; system = "x86_64-linux"; builder = "/bin/sh"; outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"; };
  flat = derivation { name = "flat.txt"; system = "x86_64-linux"; builder = "/bin/sh"; outputHashAlgo = "sha1"; outputHash = "0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33"; };
in derivation {
  name = "interop"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" "tab\t \"q\" \\ end\n" ];
  weird = builtins.fromJSON "\"\\u0001\\b\\f\\u001f\\u007f é ✓\"";
  src = builtins.toFile "note.txt" "hello";
  inherit dep fod flat; devpath = dep.dev;
  outputs = [ "out" "bin" ];
}
"#,
    )
    .unwrap();
    let o = Command::new("nix-instantiate")
        .args(["--store", root.to_str().unwrap(), expr.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "nix-instantiate: {}", stderr(&o));
    let drv_path = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let store = root.join("nix/store");
    let o = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "show-derivation", "--store", root.to_str().unwrap()])
        .arg(&drv_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "nix show-derivation: {}", stderr(&o));
    let nix_json = o.stdout;
    let file = store.join(drv_path.strip_prefix("/nix/store/").unwrap());
    let ours = show(&file, &[]);
    assert!(ours.status.success(), "{}", stderr(&ours));
    assert!(
        ours.stdout == nix_json,
        "ours:\n{}\nnix:\n{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&nix_json)
    );
    // Every .drv Nix wrote computes to its own file name.
    for f in drv_files(&store) {
        let o = show(&f, &[]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        let head = format!("{{\n  \"/nix/store/{}\"", f.file_name().unwrap().to_str().unwrap());
        assert!(o.stdout.starts_with(head.as_bytes()), "{}", f.display());
    }
}
