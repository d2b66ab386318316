//! The fuzzers' seed corpus (`fuzz/corpus/<target>/seed-*`), made by the real encoders: a valid
//! instance of every message kind, alone and in batches, signed and bare; a revision header and
//! manifests; `.drv` files, NARs and narinfos; submit bodies; every request and response of the
//! peer protocols. Some seeds are larger than libFuzzer's default 4 KiB `-max_len`, for targets
//! whose limits are larger (`scripts/fuzz.sh` raises `-max_len` for them).
//!
//! `committed_fuzz_seeds_are_current` fails when a committed seed differs from what the encoders
//! make now (a format changed): run it with `BUILDMESH_WRITE_FUZZ_SEEDS=1` to rewrite them
//! (docs/fuzzing.md). Regression inputs (`fuzz/corpus/<target>/regression-*`) are not touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use buildmesh::mesh::rpc::{
    self, ClosureRequest, ClosureResponse, NarRequest, NarResponse, SourceInfo, Summary, SyncRequest, SyncResponse,
};
use buildmesh::submit::wire::{DrvEntry, HEADER_VERSION, SourceEntry, SubmitHeader, encode_body};
use buildmesh_protocol::derivation::{Derivation, DrvSet, Output, OutputHash};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::{ArtifactHash, JobId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::nar::tree::Node;
use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput, RevisionHeader};
use buildmesh_protocol::signed::{Envelope, Signed};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{
    Announcement, Attestation, Batch, BuildFailure, BuildMode, Claim, Encode as _, FailureReason, JobSubmission, Kind,
    LogDigest, Message, OutputAttestation, Strike,
};
use sha2::Digest as _;

/// A fixed time, so that the seeds do not change from run to run.
const T: u64 = 1_796_000_000_000;

type Seeds = BTreeMap<(&'static str, String), Vec<u8>>;

fn key() -> NodeKey {
    NodeKey::from_seed("fuzz-seed-1", [42; 32]).unwrap()
}

fn path(i: u8, name: &str) -> StorePath {
    StorePath::new([i; 20], name).unwrap()
}

fn announcement(node: NodeId) -> Announcement {
    Announcement {
        node,
        seq: 7,
        timestamp_ms: T,
        version: "buildmesh 0.1.0".into(),
        owner: "seed".into(),
        native_systems: BTreeSet::from(["x86_64-linux".to_string()]),
        emulated_systems: BTreeSet::from(["aarch64-linux".to_string()]),
        features: BTreeSet::from(["kvm".to_string()]),
        mandatory_features: BTreeSet::new(),
        slots: 4,
        load: 1,
        slowdown: Default::default(),
        disk_pressure: None,
    }
}

fn job(submitter: NodeId, i: u8) -> JobSubmission {
    JobSubmission {
        job: JobId::from_bytes([i; 32]),
        submitter,
        submitted_at_ms: T,
        store_dir: StoreDir::nix(),
        drv: path(i, &format!("seed-{i}.drv")),
        outputs: BTreeSet::from(["out".to_string()]),
        system: "x86_64-linux".into(),
        required_features: BTreeSet::new(),
        priority: 3,
        replicas: 2,
    }
}

fn claim(claimant: NodeId, i: u8) -> Claim {
    Claim {
        job: JobId::from_bytes([i; 32]),
        claimant,
        store_dir: StoreDir::nix(),
        drv: path(i, &format!("seed-{i}.drv")),
        attempt: 1,
        claimed_at_ms: T,
        lease_expires_at_ms: T + 60_000,
    }
}

/// An attestation with `refs` references per output (more make it larger).
fn attestation(key: &NodeKey, refs: u8) -> Attestation {
    let sd = StoreDir::nix();
    let drv = path(1, "seed-1.drv");
    let references: BTreeSet<StorePath> = (0..refs).map(|r| path(r.wrapping_add(2), &format!("dep-{r}"))).collect();
    let o = OutputAttestation::new_signed(
        key,
        &sd,
        path(101, "seed-1"),
        [5; 32],
        112,
        references,
        ArtifactHash::from_bytes([6; 32]),
        Some(drv.clone()),
    )
    .unwrap();
    Attestation {
        builder: key.node_id(),
        store_dir: sd,
        drv,
        mode: BuildMode::Native,
        started_at_ms: T - 10,
        finished_at_ms: T,
        outputs: BTreeMap::from([("out".to_string(), o)]),
        log: Some(LogDigest::of(b"building seed-1\n")),
        provenance: None,
    }
}

/// `a` with its builder's provenance (an in-toto statement signed as DSSE).
fn with_provenance(key: &NodeKey, mut a: Attestation) -> Attestation {
    a.provenance = buildmesh_protocol::intoto::Provenance::sign(key, &a, None);
    a
}

fn failure(builder: NodeId) -> BuildFailure {
    BuildFailure {
        builder,
        store_dir: StoreDir::nix(),
        drv: path(1, "seed-1.drv"),
        attempt: 1,
        mode: BuildMode::Native,
        at_ms: T,
        reason: FailureReason::BuilderExit { code: 2 },
        log: Some(LogDigest::of(b"seed-1 failed\n")),
    }
}

/// A strike record of `observer` against another member's claim of seed-1.
fn strike(observer: NodeId) -> Strike {
    let other = NodeKey::from_seed("seed-struck", [9; 32]).unwrap().node_id();
    Strike {
        observer,
        struck: other,
        job: JobId::derive(&other, "seed-1.drv", 1),
        store_dir: StoreDir::nix(),
        drv: path(1, "seed-1.drv"),
        attempt: 1,
        claimed_at_ms: T,
        lease_expires_at_ms: T + 120_000,
        observed_at_ms: T + 120_500,
    }
}

fn manifest(extra_drvs: u8) -> Manifest {
    let drv = |i: u8, n: &str, inputs: Vec<u32>| ManifestDrv {
        drv: path(i, &format!("{n}.drv")),
        system: 0,
        inputs,
        outputs: vec![ManifestOutput { name: "out".into(), path: path(i.wrapping_add(100), n) }],
    };
    let mut drvs = vec![drv(1, "glibc-2.39", vec![]), drv(2, "hello-2.12.1", vec![0])];
    for i in 0..extra_drvs {
        drvs.push(drv(3 + i, &format!("pkg{i}-1.0"), vec![0]));
    }
    let jobs = (0..drvs.len() as u32)
        .map(|d| ManifestJob { drv: d, package: format!("p{d:04}"), version: "1.0".into() })
        .collect();
    let m = Manifest { store_dir: StoreDir::nix(), systems: vec!["x86_64-linux".into()], drvs, jobs };
    m.validate().unwrap();
    m
}

fn header(m: &Manifest, submitter: NodeId) -> RevisionHeader {
    let bytes = m.encode_to_vec();
    let h = RevisionHeader {
        submitter,
        created_at_ms: T,
        store_dir: StoreDir::nix(),
        channel: "nixpkgs".into(),
        branch: "master".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        manifest_hash: *blake3::hash(&bytes).as_bytes(),
        manifest_size: bytes.len() as u64,
        drv_count: m.drvs.len() as u32,
        jobs_per_system: m.jobs_per_system(),
        replicas: 2,
    };
    h.validate().unwrap();
    h
}

/// A derivation with one input-addressed output and an input derivation, paths filled in.
fn derivation(sd: &StoreDir, big: bool) -> (String, Vec<u8>) {
    let mut set = DrvSet::new(sd.clone());
    let env = |name: &str| {
        BTreeMap::from([
            (b"name".to_vec(), name.as_bytes().to_vec()),
            (b"system".to_vec(), b"x86_64-linux".to_vec()),
            (b"builder".to_vec(), b"/bin/sh".to_vec()),
            (b"out".to_vec(), Vec::new()),
        ])
    };
    let base = |name: &str| Derivation {
        outputs: BTreeMap::from([("out".to_string(), Output { path: None, hash: OutputHash::None })]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::from([path(8, "builder.sh")]),
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), b"echo hello > $out".to_vec()],
        env: env(name),
    };
    let mut bash = base("bash-5.2");
    set.fill_in(&mut bash, "bash-5.2").unwrap();
    let bash_path = set.insert("bash-5.2".into(), bash).unwrap();
    let mut d = base("hello-2.12.1");
    d.input_drvs.insert(bash_path, BTreeSet::from(["out".to_string()]));
    if big {
        d.env.insert(b"buildCommand".to_vec(), "echo 'a long build script'\n".repeat(300).into_bytes());
    }
    set.fill_in(&mut d, "hello-2.12.1").unwrap();
    let aterm = d.to_aterm(sd);
    let drv_path = set.insert("hello-2.12.1".into(), d).unwrap();
    (drv_path.to_string(), aterm)
}

/// A NAR of a directory with a file, an executable, a symlink and a subdirectory; `big` adds a
/// file of 20 KB.
fn nar(big: bool) -> Vec<u8> {
    let mut entries = BTreeMap::from([
        (b"README".to_vec(), Node::Regular { executable: false, contents: b"hello\n".to_vec() }),
        (b"run".to_vec(), Node::Regular { executable: true, contents: b"#!/bin/sh\necho hi\n".to_vec() }),
        (b"link".to_vec(), Node::Symlink { target: b"README".to_vec() }),
        (b"sub".to_vec(), Node::Directory(BTreeMap::new())),
    ]);
    if big {
        entries.insert(b"data".to_vec(), Node::Regular { executable: false, contents: vec![b'x'; 20_000] });
    }
    Node::Directory(entries).to_nar().unwrap()
}

fn seeds() -> Seeds {
    let mut s = Seeds::new();
    let k = key();
    let me = k.node_id();
    let sd = StoreDir::nix();

    // wire_decode: every message kind signed, every batchable kind batched, bare payloads (the
    // first byte picks the kind by its index in `Kind::ALL`), and a large attestation.
    let messages = [
        ("announcement", Message::Announcement(announcement(me))),
        ("job", Message::JobSubmission(job(me, 1))),
        ("claim", Message::Claim(claim(me, 1))),
        ("attestation", Message::Attestation(attestation(&k, 2))),
        ("failure", Message::BuildFailure(failure(me))),
        ("strike", Message::Strike(strike(me))),
        ("attestation-large", Message::Attestation(attestation(&k, 60))),
        ("attestation-provenance", Message::Attestation(with_provenance(&k, attestation(&k, 2)))),
    ];
    for (name, m) in &messages {
        s.insert(("wire_decode", format!("seed-envelope-{name}")), Envelope::sign(&k, m).unwrap().to_bytes());
        let index = Kind::ALL.iter().position(|x| *x == m.kind()).unwrap() as u8;
        let mut bare = vec![index];
        bare.extend_from_slice(&m.to_bytes());
        s.insert(("wire_decode", format!("seed-payload-{name}")), bare);
    }
    let jobs = Batch::new((1..=3).map(|i| job(me, i).into()).collect()).unwrap();
    let claims = Batch::new((1..=3).map(|i| claim(me, i).into()).collect()).unwrap();
    let big_jobs = Batch::new((1..=40).map(|i| job(me, i).into()).collect()).unwrap();
    for (name, b) in [("jobs", &jobs), ("claims", &claims), ("jobs-large", &big_jobs)] {
        s.insert(("wire_decode", format!("seed-batch-{name}")), Signed::sign(&k, b).unwrap().to_bytes());
        let batch_index = Kind::ALL.iter().position(|x| *x == Kind::Batch).unwrap() as u8;
        let mut bare = vec![batch_index];
        bare.extend_from_slice(&b.to_bytes());
        s.insert(("wire_decode", format!("seed-payload-batch-{name}")), bare);
    }

    // intoto_statement: the statement a builder signs for its attestation.
    let p = with_provenance(&k, attestation(&k, 2)).provenance.unwrap();
    s.insert(("intoto_statement", "seed-statement".into()), p.payload);

    // revision_header and manifest_decode.
    let small = manifest(0);
    let large = manifest(90);
    let h = header(&small, me);
    let signed = Signed::sign(&k, &h).unwrap().to_bytes();
    s.insert(("revision_header", "seed-envelope".into()), signed.clone());
    s.insert(("revision_header", "seed-payload".into()), h.to_bytes());
    s.insert(("wire_decode", "seed-envelope-revision".into()), signed);
    s.insert(("manifest_decode", "seed-small".into()), small.encode_to_vec());
    s.insert(("manifest_decode", "seed-large".into()), large.encode_to_vec());

    // drv_parse, nar_read, narinfo_parse.
    let (drv_path, aterm) = derivation(&sd, false);
    let (_, big_aterm) = derivation(&sd, true);
    s.insert(("drv_parse", "seed-small".into()), aterm.clone());
    s.insert(("drv_parse", "seed-large".into()), big_aterm);
    let (small_nar, big_nar) = (nar(false), nar(true));
    s.insert(("nar_read", "seed-small".into()), small_nar.clone());
    s.insert(("nar_read", "seed-large".into()), big_nar);
    let digest: [u8; 32] = sha2::Sha256::digest(&small_nar).into();
    let mut ni = NarInfo::new(
        sd.clone(),
        path(101, "hello-2.12.1"),
        digest,
        small_nar.len() as u64,
        vec![path(101, "hello-2.12.1"), path(8, "builder.sh")],
    );
    ni.sign(&k.nix_secret_key()).unwrap();
    s.insert(("narinfo_parse", "seed-signed".into()), ni.to_string().into_bytes());

    // guix_signature: a narinfo signed as Guix does (the publish layout's signed part, the
    // signature, a URL triple), the node's Guix public and secret keys, and an ACL of the key.
    let gsd = StoreDir::new("/gnu/store").unwrap();
    let gpath = path(102, "hello-2.12.1");
    let part = buildmesh_protocol::narinfo::guix_layout::signed_part(
        &gsd,
        &gpath,
        &digest,
        small_nar.len() as u64,
        &[gpath.clone()].into_iter().collect(),
        None,
    );
    let guix_key = k.guix_secret_key();
    let sig = buildmesh_protocol::guix::sign_narinfo(&part, "buildmesh", &guix_key).unwrap();
    let signed = format!("{part}{sig}URL: nar/hello\nCompression: none\nFileSize: {}\n", small_nar.len());
    s.insert(("guix_signature", "seed-narinfo".into()), signed.into_bytes());
    let public = guix_key.public().to_sexp();
    s.insert(("guix_signature", "seed-acl".into()), format!("(acl (entry {public} (tag (guix import))))").into_bytes());
    s.insert(("guix_signature", "seed-public-key".into()), public.into_bytes());
    s.insert(("guix_signature", "seed-secret-key".into()), guix_key.to_sexp().into_bytes());

    // submit_body: one .drv and one source NAR.
    let src = path(8, "builder.sh");
    let header = SubmitHeader {
        version: HEADER_VERSION,
        store_dir: sd.to_string(),
        requested: vec![sd.display(&StorePath::from_basename(&drv_path).unwrap())],
        priority: 1,
        replicas: 2,
        drvs: vec![DrvEntry {
            path: sd.display(&StorePath::from_basename(&drv_path).unwrap()),
            size: aterm.len() as u64,
        }],
        sources: vec![SourceEntry {
            path: sd.display(&src),
            nar_hash: NixHash::sha256(digest).to_string(),
            nar_size: small_nar.len() as u64,
            references: Vec::new(),
        }],
    };
    s.insert(("submit_body", "seed-drv-and-source".into()), encode_body(&header, &[&aterm], &[&small_nar]).unwrap());
    let empty = SubmitHeader { drvs: Vec::new(), sources: Vec::new(), ..header };
    s.insert(("submit_body", "seed-requested-only".into()), encode_body(&empty, &[], &[]).unwrap());

    // rpc_decode: the first byte picks the type (see the target).
    let summary = Summary { count: 3, xor: [7; 32], next_seq: 4 };
    let envelope = Envelope::sign(&k, &Message::BuildFailure(failure(me))).unwrap().to_bytes();
    let source = SourceInfo {
        path: sd.display(&src),
        nar_hash: NixHash::sha256(digest).to_string(),
        nar_size: small_nar.len() as u64,
        references: Vec::new(),
        ca: Some("text:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into()),
    };
    let mut rpc_seed = |which: u8, name: &str, body: Vec<u8>| {
        let mut v = vec![which];
        v.extend_from_slice(&body);
        s.insert(("rpc_decode", format!("seed-{name}")), v);
    };
    rpc_seed(0, "closure-request", rpc::encode(&ClosureRequest { drv: drv_path.clone() }));
    rpc_seed(
        1,
        "closure-found",
        rpc::encode(&ClosureResponse::Found { drvs: vec![(drv_path.clone(), aterm.clone())], sources: vec![source] }),
    );
    rpc_seed(1, "closure-not-found", rpc::encode(&ClosureResponse::NotFound { missing: drv_path.clone() }));
    rpc_seed(1, "closure-error", rpc::encode(&ClosureResponse::Error { message: "busy".into() }));
    rpc_seed(2, "nar-request", rpc::encode(&NarRequest { nar_hash: digest, offset: 0, len: 1 << 20 }));
    rpc_seed(3, "nar-chunk", rpc::encode(&NarResponse::Chunk(small_nar.clone())));
    rpc_seed(3, "nar-not-found", rpc::encode(&NarResponse::NotFound));
    rpc_seed(3, "nar-error", rpc::encode(&NarResponse::Error("busy; try later".into())));
    let requests = [
        ("summary", SyncRequest::Summary),
        ("attestations", SyncRequest::Attestations { from: 5, limit: 100 }),
        ("failures", SyncRequest::Failures { from: 5, limit: 100 }),
        ("retry", SyncRequest::Retry { drv: drv_path.clone() }),
        ("revision-summary", SyncRequest::RevisionSummary),
        ("revisions", SyncRequest::Revisions { from: 0, limit: 10 }),
        ("manifest", SyncRequest::Manifest { hash: [3; 32], offset: 0, len: 4096 }),
    ];
    for (name, r) in requests {
        rpc_seed(4, &format!("sync-request-{name}"), rpc::encode(&r));
    }
    let responses = [
        ("summary", SyncResponse::Summary { attestations: summary, failures: summary }),
        ("page", SyncResponse::Page { items: vec![(4, envelope)], next: 5, more: false }),
        ("retry", SyncResponse::Retry(Err("not trusted".into()))),
        ("error", SyncResponse::Error("no".into())),
        ("revision-summary", SyncResponse::RevisionSummary(summary)),
        ("manifest-chunk", SyncResponse::ManifestChunk { total: 10, bytes: small.encode_to_vec() }),
        ("manifest-not-found", SyncResponse::ManifestNotFound),
    ];
    for (name, r) in responses {
        rpc_seed(5, &format!("sync-response-{name}"), rpc::encode(&r));
    }
    s
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn committed_fuzz_seeds_are_current() {
    let seeds = seeds();
    let write = std::env::var_os("BUILDMESH_WRITE_FUZZ_SEEDS").is_some();
    let mut stale = Vec::new();
    let targets: BTreeSet<&str> = seeds.keys().map(|(t, _)| *t).collect();
    for t in &targets {
        let dir = corpus().join(t);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            // Old seeds go (a seed renamed or dropped); regression inputs stay.
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
    }
    for ((target, name), bytes) in &seeds {
        let file = corpus().join(target).join(name);
        if write {
            std::fs::write(&file, bytes).unwrap();
        } else if std::fs::read(&file).ok().as_ref() != Some(bytes) {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds differ from what the encoders make now (rewrite them with \
         BUILDMESH_WRITE_FUZZ_SEEDS=1 cargo test -p buildmesh-tests --test fuzz_seeds): {stale:#?}"
    );
    // Every fuzz target has seeds, and some targets have seeds above libFuzzer's default 4 KiB.
    for t in [
        "wire_decode",
        "revision_header",
        "manifest_decode",
        "drv_parse",
        "nar_read",
        "narinfo_parse",
        "submit_body",
        "rpc_decode",
        "guix_signature",
        "intoto_statement",
    ] {
        assert!(targets.contains(t), "no seeds for {t}");
    }
    for t in ["wire_decode", "manifest_decode", "drv_parse", "nar_read"] {
        assert!(seeds.iter().any(|((x, _), b)| *x == t && b.len() > 4096), "no seed above 4 KiB for {t}");
    }
}

/// The seeds decode with the decoders the fuzz targets call (a seed that does not decode would
/// not help the fuzzer past the first check).
#[test]
fn fuzz_seeds_decode() {
    let sd = StoreDir::nix();
    for ((target, name), bytes) in seeds() {
        let ok = match target {
            "wire_decode" if name.starts_with("seed-envelope") || name.starts_with("seed-batch") => {
                Envelope::decode(&bytes).is_ok_and(|e| {
                    e.verify().is_ok() || e.verify_as::<Batch>().is_ok() || e.verify_as::<RevisionHeader>().is_ok()
                })
            }
            "wire_decode" => {
                let kind = Kind::ALL[usize::from(bytes[0]) % Kind::ALL.len()];
                Message::decode_payload(kind, &bytes[1..], 1).is_ok() || kind == Kind::Batch
            }
            "revision_header" if name == "seed-envelope" => {
                Envelope::decode(&bytes).is_ok_and(|e| e.verify_as::<RevisionHeader>().is_ok())
            }
            "revision_header" => true,
            "manifest_decode" => Manifest::decode(&bytes).is_ok(),
            "intoto_statement" => buildmesh_protocol::intoto::Statement::parse(&bytes).is_ok(),
            "drv_parse" => Derivation::parse(&bytes, &sd).is_ok(),
            "nar_read" => Node::read_nar(&bytes[..], Default::default()).is_ok(),
            "narinfo_parse" => NarInfo::parse_bytes(&bytes, &sd).is_ok(),
            "guix_signature" if name == "seed-narinfo" => {
                let text = std::str::from_utf8(&bytes).unwrap();
                let v = buildmesh_protocol::guix::verify_narinfo(text, &[]);
                v.signer.is_some_and(|signer| {
                    buildmesh_protocol::guix::verify_narinfo(text, &[signer]).status
                        == buildmesh_protocol::guix::GuixStatus::ValidSignature
                })
            }
            "guix_signature" => {
                buildmesh_protocol::guix::parse_keys(std::str::from_utf8(&bytes).unwrap()).is_ok()
                    || buildmesh_protocol::guix::GuixSecretKey::parse_sexp(std::str::from_utf8(&bytes).unwrap()).is_ok()
            }
            _ => true,
        };
        assert!(ok, "{target}/{name} does not decode");
    }
}
