//! `buildmesh explain DRV`: why a derivation is or is not building now, in words and JSON; and
//! the facts of single paths for `weather --manifest FILE`.
//!
//! Everything comes from what the node holds: the mesh machine's view of the derivation
//! (designated builders, live claims with their lease expiry, attesters, counted failures), the
//! live members' announcements (which systems they build natively or emulated, their features),
//! the signed failures with their reasons, the `.drv` (system, required features, inputs) from the
//! store or, when the node has no `.drv`, from a revision manifest that contains it.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::qa::{DrvFacts, FactState, PathItem};
use buildmesh_protocol::revision::Manifest;
use buildmesh_protocol::store_path::StorePath;
use serde::{Deserialize, Serialize};

use super::{QaContext, QaError, blocking, facts};
use crate::mesh::DrvInMesh;
use crate::store::unix_ms;

/// Most derivations `explain` walks to find failed inputs below unbuilt ones.
const MAX_WALK: usize = 100_000;

/// What this node builds, for `explain` (the mesh's members come from their announcements).
#[derive(Debug, Clone, Default)]
pub struct LocalCapabilities {
    /// Systems built natively.
    pub native: BTreeSet<String>,
    /// Systems built under emulation.
    pub emulated: BTreeSet<String>,
    /// System features offered.
    pub features: BTreeSet<String>,
}

/// A member able to build the derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EligibleMember {
    /// Its public key (base64) or `self`.
    pub node: String,
    /// `native` or `emulated`.
    pub mode: String,
}

/// Members able to build the derivation's system with its required features.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eligible {
    /// How many build it natively.
    pub native: usize,
    /// How many build it under emulation.
    pub emulated: usize,
    /// Members of the system lacking a required feature.
    pub missing_features: usize,
    /// Who.
    pub members: Vec<EligibleMember>,
}

/// A live claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// The claimant (node id, hex).
    pub builder: String,
    /// When its lease ends (unix ms, this node's clock).
    pub lease_expires_at_ms: u64,
}

/// A signed failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureInfo {
    /// The builder's public key (base64).
    pub builder: String,
    /// Its attempt.
    pub attempt: u32,
    /// Why, in words.
    pub reason: String,
    /// When (unix ms, the builder's clock).
    pub at: u64,
    /// The failed build ran under emulation (the signed failure says so).
    pub emulated: bool,
}

/// The answer of `buildmesh explain DRV`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The derivation (absolute path).
    pub drv: String,
    /// Its system, when known.
    pub system: Option<String>,
    /// Its required system features.
    pub required_features: Vec<String>,
    /// `succeeded`, `failed`, `blocked`, `building`, `queued` or `unknown` (as in a revision).
    pub status: String,
    /// The mesh machine's state: `active`, `complete`, `failed`, `pending` (a submission waiting
    /// for its inputs) or `unknown` (no job here).
    pub mesh_state: String,
    /// Why, in words, most important first.
    pub reasons: Vec<String>,
    /// Who could build it.
    pub eligible: Eligible,
    /// The designated builders at the last evaluation (node ids, hex).
    pub designated: Vec<String>,
    /// Live claims.
    pub claims: Vec<ClaimInfo>,
    /// Builders that attested it (node ids, hex).
    pub attesters: Vec<String>,
    /// Signed failures.
    pub failures: Vec<FailureInfo>,
    /// Input derivations not built yet.
    pub missing_inputs: Vec<String>,
    /// Input derivations that failed (the derivation is blocked by them).
    pub failed_inputs: Vec<String>,
    /// The revisions it belongs to (`C@ID`).
    pub revisions: Vec<String>,
    /// What would unblock it, when something would.
    pub unblock: Option<String>,
    /// The submitter this node refused a job of for this derivation (`submitters`), as
    /// `<hex node id> <base64 key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_submitter: Option<String>,
}

/// The derivation's system, required features and input derivations: from its `.drv` in the
/// store, else from a manifest that holds it.
struct DrvShape {
    system: Option<String>,
    features: Vec<String>,
    inputs: Vec<StorePath>,
    outputs: Vec<StorePath>,
    revisions: Vec<String>,
    /// A manifest this node holds that contains the derivation: the walk through unbuilt inputs
    /// reads its graph rather than one stored `.drv` (or manifest decode) per input.
    manifests: Vec<Arc<Manifest>>,
}

fn shape(ctx: &QaContext, drv: &StorePath) -> Result<DrvShape, QaError> {
    let sd = ctx.store_dir();
    let revisions_stored = ctx.store().revisions_of_drv(&drv.to_string())?;
    let mut revisions: Vec<String> = Vec::new();
    let mut from_manifest: Option<(String, Vec<StorePath>, Vec<StorePath>)> = None;
    let mut manifests: Vec<Arc<Manifest>> = Vec::new();
    for s in revisions_stored {
        let r = QaContext::verify(s)?;
        revisions.push(r.header.id().to_string());
        // One manifest that holds it is enough: a manifest is closed under inputs, so the walk
        // through unbuilt inputs never leaves it (and each decode of a 100,000-job manifest costs).
        if from_manifest.is_none()
            && let Ok(m) = ctx.manifest(&r)
        {
            from_manifest = manifest_shape(&m, drv);
            if from_manifest.is_some() {
                manifests.push(m);
            }
        }
    }
    revisions.sort();
    revisions.dedup();
    if let Some(aterm) = ctx.store().get_drv(drv)? {
        let d = Derivation::parse(&aterm, sd)
            .map_err(|e| QaError::Internal(format!("stored derivation {}: {e}", sd.display(drv))))?;
        let features = d
            .env
            .get(b"requiredSystemFeatures".as_slice())
            .map(|v| String::from_utf8_lossy(v).split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        return Ok(DrvShape {
            system: Some(String::from_utf8_lossy(&d.system).into_owned()),
            features,
            inputs: d.input_drvs.keys().cloned().collect(),
            outputs: d.outputs.values().filter_map(|o| o.path.clone()).collect(),
            revisions,
            manifests,
        });
    }
    Ok(match from_manifest {
        Some((system, inputs, outputs)) => {
            DrvShape { system: Some(system), features: Vec::new(), inputs, outputs, revisions, manifests }
        }
        None => DrvShape {
            system: None,
            features: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            revisions,
            manifests,
        },
    })
}

/// The input derivations of `drv`: from the first of `manifests` that holds it (one binary
/// search, no store read), else from its stored `.drv` or another revision's manifest.
fn inputs_of(ctx: &QaContext, manifests: &[Arc<Manifest>], drv: &StorePath) -> Result<Vec<StorePath>, QaError> {
    for m in manifests {
        if let Some((_, inputs, _)) = manifest_shape(m, drv) {
            return Ok(inputs);
        }
    }
    Ok(shape(ctx, drv)?.inputs)
}

fn manifest_shape(m: &Manifest, drv: &StorePath) -> Option<(String, Vec<StorePath>, Vec<StorePath>)> {
    let i = m.drv_index(drv)? as usize;
    let d = m.drvs.get(i)?;
    let inputs = d.inputs.iter().filter_map(|j| m.drvs.get(*j as usize)).map(|x| x.drv.clone()).collect();
    let outputs = d.outputs.iter().map(|o| o.path.clone()).collect();
    Some((m.drv_system(d).to_string(), inputs, outputs))
}

fn eligible(ctx: &QaContext, system: &str, features: &[String]) -> Eligible {
    let mut e = Eligible::default();
    let has = |offered: &BTreeSet<String>| features.iter().all(|f| offered.contains(f));
    let local = &ctx.inner.local;
    let mut consider = |node: String, native: bool, emulated: bool, offered: BTreeSet<String>| {
        if !native && !emulated {
            return;
        }
        if !has(&offered) {
            e.missing_features += 1;
            return;
        }
        let mode = if native { "native" } else { "emulated" };
        if native {
            e.native += 1;
        } else {
            e.emulated += 1;
        }
        e.members.push(EligibleMember { node, mode: mode.to_string() });
    };
    consider(
        "self".to_string(),
        local.native.contains(system),
        local.emulated.contains(system),
        local.features.clone(),
    );
    if let Some(mesh) = ctx.mesh() {
        for p in mesh.peers().into_iter().filter(|p| p.member) {
            consider(
                p.key.clone(),
                p.systems.native.iter().any(|s| s == system),
                p.systems.emulated.iter().any(|s| s == system),
                p.features.iter().cloned().collect(),
            );
        }
    }
    e
}

/// Explain `drv`.
pub async fn explain(ctx: &QaContext, drv: &StorePath) -> Result<Explanation, QaError> {
    let _slot = ctx.slot().await?;
    let this = ctx.clone();
    let d = drv.clone();
    let shape = blocking(move || shape(&this, &d)).await?;
    let mut asked = vec![drv.clone()];
    asked.extend(shape.inputs.iter().cloned());
    let states = match ctx.mesh() {
        Some(m) => m.jobs(asked.clone()).await.map_err(|e| QaError::Mesh(e.to_string()))?,
        None => vec![DrvInMesh::Unknown; asked.len()],
    };
    let this = ctx.clone();
    let d = drv.clone();
    let inputs = shape.inputs.clone();
    let outputs = shape.outputs.clone();
    let manifests = shape.manifests.clone();
    let st = states.clone();
    let (own, input_facts, failures, failed_deep) = blocking(move || {
        let now = unix_ms();
        let trust = &this.inner.trust;
        let outs: Vec<&StorePath> = outputs.iter().collect();
        let own = facts::facts_of(this.store(), &this.inner.index, trust, &d, &outs, &st[0], now)?;
        let mut input_facts = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            // The inputs' outputs are not needed to tell built from not built.
            let f = facts::facts_of(this.store(), &this.inner.index, trust, input, &[], &st[i + 1], now)?;
            input_facts.push((input.clone(), f));
        }
        // Failed inputs further down, through inputs that are not built (a built input blocks
        // nothing: its outputs exist), as a revision's status finds them.
        let mut failed_deep: BTreeSet<StorePath> = BTreeSet::new();
        let mut queue: VecDeque<StorePath> = VecDeque::new();
        for (p, f) in &input_facts {
            match f.state {
                FactState::Failed => {
                    failed_deep.insert(p.clone());
                }
                FactState::Succeeded => {}
                _ => queue.push_back(p.clone()),
            }
        }
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        while let Some(p) = queue.pop_front() {
            if !seen.insert(p.clone()) || seen.len() > MAX_WALK {
                continue;
            }
            for input in inputs_of(&this, &manifests, &p)? {
                let f = facts::facts_of(this.store(), &this.inner.index, trust, &input, &[], &DrvInMesh::Unknown, now)?;
                match f.state {
                    FactState::Failed => {
                        failed_deep.insert(input);
                    }
                    FactState::Succeeded => {}
                    _ => queue.push_back(input),
                }
            }
        }
        let failures = crate::audit::failures_of(this.store(), &d).unwrap_or_default();
        Ok((own, input_facts, failures, failed_deep))
    })
    .await?;
    let sd = ctx.store_dir();
    let mesh_state = match &states[0] {
        DrvInMesh::Unknown => "unknown".to_string(),
        DrvInMesh::Pending => "pending".to_string(),
        DrvInMesh::Tracked(v) => v.state.to_string(),
        DrvInMesh::Refused { .. } => "refused".to_string(),
    };
    let refused_submitter = match &states[0] {
        DrvInMesh::Refused { submitter } => Some(submitter_key(submitter)),
        _ => None,
    };
    // Sorted by path: the first is the one a revision's status names in `blocked_by`.
    let failed_inputs: Vec<String> = failed_deep.iter().map(|p| sd.display(p)).collect();
    let missing_inputs: Vec<String> =
        input_facts.iter().filter(|(_, f)| f.state != FactState::Succeeded).map(|(p, _)| sd.display(p)).collect();
    let status = match own.state {
        FactState::Succeeded => "succeeded",
        FactState::Failed => "failed",
        _ if !failed_inputs.is_empty() => "blocked",
        FactState::Building => "building",
        FactState::Queued => "queued",
        FactState::Unknown => "unknown",
    };
    let eligible = shape.system.as_deref().map(|s| eligible(ctx, s, &shape.features)).unwrap_or_default();
    let mut reasons = Vec::new();
    let mut unblock = None;
    let (designated, claims, attesters) = match &states[0] {
        DrvInMesh::Tracked(v) => (
            v.designated.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            v.claimants
                .iter()
                .zip(&v.lease_expiries_ms)
                .map(|(n, t)| ClaimInfo { builder: n.to_string(), lease_expires_at_ms: *t })
                .collect::<Vec<_>>(),
            v.attesters.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ),
        _ => (Vec::new(), Vec::new(), Vec::new()),
    };
    match status {
        "succeeded" => reasons.push(format!(
            "built: attested by {} builder(s) ({}); verdict {}",
            own.builders.len(),
            own.builders.join(", "),
            own.verdict.map_or("unknown", |v| v.as_str())
        )),
        "failed" if !failures.is_empty() && failures.iter().all(|f| f.emulated) => {
            reasons.push(format!(
                "the mesh gave up after {} signed failure(s), all under emulation: possibly an emulation problem",
                failures.len()
            ));
            unblock = Some("`buildmesh retry DRV --on PEER` with a peer that builds this system natively".to_string());
        }
        "failed" => {
            reasons.push(format!("the mesh gave up after {} signed failure(s)", failures.len()));
            unblock = Some("fix the derivation, or `buildmesh retry DRV` if the failure was transient".to_string());
        }
        "blocked" => {
            reasons.push(format!("blocked: input(s) failed: {}", failed_inputs.join(", ")));
            unblock = Some(format!("fix the failed input(s) {}", failed_inputs.join(", ")));
        }
        "building" => {
            for c in &claims {
                reasons.push(format!("being built by {} (lease until {} ms)", c.builder, c.lease_expires_at_ms));
            }
        }
        _ => {}
    }
    if status != "succeeded" {
        match shape.system.as_deref() {
            Some(system) if eligible.native + eligible.emulated == 0 => {
                let why = format!(
                    "no live member builds {system}; {} native, {} emulated{}",
                    eligible.native,
                    eligible.emulated,
                    if eligible.missing_features > 0 {
                        format!(
                            " ({} member(s) build {system} but lack a required feature: {})",
                            eligible.missing_features,
                            shape.features.join(" ")
                        )
                    } else {
                        String::new()
                    }
                );
                reasons.insert(0, why);
                unblock.get_or_insert_with(|| format!("add a member that builds {system} (natively or emulated)"));
            }
            Some(_) => {}
            None => reasons.push("this node has neither the .drv nor a revision that contains it".to_string()),
        }
        if status == "queued" || status == "unknown" {
            if !missing_inputs.is_empty() && failed_inputs.is_empty() {
                reasons.push(format!("waiting for input(s) not built yet: {}", missing_inputs.join(", ")));
            }
            match mesh_state.as_str() {
                "unknown" => {
                    reasons.push("the mesh has no job for it (not submitted, or not seen by this node)".into())
                }
                "pending" => reasons.push("submitted here; placed once its inputs are built".into()),
                "refused" => {
                    let who = refused_submitter.as_deref().unwrap_or("?");
                    reasons.insert(
                        0,
                        format!(
                            "refused: its submitter {who} is not one of this node's `submitters` \
                             (this node neither builds nor forwards that key's jobs)"
                        ),
                    );
                    unblock.get_or_insert_with(|| {
                        format!(
                            "add the submitter to `submitters` (--submitter NAME:{})",
                            who.rsplit(' ').next().unwrap_or("")
                        )
                    });
                }
                "active" if claims.is_empty() => reasons.push(format!(
                    "queued; designated builders: {}",
                    if designated.is_empty() { "none".to_string() } else { designated.join(", ") }
                )),
                _ => {}
            }
        }
    }
    // Over its disk limits this node takes no new builds (it announces no slots).
    if (status != "succeeded" || mesh_state == "active")
        && let Some(disk) = ctx.store().disk_pressure()
    {
        reasons.push(format!("this node takes no new builds: {disk}"));
    }
    Ok(Explanation {
        drv: sd.display(drv),
        system: shape.system,
        required_features: shape.features,
        status: status.to_string(),
        mesh_state,
        reasons,
        eligible,
        designated,
        claims,
        attesters,
        failures: failures
            .into_iter()
            .map(|f| FailureInfo {
                builder: f.public_key,
                attempt: f.attempt,
                reason: f.reason,
                at: f.at,
                emulated: f.emulated,
            })
            .collect(),
        missing_inputs,
        failed_inputs,
        revisions: shape.revisions,
        unblock,
        refused_submitter,
    })
}

/// A node id as `explain` names a submitter: `<hex node id> <base64 key>` (the base64 is what
/// follows `name:` in the Nix public key to put in `submitters`).
fn submitter_key(n: &buildmesh_protocol::id::NodeId) -> String {
    use base64::Engine as _;
    format!("{} {}", n, base64::engine::general_purpose::STANDARD.encode(n.as_bytes()))
}

/// The facts of each path of a `weather --manifest FILE` list: a `.drv` path with its outputs, an
/// output path on its own.
pub async fn path_items(ctx: &QaContext, paths: Vec<String>) -> Result<Vec<PathItem>, QaError> {
    const MAX_PATHS: usize = 1_000_000;
    if paths.len() > MAX_PATHS {
        return Err(QaError::BadRequest(format!("{} paths; at most {MAX_PATHS}", paths.len())));
    }
    let sd = ctx.store_dir().clone();
    let mut parsed = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let sp = sd.parse_path(p).map_err(|e| QaError::BadRequest(format!("path {} ({p:?}): {e}", i + 1)))?;
        parsed.push(sp);
    }
    let drvs: Vec<StorePath> = parsed.iter().filter(|p| p.is_derivation()).cloned().collect();
    let states = match ctx.mesh() {
        Some(m) if !drvs.is_empty() => {
            let mut out = Vec::new();
            for chunk in drvs.chunks(crate::mesh::MAX_JOBS_PER_CALL) {
                out.extend(m.jobs(chunk.to_vec()).await.map_err(|e| QaError::Mesh(e.to_string()))?);
            }
            out
        }
        _ => vec![DrvInMesh::Unknown; drvs.len()],
    };
    let this = ctx.clone();
    blocking(move || {
        let now = unix_ms();
        let trust = &this.inner.trust;
        let mut states = states.into_iter();
        let mut items = Vec::with_capacity(parsed.len());
        for (p, text) in parsed.iter().zip(paths) {
            if p.is_derivation() {
                let state = states.next().unwrap_or(DrvInMesh::Unknown);
                let sh = shape(&this, p)?;
                let outs: Vec<&StorePath> = sh.outputs.iter().collect();
                let f = facts::facts_of(this.store(), &this.inner.index, trust, p, &outs, &state, now)?;
                items.push(PathItem {
                    path: text,
                    system: sh.system.unwrap_or_else(|| "unknown".to_string()),
                    package: None,
                    facts: f,
                });
            } else {
                // An output path: its deriver from the attestations that name it.
                let atts = this.store().attestations_for_output(p)?;
                let (facts, system) = match atts.first() {
                    Some(a) => {
                        let drv = a.entry.drv.clone();
                        let sh = shape(&this, &drv)?;
                        (
                            facts::facts_of(
                                this.store(),
                                &this.inner.index,
                                trust,
                                &drv,
                                &[p],
                                &DrvInMesh::Unknown,
                                now,
                            )?,
                            sh.system.unwrap_or_else(|| "unknown".to_string()),
                        )
                    }
                    None => (DrvFacts::default(), "unknown".to_string()),
                };
                items.push(PathItem { path: text, system, package: None, facts });
            }
        }
        Ok(items)
    })
    .await
}
