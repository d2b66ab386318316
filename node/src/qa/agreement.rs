//! Per-builder agreement from the attestation index: how many builds each builder attested and
//! failed, and of its outputs that another builder also attested, how many agree with the
//! majority. What the dashboard's builders and reproducibility pages show; read-only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{QaContext, QaError};

/// One builder's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BuilderAgreement {
    /// Its node id (hex; the builder of the QA answers).
    pub node_id: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Whether its attestations count here.
    pub trusted: bool,
    /// Derivations it attested.
    pub builds: u64,
    /// Derivations it signed a failure of.
    pub failed: u64,
    /// Outputs it attested.
    pub outputs: u64,
    /// Of them, outputs another builder attested too.
    pub compared: u64,
    /// Of those, where its NarHash is the one every builder (or a strict majority) has.
    pub agreed: u64,
    /// Of those, where it differs from the others (or there is no majority).
    pub disagreed: u64,
    /// `agreed / compared`, when it compared anything.
    pub agreement: Option<f64>,
}

impl QaContext {
    /// Every builder the store has attestations or failures of, with its agreement (blocking;
    /// one pass over the in-memory index).
    pub fn builder_agreement(&self) -> Result<Vec<BuilderAgreement>, QaError> {
        let st = self.inner.index.refreshed(&self.inner.store)?;
        let mut out: Vec<BuilderAgreement> = st
            .builders
            .iter()
            .map(|b| BuilderAgreement {
                node_id: b.to_string(),
                peer_id: b.to_peer_id(),
                trusted: self.inner.trust.is_trusted(b),
                ..BuilderAgreement::default()
            })
            .collect();
        let mut per_output: Vec<([u8; 20], u32, [u8; 32])> = Vec::new();
        for d in st.drvs.values() {
            for b in &d.failed_by {
                out[*b as usize].failed += 1;
            }
            per_output.clear();
            let mut builders: Vec<u32> = Vec::new();
            for a in &d.attestations {
                if !builders.contains(&a.builder) {
                    builders.push(a.builder);
                }
                per_output.extend(a.outputs.iter().map(|o| (o.path, a.builder, o.nar_hash)));
            }
            for b in builders {
                out[b as usize].builds += 1;
            }
            // One NarHash per (output, builder): its first statement.
            per_output.sort_by_key(|(p, b, _)| (*p, *b));
            per_output.dedup_by_key(|(p, b, _)| (*p, *b));
            for group in per_output.chunk_by(|a, b| a.0 == b.0) {
                let mut hashes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
                for (_, _, h) in group {
                    *hashes.entry(*h).or_default() += 1;
                }
                let majority = hashes.iter().find(|(_, n)| **n * 2 > group.len()).map(|(h, _)| *h);
                for (_, b, h) in group {
                    let s = &mut out[*b as usize];
                    s.outputs += 1;
                    if group.len() < 2 {
                        continue;
                    }
                    s.compared += 1;
                    if Some(*h) == majority {
                        s.agreed += 1;
                    } else {
                        s.disagreed += 1;
                    }
                }
            }
        }
        for s in &mut out {
            s.agreement = (s.compared > 0).then(|| s.agreed as f64 / s.compared as f64);
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }
}
