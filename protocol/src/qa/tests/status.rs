//! Job status: every state, blocked naming, counts.

use super::fixture::{ARM, Builder, F, X86, abs, facts, sp};
use crate::qa::{FAILED_INPUTS_CAP, JobState, OutputVerdict, RevisionStatus, revision_status};

fn job<'a>(st: &'a RevisionStatus, package: &str) -> &'a crate::qa::JobStatus {
    st.jobs.iter().find(|j| j.package == package).unwrap_or_else(|| panic!("job {package}"))
}

#[test]
fn every_status_and_counts() {
    let m = Builder::new()
        .pkg("ok", "1", X86, &[])
        .pkg("nm", "1", X86, &[])
        .pkg("single", "1", X86, &[])
        .pkg("bad", "1", X86, &[])
        .pkg("app", "1", X86, &["bad-1"])
        .pkg("busy", "1", X86, &[])
        .pkg("wait", "1", X86, &[])
        .pkg("nothing", "1", ARM, &[])
        .build();
    let f = facts(
        &m,
        &[
            ("ok-1", F::Ok(OutputVerdict::Matching)),
            ("nm-1", F::Ok(OutputVerdict::NotMatching)),
            ("single-1", F::Ok(OutputVerdict::Single)),
            ("bad-1", F::Failed),
            ("busy-1", F::Building),
            ("wait-1", F::Queued),
        ],
        0,
    );
    let st = revision_status(&m, &f);
    let expect = [
        ("ok", JobState::Succeeded, Some(OutputVerdict::Matching)),
        ("nm", JobState::Succeeded, Some(OutputVerdict::NotMatching)),
        ("single", JobState::Succeeded, Some(OutputVerdict::Single)),
        ("bad", JobState::Failed, None),
        ("app", JobState::Blocked, None),
        ("busy", JobState::Building, None),
        ("wait", JobState::Queued, None),
        ("nothing", JobState::Unknown, None),
    ];
    for (p, s, v) in expect {
        let j = job(&st, p);
        assert_eq!((j.status, j.verdict), (s, v), "{p}");
    }
    assert_eq!(job(&st, "app").blocked_by.as_deref(), Some(abs("bad-1").as_str()));
    assert_eq!(job(&st, "app").blocked_by_count, 1);
    assert_eq!(job(&st, "bad").failures[0].reason, "exit 1");
    assert_eq!(job(&st, "ok").builders, vec!["b1", "b2"]);
    assert_eq!(job(&st, "ok").drv, abs("ok-1"));
    assert_eq!(job(&st, "nothing").system, ARM);
    let x = &st.counts[X86];
    assert_eq!((x.succeeded, x.failed, x.blocked, x.building, x.queued, x.unknown), (3, 1, 1, 1, 1, 0));
    assert_eq!(st.counts[ARM].unknown, 1);
    assert_eq!(st.counts.values().map(|c| c.total()).sum::<u64>(), m.jobs.len() as u64);
}

#[test]
fn blocked_names_the_smallest_failed_input_and_counts_them() {
    // app -> mid -> {f1 (failed), low}; low -> f2 (failed); app -> f3 (failed) directly.
    // Every failed input is reachable through derivations that did not succeed.
    let m = Builder::new()
        .drv("f1", X86, &[])
        .drv("f2", X86, &[])
        .drv("f3", X86, &[])
        .drv("low", X86, &["f2"])
        .drv("mid", X86, &["f1", "low"])
        .pkg("app", "1", X86, &["mid", "f3"])
        .build();
    let f = facts(&m, &[("f1", F::Failed), ("f2", F::Failed), ("f3", F::Failed)], 0);
    let st = revision_status(&m, &f);
    let app = job(&st, "app");
    assert_eq!(app.status, JobState::Blocked);
    let smallest = ["f1.drv", "f2.drv", "f3.drv"].iter().map(|n| sp(n)).min().expect("three");
    assert_eq!(app.blocked_by.as_deref(), Some(crate::store_path::StoreDir::nix().display(&smallest).as_str()));
    assert_eq!(app.blocked_by_count, 3);

    // A failure under a succeeded input blocks nothing: mid succeeded, so only f3 blocks app.
    let f = facts(
        &m,
        &[("f1", F::Failed), ("f2", F::Failed), ("f3", F::Failed), ("mid", F::Ok(OutputVerdict::Matching))],
        0,
    );
    let st = revision_status(&m, &f);
    assert_eq!(job(&st, "app").blocked_by.as_deref(), Some(abs("f3").as_str()));
    assert_eq!(job(&st, "app").blocked_by_count, 1);

    // A job that succeeded or failed itself is never blocked.
    let f = facts(&m, &[("f1", F::Failed), ("app-1", F::Ok(OutputVerdict::Single))], 0);
    assert_eq!(job(&revision_status(&m, &f), "app").status, JobState::Succeeded);
}

#[test]
fn blocked_count_saturates() {
    let mut b = Builder::new();
    let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    for n in &names {
        b = b.drv(n, X86, &[]);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let m = b.pkg("app", "1", X86, &refs).build();
    let known: Vec<(&str, F)> = refs.iter().map(|n| (*n, F::Failed)).collect();
    let st = revision_status(&m, &facts(&m, &known, 0));
    assert_eq!(job(&st, "app").blocked_by_count as usize, FAILED_INPUTS_CAP);
    let smallest = names.iter().map(|n| sp(&format!("{n}.drv"))).min().expect("40");
    assert_eq!(
        job(&st, "app").blocked_by.as_deref(),
        Some(crate::store_path::StoreDir::nix().display(&smallest).as_str())
    );
}

#[test]
fn deep_chain_and_cycle_terminate() {
    // A 20,000-deep chain: no recursion, the top is blocked by the bottom.
    let mut b = Builder::new().drv("c0", X86, &[]);
    for i in 1..20_000 {
        b = b.drv(&format!("c{i}"), X86, &[&format!("c{}", i - 1)]);
    }
    let m = b.job("top", "1", "c19999").build();
    let st = revision_status(&m, &facts(&m, &[("c0", F::Failed)], 0));
    assert_eq!(job(&st, "top").blocked_by.as_deref(), Some(abs("c0").as_str()));

    // A hostile manifest with a cycle (a -> b -> a, a -> f failed): terminates, no panic.
    let mut m = Builder::new().drv("f", X86, &[]).drv("b", X86, &[]).pkg("a", "1", X86, &["b", "f"]).build();
    let ia = m.drvs.iter().position(|d| d.drv.name() == "a-1.drv").expect("a") as u32;
    let ib = m.drvs.iter().position(|d| d.drv.name() == "b.drv").expect("b");
    m.drvs[ib].inputs = vec![ia];
    let st = revision_status(&m, &facts(&m, &[("f", F::Failed)], 0));
    assert_eq!(job(&st, "a").status, JobState::Blocked);
}
