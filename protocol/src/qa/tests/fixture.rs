//! Build small manifests and facts by name.

use std::collections::HashMap;

use crate::qa::{DrvFacts, FactState, OutputFacts, OutputVerdict, RevisionFacts};
use crate::revision::{Manifest, ManifestDrv, ManifestJob, ManifestOutput};
use crate::store_path::{StoreDir, StorePath};

/// A store path named `name` with a digest derived from the name (and `salt`, to make two
/// revisions' derivations of the same name differ).
pub(super) fn sp(name: &str) -> StorePath {
    let h = blake3::hash(name.as_bytes());
    let mut d = [0u8; 20];
    d.copy_from_slice(&h.as_bytes()[..20]);
    StorePath::new(d, name).expect("valid name")
}

/// A derivation of the fixture: name (`hello-1.drv`), system, input names, output names.
#[derive(Debug, Clone)]
pub(super) struct D {
    pub(super) name: String,
    pub(super) system: String,
    pub(super) inputs: Vec<String>,
    pub(super) outputs: Vec<String>,
}

/// A manifest under construction.
#[derive(Debug, Default, Clone)]
pub(super) struct Builder {
    drvs: Vec<D>,
    jobs: Vec<(String, String, String)>,
}

pub(super) const X86: &str = "x86_64-linux";
pub(super) const ARM: &str = "aarch64-linux";

impl Builder {
    pub(super) fn new() -> Builder {
        Builder::default()
    }

    /// A derivation `name` (`.drv` appended) on `system` with `inputs` (names without `.drv`)
    /// and one output `out`.
    pub(super) fn drv(mut self, name: &str, system: &str, inputs: &[&str]) -> Builder {
        self.drvs.push(D {
            name: format!("{name}.drv"),
            system: system.to_string(),
            inputs: inputs.iter().map(|i| format!("{i}.drv")).collect(),
            outputs: vec!["out".to_string()],
        });
        self
    }

    /// The outputs of the last derivation added.
    pub(super) fn outputs(mut self, outputs: &[&str]) -> Builder {
        self.drvs.last_mut().expect("a drv").outputs = outputs.iter().map(|o| o.to_string()).collect();
        self
    }

    /// A job `package` at `version` built by `drv` (name without `.drv`).
    pub(super) fn job(mut self, package: &str, version: &str, drv: &str) -> Builder {
        self.jobs.push((package.to_string(), version.to_string(), format!("{drv}.drv")));
        self
    }

    /// A derivation and a job for it: package `p`, version `v`, drv `p-v` (or `p-v-system` for
    /// a second system).
    pub(super) fn pkg(self, p: &str, v: &str, system: &str, inputs: &[&str]) -> Builder {
        let name = drv_name(p, v, system);
        self.drv(&name, system, inputs).job(p, v, &name)
    }

    pub(super) fn build(self) -> Manifest {
        let mut systems: Vec<String> = self.drvs.iter().map(|d| d.system.clone()).collect();
        systems.sort();
        systems.dedup();
        let mut drvs: Vec<(StorePath, &D)> = self.drvs.iter().map(|d| (sp(&d.name), d)).collect();
        drvs.sort_by(|a, b| a.0.cmp(&b.0));
        let index: HashMap<&str, u32> =
            drvs.iter().enumerate().map(|(i, (_, d))| (d.name.as_str(), i as u32)).collect();
        let mdrvs = drvs
            .iter()
            .map(|(path, d)| {
                let mut inputs: Vec<u32> = d.inputs.iter().map(|i| index[i.as_str()]).collect();
                inputs.sort();
                inputs.dedup();
                let base = d.name.strip_suffix(".drv").expect("drv");
                let mut outputs: Vec<ManifestOutput> = d
                    .outputs
                    .iter()
                    .map(|o| ManifestOutput {
                        name: o.clone(),
                        path: sp(&if o == "out" { base.to_string() } else { format!("{base}-{o}") }),
                    })
                    .collect();
                outputs.sort_by(|a, b| a.name.cmp(&b.name));
                ManifestDrv {
                    drv: path.clone(),
                    system: systems.iter().position(|s| *s == d.system).expect("system") as u16,
                    inputs,
                    outputs,
                }
            })
            .collect();
        let mut jobs: Vec<ManifestJob> = self
            .jobs
            .iter()
            .map(|(p, v, d)| ManifestJob { drv: index[d.as_str()], package: p.clone(), version: v.clone() })
            .collect();
        jobs.sort_by(|a, b| (&a.package, a.drv).cmp(&(&b.package, b.drv)));
        Manifest { store_dir: StoreDir::nix(), systems, drvs: mdrvs, jobs }
    }
}

/// The drv name the fixture gives package `p` at `v` on `system`.
pub(super) fn drv_name(p: &str, v: &str, system: &str) -> String {
    if system == X86 { format!("{p}-{v}") } else { format!("{p}-{v}-{}", system.split('-').next().unwrap_or(system)) }
}

/// What the node "knows" about a derivation in a fixture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum F {
    /// Succeeded, every output available, this verdict.
    Ok(OutputVerdict),
    /// Succeeded, but the outputs are not available (quorum not reached).
    OkUnavailable,
    Failed,
    Building,
    Queued,
}

/// Facts by drv name (without `.drv`); unnamed derivations are unknown. Every available output
/// has NarSize 1000 and compressed size 400; `built_at_ms` is `built`.
pub(super) fn facts(manifest: &Manifest, known: &[(&str, F)], built: u64) -> RevisionFacts {
    let map: HashMap<String, F> = known.iter().map(|(n, f)| (format!("{n}.drv"), *f)).collect();
    let source = |path: &StorePath| -> DrvFacts {
        let Some(f) = map.get(path.name()) else { return DrvFacts::default() };
        let drv = manifest.drvs.iter().find(|d| &d.drv == path).expect("drv of the manifest");
        let outputs = |available: bool| {
            drv.outputs.iter().map(|o| OutputFacts::new(o.path.clone(), available, 1000, Some(400))).collect()
        };
        match f {
            F::Ok(v) => DrvFacts {
                state: FactState::Succeeded,
                verdict: Some(*v),
                builders: vec!["b1".into(), "b2".into()],
                outputs: outputs(true),
                built_at_ms: Some(built),
                ..DrvFacts::default()
            },
            F::OkUnavailable => DrvFacts {
                state: FactState::Succeeded,
                verdict: Some(OutputVerdict::Single),
                builders: vec!["b1".into()],
                outputs: outputs(false),
                built_at_ms: Some(built),
                ..DrvFacts::default()
            },
            F::Failed => DrvFacts {
                state: FactState::Failed,
                failures: vec![("b1".into(), "exit 1".into())],
                ..DrvFacts::default()
            },
            F::Building => DrvFacts { state: FactState::Building, ..DrvFacts::default() },
            F::Queued => DrvFacts { state: FactState::Queued, ..DrvFacts::default() },
        }
    };
    RevisionFacts::collect(manifest, &source)
}

/// The absolute path of drv `name` (without `.drv`).
pub(super) fn abs(name: &str) -> String {
    StoreDir::nix().display(&sp(&format!("{name}.drv")))
}

/// A header for channel `nixpkgs`, branch `master`, commit `commit`, created at `created_at_ms`.
pub(super) fn header(commit: &str, created_at_ms: u64) -> crate::revision::RevisionHeader {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    crate::revision::RevisionHeader {
        submitter: crate::id::NodeId::from_verifying_key(key).expect("a key"),
        created_at_ms,
        store_dir: StoreDir::nix(),
        channel: "nixpkgs".into(),
        branch: "master".into(),
        commit: commit.into(),
        manifest_hash: [0; 32],
        manifest_size: 0,
        drv_count: 0,
        jobs_per_system: Default::default(),
        replicas: 2,
    }
}
