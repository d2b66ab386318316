//! The bench's store paths: deterministic (the same names and bytes on every run, so a cache
//! filled by an earlier run, such as a harmonia store imported with `--import-local`, serves
//! exactly what this run asks for), and content-addressed (`fixed:r:sha256`, like a Nix
//! `addToStore` source path), so the node's trust rule serves them without any attestation and
//! every Nix client checks them by their content.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StoreDir, StorePath, make_store_path};

use crate::store::{PathInfo, Store, unix_ms};

/// What [`populate`] stored.
pub(super) struct Population {
    /// The small paths, `bench-0` .. `bench-{n-1}`.
    pub(super) small: Vec<StorePath>,
    /// The sum of the small paths' NAR sizes.
    pub(super) small_nar_bytes: u64,
    /// The big path, `bench-big`.
    pub(super) big: StorePath,
    /// Its NAR's size.
    pub(super) big_nar_bytes: u64,
    /// The nix32 of its NarHash (its `/nar/<…>` name).
    pub(super) big_nar_name: String,
}

/// Store `n` small paths and one of `big_bytes` in a new store at `data`.
pub(super) fn populate(data: &Path, n: u32, big_bytes: u64) -> anyhow::Result<Population> {
    let store = Store::open(data)?;
    let mut small = Vec::new();
    let mut small_nar_bytes = 0;
    for i in 0..n {
        let contents = format!("buildmesh bench path {i}\n").repeat(1 + (i as usize % 7));
        let mut nar = Vec::new();
        let mut w = NarWriter::new(&mut nar)?;
        w.regular(false, contents.len() as u64, &mut contents.as_bytes())?;
        w.finish()?;
        small_nar_bytes += nar.len() as u64;
        let (path, _) = register(&store, &format!("bench-{i}"), &mut nar.as_slice())?;
        small.push(path);
    }
    // The big NAR (one file, half incompressible, half text-like), written to a file first
    // (never held in memory).
    let file = data.join("big.nar.tmp");
    {
        let f = std::fs::File::create(&file).context("create the big NAR")?;
        let mut w = NarWriter::new(BufWriter::with_capacity(1 << 20, f))?;
        w.begin_regular(false, big_bytes)?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 64 * 1024];
        let mut left = big_bytes;
        let mut k = 0u64;
        while left > 0 {
            let take = left.min(block.len() as u64) as usize;
            if k.is_multiple_of(2) {
                for chunk in block[..take].chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let bytes = x.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
            } else {
                for (j, b) in block[..take].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"[(j + k as usize) % 55];
                }
            }
            w.write_contents(&block[..take])?;
            left -= take as u64;
            k += 1;
        }
        w.end_regular()?;
        let mut inner = w.finish()?;
        inner.flush().context("write the big NAR")?;
    }
    let big_nar_bytes = std::fs::metadata(&file).context("stat the big NAR")?.len();
    let mut f = std::fs::File::open(&file).context("open the big NAR")?;
    let (big, big_nar_name) = register(&store, "bench-big", &mut f)?;
    std::fs::remove_file(&file).context("remove the big NAR")?;
    Ok(Population { small, small_nar_bytes, big, big_nar_bytes, big_nar_name })
}

/// Store a NAR and register it as the content-addressed path `name` of its bytes; returns the
/// path and the nix32 of its NarHash (its `/nar/<…>` name).
fn register(store: &Store, name: &str, nar: &mut dyn Read) -> anyhow::Result<(StorePath, String)> {
    let blob = store.put_nar(nar)?;
    let sha: [u8; 32] = blob.nar_hash.digest().try_into().context("NarHash is not SHA-256")?;
    let path = make_store_path(&StoreDir::nix(), "source", &sha, name)?;
    store.register_path(&PathInfo {
        path: path.clone(),
        nar_hash: blob.nar_hash.clone(),
        nar_size: blob.nar_size,
        references: BTreeSet::new(),
        deriver: None,
        ca: Some(format!("fixed:r:sha256:{}", nixbase32::encode(&sha))),
        blob: blob.blake3,
        registered_at: unix_ms(),
    })?;
    Ok((path, blob.nar_hash.to_nix32()))
}
