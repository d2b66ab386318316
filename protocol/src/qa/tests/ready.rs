//! The ready verdict: each reason, and the rule's defaults and serde.

use super::fixture::{Builder, F, X86, facts, header};
use crate::qa::{
    CompareOptions, OutputVerdict, ReadyRule, ReasonCode, WeatherOptions, compare, ready, revision_status, weather,
};

const HOUR: u64 = 3_600_000;

#[test]
fn rule_defaults_and_serde() {
    let r: ReadyRule = serde_json::from_str("{}").expect("defaults");
    assert_eq!(
        r,
        ReadyRule { max_broken: 0, max_newly_not_matching: 0, min_availability: 0.95, max_unknown_age_hours: 24 }
    );
    let r: ReadyRule = serde_json::from_str(r#"{"max_broken": 3}"#).expect("partial");
    assert_eq!((r.max_broken, r.min_availability), (3, 0.95));
    let err = serde_json::from_str::<ReadyRule>(r#"{"max_brokn": 3}"#).expect_err("typo refused");
    assert!(err.to_string().contains("max_brokn"), "{err}");
    let v = serde_json::to_value(ReadyRule::default()).expect("json");
    assert_eq!(v["min_availability"], 0.95);
    assert_eq!(v["max_unknown_age_hours"], 24);
}

/// base: a, b, c, d all succeeded. target: a broken, b newly not matching, c still fine, d queued;
/// 20 more fine jobs so that availability depends on the case.
fn case(target_facts: &[(&str, F)], created: u64, now: u64, rule: &ReadyRule) -> crate::qa::ReadyVerdict {
    let mut bb = Builder::new();
    let mut tb = Builder::new();
    let mut bf: Vec<(String, F)> = Vec::new();
    for p in ["a", "b", "c", "d"] {
        bb = bb.pkg(p, "1", X86, &[]);
        tb = tb.pkg(p, "2", X86, &[]);
        bf.push((format!("{p}-1"), F::Ok(OutputVerdict::Matching)));
    }
    let base = bb.build();
    let target = tb.build();
    let bf: Vec<(&str, F)> = bf.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let bs = revision_status(&base, &facts(&base, &bf, 0));
    let tfacts = facts(&target, target_facts, 0);
    let ts = revision_status(&target, &tfacts);
    let c = compare("nixpkgs@1", &bs, "nixpkgs@2", &ts, &CompareOptions::default());
    let w = weather(&target, &tfacts, now, WeatherOptions::default());
    ready(&header("2", created), &ts, &c, &w, rule, now)
}

#[test]
fn ready_when_everything_is_fine() {
    let ok = F::Ok(OutputVerdict::Matching);
    let v = case(&[("a-2", ok), ("b-2", ok), ("c-2", ok), ("d-2", ok)], 0, 100 * HOUR, &ReadyRule::default());
    assert!(v.ready, "{:?}", v.reasons);
    assert!(v.reasons.is_empty());
    assert_eq!((v.base.as_str(), v.target.as_str()), ("nixpkgs@1", "nixpkgs@2"));
}

#[test]
fn every_reason() {
    let t = [
        ("a-2", F::Failed),
        ("b-2", F::Ok(OutputVerdict::NotMatching)),
        ("c-2", F::Ok(OutputVerdict::Matching)),
        ("d-2", F::Queued),
    ];
    // 25 hours after the revision was created: d is stale.
    let v = case(&t, 0, 25 * HOUR, &ReadyRule::default());
    assert!(!v.ready);
    let codes: Vec<ReasonCode> = v.reasons.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![ReasonCode::Broken, ReasonCode::NewlyNotMatching, ReasonCode::Availability, ReasonCode::StaleUnknown]
    );
    assert_eq!(v.reasons[0].packages, vec![format!("a ({X86})")]);
    assert_eq!(v.reasons[1].packages, vec![format!("b ({X86})")]);
    assert_eq!(v.reasons[2].system.as_deref(), Some(X86));
    assert_eq!(v.reasons[2].count, 2);
    assert!(v.reasons[2].message.contains("50.0%"), "{}", v.reasons[2].message);
    assert_eq!(v.reasons[3].count, 1);
    assert!(v.reasons[3].message.contains("25 hours"), "{}", v.reasons[3].message);

    // Within 24 hours the queued job is not a reason yet; a looser rule drops the others.
    let loose =
        ReadyRule { max_broken: 1, max_newly_not_matching: 1, min_availability: 0.5, max_unknown_age_hours: 24 };
    let v = case(&t, 0, 23 * HOUR, &loose);
    assert!(v.ready, "{:?}", v.reasons);
    assert_eq!(v.rule, loose);
}
