//! Unit and property tests of the derivation module (the vector tests are in
//! `protocol/tests/vectors_drv.rs`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::hash::{HashAlgo, NixHash};
use crate::store_path::{StoreDir, StorePath};

fn sd() -> StoreDir {
    StoreDir::nix()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_basename(base).unwrap()
}

const BAR: &str = r#"Derive([("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar","r:sha256","08813cbee9903c62be4c5027726a418a300da4500b2d369d3af9286f4815ceba")],[],[],":",":",[],[("builder",":"),("name","bar"),("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar"),("outputHash","08813cbee9903c62be4c5027726a418a300da4500b2d369d3af9286f4815ceba"),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("system",":")])"#;

fn parse(s: &[u8]) -> Result<Derivation, DrvError> {
    Derivation::parse(s, &sd())
}

fn minimal(env: &str) -> String {
    format!(r#"Derive([("out","","","")],[],[],"x86_64-linux","/bin/sh",[],[{env}])"#)
}

#[test]
fn bar_worked_vector_from_formats_md() {
    let bar = parse(BAR.as_bytes()).unwrap();
    assert_eq!(bar.to_aterm(&sd()), BAR.as_bytes());
    assert!(bar.is_fixed_output());
    assert_eq!(bar.drv_path(&sd(), "bar").unwrap().to_string(), "0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv");
    let h = bar.hash_modulo(&sd(), "bar", false, &mut |_: &StorePath| None).unwrap();
    assert_eq!(hex::encode(h.hashes["out"]), "724f3e3634fce4cbbbd3483287b8798588e80280660b9a63fd13a1bc90485b33");
    // foo depends on bar; its masked ATerm is quoted in FORMATS.md.
    let foo = r#"Derive([("out","","","")],[("/nix/store/0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv",["out"])],[],":",":",[],[("bar","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar"),("builder",":"),("name","foo"),("out",""),("system",":")])"#;
    let mut foo = parse(foo.as_bytes()).unwrap();
    let mut lookup = |p: &StorePath| (p.to_string() == "0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv").then(|| h.clone());
    let (masked, deferred) = foo.modulo_aterm(&sd(), true, &mut lookup).unwrap();
    assert!(!deferred);
    assert_eq!(
        String::from_utf8(masked).unwrap(),
        r#"Derive([("out","","","")],[("724f3e3634fce4cbbbd3483287b8798588e80280660b9a63fd13a1bc90485b33",["out"])],[],":",":",[],[("bar","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar"),("builder",":"),("name","foo"),("out",""),("system",":")])"#
    );
    foo.fill_in_output_paths(&sd(), "foo", &mut lookup).unwrap();
    let out = foo.outputs["out"].path.clone().unwrap();
    assert_eq!(out.to_string(), "5vyvcwah9l9kf07d52rcgdk70g2f4y13-foo");
    assert_eq!(foo.env_var("out"), Some(sd().display(&out).as_bytes()));
    assert_eq!(foo.drv_path(&sd(), "foo").unwrap().to_string(), "4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv");
    // Without the input: a clear error.
    assert_eq!(
        foo.output_paths(&sd(), "foo", &mut |_: &StorePath| None),
        Err(DrvError::MissingInput { path: "/nix/store/0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv".into() })
    );
}

#[test]
fn fixed_output_path_kinds() {
    let sha1 = NixHash::parse("sha1:0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33", None).unwrap();
    let p = paths::fixed_output_path(&sd(), "bar", "out", CaMethod::Nar, &sha1).unwrap();
    assert_eq!(p.to_string(), "mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar");
    // text: is a text path without references: toFile "foo" "bar".
    let h = NixHash::sha256_of(b"bar");
    let p = paths::fixed_output_path(&sd(), "foo", "out", CaMethod::Text, &h).unwrap();
    assert_eq!(p.to_string(), "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
    assert!(matches!(
        paths::fixed_output_path(&sd(), "foo", "out", CaMethod::Text, &sha1),
        Err(DrvError::BadContentAddress { .. })
    ));
    let md5 = NixHash::new(HashAlgo::Md5, vec![0; 16]).unwrap();
    assert!(paths::fixed_output_path(&sd(), "foo", "out", CaMethod::Git, &md5).is_err());
    assert!(paths::fixed_output_path(&sd(), "foo", "out", CaMethod::Git, &sha1).is_ok());
}

#[test]
fn escaping_is_nix_print_string() {
    let all: Vec<u8> = (0..=255).collect();
    let mut d = Derivation { system: b"x".to_vec(), builder: all.clone(), ..Default::default() };
    d.args.push(all.clone());
    d.env.insert(all.clone(), all.clone());
    let aterm = d.to_aterm(&sd());
    assert_eq!(parse(&aterm).unwrap(), d);
    let mut escaped = Vec::new();
    aterm::push_escaped(&mut escaped, b"a\"b\\c\nd\re\tf\x00\x7f\xff");
    assert_eq!(escaped, b"\"a\\\"b\\\\c\\nd\\re\\tf\x00\x7f\xff\"");
}

#[test]
fn json_escaping_is_nix_2_8() {
    let mut out = Vec::new();
    json::push_json_string(&mut out, b"\"\\\n\r\t\x01\x08\x0c\x1f\x7f\xc3\xa9\xff/");
    assert_eq!(out, b"\"\\\"\\\\\\n\\r\\t\\u0001\\u0008\\u000c\\u001f\x7f\xc3\xa9\xff/\"");
}

#[test]
fn rejections_say_what_and_where() {
    let cases: Vec<(String, DrvError)> = vec![
        (
            minimal("").replace(")]", ")]x"),
            DrvError::Syntax { offset: 25, expected: "`,`".into(), found: "'x'".into() },
        ),
        (format!("{} ", minimal("")), DrvError::TrailingData { offset: 63, len: 1 }),
        ("Derive([(\"out".into(), DrvError::UnterminatedString { offset: 9 }),
        ("Derive([(\"out\"]".into(), DrvError::Syntax { offset: 14, expected: "`,`".into(), found: "']'".into() }),
        ("Derive([],[],[],\"s\",\"b\\".into(), DrvError::UnterminatedString { offset: 20 }),
        (
            "Derive([(\"out\\\"".into(),
            DrvError::NonCanonical {
                offset: 13,
                reason: "escape sequence in a field that Nix writes unescaped".into(),
            },
        ),
        (
            "".into(),
            DrvError::Syntax {
                offset: 0,
                expected: "`Derive(` or `DrvWithVersion(`".into(),
                found: "end of input".into(),
            },
        ),
        (
            "DrvWithVersion(\"xp-dyn-drv\",[],[],[],\"s\",\"b\",[],[])".into(),
            DrvError::DynamicDerivation { offset: 15 },
        ),
        (
            "DrvWithVersion(\"2\",[],[],[],\"s\",\"b\",[],[])".into(),
            DrvError::UnknownVersion { offset: 15, version: "2".into() },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse(input.as_bytes()), Err(want), "{input}");
    }
}

#[test]
fn non_canonical_and_unsorted_input_is_rejected() {
    let bad = [
        minimal(r#"("a","\q")"#),                              // escape Nix never writes
        minimal("(\"a\",\"x\ny\")"),                           // raw newline
        minimal(r#"("b",""),("a","")"#),                      // unsorted env
        minimal(r#"("a",""),("a","")"#),                      // duplicate env
        minimal("").replace("\"x86_64-linux\"", r#""x\n""#), // escape in system
        minimal("").replace(r#"("out","","","")"#, &r#"("out","","","")"#.repeat(2).replace(")(", "),(")),
        minimal("").replace(r#"("out","","","")"#, r#"("b","","",""),("a","","","")"#),
        minimal("").replace(r#"("out","","","")"#, r#"("out","","sha256","AB")"#),
        minimal("").replace(r#"("out","","","")"#, r#"("out","","sha256","ab")"#),
        minimal("").replace(r#"("out","","","")"#, r#"("out","","sha257","")"#),
        minimal("").replace(r#"("out","","","")"#, r#"("out","","","ab")"#),
        minimal("").replace(r#"("out","","","")"#, r#"("o ut","","","")"#),
        minimal("").replace(
            r#"("out","","","")"#,
            r#"("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar","r:sha256","")"#,
        ),
        minimal("").replace(
            r#"("out","","","")"#,
            r#"("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar","r:sha256","impure")"#,
        ),
        minimal("").replace(r#"[],[],"x86"#, r#"[],["/gnu/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar"],"x86"#),
        minimal("").replace(
            r#"[],[],"x86"#,
            r#"[],["/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-b","/nix/store/0q0pg5zpfmznxscq3avycvf9xdvx50n3-a"],"x86"#,
        ),
        minimal("").replace(
            r#"[],[],"x86"#,
            r#"[("/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-b.drv",["out","out"])],[],"x86"#,
        ),
    ];
    for b in bad {
        let e = parse(b.as_bytes()).expect_err(&b);
        assert!(e.to_string().starts_with("at byte "), "{b}: {e}");
    }
    let big = vec![b' '; MAX_DRV_SIZE + 1];
    assert_eq!(parse(&big), Err(DrvError::TooLarge { len: MAX_DRV_SIZE + 1, max: MAX_DRV_SIZE }));
}

#[test]
fn output_kinds_parse_and_print() {
    let outs = r#"("a","","r:sha256",""),("b","","r:sha256","impure"),("c","","",""),("d","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar","",""),("e","","text:sha256","08813cbee9903c62be4c5027726a418a300da4500b2d369d3af9286f4815ceba"),("f","","git:sha1","0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33")"#;
    let s = minimal("").replace(r#"("out","","","")"#, outs);
    let d = parse(s.as_bytes()).unwrap();
    let kinds: Vec<OutputKind> = d.outputs.values().map(Output::kind).collect();
    use OutputKind::*;
    assert_eq!(kinds, [Floating, Impure, Deferred, InputAddressed, Fixed, Fixed]);
    assert_eq!(d.to_aterm(&sd()), s.as_bytes());
    // Mixed kinds cannot have paths computed.
    assert!(matches!(d.output_paths(&sd(), "x", &mut |_: &StorePath| None), Err(DrvError::BadContentAddress { .. })));
}

#[test]
fn floating_and_impure_are_deferred() {
    let s = minimal(r#"("out","")"#).replace(r#"("out","","","")"#, r#"("out","","r:sha256","")"#);
    let d = parse(s.as_bytes()).unwrap();
    let h = d.hash_modulo(&sd(), "x", false, &mut |_: &StorePath| None).unwrap();
    assert!(h.deferred);
    assert_eq!(d.output_paths(&sd(), "x", &mut |_: &StorePath| None).unwrap()["out"], None);
    let s = minimal("").replace(r#"("out","","","")"#, r#"("out","","r:sha256","impure")"#);
    let d = parse(s.as_bytes()).unwrap();
    let h = d.hash_modulo(&sd(), "x", false, &mut |_: &StorePath| None).unwrap();
    assert!(h.deferred);
    // A dependent of a deferred input stays deferred, and a recorded path is an error.
    let mut dep = parse(
        minimal("")
            .replace(r#"[],[],"x86"#, r#"[("/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-b.drv",["out"])],[],"x86"#)
            .as_bytes(),
    )
    .unwrap();
    let mut lookup = |_: &StorePath| Some(h.clone());
    dep.fill_in_output_paths(&sd(), "dep", &mut lookup).unwrap();
    assert_eq!(dep.outputs["out"].path, None);
    dep.outputs.get_mut("out").unwrap().path = Some(sp("4q0pg5zpfmznxscq3avycvf9xdvx50n3-dep"));
    assert!(matches!(dep.fill_in_output_paths(&sd(), "dep", &mut lookup), Err(DrvError::ShouldBeDeferred { .. })));
}

#[test]
fn names() {
    let d = parse(minimal(r#"("name","hello-2.12")"#).as_bytes()).unwrap();
    assert_eq!(d.name().unwrap(), "hello-2.12");
    let d = parse(minimal(r#"("__json","{\"name\":\"sa\",\"x\":1}")"#).as_bytes()).unwrap();
    assert_eq!(d.name().unwrap(), "sa");
    let d = parse(minimal("").as_bytes()).unwrap();
    assert_eq!(d.name(), Err(DrvError::NoName));
    let d = parse(minimal(r#"("name","a b")"#).as_bytes()).unwrap();
    assert!(matches!(d.name(), Err(DrvError::BadName { .. })));
    assert!(d.drv_path(&sd(), &"x".repeat(208)).is_err());
    assert!(d.drv_path(&sd(), &"x".repeat(207)).is_ok());
}

#[test]
fn env_mismatch_is_named() {
    let mut d = parse(minimal(r#"("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar")"#).as_bytes()).unwrap();
    match d.fill_in_output_paths(&sd(), "x", &mut |_: &StorePath| None) {
        Err(DrvError::EnvMismatch { output, recorded, computed }) => {
            assert_eq!(output, "out");
            assert_eq!(recorded, "/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar");
            assert!(computed.ends_with("-x"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn drv_set_names_the_failing_input() {
    let mut set = DrvSet::new(sd());
    // An input whose own input is missing.
    let inner = parse(
        minimal(r#"("name","mid")"#)
            .replace(r#"[],[],"x86"#, r#"[("/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-gone.drv",["out"])],[],"x86"#)
            .as_bytes(),
    )
    .unwrap();
    let mid = set.insert("mid".into(), inner).unwrap();
    let mut top = parse(minimal(r#"("name","top")"#).as_bytes()).unwrap();
    top.input_drvs.insert(mid.clone(), BTreeSet::from(["out".to_string()]));
    match set.fill_in(&mut top, "top") {
        Err(DrvError::InInput { input, error }) => {
            assert_eq!(input, sd().display(&mid));
            assert!(matches!(*error, DrvError::MissingInput { ref path } if path.ends_with("-gone.drv")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(set.len(), 1);
}

// ---- property tests -------------------------------------------------------------------------

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-zA-Z0-9+._?=-]{0,12}"
}

fn arb_path(suffix: &'static str) -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), arb_name()).prop_map(move |(d, n)| StorePath::new(d, &format!("{n}{suffix}")).unwrap())
}

fn arb_hash() -> impl Strategy<Value = NixHash> {
    (prop::sample::select(HashAlgo::ALL.to_vec()), any::<[u8; 64]>())
        .prop_map(|(a, d)| NixHash::new(a, d[..a.digest_len()].to_vec()).unwrap())
}

fn arb_method() -> impl Strategy<Value = CaMethod> {
    prop::sample::select(vec![CaMethod::Flat, CaMethod::Nar, CaMethod::Text, CaMethod::Git])
}

fn arb_output() -> impl Strategy<Value = Output> {
    let algo = prop::sample::select(HashAlgo::ALL.to_vec());
    prop_oneof![
        prop::option::of(arb_path("")).prop_map(Output::input_addressed),
        (prop::option::of(arb_path("")), arb_method(), arb_hash())
            .prop_map(|(path, method, hash)| Output { path, hash: OutputHash::Fixed { method, hash } }),
        (arb_method(), algo.clone())
            .prop_map(|(method, algo)| Output { path: None, hash: OutputHash::Floating { method, algo } }),
        (arb_method(), algo)
            .prop_map(|(method, algo)| Output { path: None, hash: OutputHash::Impure { method, algo } }),
    ]
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..24), "[ -~\n\r\t\"\\\\]{0,24}".prop_map(String::into_bytes)]
}

prop_compose! {
    pub(super) fn arb_drv()(
        outputs in prop::collection::btree_map(arb_name(), arb_output(), 0..4),
        input_drvs in prop::collection::btree_map(arb_path(".drv"), prop::collection::btree_set(arb_name(), 1..3), 0..4),
        input_srcs in prop::collection::btree_set(arb_path(""), 0..4),
        system in prop::collection::vec(any::<u8>().prop_filter("unescaped", |b| *b != b'"' && *b != b'\\'), 0..16),
        builder in arb_bytes(),
        args in prop::collection::vec(arb_bytes(), 0..4),
        env in prop::collection::btree_map(arb_bytes(), arb_bytes(), 0..6),
    ) -> Derivation {
        Derivation { outputs, input_drvs, input_srcs, system, builder, args, env }
    }
}

proptest! {
    #[test]
    fn parse_print_round_trip(d in arb_drv()) {
        let sd = StoreDir::nix();
        let aterm = d.to_aterm(&sd);
        let back = Derivation::parse(&aterm, &sd).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(back.to_aterm(&sd), aterm);
        let gnu = StoreDir::guix();
        prop_assert_eq!(Derivation::parse(&d.to_aterm(&gnu), &gnu).unwrap(), d);
    }

    #[test]
    fn mutated_aterm_parses_only_canonically(d in arb_drv(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let sd = StoreDir::nix();
        let mut aterm = d.to_aterm(&sd);
        let i = at.index(aterm.len());
        if cut { aterm.truncate(i) } else { aterm[i] = byte }
        if let Ok(back) = Derivation::parse(&aterm, &sd) {
            prop_assert_eq!(back.to_aterm(&sd), aterm);
        }
    }

    #[test]
    fn json_is_valid_json_for_utf8_derivations(d in arb_drv()) {
        let sd = StoreDir::nix();
        let utf8 = std::str::from_utf8(&d.builder).is_ok()
            && std::str::from_utf8(&d.system).is_ok()
            && d.args.iter().all(|a| std::str::from_utf8(a).is_ok())
            && d.env.iter().all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok());
        let path = sp("4q0pg5zpfmznxscq3avycvf9xdvx50n3-x.drv");
        let json = d.to_show_json(&path, &sd);
        if utf8 {
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let body = &v["/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-x.drv"];
            prop_assert_eq!(body["builder"].as_str().unwrap().as_bytes(), &d.builder[..]);
            prop_assert_eq!(body["args"].as_array().unwrap().len(), d.args.len());
            let env: BTreeMap<Vec<u8>, Vec<u8>> = body["env"].as_object().unwrap().iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_str().unwrap().as_bytes().to_vec())).collect();
            prop_assert_eq!(env, d.env.clone());
        }
    }
}
