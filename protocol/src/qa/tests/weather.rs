//! Weather: per-system numbers and root causes on a small graph checked by hand.

use super::fixture::{ARM, Builder, F, X86, abs, facts, sp};
use crate::qa::{
    DAY_MS, DrvFacts, FactState, JobState, OutputFacts, OutputVerdict, PathItem, RootCause, WeatherOptions, weather,
    weather_of_paths,
};
use crate::revision::Manifest;
use crate::store_path::StoreDir;

const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;

/// boot ← libc (job, out+dev) ← zlib ← app1 (job) → bad (failed) → boot
/// libc ← app2 (job, building); boot ← tool (built, not available) ← app3 (job, available)
/// armpkg (job, aarch64, queued).
fn graph() -> Manifest {
    Builder::new()
        .drv("boot", X86, &[])
        .drv("libc-2.40", X86, &["boot"])
        .outputs(&["out", "dev"])
        .job("libc", "2.40", "libc-2.40")
        .drv("zlib-1.3", X86, &["libc-2.40"])
        .drv("bad-1", X86, &["boot"])
        .pkg("app1", "1", X86, &["zlib-1.3", "bad-1"])
        .pkg("app2", "1", X86, &["libc-2.40"])
        .drv("tool-1", X86, &["boot"])
        .pkg("app3", "1", X86, &["tool-1"])
        .drv("armpkg-1", ARM, &[])
        .job("armpkg", "1", "armpkg-1")
        .build()
}

fn known() -> Vec<(&'static str, F)> {
    vec![
        ("boot", F::Ok(OutputVerdict::Matching)),
        ("bad-1", F::Failed),
        ("app2-1", F::Building),
        ("tool-1", F::OkUnavailable),
        ("app3-1", F::Ok(OutputVerdict::Matching)),
        ("armpkg-1", F::Queued),
    ]
}

#[test]
fn numbers_per_system() {
    let m = graph();
    let w = weather(&m, &facts(&m, &known(), NOW - HOUR), NOW, WeatherOptions::default());
    let x = &w.systems[X86];
    // Job outputs: libc out+dev, app1, app2, app3 = 5; only app3's is available.
    assert_eq!((x.total, x.available, x.nar_bytes, x.nar_bytes_compressed), (5, 1, 1000, 400));
    assert!((x.ratio - 0.2).abs() < 1e-9);
    assert_eq!((x.queued, x.building, x.failed, x.blocked), (0, 1, 0, 1));
    // Jobs' derivations built in the last 24 h: app3 only (tool and boot are not jobs).
    assert!((x.builds_per_hour - 1.0 / 24.0).abs() < 1e-9);
    let a = &w.systems[ARM];
    assert_eq!((a.total, a.available, a.queued), (1, 0, 1));
    assert_eq!(a.ratio, 0.0);
    assert!(!w.complete);
    assert!(w.coverage.is_none() && w.missing.is_none());

    // Built more than a day ago: no recent builds.
    let w = weather(&m, &facts(&m, &known(), NOW - DAY_MS - 1), NOW, WeatherOptions::default());
    assert_eq!(w.systems[X86].builds_per_hour, 0.0);
}

#[test]
fn root_causes_ranked_by_dependents() {
    let m = graph();
    let opts = WeatherOptions { coverage: true, display_missing: true };
    let w = weather(&m, &facts(&m, &known(), NOW), NOW, opts);
    let cov = w.coverage.expect("coverage");
    let got: Vec<(String, &str, u64, RootCause)> =
        cov.iter().map(|c| (c.drv.clone(), c.package.as_str(), c.dependents, c.reason)).collect();
    // libc: zlib, app1, app2 depend on it (3). bad: app1 (1). tool: app3 (1). armpkg: none.
    // bad and tool tie at 1: ordered by store path.
    let (first, second) = if sp("bad-1.drv") < sp("tool-1.drv") {
        ((abs("bad-1"), "bad", RootCause::Failed), (abs("tool-1"), "tool", RootCause::Missing))
    } else {
        ((abs("tool-1"), "tool", RootCause::Missing), (abs("bad-1"), "bad", RootCause::Failed))
    };
    let expect = vec![
        (abs("libc-2.40"), "libc", 3, RootCause::Missing),
        (first.0, first.1, 1, first.2),
        (second.0, second.1, 1, second.2),
        (abs("armpkg-1"), "armpkg", 0, RootCause::Missing),
    ];
    assert_eq!(got, expect);
    assert_eq!(cov[0].system, X86);
    assert_eq!(cov[0].status, JobState::Unknown);
    assert_eq!(cov[3].system, ARM);
    // zlib (input libc missing) and app1 (blocked) are not root causes.
    assert!(!cov.iter().any(|c| c.package == "zlib" || c.package == "app1"));

    let missing = w.missing.expect("missing");
    let mut paths: Vec<String> = missing.iter().map(|o| o.path.clone()).collect();
    paths.sort();
    let mut expect: Vec<String> = ["libc-2.40", "libc-2.40-dev", "app1-1", "app2-1", "armpkg-1"]
        .iter()
        .map(|n| StoreDir::nix().display(&sp(n)))
        .collect();
    expect.sort();
    assert_eq!(paths, expect);
    assert!(missing.iter().any(|o| o.package == "libc" && o.drv == abs("libc-2.40")));
}

#[test]
fn complete_when_every_job_output_is_available() {
    let m = Builder::new().drv("dep", X86, &[]).pkg("a", "1", X86, &["dep"]).build();
    // The dependency is not available, but it is not a job: the weather counts jobs' outputs.
    let f = facts(&m, &[("a-1", F::Ok(OutputVerdict::Single))], NOW);
    let w = weather(&m, &f, NOW, WeatherOptions { coverage: true, display_missing: true });
    assert!(w.complete);
    assert_eq!(w.systems[X86].ratio, 1.0);
    assert_eq!(w.missing.as_deref(), Some(&[][..]));
    // ... yet coverage reports dep as a root cause (missing, inputs available), with a as dependent.
    let cov = w.coverage.expect("coverage");
    assert_eq!((cov.len(), cov[0].dependents, cov[0].package.as_str()), (1, 1, "dep"));
}

#[test]
fn weather_of_a_list_of_paths() {
    let dir = StoreDir::nix();
    let out = |n: &str, available| OutputFacts::new(sp(n), available, 500, None);
    let items = vec![
        PathItem {
            path: dir.display(&sp("hello-2.12.drv")),
            system: X86.into(),
            package: None,
            facts: DrvFacts {
                state: FactState::Succeeded,
                outputs: vec![out("hello-2.12", true), out("hello-2.12-man", false)],
                built_at_ms: Some(NOW - HOUR),
                ..DrvFacts::default()
            },
        },
        PathItem {
            path: dir.display(&sp("zlib-1.3")),
            system: X86.into(),
            package: Some("zlib".into()),
            facts: DrvFacts { state: FactState::Queued, outputs: vec![out("zlib-1.3", false)], ..DrvFacts::default() },
        },
        PathItem {
            path: dir.display(&sp("what-1")),
            system: "unknown".into(),
            package: None,
            facts: DrvFacts::default(),
        },
    ];
    let w = weather_of_paths(&dir, &items, NOW, WeatherOptions { coverage: true, display_missing: true });
    let x = &w.systems[X86];
    assert_eq!((x.total, x.available, x.nar_bytes, x.nar_bytes_compressed, x.queued), (3, 1, 500, 0, 1));
    assert!((x.builds_per_hour - 1.0 / 24.0).abs() < 1e-9);
    assert_eq!(w.systems["unknown"].total, 1);
    assert!(!w.complete);
    let missing = w.missing.expect("missing");
    assert_eq!(missing.len(), 3);
    assert!(missing.iter().any(|m| m.path == dir.display(&sp("hello-2.12-man")) && m.package == "hello"));
    assert_eq!(w.coverage.expect("coverage").len(), 3);
}
