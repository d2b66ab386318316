//! Package name and version of a derivation, as Nix's `parseDrvName` splits a name.

/// Split a derivation name into (package, version) as Nix's `builtins.parseDrvName` does: at the
/// first `-` that is followed by a character that is not an ASCII letter. Without such a `-` the
/// whole name is the package and the version is empty.
///
/// `hello-2.12.1` → (`hello`, `2.12.1`); `gcc-wrapper-13.2.0` → (`gcc-wrapper`, `13.2.0`);
/// `foo-bar-baz` → (`foo-bar-baz`, ``); `foo-1bar` → (`foo`, `1bar`).
pub fn parse_drv_name(name: &str) -> (&str, &str) {
    let b = name.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && i + 1 < b.len() && !b[i + 1].is_ascii_alphabetic() {
            // `-` is ASCII, so both halves are on char boundaries.
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

#[cfg(test)]
mod tests {
    use super::parse_drv_name;

    #[test]
    fn splits_as_nix_does() {
        for (name, package, version) in [
            ("hello-2.12.1", "hello", "2.12.1"),
            ("gcc-wrapper-13.2.0", "gcc-wrapper", "13.2.0"),
            ("foo-bar-baz", "foo-bar-baz", ""),
            ("hello", "hello", ""),
            ("foo-1bar", "foo", "1bar"),
            // Nix's own examples (doc of builtins.parseDrvName, tests of DrvName).
            ("nix-0.12pre12876", "nix", "0.12pre12876"),
            ("apache-httpd-2.0.48", "apache-httpd", "2.0.48"),
            ("firefox-unwrapped-128.0esr", "firefox-unwrapped", "128.0esr"),
            ("python3.12-requests-2.31.0", "python3.12-requests", "2.31.0"),
            ("libfoo-unstable-2024-01-01", "libfoo-unstable", "2024-01-01"),
            ("foo-", "foo-", ""),
            ("-1.0", "", "1.0"),
            ("a--b", "a", "-b"),
            ("foo-_bar", "foo", "_bar"),
            ("foo-.1", "foo", ".1"),
            ("", "", ""),
            // A non-ASCII character is not a letter (Nix's isalpha in the C locale).
            ("paquet-été", "paquet", "été"),
        ] {
            assert_eq!(parse_drv_name(name), (package, version), "{name}");
        }
    }
}
