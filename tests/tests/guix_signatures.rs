//! Guix signatures against Guix itself (../shared/guix: Guix's own Scheme code on Debian's Guile).
//!
//! - keys: one made by Guix's `genkey` (`guix archive --generate-key`) and a buildmesh node key
//!   (`buildmesh key guix-public` gives its Guix form);
//! - hundreds of narinfos in the three layouts signed by `buildmesh narinfo sign --guix` with
//!   either key are accepted by Guix's own verifier, and tampered copies (region edits, signature
//!   edits, random bit flips of the signature s-expression) get the very status Guix gives them,
//!   from `buildmesh_protocol::guix` and from `buildmesh narinfo verify --guix-key`;
//! - Guix's own signer writes the same bytes as `buildmesh narinfo sign --guix` (RFC 6979);
//! - `buildmesh narinfo verify` agrees with Guix on every Guix-signed vector of index.tsv.
//!
//! Guix's verifier runs once over a whole directory (tests/fixtures/guix/verify-dir.scm): the
//! oracle's per-file `verify` takes ~1.4 s, loading Guix's modules.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use buildmesh_protocol::guix::sexp::Sexp;
use buildmesh_protocol::guix::{GuixPublicKey, GuixSecretKey, GuixStatus, parse_keys, verify_narinfo};
use buildmesh_protocol::nixkey::PublicKey;

const BIN: &str = buildmesh_tests::buildmesh_bin!();
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn guix_dir() -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/guix")).to_path_buf();
    assert!(dir.join("oracle/guix-oracle.sh").is_file(), "the Guix oracle is not at {}", dir.display());
    dir
}

fn require_guile() {
    let ok = Command::new("guile").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "guile is not installed: run scripts/install-deps.sh (it installs guile-3.0 and guile-gcrypt)");
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run buildmesh")
}

fn ok_stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "buildmesh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn oracle(cache: &Path, args: &[&str]) -> Output {
    Command::new(guix_dir().join("oracle/guix-oracle.sh"))
        .args(args)
        .env("GUIX_ORACLE_CACHE", cache)
        .output()
        .expect("run guix-oracle.sh")
}

/// A small deterministic generator (the test must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn nix32(&mut self, len: usize) -> String {
        (0..len).map(|_| char::from(NIX32[self.below(32)])).collect()
    }
}

/// An unsigned narinfo in one of three layouts: the current `guix publish` (URL lines move after
/// the signature), the 2022 one (URL lines inside the signed region, kept there by a placeholder
/// `Signature:` line), and nar-herder's (System line, URL lines after).
fn unsigned(rng: &mut Lcg, i: usize, store: &str) -> String {
    let name = ["hello-2.12.2", "guile-3.0.9", "coreutils-9.1", "zstd-1.5.5-lib"][i % 4];
    let path = format!("{store}/{}-{name}", rng.nix32(32));
    let refs: Vec<String> = (0..rng.below(5)).map(|_| format!("{}-dep{}", rng.nix32(32), rng.below(100))).collect();
    let head = format!(
        "NarHash: sha256:{}\nNarSize: {}\nReferences: {}\n",
        rng.nix32(52),
        1000 + rng.below(1 << 24),
        refs.join(" ")
    );
    let deriver = if rng.below(4) == 0 { String::new() } else { format!("Deriver: {}-{name}.drv\n", rng.nix32(32)) };
    let base = path.rsplit('/').next().unwrap().to_string();
    let urls = format!(
        "URL: nar/zstd/{base}\nCompression: zstd\nFileSize: {}\nURL: nar/{base}\nCompression: none\nFileSize: {}\n",
        500 + rng.below(10000),
        20000 + rng.below(10000)
    );
    match i % 3 {
        0 => format!("StorePath: {path}\n{head}{deriver}{urls}"),
        1 => format!("StorePath: {path}\n{urls}{head}{deriver}Signature: placeholder\n"),
        _ => format!("StorePath: {path}\n{head}System: x86_64-linux\n{deriver}{urls}"),
    }
}

fn sig_line(text: &str) -> &str {
    text.lines().find(|l| l.starts_with("Signature:")).expect("a Signature line")
}

/// The signature's s-expression (the payload is the UTF-8 of libgcrypt's Latin-1 text).
fn sig_tree(text: &str) -> Sexp {
    let payload = STANDARD.decode(sig_line(text).rsplit(';').next().unwrap()).unwrap();
    let latin1: Vec<u8> = String::from_utf8(payload).unwrap().chars().map(|c| c as u32 as u8).collect();
    Sexp::parse(&latin1).unwrap()
}

fn with_payload(text: &str, payload: &[u8]) -> String {
    let line = sig_line(text);
    let (head, _) = line.rsplit_once(';').unwrap();
    text.replace(line, &format!("{head};{}", STANDARD.encode(payload)))
}

fn with_tree(text: &str, tree: &Sexp) -> String {
    with_payload(text, tree.advanced_string().as_bytes())
}

/// The tree with the value of the first `(name VALUE)` list replaced.
fn replace_value(tree: &Sexp, name: &str, value: &[u8]) -> Sexp {
    fn go(t: &Sexp, name: &str, value: &[u8], done: &mut bool) -> Sexp {
        match t {
            Sexp::List(items) if !*done && items.first().and_then(Sexp::as_atom) == Some(name.as_bytes()) => {
                *done = true;
                let mut items = items.clone();
                *items.last_mut().unwrap() = Sexp::Atom(value.to_vec());
                Sexp::List(items)
            }
            Sexp::List(items) => Sexp::List(items.iter().map(|i| go(i, name, value, done)).collect()),
            atom => atom.clone(),
        }
    }
    go(tree, name, value, &mut false)
}

fn without(tree: &Sexp, name: &str) -> Sexp {
    Sexp::List(tree.items().iter().filter(|i| i.head() != Some(name.as_bytes())).cloned().collect())
}

/// A tampered copy of a signed narinfo; `kind` picks the edit.
fn tamper(rng: &mut Lcg, text: &str, kind: usize, other_q: &[u8; 32], outsider_q: &[u8; 32]) -> String {
    let tree = sig_tree(text);
    let value = |name: &str| tree.find_token(name).unwrap().items().last().unwrap().as_atom().unwrap().to_vec();
    match kind {
        // The signed region.
        0 => {
            let line = text.lines().find(|l| l.starts_with("NarHash:")).unwrap();
            let mut changed = line.to_string().into_bytes();
            let at = "NarHash: sha256:".len() + rng.below(52);
            changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
            text.replace(line, std::str::from_utf8(&changed).unwrap())
        }
        1 => {
            let at = text.find("StorePath: /gnu/store/").unwrap() + "StorePath: /gnu/store/".len();
            let mut bytes = text.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).unwrap()
        }
        2 => text.replacen("References: ", "References: 00000000000000000000000000000000-extra ", 1),
        3 => {
            let line = text.lines().find(|l| l.starts_with("NarSize:")).unwrap();
            text.replace(line, &format!("{line}0"))
        }
        4 => {
            let hash = text.lines().find(|l| l.starts_with("NarHash:")).unwrap();
            let size = text.lines().find(|l| l.starts_with("NarSize:")).unwrap();
            text.replace(hash, "@@").replace(size, hash).replace("@@", size)
        }
        5 => {
            let refs = text.lines().find(|l| l.starts_with("References:")).unwrap();
            format!("{}{refs}\n", text.replace(&format!("{refs}\n"), ""))
        }
        6 => text.replace("Signature: 1;", "Signature: 2;"),
        7 => text.lines().filter(|l| !l.starts_with("Signature:")).map(|l| format!("{l}\n")).collect(),
        8 => text.replace('\n', "\r\n"),
        // The signature.
        9 => {
            let mut r = value("r");
            let i = rng.below(r.len());
            r[i] ^= 1 << rng.below(8);
            with_tree(text, &replace_value(&tree, "r", &r))
        }
        10 => {
            let mut s = value("s");
            let i = rng.below(s.len());
            s[i] ^= 1 << rng.below(8);
            with_tree(text, &replace_value(&tree, "s", &s))
        }
        11 => with_tree(text, &replace_value(&tree, "q", other_q)),
        12 => with_tree(text, &replace_value(&tree, "q", outsider_q)),
        13 => with_tree(text, &without(&tree, "data")),
        14 => with_tree(text, &without(&tree, "sig-val")),
        15 => {
            let mut h = value("hash");
            h[rng.below(32)] ^= 1;
            with_tree(text, &replace_value(&tree, "hash", &h))
        }
        16 => with_payload(text, tree.advanced_string().replace("sha256", "SHA256").as_bytes()),
        17 => with_payload(text, tree.advanced_string().replace("(ecdsa", "(ECDSA").as_bytes()),
        18 => with_payload(text, tree.advanced_string().replace("(signature", "(sig").as_bytes()),
        19 => with_payload(text, b""),
        20 => with_payload(text, b"()"),
        21 => with_payload(text, b"signature"),
        22 => {
            let canonical: String = tree.canonical().iter().map(|&b| char::from(b)).collect();
            with_payload(text, canonical.as_bytes())
        }
        // Any one bit of the signature's text, whatever it makes.
        _ => {
            let mut payload = tree.advanced_string().into_bytes();
            let i = rng.below(payload.len());
            payload[i] ^= 1 << rng.below(7);
            with_payload(text, &payload)
        }
    }
}

const TAMPER_KINDS: usize = 24;

/// Guix's verdicts on every narinfo of `dir`: name → (status, accepted).
fn guix_verdicts(cache: &Path, keys: &str, dir: &Path) -> BTreeMap<String, (String, bool)> {
    let script = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/guix/verify-dir.scm"));
    let out = Command::new("guile")
        .args(["--no-auto-compile", "-L"])
        .arg(cache.join("cfg"))
        .arg("-L")
        .arg(guix_dir().join("src"))
        .arg(script)
        .arg(keys)
        .arg(dir)
        .env("GUILE_AUTO_COMPILE", "0")
        .env("GUIX_CONFIGURATION_DIRECTORY", cache.join("etc-guix"))
        .output()
        .expect("run guile");
    assert!(out.status.success(), "verify-dir.scm: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), (cols[1].to_string(), cols[2] == "accept"))
        })
        .collect()
}

/// Our status in the oracle's words: the status, then why an otherwise valid one is refused.
fn our_words(text: &str, acl: &[GuixPublicKey]) -> (String, bool) {
    let v = verify_narinfo(text, acl);
    let mut words = v.status.as_str().to_string();
    if v.status != GuixStatus::Malformed {
        if !v.in_store {
            words.push_str(" (store-prefix-mismatch)");
        }
        // valid-narinfo? takes the first URL before anything else, and passes libgcrypt's
        // errors on: it raises for both.
        if !v.has_url || v.status == GuixStatus::VerifyError {
            words.push_str(" (valid-narinfo?-raised)");
        }
    }
    (words, v.accepted())
}

#[test]
fn guix_accepts_our_signatures_and_we_agree_on_tampered_ones() {
    require_guile();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("oracle-cache");
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();

    // A key made by Guix itself, and a node key.
    let out = oracle(&cache, &["genkey", &p("gk")]);
    assert!(out.status.success(), "genkey: {}", String::from_utf8_lossy(&out.stderr));
    ok_stdout(&["key", "generate", "node-a", "--secret-file", &p("node.key"), "--public-file", &p("node.pub")]);
    let node_guix = ok_stdout(&["key", "guix-public", "--key", &p("node.key")]);
    fs::write(p("node-guix.pub"), &node_guix).unwrap();
    let nix_public = PublicKey::parse(&fs::read_to_string(p("node.pub")).unwrap()).unwrap();
    assert_eq!(GuixPublicKey::parse_sexp(&node_guix).unwrap(), GuixPublicKey::from_ed25519(nix_public.verifying_key()));
    let gk_pub = fs::read_to_string(p("gk/signing-key.pub")).unwrap();
    let acl: Vec<GuixPublicKey> =
        [gk_pub.as_str(), node_guix.as_str()].iter().flat_map(|t| parse_keys(t).unwrap()).collect();
    let outsider = GuixSecretKey::from_ed25519_seed(&[9; 32]).public().to_bytes();

    // Signed narinfos (both keys, three layouts), refused-but-signed ones, and tampered copies.
    let check = tmp.path().join("check");
    fs::create_dir(&check).unwrap();
    let mut rng = Lcg(17);
    let mut signed = Vec::new();
    const N: usize = 150;
    for i in 0..N {
        let input = p(&format!("in-{i:03}.narinfo"));
        fs::write(&input, unsigned(&mut rng, i, "/gnu/store")).unwrap();
        let (key, host) = if i % 2 == 0 { (p("gk/signing-key.sec"), "guix-made") } else { (p("node.key"), "node-a") };
        let text = ok_stdout(&["narinfo", "sign", "--guix", "--secret-file", &key, "--host", host, &input]);
        fs::write(check.join(format!("pos-{i:03}.narinfo")), &text).unwrap();
        signed.push(text);
    }
    // Validly signed, yet refused: StorePath outside /gnu/store, and no URL line.
    for i in 0..6 {
        let input = p(&format!("nix-{i}.narinfo"));
        let mut text = unsigned(&mut rng, i * 3, "/nix/store");
        if i % 2 == 1 {
            text = text
                .replace("/nix/store/", "/gnu/store/")
                .lines()
                .filter(|l| !l.starts_with("URL:"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        fs::write(&input, text).unwrap();
        let out = ok_stdout(&["narinfo", "sign", "--guix", "--secret-file", &p("node.key"), "--host", "h", &input]);
        fs::write(check.join(format!("ref-{i}.narinfo")), out).unwrap();
    }
    for (i, text) in signed.iter().enumerate() {
        let other_q = if i % 2 == 0 { acl[1].to_bytes() } else { acl[0].to_bytes() };
        for round in 0..2 {
            let kind = (i + round * N) % (TAMPER_KINDS + 6); // the last kind (random bit) is drawn most
            let tampered = tamper(&mut rng, text, kind.min(TAMPER_KINDS - 1), &other_q, &outsider);
            fs::write(check.join(format!("neg-{i:03}-{round}.narinfo")), tampered).unwrap();
        }
    }

    // Guix's verdicts, in one Guile process, against ours.
    let keys = format!("{},{}", p("gk/signing-key.pub"), p("node-guix.pub"));
    let guix = guix_verdicts(&cache, &keys, &check);
    assert_eq!(guix.len(), fs::read_dir(&check).unwrap().count(), "Guix judged every file");
    let (mut accepted, mut refused, mut statuses) = (0, 0, BTreeMap::new());
    for (name, (guix_status, guix_accepts)) in &guix {
        let text = fs::read_to_string(check.join(name)).unwrap();
        let (ours, we_accept) = our_words(&text, &acl);
        assert_eq!(&ours, guix_status, "{name}: our status differs from Guix's\n{text}");
        assert_eq!(we_accept, *guix_accepts, "{name}");
        if name.starts_with("pos-") {
            assert!(guix_accepts, "{name}: Guix refuses our signature: {guix_status}\n{text}");
        }
        if name.starts_with("ref-") {
            assert!(!guix_accepts, "{name}");
        }
        if *guix_accepts {
            accepted += 1
        } else {
            refused += 1
        }
        *statuses.entry(guix_status.clone()).or_insert(0) += 1;
    }
    eprintln!("Guix accepted {accepted}, refused {refused}: {statuses:?}");
    assert!(accepted >= N && refused >= N, "accepted {accepted}, refused {refused}");
    for status in
        ["hash-mismatch", "invalid-signature", "unauthorized-key", "corrupt-signature", "no-parsable-signature"]
    {
        assert!(statuses.contains_key(status), "no tampered narinfo got {status}: {statuses:?}");
    }

    // The command agrees (a sample: one process per file).
    for (name, (_, guix_accepts)) in guix.iter().step_by(7) {
        let file = check.join(name);
        let out = run(&[
            "narinfo",
            "verify",
            "--guix-key",
            &p("gk/signing-key.pub"),
            "--guix-key",
            &p("node-guix.pub"),
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.success(),
            *guix_accepts,
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Guix's own signer writes what ours wrote (same RFC 6979 nonce, same rendering).
    let text = &signed[0];
    let region_end = text.find("Signature:").unwrap();
    let trailer_start = region_end + sig_line(text).len() + 1;
    fs::write(p("region"), &text[..region_end]).unwrap();
    fs::write(p("trailer"), &text[trailer_start..]).unwrap();
    let out = oracle(
        &cache,
        &["sign", &p("gk/signing-key.sec"), &p("region"), "--host", "guix-made", "--trailer", &p("trailer")],
    );
    assert!(out.status.success(), "oracle sign: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), *text, "Guix's signer and ours differ");
}

#[test]
fn our_verify_command_agrees_with_guix_on_its_vectors() {
    let vectors = guix_dir().join("vectors");
    let index = fs::read_to_string(vectors.join("index.tsv")).unwrap();
    let mut n = 0;
    for line in index.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, accept, keys, status) = (cols[0], cols[1] == "accept", cols[2], cols[3]);
        let mut args = vec!["narinfo".to_string(), "verify".to_string()];
        for key in keys.split(',') {
            let flag = if key.contains("acl") { "--acl" } else { "--guix-key" };
            args.push(flag.to_string());
            args.push(vectors.join(key).to_str().unwrap().to_string());
        }
        args.push(vectors.join(file).to_str().unwrap().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        assert_eq!(out.status.success(), accept, "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let word = status.split(' ').next().unwrap();
        assert!(stdout.contains(word), "{file}: {stdout} lacks {word}");
        n += 1;
    }
    assert!(n >= 38);
    // And the Bordeaux narinfo under the Bordeaux key.
    let out = run(&[
        "narinfo",
        "verify",
        "--guix-key",
        vectors.join("bordeaux.guix.gnu.org.pub").to_str().unwrap(),
        vectors.join("bordeaux-hello.narinfo").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
