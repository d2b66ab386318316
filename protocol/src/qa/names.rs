//! Package names of derivations that are not jobs (e.g. a root cause deep in the closure).

/// Split a derivation name as Nix's `parseDrvName` does: at the first `-` followed by a character
/// that is not a letter; no such `-` gives the whole name and an empty version.
/// A trailing `.drv` is removed first.
pub fn parse_drv_name(name: &str) -> (&str, &str) {
    let name = name.strip_suffix(".drv").unwrap_or(name);
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

#[cfg(test)]
mod tests {
    use super::parse_drv_name;

    #[test]
    fn splits_like_nix() {
        assert_eq!(parse_drv_name("hello-2.12.1.drv"), ("hello", "2.12.1"));
        assert_eq!(parse_drv_name("gtk+-3.24"), ("gtk+", "3.24"));
        assert_eq!(parse_drv_name("font-util-1.4"), ("font-util", "1.4"));
        assert_eq!(parse_drv_name("bootstrap-tools.drv"), ("bootstrap-tools", ""));
        assert_eq!(parse_drv_name("x-"), ("x-", ""));
        assert_eq!(parse_drv_name("a-_b"), ("a", "_b"));
    }
}
