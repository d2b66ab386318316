//! Checking and storing a build's outputs: fixed-output hashes, one streaming pass per output
//! that writes its NAR into the store while scanning it for references, and the output rules
//! (`allowedReferences`, ..., `outputChecks`).

use super::*;

/// Size of the chunks a NAR is streamed into the store in.
pub(super) const CHUNK: usize = 256 * 1024;

/// Chunks in flight between the dumping thread and the store.
pub(super) const CHUNKS_IN_FLIGHT: usize = 4;

/// One of md5, sha1, sha256, sha512.
pub(crate) enum AnyHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl AnyHasher {
    pub(crate) fn new(algo: HashAlgo) -> AnyHasher {
        use sha2::Digest as _;
        match algo {
            HashAlgo::Md5 => AnyHasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => AnyHasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => AnyHasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => AnyHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            AnyHasher::Md5(h) => h.update(data),
            AnyHasher::Sha1(h) => h.update(data),
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Option<NixHash> {
        use sha2::Digest as _;
        let (algo, digest) = match self {
            AnyHasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            AnyHasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            AnyHasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            AnyHasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        NixHash::new(algo, digest)
    }
}

impl Write for AnyHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes into a hasher and a reference scanner at once.
pub(super) struct HashScan {
    hasher: Option<AnyHasher>,
    scanner: RefScanner,
}

impl Write for HashScan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        self.scanner.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn scanner(candidates: &BTreeMap<String, StorePath>) -> Result<RefScanner, BuildError> {
    RefScanner::new(candidates.keys()).map_err(|e| executor_error(e.to_string(), Vec::new()))
}

pub(super) fn found(candidates: &BTreeMap<String, StorePath>, names: BTreeSet<String>) -> BTreeSet<StorePath> {
    names.into_iter().filter_map(|n| candidates.get(&n).cloned()).collect()
}

/// The hash of a fixed output as its method defines it (flat: the file's bytes; recursive: its
/// NAR), and the candidates its NAR refers to. A flat output must be a non-executable regular
/// file.
pub(crate) fn fixed_output_hash(
    output: &str,
    host: &Path,
    method: CaMethod,
    algo: HashAlgo,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(NixHash, BTreeSet<StorePath>), BuildError> {
    let io = |e: io::Error| executor_error(format!("hashing output `{output}` ({}): {e}", host.display()), Vec::new());
    let nar_err = |e: nar_fs::NarFsError| executor_error(format!("hashing output `{output}`: {e}"), Vec::new());
    let none = || executor_error("hash length mismatch", Vec::new());
    match method {
        CaMethod::Flat => {
            let md = std::fs::symlink_metadata(host).map_err(io)?;
            if !md.is_file() || md.permissions().mode() & 0o100 != 0 {
                return Err(BuildError::OutputRejected {
                    output: output.to_string(),
                    reason: format!(
                        "output path '{}' should be a non-executable regular file since recursive hashing is not \
                         enabled (outputHashMode=flat)",
                        host.display()
                    ),
                    log: Vec::new(),
                });
            }
            let mut hasher = AnyHasher::new(algo);
            io::copy(&mut std::fs::File::open(host).map_err(io)?, &mut hasher).map_err(io)?;
            let hash = hasher.finish().ok_or_else(none)?;
            let scan = nar_fs::dump_path(host, scanner(candidates)?).map_err(nar_err)?;
            Ok((hash, found(candidates, scan.finish())))
        }
        CaMethod::Nar => {
            let w = HashScan { hasher: Some(AnyHasher::new(algo)), scanner: scanner(candidates)? };
            let w = nar_fs::dump_path(host, w).map_err(nar_err)?;
            let hash = w.hasher.and_then(AnyHasher::finish).ok_or_else(none)?;
            Ok((hash, found(candidates, w.scanner.finish())))
        }
        CaMethod::Text | CaMethod::Git => Err(executor_error(
            format!("output `{output}`: fixed outputs hashed with `{}` are not supported", method.prefix()),
            Vec::new(),
        )),
    }
}

/// Check a fixed output against its declared hash; it must not refer to any store path.
pub(super) fn check_fixed_output(
    output: &str,
    host: &Path,
    method: CaMethod,
    expected: &NixHash,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(), BuildError> {
    let (actual, refs) = fixed_output_hash(output, host, method, expected.algo(), candidates)?;
    if &actual != expected {
        return Err(BuildError::HashMismatch {
            output: output.to_string(),
            expected: expected.clone(),
            actual,
            log: Vec::new(),
        });
    }
    if !refs.is_empty() {
        return Err(BuildError::OutputRejected {
            output: output.to_string(),
            reason: format!(
                "illegal path references in fixed-output derivation: {}",
                refs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            log: Vec::new(),
        });
    }
    Ok(())
}

/// A `Write` that cuts a stream into chunks for a [`ChunkReader`] on another thread.
pub(super) struct ChunkWriter {
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped reading"))
    }
}

/// Reads what a [`ChunkWriter`] sends; an `Err` sent by the writer's thread fails the read, so a
/// NAR whose dump failed is never stored as complete.
pub(super) struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Tees the NAR into the store and a reference scanner.
pub(super) struct StoreScan {
    out: ChunkWriter,
    scanner: RefScanner,
}

impl Write for StoreScan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.scanner.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why [`store_nar`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreNarError {
    #[error(transparent)]
    Dump(#[from] nar_fs::NarFsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Write the NAR of `host` into the store as a blob, streaming (a dumping thread feeds the store
/// in bounded chunks: the NAR is never held in memory), and scan it for `candidates`.
pub(crate) fn store_nar(
    store: &Store,
    host: &Path,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(crate::store::BlobInfo, BTreeSet<StorePath>), StoreNarError> {
    let scanner = RefScanner::new(candidates.keys()).map_err(|e| StoreNarError::Other(e.to_string()))?;
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (stored, dumped) = std::thread::scope(|s| {
        let err_tx = tx.clone();
        let dumper = s.spawn(move || {
            let w = StoreScan { out: ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) }, scanner };
            match nar_fs::dump_path(host, w) {
                Ok(w) => Ok(w.scanner.finish()),
                Err(e) => {
                    let _ = err_tx.send(Err(io::Error::other(e.to_string())));
                    Err(e)
                }
            }
        });
        let mut reader = ChunkReader { rx, cur: Vec::new(), pos: 0 };
        let stored = store.put_nar(&mut reader);
        drop(reader);
        let dumped = dumper.join().map_err(|_| StoreNarError::Other("the NAR dumping thread panicked".into()));
        (stored, dumped)
    });
    let names = dumped??;
    let blob = stored?;
    Ok((blob, found(candidates, names)))
}

/// Output rules of one output, from the legacy attributes (`allowedReferences`, ... in the env)
/// or the structured attrs' `outputChecks.<output>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OutputChecks {
    pub(crate) ignore_self_refs: bool,
    pub(crate) max_size: Option<u64>,
    pub(crate) max_closure_size: Option<u64>,
    pub(crate) allowed_references: Option<Vec<String>>,
    pub(crate) allowed_requisites: Option<Vec<String>>,
    pub(crate) disallowed_references: Option<Vec<String>>,
    pub(crate) disallowed_requisites: Option<Vec<String>>,
}

impl OutputChecks {
    /// The checks Nix 2.8 applies to output `output` of `drv`.
    pub(crate) fn of(drv: &Derivation, output: &str) -> Result<OutputChecks, String> {
        if !drv.has_structured_attrs() {
            return Ok(OutputChecks {
                ignore_self_refs: true,
                allowed_references: string_list_attr(drv, "allowedReferences"),
                allowed_requisites: string_list_attr(drv, "allowedRequisites"),
                disallowed_references: string_list_attr(drv, "disallowedReferences"),
                disallowed_requisites: string_list_attr(drv, "disallowedRequisites"),
                ..OutputChecks::default()
            });
        }
        let Some(json) = structured_json(drv) else { return Ok(OutputChecks::default()) };
        let Some(o) = json.get("outputChecks").and_then(|c| c.get(output)) else {
            return Ok(OutputChecks::default());
        };
        let list = |name: &str| -> Result<Option<Vec<String>>, String> {
            match o.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                    .map(Some)
                    .ok_or_else(|| format!("attribute '{name}' of outputChecks.{output} must be a list of strings")),
            }
        };
        let num = |name: &str| -> Result<Option<u64>, String> {
            match o.get(name) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("outputChecks.{output}.{name} must be a number")),
            }
        };
        Ok(OutputChecks {
            ignore_self_refs: o.get("ignoreSelfRefs").and_then(|v| v.as_bool()).unwrap_or(false),
            max_size: num("maxSize")?,
            max_closure_size: num("maxClosureSize")?,
            allowed_references: list("allowedReferences")?,
            allowed_requisites: list("allowedRequisites")?,
            disallowed_references: list("disallowedReferences")?,
            disallowed_requisites: list("disallowedRequisites")?,
        })
    }
}

/// Apply every output's [`OutputChecks`] (Nix `checkOutputs`).
pub(super) fn check_output_rules(
    drv: &Derivation,
    store_dir: &StoreDir,
    outputs: &BTreeMap<String, StorePath>,
    built: &BTreeMap<String, (PathInfo, BTreeSet<StorePath>)>,
    inputs: &BTreeMap<StorePath, PathInfo>,
) -> Result<(), BuildError> {
    let by_path: BTreeMap<&StorePath, &PathInfo> = built.values().map(|(i, _)| (&i.path, i)).collect();
    let refs_of = |p: &StorePath| -> Option<&BTreeSet<StorePath>> {
        by_path.get(p).map(|i| &i.references).or_else(|| inputs.get(p).map(|i| &i.references))
    };
    let size_of = |p: &StorePath| by_path.get(p).map(|i| i.nar_size).or_else(|| inputs.get(p).map(|i| i.nar_size));
    for (name, (info, _)) in built {
        let checks = OutputChecks::of(drv, name).map_err(|reason| BuildError::OutputRejected {
            output: name.clone(),
            reason,
            log: Vec::new(),
        })?;
        apply_checks(&checks, store_dir, outputs, info, &refs_of, &size_of)
            .map_err(|reason| BuildError::OutputRejected { output: name.clone(), reason, log: Vec::new() })?;
    }
    Ok(())
}

/// One output's checks; the error is Nix's message.
pub(crate) fn apply_checks<'a>(
    checks: &OutputChecks,
    store_dir: &StoreDir,
    outputs: &BTreeMap<String, StorePath>,
    info: &PathInfo,
    refs_of: &dyn Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
    size_of: &dyn Fn(&StorePath) -> Option<u64>,
) -> Result<(), String> {
    let shown = store_dir.display(&info.path);
    if let Some(max) = checks.max_size
        && info.nar_size > max
    {
        return Err(format!("path '{shown}' is too large at {} bytes; limit is {max} bytes", info.nar_size));
    }
    let closure = closure_within(&info.path, refs_of);
    if let Some(max) = checks.max_closure_size {
        let total: u64 = closure.iter().filter_map(size_of).sum();
        if total > max {
            return Err(format!("closure of path '{shown}' is too large at {total} bytes; limit is {max} bytes"));
        }
    }
    let check = |spec: &Option<Vec<String>>, allowed: bool, recursive: bool| -> Result<(), String> {
        let Some(spec) = spec else { return Ok(()) };
        let mut set = BTreeSet::new();
        for s in spec {
            if let Ok(p) = store_dir.parse_path(s) {
                set.insert(p);
            } else if let Some(p) = outputs.get(s) {
                set.insert(p.clone());
            } else {
                return Err(format!("derivation contains an illegal reference specifier '{s}'"));
            }
        }
        let mut used: BTreeSet<StorePath> = if recursive { closure.clone() } else { info.references.clone() };
        if recursive && checks.ignore_self_refs {
            used.remove(&info.path);
        }
        let bad: Vec<String> = used
            .iter()
            .filter(|p| set.contains(*p) != allowed)
            .map(|p| format!("\n  {}", store_dir.display(p)))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("output '{shown}' is not allowed to refer to the following paths:{}", bad.concat()))
        }
    };
    check(&checks.allowed_references, true, false)?;
    check(&checks.allowed_requisites, true, true)?;
    check(&checks.disallowed_references, false, false)?;
    check(&checks.disallowed_requisites, false, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::id::ArtifactHash;

    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn drv_with_env(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            ..Derivation::default()
        }
    }

    #[test]
    fn hashes_flat_and_recursive_with_every_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "hello\n").unwrap();
        let none = BTreeMap::new();
        let (h, refs) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Md5, &none).unwrap();
        assert_eq!(h.to_hex(), "b1946ac92492d2347c6235b4d2611184");
        assert!(refs.is_empty());
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha1, &none).unwrap();
        assert_eq!(h.to_hex(), "f572d396fae9206628714fb2ce00f72e94f2258f");
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &none).unwrap();
        assert_eq!(h.to_hex(), "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha512, &none).unwrap();
        assert!(h.to_hex().starts_with("e7c22b994c59d9cf2b48e549b1e24666"));
        // Recursive sha256 is the NarHash.
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Nar, HashAlgo::Sha256, &none).unwrap();
        assert_eq!(h, nar_fs::nar_hash_path(&f).unwrap().0);
        // Flat requires a non-executable regular file.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &none),
            Err(BuildError::OutputRejected { .. })
        ));
        assert!(matches!(
            fixed_output_hash("out", dir.path(), CaMethod::Flat, HashAlgo::Sha256, &none),
            Err(BuildError::OutputRejected { .. })
        ));
        // A fixed output that mentions a candidate is rejected, a wrong hash is a mismatch.
        let dep = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-dep");
        std::fs::write(&f, format!("/nix/store/{dep}")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cands = BTreeMap::from([(dep.to_string(), dep.clone())]);
        let (h, refs) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &cands).unwrap();
        assert_eq!(refs, [dep.clone()].into());
        assert!(matches!(
            check_fixed_output("out", &f, CaMethod::Flat, &h, &cands),
            Err(BuildError::OutputRejected { .. })
        ));
        let wrong = NixHash::sha256([0; 32]);
        match check_fixed_output("out", &f, CaMethod::Flat, &wrong, &BTreeMap::new()) {
            Err(BuildError::HashMismatch { expected, actual, .. }) => assert_eq!((expected, actual), (wrong, h)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn store_nar_streams_and_scans() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path().join("d")).unwrap();
        let out = data.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dep = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-dep");
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(out.join("big"), &big).unwrap();
        std::fs::write(out.join("ref"), format!("x/nix/store/{dep}/bin")).unwrap();
        let cands = BTreeMap::from([(dep.to_string(), dep.clone())]);
        let (blob, refs) = store_nar(&store, &out, &cands).unwrap();
        assert_eq!(refs, [dep].into());
        let digest = nar_fs::hash_path(&out).unwrap();
        assert_eq!(
            (blob.nar_hash, blob.nar_size, blob.blake3.as_bytes()),
            (digest.nar_hash, digest.nar_size, &digest.blake3)
        );
        // A dump that fails (a FIFO cannot be archived) stores nothing.
        nix::unistd::mkfifo(&out.join("zz-fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let before = store.list_blobs(None, 0).unwrap().len();
        assert!(store_nar(&store, &out, &cands).is_err());
        assert_eq!(store.list_blobs(None, 0).unwrap().len(), before);
    }

    #[test]
    fn output_checks_follow_nix() {
        let sd = StoreDir::nix();
        let out = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-out");
        let dev = sp("bnr93czmznql3rh3ijb3s0wvk9x6wyay-out-dev");
        let a = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-a");
        let b = sp("4gmpz06140ywpvqhdwlcb7p2lc5r0ny4-b");
        let outputs = BTreeMap::from([("out".to_string(), out.clone()), ("dev".to_string(), dev.clone())]);
        let info = PathInfo {
            path: out.clone(),
            nar_hash: NixHash::sha256([0; 32]),
            nar_size: 100,
            references: [out.clone(), a.clone()].into(),
            deriver: None,
            ca: None,
            blob: ArtifactHash::from_bytes([0; 32]),
            registered_at: 0,
        };
        let a_refs: BTreeSet<StorePath> = [b.clone()].into();
        let empty = BTreeSet::new();
        let refs_of = |p: &StorePath| -> Option<&BTreeSet<StorePath>> {
            if *p == out {
                Some(&info.references)
            } else if *p == a {
                Some(&a_refs)
            } else if *p == b {
                Some(&empty)
            } else {
                None
            }
        };
        let size_of = |_: &StorePath| Some(100u64);
        let run = |env: &[(&str, &str)]| {
            let d = drv_with_env(env);
            apply_checks(&OutputChecks::of(&d, "out").unwrap(), &sd, &outputs, &info, &refs_of, &size_of)
        };
        let a_s = sd.display(&a);
        let b_s = sd.display(&b);
        assert_eq!(run(&[]), Ok(()));
        assert_eq!(run(&[("allowedReferences", &format!("out {a_s}"))]), Ok(()));
        let e = run(&[("allowedReferences", &a_s)]).unwrap_err();
        assert!(e.contains("is not allowed to refer to the following paths:\n  /nix/store/an8vyn8v"), "{e}");
        // Requisites ignore the self-reference in legacy mode, and include b through a.
        let e = run(&[("allowedRequisites", &a_s)]).unwrap_err();
        assert!(e.contains(&b_s) && !e.contains("-out\n"), "{e}");
        assert_eq!(run(&[("allowedRequisites", &format!("{a_s} {b_s}"))]), Ok(()));
        assert!(run(&[("disallowedReferences", &b_s)]).is_ok());
        assert!(run(&[("disallowedRequisites", &b_s)]).is_err());
        assert!(run(&[("disallowedReferences", "nonsense")]).unwrap_err().contains("illegal reference specifier"));
        // Structured attrs: outputChecks per output, with sizes.
        let json = r#"{"outputChecks":{"out":{"maxSize":99}},"name":"x"}"#;
        assert!(run(&[("__json", json)]).unwrap_err().contains("too large at 100 bytes; limit is 99"));
        let json = r#"{"outputChecks":{"out":{"maxClosureSize":299}},"name":"x"}"#;
        assert!(run(&[("__json", json)]).unwrap_err().contains("closure of path"));
        let json = r#"{"outputChecks":{"dev":{"allowedReferences":[]}},"name":"x"}"#;
        assert_eq!(run(&[("__json", json)]), Ok(()));
    }
}
