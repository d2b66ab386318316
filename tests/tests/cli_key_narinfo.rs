//! `buildmesh key` and `buildmesh narinfo` run as a user would, on the vectors.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::nixkey::{PublicKey, SecretKey};
use buildmesh_protocol::store_path::StoreDir;

const BIN: &str = env!("CARGO_BIN_EXE_buildmesh-under-test");
const CACHE_NIXOS_ORG: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

fn vectors() -> PathBuf {
    buildmesh_tests::vectors_dir()
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn buildmesh");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vector_narinfos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(vectors().join("nix/narinfo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn strip_sigs(s: &str) -> String {
    s.lines().filter(|l| !l.starts_with("Sig: ")).map(|l| format!("{l}\n")).collect()
}

#[test]
fn key_generate_writes_nix_compatible_files() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("sk"), dir.path().join("pk"));
    let args = [
        "key",
        "generate",
        "mesh-test-1",
        "--secret-file",
        sk.to_str().unwrap(),
        "--public-file",
        pk.to_str().unwrap(),
    ];
    let out = run(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let secret_text = fs::read_to_string(&sk).unwrap();
    let public_text = fs::read_to_string(&pk).unwrap();
    // Like nix-store --generate-binary-cache-key: no trailing newline, 0600 secret, 0644 public.
    assert!(!secret_text.ends_with('\n') && !public_text.ends_with('\n'));
    assert_eq!(fs::metadata(&sk).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&pk).unwrap().permissions().mode() & 0o777, 0o644);
    let secret = SecretKey::parse(&secret_text).unwrap();
    assert_eq!(secret.name(), "mesh-test-1");
    assert_eq!(secret.public(), PublicKey::parse(&public_text).unwrap());
    assert_eq!(text(&out.stdout).trim_end(), public_text);

    // Refuses to overwrite, and leaves the files alone.
    let out = run(&args, None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&sk).unwrap(), secret_text);

    // --force makes a new, different key (fresh OS randomness) and fixes a loose mode.
    fs::set_permissions(&sk, fs::Permissions::from_mode(0o644)).unwrap();
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run(&forced, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret2 = fs::read_to_string(&sk).unwrap();
    assert_ne!(secret2, secret_text);
    assert_eq!(fs::metadata(&sk).unwrap().permissions().mode() & 0o777, 0o600);

    // `key public` prints the public half.
    let out = run(&["key", "public", "--secret-file", sk.to_str().unwrap()], None);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim_end(), fs::read_to_string(&pk).unwrap());

    // A bad name is refused.
    let bad = dir.path().join("bad");
    let out =
        run(&["key", "generate", "has space", "--secret-file", bad.to_str().unwrap(), "--public-file", "x"], None);
    assert!(!out.status.success());
    assert!(!bad.exists());
}

#[test]
fn narinfo_sign_reproduces_nix_signatures() {
    // Nix signed the vector cache with keys/secret-key; re-signing the unsigned narinfos with the
    // same key must give Nix's files byte for byte (Ed25519 is deterministic).
    let sk = vectors().join("nix/keys/secret-key");
    let dir = tempfile::tempdir().unwrap();
    for path in vector_narinfos() {
        let original = fs::read_to_string(&path).unwrap();
        let unsigned = dir.path().join("unsigned.narinfo");
        fs::write(&unsigned, strip_sigs(&original)).unwrap();
        let out = run(&["narinfo", "sign", "--secret-file", sk.to_str().unwrap(), unsigned.to_str().unwrap()], None);
        assert!(out.status.success(), "{}: {}", path.display(), text(&out.stderr));
        assert_eq!(text(&out.stdout), original, "{}", path.display());
    }
    // Standard input works too.
    let path = &vector_narinfos()[0];
    let original = fs::read_to_string(path).unwrap();
    let out =
        run(&["narinfo", "sign", "--secret-file", sk.to_str().unwrap(), "-"], Some(strip_sigs(&original).as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), original);
}

#[test]
fn narinfo_verify_exit_codes_and_reasons() {
    let public = fs::read_to_string(vectors().join("nix/keys/public-key")).unwrap();
    for path in vector_narinfos() {
        let out = run(&["narinfo", "verify", "--trusted-key", &public, path.to_str().unwrap()], None);
        assert!(out.status.success(), "{}: {}{}", path.display(), text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("vectors-public-1: valid"));
    }
    let path = vector_narinfos()[0].clone();
    let original = fs::read_to_string(&path).unwrap();

    // Unknown key.
    let out = run(&["narinfo", "verify", "--trusted-key", CACHE_NIXOS_ORG, path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("Sig vectors-public-1: unknown key"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("no valid signature by a trusted key"), "{}", text(&out.stderr));

    // Bad signature: a signed field changed.
    let ni = NarInfo::parse(&original, &StoreDir::nix()).unwrap();
    let tampered = original.replace(&format!("NarSize: {}\n", ni.nar_size), &format!("NarSize: {}\n", ni.nar_size + 1));
    assert_ne!(tampered, original);
    let out = run(&["narinfo", "verify", "--trusted-key", &public, "-"], Some(tampered.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("Sig vectors-public-1: bad signature"), "{}", text(&out.stdout));

    // An unsigned field may change.
    let moved = original.replace("URL: nar/", "URL: elsewhere/nar/");
    let out = run(&["narinfo", "verify", "--trusted-key", &public, "-"], Some(moved.as_bytes()));
    assert!(out.status.success());

    // No Sig.
    let out = run(&["narinfo", "verify", "--trusted-key", &public, "-"], Some(strip_sigs(&original).as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Sig line"), "{}", text(&out.stderr));

    // Malformed narinfo: the error names the line and field.
    let broken = original.replace("NarSize: ", "NarSize: x");
    let out = run(&["narinfo", "verify", "--trusted-key", &public, "-"], Some(broken.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("line 7: NarSize"), "{}", text(&out.stderr));

    // Malformed trusted key.
    let out = run(&["narinfo", "verify", "--trusted-key", "nope", path.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--trusted-key"), "{}", text(&out.stderr));

    // A legacy cache.nixos.org narinfo signed over references in file order.
    let legacy = vectors().join("snix/extracted/narinfo/references-out-of-order.narinfo");
    let out = run(&["narinfo", "verify", "--trusted-key", CACHE_NIXOS_ORG, legacy.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("file order"), "{}", text(&out.stdout));

    // Two Sig lines, one trusted: exit 0, and each line has its reason.
    let two = vectors().join("snix/extracted/narinfo/explicit-unknown-deriver.narinfo");
    let out = run(&["narinfo", "verify", "--trusted-key", CACHE_NIXOS_ORG, two.to_str().unwrap()], None);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Sig cache.nixos.org-1: valid") && stdout.contains("Sig hydra.other.net-1: unknown key"));
}

#[test]
fn narinfo_sign_then_verify_with_a_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("sk"), dir.path().join("pk"));
    let out = run(
        &[
            "key",
            "generate",
            "mesh-node-7",
            "--secret-file",
            sk.to_str().unwrap(),
            "--public-file",
            pk.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success());
    let public = fs::read_to_string(&pk).unwrap();
    let input = vectors().join("snix/extracted/narinfo/sign-unsigned-input.narinfo");
    let out = run(&["narinfo", "sign", "--secret-file", sk.to_str().unwrap(), input.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let signed = out.stdout;
    assert!(text(&signed).contains("\nSig: mesh-node-7:"));
    let out = run(&["narinfo", "verify", "--trusted-key", &public, "-"], Some(&signed));
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    // Guix store dir: a /nix/store narinfo is rejected with a clear reason.
    let out = run(&["narinfo", "verify", "--store-dir", "/gnu/store", "--trusted-key", &public, "-"], Some(&signed));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not in the store directory"), "{}", text(&out.stderr));
}
