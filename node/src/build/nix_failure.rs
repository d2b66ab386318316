//! How a failed `nix-store --realise` is reported: Nix's exit status (100 build failure, 101
//! timeout, 102 hash mismatch, 104 not deterministic) and messages mapped to a [`BuildError`].

use std::collections::BTreeMap;
use std::time::Duration;

use buildmesh_protocol::derivation::{Derivation, OutputHash};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::StorePath;

use super::BuildError;
use super::local::executor_error;

/// Remove ANSI escape sequences (`ESC [ ... letter`) from Nix's messages.
pub(super) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The number right after `marker` in `text`.
pub(super) fn number_after(text: &str, marker: &str) -> Option<i64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
    digits.parse().ok()
}

/// The first whitespace-separated token after `marker`.
pub(super) fn token_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text[text.find(marker)? + marker.len()..].split_whitespace().next()
}

/// Map a failed `nix-store --realise` (exit status `code`, stderr `log`) to a [`BuildError`].
pub fn map_nix_failure(
    code: Option<i32>,
    log: Vec<u8>,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    timeout: Option<Duration>,
) -> BuildError {
    let text = strip_ansi(&String::from_utf8_lossy(&log));
    if text.contains("hash mismatch in fixed-output derivation") {
        let expected = token_after(&text, "specified:").and_then(|s| NixHash::parse(s, None).ok());
        let actual = token_after(&text, "got:").and_then(|s| NixHash::parse(s, None).ok());
        let declared = drv.outputs.iter().find_map(|(name, o)| match &o.hash {
            OutputHash::Fixed { hash, .. } => Some((name.clone(), hash.clone())),
            _ => None,
        });
        if let (Some(actual), Some((output, declared))) = (actual, declared) {
            let expected = expected.filter(|e| e.algo() == actual.algo()).unwrap_or(declared);
            if expected.algo() == actual.algo() {
                return BuildError::HashMismatch { output, expected, actual, log };
            }
        }
    }
    if code == Some(101) || text.contains("timed out after") {
        return BuildError::Timeout { limit: timeout.unwrap_or_default(), log };
    }
    if let Some(c) = number_after(&text, "failed with exit code") {
        return BuildError::BuilderExit { code: i32::try_from(c).unwrap_or(-1), log };
    }
    if let Some(s) = number_after(&text, "failed due to signal") {
        return BuildError::BuilderSignal { signal: u8::try_from(s).unwrap_or(u8::MAX), log };
    }
    if let Some(rest) = text.find("failed to produce output path for output '").map(|i| &text[i + 42..]) {
        let name = rest.split('\'').next().unwrap_or_default().to_string();
        if let Some(path) = outputs.get(&name) {
            return BuildError::OutputMissing { output: name, path: path.clone(), log };
        }
    }
    for marker in
        ["illegal path references in fixed-output derivation", "is not allowed to refer to the following paths"]
    {
        if let Some(i) = text.find(marker) {
            let line = text[..i].rfind('\n').map_or(0, |n| n + 1);
            let end = text[i..].find("\n\n").map_or(text.len(), |n| i + n);
            let output = outputs.keys().next().cloned().unwrap_or_default();
            let reason = text[line..end].trim().trim_start_matches("error:").trim().to_string();
            return BuildError::OutputRejected { output, reason, log };
        }
    }
    if code == Some(104) || text.contains("may not be deterministic") {
        return executor_error(
            "the rebuild differs from the output already valid in the host store (not deterministic)",
            log,
        );
    }
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(5)..].join("\n");
    let status = code.map_or_else(|| "killed by a signal".to_string(), |c| format!("exit status {c}"));
    executor_error(format!("nix-store --realise failed ({status}): {tail}"), log)
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::derivation::{CaMethod, Output};

    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn outputs() -> BTreeMap<String, StorePath> {
        BTreeMap::from([("out".to_string(), sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-x"))])
    }

    fn map(code: i32, log: &str) -> BuildError {
        map_nix_failure(
            Some(code),
            log.as_bytes().to_vec(),
            &Derivation::default(),
            &outputs(),
            Some(Duration::from_secs(7)),
        )
    }

    #[test]
    fn maps_builder_failures() {
        let e = map(
            100,
            "building '/nix/store/x.drv'...\nerror: builder for '\u{1b}[35;1m/nix/store/x.drv\u{1b}[0m' failed with exit code 3;\n",
        );
        assert!(matches!(e, BuildError::BuilderExit { code: 3, ref log } if !log.is_empty()), "{e:?}");
        let e = map(100, "error: builder for '/nix/store/x.drv' failed due to signal 9 (Killed)\n");
        assert!(matches!(e, BuildError::BuilderSignal { signal: 9, .. }), "{e:?}");
        let e = map(101, "error: building of '/nix/store/x.drv' timed out after 7 seconds\n");
        assert!(matches!(e, BuildError::Timeout { limit, .. } if limit == Duration::from_secs(7)), "{e:?}");
        let e = map(
            100,
            "error: builder for '/nix/store/x.drv' failed to produce output path for output 'out' at '/nix/store/an8vyn8v0lxs937kjy709ghv3zp4wms6-x'\n",
        );
        assert!(matches!(e, BuildError::OutputMissing { ref output, .. } if output == "out"), "{e:?}");
        let e =
            map(104, "error: derivation '/nix/store/x.drv' may not be deterministic: output '/nix/store/y' differs\n");
        assert!(
            matches!(e, BuildError::Executor { ref message, .. } if message.contains("not deterministic")),
            "{e:?}"
        );
        let e = map(1, "error: something else\n  went wrong\n");
        assert!(
            matches!(e, BuildError::Executor { ref message, .. } if message.contains("went wrong") && message.contains("exit status 1")),
            "{e:?}"
        );
        let e = map(
            100,
            "error: output '/nix/store/an8vyn8v0lxs937kjy709ghv3zp4wms6-x' is not allowed to refer to the following paths:\n  /nix/store/wm32icn8hzjm0kah51xh8nv14dn4crdz-b\n",
        );
        assert!(matches!(e, BuildError::OutputRejected { ref reason, .. } if reason.contains("wm32icn8")), "{e:?}");
    }

    #[test]
    fn maps_hash_mismatch() {
        let declared = NixHash::sha256([1; 32]);
        let got = NixHash::sha256([2; 32]);
        let drv = Derivation {
            outputs: BTreeMap::from([(
                "out".to_string(),
                Output { path: None, hash: OutputHash::Fixed { method: CaMethod::Flat, hash: declared.clone() } },
            )]),
            ..Derivation::default()
        };
        let log = format!(
            "error: hash mismatch in fixed-output derivation '/nix/store/x.drv':\n  specified: {}\n     got:    {}\n",
            declared.to_sri(),
            got.to_sri()
        );
        match map_nix_failure(Some(102), log.into_bytes(), &drv, &outputs(), None) {
            BuildError::HashMismatch { output, expected, actual, .. } => {
                assert_eq!((output.as_str(), expected, actual), ("out", declared, got))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(strip_ansi("a\u{1b}[31;1mb\u{1b}[0mc"), "abc");
        assert_eq!(number_after("code  42;", "code"), Some(42));
        assert_eq!(token_after("got:    sha256-x y", "got:"), Some("sha256-x"));
    }
}
