//! The JSON shapes of issue 13 item 8: field names and enum strings.

use serde_json::Value;

use super::fixture::{Builder, F, X86, facts, header};
use crate::qa::{
    CompareOptions, Comparison, OutputVerdict, RevisionShow, RevisionStatus, RevisionSummary, Weather, WeatherOptions,
    compare, revision_status, weather,
};

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    k.sort();
    k
}

fn has(v: &Value, names: &[&str]) {
    let k = keys(v);
    for n in names {
        assert!(k.contains(n), "missing {n} in {k:?}");
    }
}

#[test]
fn shapes_of_item_8() {
    let base = Builder::new().drv("dep", X86, &[]).pkg("a", "1", X86, &["dep"]).pkg("b", "1", X86, &[]).build();
    let target = Builder::new().drv("dep", X86, &[]).pkg("a", "2", X86, &["dep"]).pkg("b", "1", X86, &[]).build();
    let bf = facts(&base, &[("a-1", F::Ok(OutputVerdict::NotMatching)), ("b-1", F::Ok(OutputVerdict::Matching))], 0);
    let tf = facts(&target, &[("dep", F::Failed), ("b-1", F::Ok(OutputVerdict::Matching))], 0);
    let bs = revision_status(&base, &bf);
    let ts = revision_status(&target, &tf);

    let show = RevisionShow { summary: RevisionSummary::new(&header("c2", 5)), status: ts.clone() };
    let v = serde_json::to_value(&show).expect("json");
    has(&v, &["revision", "channel", "branch", "commit", "submitter", "jobs", "counts"]);
    assert_eq!(v["revision"], "nixpkgs@c2");
    let job = &v["jobs"][0];
    has(job, &["package", "version", "system", "drv", "status", "verdict"]);
    assert_eq!(job["status"], "blocked");
    assert_eq!(job["verdict"], Value::Null);
    assert!(job["blocked_by"].as_str().expect("named").ends_with("-dep.drv"));
    assert_eq!(v["jobs"][1]["verdict"], "matching");
    assert_eq!(v["counts"][X86]["blocked"], 1);
    has(&v["counts"][X86], &["succeeded", "failed", "blocked", "building", "queued", "unknown"]);
    let back: RevisionShow = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, show);

    let c = compare("nixpkgs@c1", &bs, "nixpkgs@c2", &ts, &CompareOptions::default());
    let v = serde_json::to_value(&c).expect("json");
    has(
        &v,
        &["base", "target", "new_packages", "removed_packages", "version_changes", "derivation_changes", "summary"],
    );
    has(&v["version_changes"][0], &["package", "base_version", "target_version"]);
    let d = &v["derivation_changes"][0];
    has(d, &["package", "system", "base_drv", "target_drv", "build_change", "repro_change"]);
    assert_eq!(d["build_change"], "blocked");
    assert_eq!(v["derivation_changes"][1]["build_change"], "still-working");
    for class in [
        "broken",
        "fixed",
        "still-failing",
        "still-working",
        "blocked",
        "unknown",
        "newly-not-matching",
        "newly-matching",
        "still-not-matching",
        "unchanged",
    ] {
        assert!(v["summary"][class].is_u64(), "summary.{class}");
    }
    assert_eq!(v["summary"]["build_change"]["still-working"], 1);
    let back: Comparison = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, c);

    let w = weather(&target, &tf, 0, WeatherOptions { coverage: true, display_missing: false });
    let v = serde_json::to_value(&w).expect("json");
    has(&v, &["systems", "coverage"]);
    has(
        &v["systems"][X86],
        &[
            "total",
            "available",
            "ratio",
            "queued",
            "building",
            "failed",
            "nar_bytes",
            "nar_bytes_compressed",
            "builds_per_hour",
        ],
    );
    has(&v["coverage"][0], &["drv", "package", "system", "dependents"]);
    assert_eq!(v["coverage"][0]["package"], "dep");
    assert_eq!(v["coverage"][0]["dependents"], 1);
    let back: Weather = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, w);
    let _: RevisionStatus = serde_json::from_value(serde_json::to_value(&ts).expect("json")).expect("round trip");
}
