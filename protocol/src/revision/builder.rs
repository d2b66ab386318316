//! [`ManifestBuilder`]: a [`Manifest`] from parsed derivations and a list of jobs.
//!
//! The caller (the node's `revision submit`, a test) reads every `.drv` of the jobs' closure and
//! gives each with its store path; the builder keeps, per derivation, its system, its outputs and
//! its input derivations restricted to those given (an input that was not given is an error, so
//! the graph is the whole closure), derives each job's package and version, sorts everything into
//! canonical form and checks the limits.

use std::collections::BTreeMap;

use thiserror::Error;

use super::drv_name::parse_drv_name;
use super::manifest_codec::{ManifestInvalid, validate_package, validate_version};
use super::{Manifest, ManifestDrv, ManifestJob, ManifestOutput};
use crate::derivation::Derivation;
use crate::store_path::{StoreDir, StorePath};
use crate::wire::validate_system;

/// Why a manifest could not be built. Every variant names the derivation concerned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ManifestBuildError {
    /// A path given as a derivation is not a `.drv` path.
    #[error("{drv} is not a derivation (.drv) path")]
    NotADerivation {
        /// The path.
        drv: String,
    },
    /// The same derivation path was given twice with different contents.
    #[error("derivation {drv} was given twice with different contents")]
    Conflict {
        /// The path.
        drv: String,
    },
    /// A derivation's system is not a valid system name.
    #[error("derivation {drv}: {reason}")]
    BadSystem {
        /// The derivation.
        drv: String,
        /// What is wrong.
        reason: String,
    },
    /// An output has no recorded path (a floating content-addressed or deferred output), which a
    /// manifest cannot hold.
    #[error("derivation {drv}: output {output:?} has no store path (content-addressed derivations are not supported)")]
    NoOutputPath {
        /// The derivation.
        drv: String,
        /// The output.
        output: String,
    },
    /// A derivation has no outputs.
    #[error("derivation {drv} has no outputs")]
    NoOutputs {
        /// The derivation.
        drv: String,
    },
    /// An input derivation of a given derivation was not given: the closure is incomplete.
    #[error("derivation {drv} has input {input}, which was not given (give the whole closure)")]
    MissingInput {
        /// The derivation.
        drv: String,
        /// Its input that is missing.
        input: String,
    },
    /// A job names a derivation that was not given.
    #[error("job {package:?} names derivation {drv}, which was not given")]
    JobDrvNotGiven {
        /// The derivation.
        drv: String,
        /// The job's package, when known.
        package: Option<String>,
    },
    /// A job's package or version could not be determined or breaks its rule.
    #[error("job of derivation {drv}: {reason}")]
    BadJob {
        /// The derivation.
        drv: String,
        /// What is wrong.
        reason: String,
    },
    /// Two jobs of the same package and derivation have different versions.
    #[error("derivation {drv} is given twice as package {package:?}, with versions {first:?} and {second:?}")]
    DuplicateJob {
        /// The derivation.
        drv: String,
        /// The package.
        package: String,
        /// One version.
        first: String,
        /// The other.
        second: String,
    },
    /// The result breaks a manifest rule or limit (too many derivations or jobs, too large, a
    /// cycle).
    #[error(transparent)]
    Invalid(#[from] ManifestInvalid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DrvInfo {
    system: String,
    inputs: Vec<StorePath>,
    outputs: Vec<ManifestOutput>,
    /// (package, version) from `pname` + `version`, else the name split as `parseDrvName` does;
    /// an error text when neither gives a valid package.
    default_job: Result<(String, String), String>,
}

/// Builds a [`Manifest`]: add every derivation of the closure and the jobs, then [`ManifestBuilder::build`].
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    store_dir: StoreDir,
    drvs: BTreeMap<StorePath, DrvInfo>,
    jobs: Vec<(StorePath, Option<String>, Option<String>)>,
}

fn default_job(drv_path: &StorePath, drv: &Derivation) -> Result<(String, String), String> {
    let utf8 = |b: &[u8], what: &str| String::from_utf8(b.to_vec()).map_err(|_| format!("env {what} is not UTF-8"));
    let (package, version) = match (drv.env_var("pname"), drv.env_var("version")) {
        (Some(p), Some(v)) => (utf8(p, "pname")?, utf8(v, "version")?),
        _ => {
            // The derivation's name, or the store path's name without `.drv`.
            let name = drv.name().unwrap_or_else(|_| drv_path.name().trim_end_matches(".drv").to_string());
            let (p, v) = parse_drv_name(&name);
            (p.to_string(), v.to_string())
        }
    };
    validate_package(&package)?;
    validate_version(&version)?;
    Ok((package, version))
}

impl ManifestBuilder {
    /// An empty builder for paths in `store_dir`.
    pub fn new(store_dir: StoreDir) -> ManifestBuilder {
        ManifestBuilder { store_dir, drvs: BTreeMap::new(), jobs: Vec::new() }
    }

    /// Add a derivation of the closure. Giving the same path again with the same contents is a
    /// no-op.
    pub fn add_drv(&mut self, path: StorePath, drv: &Derivation) -> Result<&mut Self, ManifestBuildError> {
        let name = || self.store_dir.display(&path);
        if !path.is_derivation() {
            return Err(ManifestBuildError::NotADerivation { drv: name() });
        }
        let system = String::from_utf8(drv.system.clone())
            .map_err(|_| ManifestBuildError::BadSystem { drv: name(), reason: "system is not UTF-8".to_string() })?;
        validate_system(&system).map_err(|reason| ManifestBuildError::BadSystem { drv: name(), reason })?;
        if drv.outputs.is_empty() {
            return Err(ManifestBuildError::NoOutputs { drv: name() });
        }
        let mut outputs = Vec::with_capacity(drv.outputs.len());
        for (out, o) in &drv.outputs {
            let Some(p) = &o.path else {
                return Err(ManifestBuildError::NoOutputPath { drv: name(), output: out.clone() });
            };
            outputs.push(ManifestOutput { name: out.clone(), path: p.clone() });
        }
        let info = DrvInfo {
            system,
            inputs: drv.input_drvs.keys().cloned().collect(),
            outputs,
            default_job: default_job(&path, drv),
        };
        match self.drvs.get(&path) {
            Some(old) if *old != info => return Err(ManifestBuildError::Conflict { drv: name() }),
            Some(_) => {}
            None => {
                self.drvs.insert(path, info);
            }
        }
        Ok(self)
    }

    /// Add a job: the derivation (which must also be given with [`ManifestBuilder::add_drv`]) and,
    /// optionally, its package and version (each taken from the derivation when `None`).
    pub fn add_job(&mut self, drv: StorePath, package: Option<String>, version: Option<String>) -> &mut Self {
        self.jobs.push((drv, package, version));
        self
    }

    /// The manifest, in canonical form and checked against every rule and limit.
    pub fn build(self) -> Result<Manifest, ManifestBuildError> {
        let systems: Vec<String> = {
            let mut s: Vec<String> = self.drvs.values().map(|d| d.system.clone()).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let paths: Vec<&StorePath> = self.drvs.keys().collect();
        let index = |p: &StorePath| paths.binary_search(&p).ok().map(|i| i as u32);
        let mut drvs = Vec::with_capacity(self.drvs.len());
        for (path, info) in &self.drvs {
            let mut inputs = Vec::with_capacity(info.inputs.len());
            for input in &info.inputs {
                let i = index(input).ok_or_else(|| ManifestBuildError::MissingInput {
                    drv: self.store_dir.display(path),
                    input: self.store_dir.display(input),
                })?;
                inputs.push(i);
            }
            // `input_drvs` is a map in store-path order, the order of the indices; sort anyway.
            inputs.sort_unstable();
            inputs.dedup();
            let system = systems.binary_search(&info.system).map_or(0, |i| i as u16);
            drvs.push(ManifestDrv { drv: path.clone(), system, inputs, outputs: info.outputs.clone() });
        }
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (drv, package, version) in self.jobs {
            let (Some(i), Some(info)) = (index(&drv), self.drvs.get(&drv)) else {
                return Err(ManifestBuildError::JobDrvNotGiven { drv: self.store_dir.display(&drv), package });
            };
            let bad = |reason: String| ManifestBuildError::BadJob { drv: self.store_dir.display(&drv), reason };
            let (package, version) = match (package, version) {
                (Some(p), Some(v)) => (p, v),
                (p, v) => {
                    let (dp, dv) = info.default_job.clone().map_err(bad)?;
                    (p.unwrap_or(dp), v.unwrap_or(dv))
                }
            };
            validate_package(&package).map_err(bad)?;
            validate_version(&version).map_err(bad)?;
            jobs.push(ManifestJob { drv: i, package, version });
        }
        jobs.sort_unstable_by(|a, b| (&a.package, a.drv, &a.version).cmp(&(&b.package, b.drv, &b.version)));
        jobs.dedup();
        if let Some(w) = jobs.windows(2).find(|w| (&w[0].package, w[0].drv) == (&w[1].package, w[1].drv)) {
            return Err(ManifestBuildError::DuplicateJob {
                drv: self.store_dir.display(paths[w[0].drv as usize]),
                package: w[0].package.clone(),
                first: w[0].version.clone(),
                second: w[1].version.clone(),
            });
        }
        let manifest = Manifest { store_dir: self.store_dir, systems, drvs, jobs };
        manifest.validate()?;
        Ok(manifest)
    }
}
