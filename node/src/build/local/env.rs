//! The builder's environment beyond Nix's variables: structured attributes read from `__json`,
//! `exportReferencesGraph` files in `/build` and the validity registration format they use.

use super::*;

/// The parsed `__json` of a derivation with structured attrs.
pub(super) fn structured_json(drv: &Derivation) -> Option<serde_json::Map<String, serde_json::Value>> {
    let raw = drv.env.get(b"__json".as_slice())?;
    match serde_json::from_slice(raw) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A list-of-strings attribute as Nix's `ParsedDerivation::getStringsAttr` reads it: from
/// `__json` with structured attrs (a JSON list of strings), else the env var split on whitespace.
pub(crate) fn string_list_attr(drv: &Derivation, name: &str) -> Option<Vec<String>> {
    if drv.has_structured_attrs() {
        let json = structured_json(drv)?;
        let list = json.get(name)?.as_array()?;
        return Some(list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    }
    let v = drv.env.get(name.as_bytes())?;
    Some(String::from_utf8_lossy(v).split_whitespace().map(str::to_string).collect())
}

/// `exportReferencesGraph` without structured attrs: for each `name path` pair, write
/// `build/name` with the closure of `path` in `nix-store --register-validity` format (no
/// derivers, no hashes), as Nix 2.8 does.
pub(super) fn write_reference_graphs(
    drv: &Derivation,
    store_dir: &StoreDir,
    direct: &BTreeSet<StorePath>,
    inputs: &BTreeMap<StorePath, PathInfo>,
    build_host: &Path,
) -> Result<(), BuildError> {
    let Some(raw) = drv.env.get(b"exportReferencesGraph".as_slice()) else { return Ok(()) };
    let raw = String::from_utf8_lossy(raw);
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    let fail = |m: String| BuildError::OutputRejected { output: String::new(), reason: m, log: Vec::new() };
    if !tokens.len().is_multiple_of(2) {
        return Err(fail(format!("odd number of tokens in 'exportReferencesGraph': '{raw}'")));
    }
    for pair in tokens.chunks(2) {
        let (file, path) = (pair[0], pair[1]);
        let ok_name = file.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok_name {
            return Err(fail(format!("invalid file name '{file}' in 'exportReferencesGraph'")));
        }
        let (sp, _) = store_dir
            .parse_path_prefix(path)
            .map_err(|_| fail(format!("'exportReferencesGraph' contains a non-store path '{path}'")))?;
        if !inputs.contains_key(&sp) && !direct.contains(&sp) {
            return Err(fail(format!(
                "cannot export references of path '{path}' because it is not in the input closure of the derivation"
            )));
        }
        let closure = closure_within(&sp, |p| inputs.get(p).map(|i| &i.references));
        let text = validity_registration(store_dir, &closure, |p| inputs.get(p).map(|i| &i.references));
        std::fs::write(build_host.join(file), text)
            .map_err(|e| executor_error(format!("writing exportReferencesGraph file {file}: {e}"), Vec::new()))?;
    }
    Ok(())
}

/// Nix's `makeValidityRegistration(paths, false, false)`: per path its absolute path, an empty
/// deriver line, the number of references and the references.
pub(crate) fn validity_registration<'a>(
    store_dir: &StoreDir,
    paths: &BTreeSet<StorePath>,
    refs_of: impl Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
) -> String {
    let mut s = String::new();
    for p in paths {
        s.push_str(&store_dir.display(p));
        s.push_str("\n\n");
        let refs = refs_of(p);
        s.push_str(&format!("{}\n", refs.map_or(0, |r| r.len())));
        for r in refs.into_iter().flatten() {
            s.push_str(&store_dir.display(r));
            s.push('\n');
        }
    }
    s
}

/// `start` and everything reachable from it through `refs_of` (paths without an entry end the walk).
pub(super) fn closure_within<'a>(
    start: &StorePath,
    refs_of: impl Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
) -> BTreeSet<StorePath> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.clone()];
    while let Some(p) = todo.pop() {
        if let Some(refs) = refs_of(&p) {
            todo.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
        }
        seen.insert(p);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn drv_with_env(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            ..Derivation::default()
        }
    }

    #[test]
    fn string_list_attrs_legacy_and_structured() {
        let d = drv_with_env(&[("impureEnvVars", " http_proxy  ftp_proxy\n")]);
        assert_eq!(string_list_attr(&d, "impureEnvVars").unwrap(), ["http_proxy", "ftp_proxy"]);
        assert_eq!(string_list_attr(&d, "missing"), None);
        let d = drv_with_env(&[("__json", r#"{"impureEnvVars":["A","B"],"name":"x"}"#)]);
        assert_eq!(string_list_attr(&d, "impureEnvVars").unwrap(), ["A", "B"]);
    }

    #[test]
    fn validity_registration_format() {
        let sd = StoreDir::nix();
        let a = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-a");
        let b = sp("4gmpz06140ywpvqhdwlcb7p2lc5r0ny4-b");
        let refs: BTreeMap<StorePath, BTreeSet<StorePath>> =
            [(a.clone(), [b.clone(), a.clone()].into()), (b.clone(), BTreeSet::new())].into();
        let closure = closure_within(&a, |p| refs.get(p));
        assert_eq!(closure, [a.clone(), b.clone()].into());
        let text = validity_registration(&sd, &closure, |p| refs.get(p));
        assert_eq!(
            text,
            format!("/nix/store/{b}\n\n0\n/nix/store/{a}\n\n2\n/nix/store/{b}\n/nix/store/{a}\n", a = a, b = b)
        );
    }
}
