//! The canonical encoding of a [`Manifest`], its strict size-checked decoder, its rules
//! ([`Manifest::validate`]) and lookups on a decoded manifest.
//!
//! ## Byte layout (version 1)
//! Built from the wire codec's blocks ([`crate::wire::codec`]: little-endian fixed-width integers,
//! `u32`-length-prefixed strings, `u32`-counted sequences, store paths as 20-byte digest ‖ name):
//! ```text
//! magic      19 bytes  "buildmesh-manifest\0"
//! version    u8        1
//! store_dir  string
//! systems    u32 count (≤ 256), then each a system name; strictly increasing, each used by a drv
//! drvs       u32 count (≤ 2,000,000), then each, strictly increasing by store path:
//!              drv      store path (a .drv)
//!              system   u16 index into systems
//!              inputs   u32 count, then u32 indices into drvs, strictly increasing, never its own
//!              outputs  u32 count (1..=64), then each: name string ‖ store path; names strictly increasing
//! jobs       u32 count (≤ 1,000,000), then each, strictly increasing by (package, drv):
//!              drv      u32 index into drvs
//!              package  string, 1-256 bytes, no control characters
//!              version  string, 0-64 bytes, no control characters
//! ```
//! Nothing may follow. The whole input is at most [`MAX_MANIFEST_SIZE`] bytes, checked before any
//! byte is read, and every count is checked against the bytes left before anything is allocated.
//! The input graph must also be acyclic (as every real derivation graph is), so that whoever walks
//! it (the QA engine) may rely on a topological order.

use std::collections::BTreeMap;

use thiserror::Error;

use super::{
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_MANIFEST_DRVS, MAX_MANIFEST_JOBS, MAX_MANIFEST_SIZE, Manifest, ManifestDrv,
    ManifestJob, ManifestOutput,
};
use crate::store_path::StorePath;
use crate::wire::codec::{Decode, DecodeError, Encode, Reader, Sink, put_len, put_str, put_u8, put_u16, put_u32};
use crate::wire::{MAX_OUTPUTS, MAX_SYSTEM_LEN, read_drv, read_output_name, validate_label, validate_system};

/// Most distinct systems in a manifest's graph.
pub const MAX_MANIFEST_SYSTEMS: usize = 256;
/// Longest package name.
pub const MAX_PACKAGE_LEN: usize = 256;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = crate::wire::MAX_LABEL_LEN;

/// A rule a [`Manifest`] value breaks (from [`Manifest::validate`]); the decoder reports the same
/// rules as a [`DecodeError`] with the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("manifest {field} {index}: {reason}")]
pub struct ManifestInvalid {
    /// The field (`systems`, `drvs`, `drvs.inputs`, `drvs.outputs`, `jobs`, `size`).
    pub field: &'static str,
    /// The index of the offending element in its sequence (0 for the whole manifest).
    pub index: usize,
    /// The rule broken.
    pub reason: String,
}

/// A package name: 1–256 bytes of UTF-8 without control characters.
pub fn validate_package(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_PACKAGE_LEN {
        return Err(format!("package {s:?} must be 1-{MAX_PACKAGE_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("package {s:?} contains a control character"));
    }
    Ok(())
}

/// A version: 0–64 bytes of UTF-8 without control characters.
pub fn validate_version(s: &str) -> Result<(), String> {
    validate_label(s, true).map_err(|e| format!("version: {e}"))
}

// ---- the relational rules, shared by the decoder and `validate` ----

fn check_system_order(prev: Option<&str>, s: &str) -> Result<(), String> {
    match prev {
        Some(p) if p >= s => Err(format!("system {s:?} is not after {p:?} (sorted, no duplicates)")),
        _ => Ok(()),
    }
}

fn check_drv_order(prev: Option<&StorePath>, p: &StorePath) -> Result<(), String> {
    match prev {
        Some(q) if q >= p => Err(format!("{p} is not after {q} (sorted by store path, no duplicates)")),
        _ => Ok(()),
    }
}

fn check_input(me: usize, prev: Option<u32>, input: u32, n_drvs: usize) -> Result<(), String> {
    if input as usize >= n_drvs {
        return Err(format!("input index {input} is out of range (the manifest has {n_drvs} derivations)"));
    }
    if input as usize == me {
        return Err(format!("input index {input} is the derivation itself"));
    }
    match prev {
        Some(p) if p >= input => Err(format!("input index {input} is not after {p} (strictly increasing)")),
        _ => Ok(()),
    }
}

fn check_output_order(prev: Option<&str>, name: &str) -> Result<(), String> {
    match prev {
        Some(p) if p >= name => Err(format!("output {name:?} is not after {p:?} (sorted by name, no duplicates)")),
        _ => Ok(()),
    }
}

fn check_job(prev: Option<&ManifestJob>, job: &ManifestJob, n_drvs: usize) -> Result<(), String> {
    if job.drv as usize >= n_drvs {
        return Err(format!("drv index {} is out of range (the manifest has {n_drvs} derivations)", job.drv));
    }
    match prev {
        Some(p) if (p.package.as_str(), p.drv) >= (job.package.as_str(), job.drv) => Err(format!(
            "job ({:?}, drv {}) is not after ({:?}, drv {}) (sorted by package then drv, no duplicates)",
            job.package, job.drv, p.package, p.drv
        )),
        _ => Ok(()),
    }
}

/// The input graph in compressed form: the inputs of drv `i` are `inputs[start[i]..start[i + 1]]`.
/// Built by one sequential pass, it keeps the search below in a few MiB of cache-friendly arrays
/// (walking the `ManifestDrv`s themselves costs two cache misses per derivation).
struct Graph {
    start: Vec<u32>,
    inputs: Vec<u32>,
}

impl Graph {
    fn with_capacity(n: usize) -> Graph {
        let mut start = Vec::with_capacity(n + 1);
        start.push(0);
        Graph { start, inputs: Vec::with_capacity(n * 3) }
    }

    fn push(&mut self, inputs: &[u32]) {
        self.inputs.extend_from_slice(inputs);
        self.start.push(u32::try_from(self.inputs.len()).unwrap_or(u32::MAX));
    }

    fn of(drvs: &[ManifestDrv]) -> Graph {
        let mut g = Graph::with_capacity(drvs.len());
        for d in drvs {
            g.push(&d.inputs);
        }
        g
    }

    /// A derivation on a cycle, if any: an iterative depth-first search (linear; one colour byte
    /// per derivation). Out-of-range inputs are skipped (the index checks report them).
    fn find_cycle(&self) -> Option<usize> {
        const NEW: u8 = 0;
        const ON_PATH: u8 = 1;
        const DONE: u8 = 2;
        let n = self.start.len() - 1;
        let mut colour = vec![NEW; n];
        // (derivation, position of its next input in `inputs`)
        let mut path: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if colour[root] != NEW {
                continue;
            }
            colour[root] = ON_PATH;
            path.push((root, self.start[root] as usize));
            while let Some((node, next)) = path.last_mut() {
                if *next < self.start[*node + 1] as usize {
                    let input = self.inputs[*next] as usize;
                    *next += 1;
                    match colour.get(input) {
                        Some(&NEW) => {
                            colour[input] = ON_PATH;
                            path.push((input, self.start[input] as usize));
                        }
                        Some(&ON_PATH) => return Some(input),
                        _ => {}
                    }
                } else {
                    colour[*node] = DONE;
                    path.pop();
                }
            }
        }
        None
    }
}

impl Manifest {
    /// The canonical encoding (see the module docs for the layout).
    pub fn encode_to_vec(&self) -> Vec<u8> {
        self.to_bytes()
    }

    /// blake3 of the canonical encoding: the `manifest_hash` of a [`super::RevisionHeader`].
    pub fn hash(&self) -> [u8; 32] {
        manifest_hash(&self.encode_to_vec())
    }

    /// Decode untrusted bytes: the size is checked first (≤ [`MAX_MANIFEST_SIZE`]), then every
    /// count against the bytes left before allocating, then every rule of the canonical form.
    /// Errors name the field and the byte offset.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, DecodeError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_MANIFEST_SIZE });
        }
        let mut r = Reader::new(bytes);
        let magic = r.take("manifest.magic", MANIFEST_MAGIC.len())?;
        if magic != MANIFEST_MAGIC {
            return Err(Reader::invalid("manifest.magic", 0, "not a buildmesh manifest (bad magic bytes)"));
        }
        let offset = r.offset();
        let version = r.u8("manifest.version")?;
        if version != MANIFEST_VERSION {
            return Err(Reader::invalid(
                "manifest.version",
                offset,
                format!("manifest version {version} is not supported (this node reads version {MANIFEST_VERSION})"),
            ));
        }
        let store_dir = crate::wire::read_store_dir(&mut r)?;
        let systems = read_systems(&mut r)?;
        let drvs_offset = r.offset();
        let (drvs, graph) = read_drvs(&mut r, systems.len())?;
        let jobs = read_jobs(&mut r, drvs.len())?;
        r.finish()?;
        if let Some(i) = graph.find_cycle() {
            return Err(Reader::invalid(
                "manifest.drvs",
                drvs_offset,
                format!("the input graph has a cycle through {}", drvs[i].drv),
            ));
        }
        Ok(Manifest { store_dir, systems, drvs, jobs })
    }

    /// Check every rule of the canonical form and every limit (the rules [`Manifest::decode`]
    /// enforces), naming the first one broken. A manifest built in memory should pass this before
    /// it is encoded and published.
    pub fn validate(&self) -> Result<(), ManifestInvalid> {
        let bad = |field, index, reason| Err(ManifestInvalid { field, index, reason });
        if self.systems.len() > MAX_MANIFEST_SYSTEMS {
            return bad("systems", 0, format!("{} systems, the limit is {MAX_MANIFEST_SYSTEMS}", self.systems.len()));
        }
        if self.drvs.len() > MAX_MANIFEST_DRVS {
            return bad("drvs", 0, format!("{} derivations, the limit is {MAX_MANIFEST_DRVS}", self.drvs.len()));
        }
        if self.jobs.len() > MAX_MANIFEST_JOBS {
            return bad("jobs", 0, format!("{} jobs, the limit is {MAX_MANIFEST_JOBS}", self.jobs.len()));
        }
        for (i, s) in self.systems.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| self.systems[p].as_str());
            if let Err(e) = validate_system(s).and_then(|()| check_system_order(prev, s)) {
                return bad("systems", i, e);
            }
        }
        let mut used = vec![false; self.systems.len()];
        let n = self.drvs.len();
        for (i, d) in self.drvs.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| &self.drvs[p].drv);
            if !d.drv.is_derivation() {
                return bad("drvs", i, format!("{} is not a derivation (.drv) path", d.drv));
            }
            check_drv_order(prev, &d.drv).or_else(|e| bad("drvs", i, e))?;
            match used.get_mut(usize::from(d.system)) {
                Some(u) => *u = true,
                None => return bad("drvs.system", i, format!("system index {} is out of range", d.system)),
            }
            for (k, &input) in d.inputs.iter().enumerate() {
                let prev = k.checked_sub(1).map(|p| d.inputs[p]);
                check_input(i, prev, input, n).or_else(|e| bad("drvs.inputs", i, e))?;
            }
            if d.outputs.is_empty() || d.outputs.len() > MAX_OUTPUTS {
                return bad("drvs.outputs", i, format!("{} has {} outputs (1-{MAX_OUTPUTS})", d.drv, d.outputs.len()));
            }
            for (k, o) in d.outputs.iter().enumerate() {
                let prev = k.checked_sub(1).map(|p| d.outputs[p].name.as_str());
                crate::store_path::validate_name(&o.name)
                    .map_err(|e| e.to_string())
                    .or_else(|e| bad("drvs.outputs", i, e))?;
                check_output_order(prev, &o.name).or_else(|e| bad("drvs.outputs", i, e))?;
            }
        }
        if let Some(u) = used.iter().position(|u| !u) {
            return bad("systems", u, format!("system {:?} is used by no derivation", self.systems[u]));
        }
        for (j, job) in self.jobs.iter().enumerate() {
            let prev = j.checked_sub(1).map(|p| &self.jobs[p]);
            validate_package(&job.package).or_else(|e| bad("jobs", j, e))?;
            validate_version(&job.version).or_else(|e| bad("jobs", j, e))?;
            check_job(prev, job, n).or_else(|e| bad("jobs", j, e))?;
        }
        if let Some(i) = Graph::of(&self.drvs).find_cycle() {
            return bad("drvs.inputs", i, format!("the input graph has a cycle through {}", self.drvs[i].drv));
        }
        let size = self.encoded_len();
        if size > MAX_MANIFEST_SIZE {
            return bad("size", 0, format!("the encoding takes {size} bytes, the limit is {MAX_MANIFEST_SIZE}"));
        }
        Ok(())
    }

    /// The system of a derivation of this manifest (empty if its index is out of range, which a
    /// decoded or validated manifest never has).
    pub fn drv_system(&self, drv: &ManifestDrv) -> &str {
        self.systems.get(usize::from(drv.system)).map_or("", String::as_str)
    }

    /// The system of a job's derivation (empty if an index is out of range, which a decoded or
    /// validated manifest never has).
    pub fn job_system(&self, job: &ManifestJob) -> &str {
        self.drvs.get(job.drv as usize).map_or("", |d| self.drv_system(d))
    }

    /// The derivation of a job (`None` only for an out-of-range index).
    pub fn job_drv(&self, job: &ManifestJob) -> Option<&ManifestDrv> {
        self.drvs.get(job.drv as usize)
    }

    /// The index of a derivation in [`Manifest::drvs`] (binary search: the drvs are sorted).
    pub fn drv_index(&self, drv: &StorePath) -> Option<u32> {
        self.drvs.binary_search_by(|d| d.drv.cmp(drv)).ok().map(|i| i as u32)
    }

    /// The number of jobs per system (what a [`super::RevisionHeader`] carries).
    pub fn jobs_per_system(&self) -> BTreeMap<String, u32> {
        let mut counts = vec![0u32; self.systems.len()];
        for job in &self.jobs {
            if let Some(c) = self.drvs.get(job.drv as usize).and_then(|d| counts.get_mut(usize::from(d.system))) {
                *c += 1;
            }
        }
        self.systems.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(s, n)| (s.clone(), n)).collect()
    }
}

/// blake3 of manifest bytes (as they travel and are stored): what a header's `manifest_hash` is
/// checked against.
pub fn manifest_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

impl Encode for Manifest {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(MANIFEST_MAGIC);
        put_u8(out, MANIFEST_VERSION);
        self.store_dir.encode(out);
        put_len(out, self.systems.len());
        for s in &self.systems {
            put_str(out, s);
        }
        put_len(out, self.drvs.len());
        for d in &self.drvs {
            d.drv.encode(out);
            put_u16(out, d.system);
            put_len(out, d.inputs.len());
            for &i in &d.inputs {
                put_u32(out, i);
            }
            put_len(out, d.outputs.len());
            for o in &d.outputs {
                put_str(out, &o.name);
                o.path.encode(out);
            }
        }
        put_len(out, self.jobs.len());
        for j in &self.jobs {
            put_u32(out, j.drv);
            put_str(out, &j.package);
            put_str(out, &j.version);
        }
    }
}

fn read_systems(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    const F: &str = "manifest.systems";
    let n = r.len(F, MAX_MANIFEST_SYSTEMS, 5)?;
    let mut out: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = r.offset();
        let s = r.str(F, MAX_SYSTEM_LEN)?;
        validate_system(s)
            .and_then(|()| check_system_order(out.last().map(String::as_str), s))
            .map_err(|e| Reader::invalid(F, offset, e))?;
        out.push(s.to_string());
    }
    Ok(out)
}

/// The fewest bytes one drv takes: a store path (20 + 4 + `x.drv`), system, two counts, and one
/// output (4 + 1 + 20 + 4 + 1).
const MIN_DRV_LEN: usize = 20 + 4 + 5 + 2 + 4 + 4 + 30;
/// The fewest bytes one job takes: drv index, a 1-byte package, an empty version.
const MIN_JOB_LEN: usize = 4 + 5 + 4;

fn read_drvs(r: &mut Reader<'_>, n_systems: usize) -> Result<(Vec<ManifestDrv>, Graph), DecodeError> {
    let n = r.len("manifest.drvs", MAX_MANIFEST_DRVS, MIN_DRV_LEN)?;
    let mut used = vec![false; n_systems];
    let mut out: Vec<ManifestDrv> = Vec::with_capacity(n);
    let mut graph = Graph::with_capacity(n);
    for me in 0..n {
        let offset = r.offset();
        let drv = read_drv(r, "manifest.drvs.drv")?;
        check_drv_order(out.last().map(|d| &d.drv), &drv)
            .map_err(|e| Reader::invalid("manifest.drvs.drv", offset, e))?;
        let offset = r.offset();
        let system = r.u16("manifest.drvs.system")?;
        match used.get_mut(usize::from(system)) {
            Some(u) => *u = true,
            None => {
                return Err(Reader::invalid(
                    "manifest.drvs.system",
                    offset,
                    format!("system index {system} is out of range (the manifest has {n_systems} systems)"),
                ));
            }
        }
        let k = r.len("manifest.drvs.inputs", n.saturating_sub(1), 4)?;
        let mut inputs = Vec::with_capacity(k);
        for _ in 0..k {
            let offset = r.offset();
            let input = r.u32("manifest.drvs.inputs")?;
            check_input(me, inputs.last().copied(), input, n)
                .map_err(|e| Reader::invalid("manifest.drvs.inputs", offset, format!("{drv}: {e}")))?;
            inputs.push(input);
        }
        let offset = r.offset();
        let k = r.len("manifest.drvs.outputs", MAX_OUTPUTS, 29)?;
        if k == 0 {
            return Err(Reader::invalid("manifest.drvs.outputs", offset, format!("{drv} has no outputs")));
        }
        let mut outputs: Vec<ManifestOutput> = Vec::with_capacity(k);
        for _ in 0..k {
            let offset = r.offset();
            let name = read_output_name(r, "manifest.drvs.outputs.name")?;
            check_output_order(outputs.last().map(|o| o.name.as_str()), &name)
                .map_err(|e| Reader::invalid("manifest.drvs.outputs.name", offset, format!("{drv}: {e}")))?;
            let path = StorePath::decode(r, "manifest.drvs.outputs.path")?;
            outputs.push(ManifestOutput { name, path });
        }
        graph.push(&inputs);
        out.push(ManifestDrv { drv, system, inputs, outputs });
    }
    if let Some(u) = used.iter().position(|u| !u) {
        return Err(Reader::invalid("manifest.systems", 0, format!("system index {u} is used by no derivation")));
    }
    Ok((out, graph))
}

fn read_jobs(r: &mut Reader<'_>, n_drvs: usize) -> Result<Vec<ManifestJob>, DecodeError> {
    let n = r.len("manifest.jobs", MAX_MANIFEST_JOBS, MIN_JOB_LEN)?;
    let mut out: Vec<ManifestJob> = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = r.offset();
        let drv = r.u32("manifest.jobs.drv")?;
        let p_offset = r.offset();
        let package = r.str("manifest.jobs.package", MAX_PACKAGE_LEN)?;
        validate_package(package).map_err(|e| Reader::invalid("manifest.jobs.package", p_offset, e))?;
        let v_offset = r.offset();
        let version = r.str("manifest.jobs.version", MAX_VERSION_LEN)?;
        validate_version(version).map_err(|e| Reader::invalid("manifest.jobs.version", v_offset, e))?;
        let job = ManifestJob { drv, package: package.to_string(), version: version.to_string() };
        check_job(out.last(), &job, n_drvs).map_err(|e| Reader::invalid("manifest.jobs", offset, e))?;
        out.push(job);
    }
    Ok(out)
}
