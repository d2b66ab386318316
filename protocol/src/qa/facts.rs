//! What the node knows about one derivation ([`DrvFacts`]), the input of every QA answer.
//!
//! The node builds these from its mesh state (claims, failures, attestations) and its trust rule;
//! the QA engine never looks anything up itself. [`RevisionFacts::collect`] asks the node once per
//! derivation of a manifest's graph, so that status, weather and coverage share one lookup.

use serde::{Deserialize, Serialize};

use crate::revision::{Manifest, ManifestDrv};
use crate::store_path::StorePath;

/// The mesh's state of one derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactState {
    /// The mesh knows nothing about it (never submitted, or not seen yet).
    #[default]
    Unknown,
    /// Submitted, waiting for a builder.
    Queued,
    /// A builder holds a live claim on it.
    Building,
    /// At least one trusted attestation exists.
    Succeeded,
    /// The mesh gave up on it (signed failures).
    Failed,
}

/// The agreement of the builders on a succeeded derivation's outputs (the worst over its outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputVerdict {
    /// Two or more builders, all agreeing on every output.
    Matching,
    /// Only one builder attested (inconclusive).
    Single,
    /// Two or more builders disagree on some output.
    NotMatching,
}

impl OutputVerdict {
    /// `matching`, `single` or `not-matching`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputVerdict::Matching => "matching",
            OutputVerdict::Single => "single",
            OutputVerdict::NotMatching => "not-matching",
        }
    }
}

/// What a user can get of one output path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFacts {
    /// The output path.
    pub path: StorePath,
    /// Substitutable now under the node's quorum policy.
    pub available: bool,
    /// Its NarSize (0 when unknown).
    pub nar_size: u64,
    /// The compressed size of its NAR, when known.
    pub nar_size_compressed: Option<u64>,
}

impl OutputFacts {
    /// The facts of `path`.
    pub fn new(path: StorePath, available: bool, nar_size: u64, nar_size_compressed: Option<u64>) -> OutputFacts {
        OutputFacts { path, available, nar_size, nar_size_compressed }
    }
}

/// Everything the QA engine needs to know about one derivation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrvFacts {
    /// The mesh's state of the derivation.
    pub state: FactState,
    /// With `Succeeded`: the worst verdict over its outputs.
    pub verdict: Option<OutputVerdict>,
    /// With `Failed`: who failed it and the signed reason (short text), as (builder, reason).
    pub failures: Vec<(String, String)>,
    /// Builders that attested it (trusted ones first), as display strings.
    pub builders: Vec<String>,
    /// Per output path: availability and sizes.
    pub outputs: Vec<OutputFacts>,
    /// When the first trusted attestation was made (unix ms), for builds per hour.
    pub built_at_ms: Option<u64>,
}

impl DrvFacts {
    /// The facts of `path` among [`DrvFacts::outputs`], if the node gave any.
    pub fn output(&self, path: &StorePath) -> Option<&OutputFacts> {
        self.outputs.iter().find(|o| &o.path == path)
    }
}

/// Where the node's facts come from: anything that answers for one `.drv` path.
pub trait DrvFactsSource {
    /// The facts of the derivation `drv` (an unknown derivation gets `DrvFacts::default()`).
    fn facts(&self, drv: &StorePath) -> DrvFacts;
}

impl<F: Fn(&StorePath) -> DrvFacts> DrvFactsSource for F {
    fn facts(&self, drv: &StorePath) -> DrvFacts {
        self(drv)
    }
}

/// The facts of every derivation of one manifest, indexed like [`Manifest::drvs`].
///
/// Collected once ([`RevisionFacts::collect`]) and shared by status, weather and coverage, so that
/// the node is asked once per derivation.
#[derive(Debug, Clone, Default)]
pub struct RevisionFacts {
    /// `drvs[i]` are the facts of `manifest.drvs[i]`.
    pub drvs: Vec<DrvFacts>,
}

impl RevisionFacts {
    /// Ask `source` about every derivation of `manifest`'s graph.
    pub fn collect(manifest: &Manifest, source: &dyn DrvFactsSource) -> RevisionFacts {
        RevisionFacts { drvs: manifest.drvs.iter().map(|d| source.facts(&d.drv)).collect() }
    }

    /// The facts of derivation `index` (default facts when out of range).
    pub fn get(&self, index: usize) -> &DrvFacts {
        static UNKNOWN: DrvFacts = DrvFacts {
            state: FactState::Unknown,
            verdict: None,
            failures: Vec::new(),
            builders: Vec::new(),
            outputs: Vec::new(),
            built_at_ms: None,
        };
        self.drvs.get(index).unwrap_or(&UNKNOWN)
    }
}

/// Whether every output of `drv` is available now. A derivation whose manifest entry names no
/// output (floating content-addressed) counts as available when the node gave facts for at least one
/// output and all of them are available.
pub(crate) fn all_outputs_available(drv: &ManifestDrv, facts: &DrvFacts) -> bool {
    if drv.outputs.is_empty() {
        return !facts.outputs.is_empty() && facts.outputs.iter().all(|o| o.available);
    }
    drv.outputs.iter().all(|o| facts.output(&o.path).is_some_and(|f| f.available))
}
