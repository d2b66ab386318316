//! `buildmesh bench gateway` with tiny sizes, run as the real binary against real wrk, nginx and
//! Nix clients: the benchmark itself stays out of CI (it times a shared machine), but every part
//! of it must keep running and printing its tables. wrk and nginx come from
//! `scripts/install-deps.sh` (sourced by `scripts/test.sh`).

use std::process::{Command, Output};

fn bench(extra: &[&str]) -> Output {
    for tool in ["wrk", "nginx", "nix", "nix-store"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("run sh");
        assert!(found.status.success(), "{tool} is missing: run scripts/install-deps.sh (scripts/test.sh does)");
    }
    let out = Command::new(buildmesh_tests::buildmesh_bin!())
        .args(["bench", "gateway", "--paths", "5", "--nar-mib", "1", "--duration", "1", "--connections", "4"])
        .args(["--client-runs", "1"])
        .args(extra)
        .output()
        .expect("run buildmesh bench gateway");
    assert!(
        out.status.success(),
        "bench gateway failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The client rows of the table: `(paths, client, cache, signatures)`.
fn client_rows(table: &str) -> Vec<(String, String, String, String)> {
    table
        .lines()
        .filter(|l| l.starts_with('|') && (l.contains("`nix copy --from`") || l.contains("`nix-store --realise`")))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_string(), cells[2].to_string(), cells[3].to_string(), cells[4].to_string())
        })
        .collect()
}

#[test]
fn bench_gateway_prints_wrk_and_real_client_tables_and_serves_another_cache() {
    // First run: import the (deterministic) bench paths into a chroot Nix store, as
    // scripts/bench-against-harmonia.sh does before starting harmonia on it.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = bench(&["--no-wrk", "--no-clients", "--import-local", root.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("narinfo requests/s") && client_rows(&stdout).is_empty(), "{stdout}");
    let imported: Vec<String> = std::fs::read_dir(root.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-bench-"))
        .collect();
    assert_eq!(imported.len(), 6, "5 small + 1 big path in the imported store: {imported:?}");

    // Second run: everything, with that store as a third cache (signature checks off: it holds
    // the first node's signatures, and this run's node has a new key).
    let against = format!("imported={}", root.display());
    let out = bench(&["--against", &against]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| narinfo requests/s |"), "wrk table missing:\n{stdout}");
    assert!(stdout.contains("| NAR `.nar` streaming GB/s |"), "wrk table missing:\n{stdout}");
    let rows = client_rows(&stdout);
    let mut want = Vec::new();
    for set in ["5 small", "1 x 1 MiB"] {
        for client in ["`nix copy --from`", "`nix-store --realise`"] {
            for (cache, sigs) in
                [("gateway", "checked"), ("nginx (file://, uncompressed)", "checked"), ("imported", "off")]
            {
                want.push((set.to_string(), client.to_string(), cache.to_string(), sigs.to_string()));
            }
        }
    }
    assert_eq!(rows, want, "client table:\n{stdout}");
    assert!(stdout.contains("gateway") && stdout.contains("vs imported"), "goal lines missing:\n{stdout}");
}
