//! What auditors see: every attestation of an output, the verdict over them, per-builder
//! statistics, and a signed export that can be re-checked offline.
//!
//! Everything here reads signed envelopes from the [`Store`] and verifies them again before use:
//! an auditor trusts signatures, not the node that relays them. The JSON shapes are the ones
//! `buildmesh query --json` and `buildmesh audit --json` print:
//!
//! ```json
//! {"path": "/nix/store/…", "verdict": "match", "attestations": [{"builder_key": "name:base64",
//!   "nar_hash": "sha256:…", "nar_size": 123, "emulated": false, "signature": "name:base64", …}]}
//! ```
//!
//! The export ([`export_jsonl`]) is one JSON object per line, each carrying the whole signed
//! envelope in base64; [`verify_export`] re-verifies every line and recomputes the verdicts.

pub mod diff;
pub mod intoto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use buildmesh_protocol::signed::{Signed, Verified};
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::verdict::{Observation, TrustPolicy, Verdict, assess};
use buildmesh_protocol::wire::{Attestation, BuildFailure, BuildMode, FailureReason};
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::store::{StoreError, StoredAttestation, StoredFailure};

/// Largest export line [`verify_export`] reads (an envelope is at most 63 KiB, base64 grows it).
pub const MAX_EXPORT_LINE: usize = 256 * 1024;
/// Attestations read from the store per page.
const PAGE: usize = 1024;

/// Failures of the audit functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored envelope no longer verifies (the database was altered).
    #[error("stored attestation {id} does not verify: {reason}")]
    BadStored {
        /// Its message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Writing the export failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// One builder's statement about one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationView {
    /// The builder's public key in Nix form (`name:base64`).
    pub builder_key: String,
    /// The builder's libp2p peer id.
    pub peer_id: String,
    /// The derivation built.
    pub drv: String,
    /// NarHash as `sha256:<nix32>`.
    pub nar_hash: String,
    /// NarSize.
    pub nar_size: u64,
    /// References (full store paths).
    pub references: Vec<String>,
    /// Built under emulation.
    pub emulated: bool,
    /// Unix ms the build started.
    pub started_at: u64,
    /// Unix ms the build finished.
    pub finished_at: u64,
    /// The builder's Nix signature of the output's fingerprint (`name:base64`).
    pub signature: String,
    /// The attestation's message id (hex).
    pub message_id: String,
}

/// Everything known about one output path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputReport {
    /// The output store path.
    pub path: String,
    /// `match`, `mismatch`, `single` or `none`.
    pub verdict: Verdict,
    /// Every attestation, one per (builder, message).
    pub attestations: Vec<AttestationView>,
    /// A mismatch where the native builders agree and only emulated builders got something else:
    /// most likely a bug of the emulator, not an unreproducible build
    /// ([`likely_emulation_bug`]).
    #[serde(default)]
    pub likely_emulation_bug: bool,
}

impl OutputReport {
    /// The `guix challenge` class of this output: match, mismatch or inconclusive.
    pub fn class(&self) -> &'static str {
        self.verdict.challenge_class()
    }
}

/// Per-builder statistics of an audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderStats {
    /// The builder's public key (`name:base64`).
    pub builder_key: String,
    /// Outputs it attested.
    pub outputs: u64,
    /// Of those, outputs whose verdict is `match`.
    pub matched: u64,
    /// Of those, outputs whose verdict is `mismatch`.
    pub mismatched: u64,
    /// Of those, outputs only it attested.
    pub single: u64,
    /// Of the mismatched ones, outputs where it disagrees with the majority (or every other
    /// builder when there is no majority).
    pub disagreed: u64,
}

/// The result of [`audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// One report per output, sorted by path.
    pub outputs: Vec<OutputReport>,
    /// One entry per builder, sorted by key.
    pub builders: Vec<BuilderStats>,
    /// Count of outputs per class (`match`, `mismatch`, `inconclusive`).
    pub totals: BTreeMap<String, u64>,
}

/// The per-output views of one verified attestation.
pub fn views_of(att: &Verified<Attestation>) -> Vec<(StorePath, AttestationView)> {
    let a = att.value();
    let store_dir = &a.store_dir;
    let id = hex::encode(att.id().as_bytes());
    a.outputs
        .values()
        .map(|o| {
            let key_name = o.nix_signature.key_name().to_string();
            let builder_key =
                a.builder.nix_public_key(&key_name).map(|k| k.to_string()).unwrap_or_else(|_| format!("{key_name}:?"));
            let view = AttestationView {
                builder_key,
                peer_id: a.builder.to_peer_id(),
                drv: store_dir.display(&a.drv),
                nar_hash: o.nar_hash().to_string(),
                nar_size: o.nar_size,
                references: o.references.iter().map(|r| store_dir.display(r)).collect(),
                emulated: a.mode == BuildMode::Emulated,
                started_at: a.started_at_ms,
                finished_at: a.finished_at_ms,
                signature: o.nix_signature.to_string(),
                message_id: id.clone(),
            };
            (o.path.clone(), view)
        })
        .collect()
}

/// One builder's signed statement that a build of a derivation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureView {
    /// The builder's libp2p peer id.
    pub peer_id: String,
    /// The builder's ed25519 public key, base64.
    pub public_key: String,
    /// The derivation.
    pub drv: String,
    /// The builder's attempt number.
    pub attempt: u32,
    /// Built under emulation.
    pub emulated: bool,
    /// When it failed (Unix ms, the builder's clock).
    pub at: u64,
    /// Whether the same build elsewhere would fail the same way (builder exit, hash mismatch).
    pub deterministic: bool,
    /// Why, in words.
    pub reason: String,
}

/// The failure reason in words.
pub fn describe(reason: &FailureReason) -> String {
    match reason {
        FailureReason::BuilderExit { code } => format!("builder exited with code {code}"),
        FailureReason::BuilderSignal { signal } => format!("builder killed by signal {signal}"),
        FailureReason::Timeout { limit_ms } => format!("timed out after {} s", limit_ms / 1000),
        FailureReason::HashMismatch { output, expected, actual } => {
            format!("output {output}: hash mismatch: declared {expected}, got {actual}")
        }
        FailureReason::MissingInput { path } => format!("missing input {path}"),
        FailureReason::Executor { message } => format!("executor: {message}"),
        FailureReason::Other { message } => message.clone(),
        other => format!("{other:?}"),
    }
}

/// Every failure of `drv` this node holds, each envelope verified again, oldest first.
pub fn failures_of(store: &Store, drv: &StorePath) -> Result<Vec<FailureView>, AuditError> {
    let mut out: Vec<FailureView> = store.failures_for_drv(drv)?.iter().map(failure_view).collect::<Result<_, _>>()?;
    out.sort_by(|a, b| (a.at, &a.peer_id).cmp(&(b.at, &b.peer_id)));
    Ok(out)
}

fn failure_view(stored: &StoredFailure) -> Result<FailureView, AuditError> {
    let id = hex::encode(stored.entry.id.as_bytes());
    let signed = Signed::<BuildFailure>::decode(&stored.entry.envelope)
        .map_err(|e| AuditError::BadStored { id: id.clone(), reason: e.to_string() })?;
    let v = signed.verify().map_err(|e| AuditError::BadStored { id, reason: e.to_string() })?;
    let f = v.value();
    Ok(FailureView {
        peer_id: f.builder.to_peer_id(),
        public_key: BASE64.encode(f.builder.as_bytes()),
        drv: f.store_dir.display(&f.drv),
        attempt: f.attempt,
        emulated: f.mode == BuildMode::Emulated,
        at: f.at_ms,
        deterministic: f.reason.is_deterministic(),
        reason: describe(&f.reason),
    })
}

/// Decode and verify a stored attestation's envelope.
pub fn verify_stored(stored: &StoredAttestation) -> Result<Verified<Attestation>, AuditError> {
    let id = hex::encode(stored.entry.id.as_bytes());
    let signed = Signed::<Attestation>::decode(&stored.entry.envelope)
        .map_err(|e| AuditError::BadStored { id: id.clone(), reason: e.to_string() })?;
    signed.verify().map_err(|e| AuditError::BadStored { id, reason: e.to_string() })
}

/// The verdict over a set of views of one output (distinct builders by key).
pub fn verdict_of(views: &[AttestationView]) -> Verdict {
    let obs: Vec<Observation<String>> = views
        .iter()
        .map(|v| Observation { builder: v.builder_key.clone(), nar_hash: v.nar_hash.clone(), nar_size: v.nar_size })
        .collect();
    let policy = TrustPolicy { trusted: BTreeSet::new(), quorum: usize::MAX };
    assess(obs.iter(), &policy).verdict
}

fn report(path: String, mut views: Vec<AttestationView>) -> OutputReport {
    views.sort_by(|a, b| {
        (&a.builder_key, a.finished_at, &a.message_id).cmp(&(&b.builder_key, b.finished_at, &b.message_id))
    });
    views.dedup_by(|a, b| a.message_id == b.message_id && a.builder_key == b.builder_key);
    OutputReport {
        verdict: verdict_of(&views),
        likely_emulation_bug: likely_emulation_bug(&views),
        path,
        attestations: views,
    }
}

/// Whether the attestations of one output disagree along the build mode: every native builder
/// got one NarHash and at least one emulated builder got another. Such a mismatch points at the
/// emulator (QEMU user mode) rather than at the build, which the native builders reproduce.
pub fn likely_emulation_bug(views: &[AttestationView]) -> bool {
    let native: BTreeSet<(&str, u64)> =
        views.iter().filter(|v| !v.emulated).map(|v| (v.nar_hash.as_str(), v.nar_size)).collect();
    let mut native = native.into_iter();
    let (Some(one), None) = (native.next(), native.next()) else { return false };
    views.iter().any(|v| v.emulated && (v.nar_hash.as_str(), v.nar_size) != one)
}

/// Every attestation of `path` the store holds, with the verdict.
pub fn query_path(store: &Store, path: &StorePath) -> Result<OutputReport, AuditError> {
    let mut views = Vec::new();
    let mut abs = None;
    for stored in store.attestations_for_output(path)? {
        let att = verify_stored(&stored)?;
        for (p, v) in views_of(&att) {
            if &p == path {
                abs.get_or_insert_with(|| att.value().store_dir.display(&p));
                views.push(v);
            }
        }
    }
    let abs = abs.unwrap_or_else(|| path.to_string());
    Ok(report(abs, views))
}

/// One report per output of `drv`, from the attestations of that derivation.
pub fn query_drv(store: &Store, drv: &StorePath) -> Result<Vec<OutputReport>, AuditError> {
    let mut by_path: BTreeMap<String, Vec<AttestationView>> = BTreeMap::new();
    for stored in store.attestations_for_drv(drv)? {
        let att = verify_stored(&stored)?;
        let store_dir = att.value().store_dir.clone();
        for (p, v) in views_of(&att) {
            by_path.entry(store_dir.display(&p)).or_default().push(v);
        }
    }
    Ok(by_path.into_iter().map(|(p, v)| report(p, v)).collect())
}

/// Visit every stored attestation, verified, in local sequence order.
pub fn for_each_attestation(
    store: &Store,
    mut f: impl FnMut(&StoredAttestation, Verified<Attestation>) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    for_each_stored(store, None, |stored| f(stored, verify_stored(stored)?))
}

/// Visit the stored attestations in local sequence order as stored (not verified), up to and
/// including sequence number `through` when given (what was stored later is left out).
pub fn for_each_stored(
    store: &Store,
    through: Option<u64>,
    mut f: impl FnMut(&StoredAttestation) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let mut cursor = 0u64;
    loop {
        let page = store.attestations_since(cursor, PAGE)?;
        if page.is_empty() {
            return Ok(());
        }
        for stored in &page {
            if through.is_some_and(|t| stored.seq > t) {
                return Ok(());
            }
            // `attestations_since` is inclusive: continue after the last one seen.
            cursor = cursor.max(stored.seq + 1);
            f(stored)?;
        }
    }
}

/// Classify every output in the store's view and compute per-builder statistics.
pub fn audit(store: &Store) -> Result<AuditReport, AuditError> {
    let mut by_path: BTreeMap<String, Vec<AttestationView>> = BTreeMap::new();
    for_each_attestation(store, |_, att| {
        let store_dir = att.value().store_dir.clone();
        for (p, v) in views_of(&att) {
            by_path.entry(store_dir.display(&p)).or_default().push(v);
        }
        Ok(())
    })?;
    Ok(audit_reports(by_path.into_iter().map(|(p, v)| report(p, v)).collect()))
}

/// Statistics and totals over already-built output reports.
pub fn audit_reports(outputs: Vec<OutputReport>) -> AuditReport {
    let mut builders: BTreeMap<String, BuilderStats> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for class in ["match", "mismatch", "inconclusive"] {
        totals.insert(class.to_string(), 0);
    }
    for out in &outputs {
        *totals.entry(out.class().to_string()).or_default() += 1;
        // The hash most distinct builders agree on, when there is a strict majority.
        let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for v in &out.attestations {
            groups.entry(&v.nar_hash).or_default().insert(&v.builder_key);
        }
        let total: usize = groups.values().map(|g| g.len()).sum();
        let majority = groups.iter().find(|(_, g)| g.len() * 2 > total).map(|(h, _)| *h);
        let keys: BTreeSet<&str> = out.attestations.iter().map(|v| v.builder_key.as_str()).collect();
        for key in keys {
            let s = builders
                .entry(key.to_string())
                .or_insert_with(|| BuilderStats { builder_key: key.to_string(), ..BuilderStats::default() });
            s.outputs += 1;
            match out.verdict {
                Verdict::Match => s.matched += 1,
                Verdict::Mismatch => {
                    s.mismatched += 1;
                    let agrees = majority.is_some_and(|h| groups.get(h).is_some_and(|g| g.contains(key)));
                    if !agrees {
                        s.disagreed += 1;
                    }
                }
                Verdict::Single => s.single += 1,
                Verdict::None => {}
            }
        }
    }
    AuditReport { outputs, builders: builders.into_values().collect(), totals }
}

/// One line of the export: the envelope plus readable fields (which [`verify_export`] ignores in
/// favour of what the envelope says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLine {
    /// Message id (hex).
    pub id: String,
    /// The derivation.
    pub drv: String,
    /// The builder's peer id.
    pub builder: String,
    /// The outputs attested, `path -> NarHash`.
    pub outputs: BTreeMap<String, String>,
    /// The signed envelope, base64.
    pub envelope: String,
    /// When this node received (or made) it, Unix ms: with the builder's own line, how long the
    /// attestation took to arrive here (the WAN benchmark's propagation times).
    #[serde(default)]
    pub received_at_ms: u64,
}

/// Write every stored attestation as JSON lines. Returns how many were written.
pub fn export_jsonl(store: &Store, out: &mut dyn Write) -> Result<u64, AuditError> {
    let mut n = 0u64;
    for_each_attestation(store, |stored, att| {
        let a = att.value();
        let line = ExportLine {
            id: hex::encode(att.id().as_bytes()),
            drv: a.store_dir.display(&a.drv),
            builder: a.builder.to_peer_id(),
            outputs: a.outputs.values().map(|o| (a.store_dir.display(&o.path), o.nar_hash().to_string())).collect(),
            envelope: BASE64.encode(&stored.entry.envelope),
            received_at_ms: stored.entry.received_at,
        };
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// One export line that did not check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify_export`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Lines read (blank lines are skipped and not counted).
    pub lines: u64,
    /// Lines whose envelope verified.
    pub valid: u64,
    /// Lines that did not.
    pub bad: Vec<BadLine>,
    /// The audit recomputed from the valid lines alone.
    pub audit: AuditReport,
}

/// Re-verify an export offline: every envelope's ed25519 signature and every output's Nix
/// signature, and that the readable fields agree with the envelope; then recompute the verdicts.
pub fn verify_export(input: &mut dyn BufRead) -> Result<VerifyReport, std::io::Error> {
    let mut report = VerifyReport::default();
    let mut by_path: BTreeMap<String, Vec<AttestationView>> = BTreeMap::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = read_line_capped(input, &mut buf, MAX_EXPORT_LINE)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Some(text) = buf.strip_suffix(b"\n").or(Some(&buf[..])) else { continue };
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.lines += 1;
        match check_line(text) {
            Ok(att) => {
                report.valid += 1;
                let store_dir = att.value().store_dir.clone();
                for (p, v) in views_of(&att) {
                    by_path.entry(store_dir.display(&p)).or_default().push(v);
                }
            }
            Err(reason) => report.bad.push(BadLine { line: line_no, reason }),
        }
    }
    report.audit = audit_reports(by_path.into_iter().map(|(p, v)| report_for(p, v)).collect());
    Ok(report)
}

fn report_for(path: String, views: Vec<AttestationView>) -> OutputReport {
    report(path, views)
}

/// Reads one line (up to and including `\n`) but at most `cap` bytes; a longer line is an error.
fn read_line_capped(input: &mut dyn BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<usize> {
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("export line longer than {cap} bytes"),
            ));
        }
        buf.extend_from_slice(&available[..take]);
        input.consume(take);
        if done {
            return Ok(buf.len());
        }
    }
}

fn check_line(text: &[u8]) -> Result<Verified<Attestation>, String> {
    let line: ExportLine = serde_json::from_slice(text).map_err(|e| format!("not an export line: {e}"))?;
    let bytes = BASE64.decode(line.envelope.as_bytes()).map_err(|e| format!("field `envelope`: bad base64: {e}"))?;
    let signed = Signed::<Attestation>::decode(&bytes).map_err(|e| format!("field `envelope`: {e}"))?;
    let att = signed.verify().map_err(|e| format!("field `envelope`: {e}"))?;
    let id = hex::encode(att.id().as_bytes());
    if id != line.id {
        return Err(format!("field `id`: {} but the envelope's id is {id}", line.id));
    }
    let a = att.value();
    let drv = a.store_dir.display(&a.drv);
    if drv != line.drv {
        return Err(format!("field `drv`: {} but the envelope says {drv}", line.drv));
    }
    let outputs: BTreeMap<String, String> =
        a.outputs.values().map(|o| (a.store_dir.display(&o.path), o.nar_hash().to_string())).collect();
    if outputs != line.outputs {
        return Err("field `outputs` differs from the envelope".to_string());
    }
    Ok(att)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: &str, hash: &str) -> AttestationView {
        AttestationView {
            builder_key: key.into(),
            peer_id: String::new(),
            drv: "/nix/store/x.drv".into(),
            nar_hash: hash.into(),
            nar_size: 1,
            references: vec![],
            emulated: false,
            started_at: 0,
            finished_at: 0,
            signature: String::new(),
            message_id: format!("{key}{hash}"),
        }
    }

    #[test]
    fn builder_statistics_name_the_odd_one_out() {
        let outputs = vec![
            report("/nix/store/a".into(), vec![view("k1", "h1"), view("k2", "h1"), view("k3", "h2")]),
            report("/nix/store/b".into(), vec![view("k1", "h1"), view("k2", "h1")]),
            report("/nix/store/c".into(), vec![view("k3", "h1")]),
        ];
        let r = audit_reports(outputs);
        assert_eq!(r.totals["mismatch"], 1);
        assert_eq!(r.totals["match"], 1);
        assert_eq!(r.totals["inconclusive"], 1);
        let k3 = r.builders.iter().find(|b| b.builder_key == "k3").unwrap();
        assert_eq!((k3.outputs, k3.mismatched, k3.disagreed, k3.single), (2, 1, 1, 1));
        let k1 = r.builders.iter().find(|b| b.builder_key == "k1").unwrap();
        assert_eq!((k1.outputs, k1.matched, k1.mismatched, k1.disagreed), (2, 1, 1, 0));
        assert!(r.outputs.iter().all(|o| !o.likely_emulation_bug), "all native: plain unreproducibility");
    }

    #[test]
    fn a_mismatch_only_emulated_builders_cause_is_named() {
        let emu = |key: &str, hash: &str| AttestationView { emulated: true, ..view(key, hash) };
        let bug = report("/nix/store/a".into(), vec![view("n1", "h1"), view("n2", "h1"), emu("e1", "h2")]);
        assert_eq!(bug.verdict, Verdict::Mismatch);
        assert!(bug.likely_emulation_bug);
        // Native builders that disagree among themselves: the build is unreproducible.
        let plain = report("/nix/store/b".into(), vec![view("n1", "h1"), view("n2", "h2"), emu("e1", "h3")]);
        assert!(!plain.likely_emulation_bug);
        // Emulated builders agreeing with the natives: no mismatch, nothing to name.
        assert!(!report("/nix/store/c".into(), vec![view("n1", "h1"), emu("e1", "h1")]).likely_emulation_bug);
        // No native builder: nothing to compare with.
        assert!(!report("/nix/store/d".into(), vec![emu("e1", "h1"), emu("e2", "h2")]).likely_emulation_bug);
        let json = serde_json::to_value(&bug).unwrap();
        assert_eq!(json["likely_emulation_bug"], true);
    }

    #[test]
    fn export_lines_are_capped_and_bad_lines_named() {
        let mut input: &[u8] = b"\n{\"not\": 1}\n";
        let r = verify_export(&mut input).unwrap();
        assert_eq!(r.lines, 1);
        assert_eq!(r.valid, 0);
        assert_eq!(r.bad[0].line, 2);
        let long = vec![b'x'; MAX_EXPORT_LINE + 10];
        let mut input: &[u8] = &long;
        assert!(verify_export(&mut input).is_err());
    }
}
