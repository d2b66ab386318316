//! What a run cost the host: wall time is measured by the caller; the peak memory comes from the
//! kernel.

/// The process's peak resident set size in bytes (`VmHWM` in `/proc/self/status`), or `None`
/// where that file does not exist or does not say (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// CPU time this thread has run so far, in seconds (first field of `/proc/thread-self/schedstat`,
/// nanoseconds); 0 where the file does not exist. The simulator is single-threaded.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// `VmHWM:   123456 kB` → bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark() {
        assert_eq!(parse_vm_hwm("Name:\tsim\nVmPeak:\t  9 kB\nVmHWM:\t   2048 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tsim\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t12 MB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 1024 * 1024));
        }
    }
}
