//! `sim --sweep 100,300,1000 [--sweep-churn 0,0.1] --out DIR [other sim flags]`: run the same
//! workload at several sizes and churn rates, each in its own `sim --json` child process (so that
//! its peak memory is its own), and write the figures (`sweep.json`) and the charts
//! ([`crate::charts`]) into DIR.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Figures;

/// Flags of the parent that the children must not get (the sweep's own, and what each child
/// sets itself), with whether each takes a value.
const OWN_FLAGS: [(&str, bool); 6] = [
    ("--sweep", true),
    ("--sweep-churn", true),
    ("--out", true),
    ("--nodes", true),
    ("--churn", true),
    ("--json", false),
];

/// The parent's arguments (without the program name) minus [`OWN_FLAGS`].
pub fn child_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let own = OWN_FLAGS.iter().find(|(f, _)| a == f || a.starts_with(&format!("{f}=")));
        match own {
            Some((f, true)) if a == f => {
                it.next();
            }
            Some(_) => {}
            None => out.push(a.clone()),
        }
    }
    out
}

/// Run one child per (nodes, churn) and collect their figures; a child that violated an
/// invariant still reports (its `violations` say so), one that failed otherwise stops the sweep.
pub fn run(exe: &Path, base: &[String], nodes: &[usize], churns: &[f64], out: &Path) -> Result<Vec<Figures>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut runs = Vec::new();
    for &churn in churns {
        for &n in nodes {
            let mut cmd = Command::new(exe);
            cmd.args(base).args(["--nodes", &n.to_string(), "--churn", &churn.to_string(), "--json"]);
            eprintln!("sweep: nodes {n}, churn {churn} ...");
            let o = cmd.output().with_context(|| format!("running {}", exe.display()))?;
            let text = String::from_utf8_lossy(&o.stdout);
            let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
                bail!(
                    "sim --nodes {n} --churn {churn} printed no JSON (exit {}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            };
            let f: Figures = serde_json::from_str(line).with_context(|| format!("parsing the JSON of nodes {n}"))?;
            eprintln!("sweep: {line}");
            runs.push(f);
            // Written after every point, so that a long sweep cut short keeps what it measured.
            let json = serde_json::to_string_pretty(&runs)?;
            std::fs::write(out.join("sweep.json"), json).context("writing sweep.json")?;
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_the_workload_flags_only() {
        let args: Vec<String> =
            ["--sweep", "100,300", "--drvs", "500", "--nodes=9", "--json", "--out", "d", "--seed", "3"]
                .map(String::from)
                .to_vec();
        assert_eq!(child_args(&args), ["--drvs", "500", "--seed", "3"]);
    }
}
