//! A narinfo read the way Guix reads it (`recutils->alist` in `guix/records.scm`,
//! `read-narinfo` in `guix/narinfo.scm`), for deciding signature statuses exactly as Guix does.
//!
//! Guix's reader differs from Nix's: a record stops at the first empty line, `#` lines are
//! comments, `+` lines continue the previous value, values are trimmed on the left only (so a
//! CRLF line keeps its `\r`), a field keeps its first occurrence (URL, Compression, FileSize and
//! FileHash keep all), and a line that starts with anything else is an error, as is a narinfo
//! without `References`.

/// Fields read from one record, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuixFields {
    /// `(name, value)` pairs in file order.
    pub fields: Vec<(String, String)>,
}

impl GuixFields {
    /// The first value of `name` (how Guix's `alist->record` reads a single-valued field).
    pub fn first(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether `name` occurs.
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }
}

/// Reads one recutils record as Guix's `recutils->alist` does; `Err` carries Guix's complaint.
pub fn read_record(text: &str) -> Result<GuixFields, String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut lines = text.split('\n').peekable();
    let ends_with_newline = text.ends_with('\n');
    while let Some(line) = lines.next() {
        // `read-line` yields no final empty line after a trailing newline.
        if lines.peek().is_none() && ends_with_newline && line.is_empty() {
            break;
        }
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        let Some(first) = line.chars().next() else { continue };
        if first.is_uppercase() || first.is_lowercase() || first == '%' {
            let Some(colon) = line.find(':') else {
                return Err(format!("line {line:?} has no ':'"));
            };
            let value = line[colon + 1..].trim_start_matches(char::is_whitespace);
            fields.push((line[..colon].to_string(), value.to_string()));
        } else if first == '#' {
            continue;
        } else if first == '+' {
            let rest = line.strip_prefix("+ ").unwrap_or(&line[1..]);
            let Some(last) = fields.last_mut() else {
                return Err(format!("continuation line {line:?} before any field"));
            };
            last.1.push('\n');
            last.1.push_str(rest);
        } else {
            return Err(format!("unmatched line {line:?}"));
        }
    }
    Ok(GuixFields { fields })
}

/// Reads a whole narinfo as `read-narinfo` does: the record, and the fields the narinfo
/// constructor needs (it fails without `References`).
pub fn read_narinfo(text: &str) -> Result<GuixFields, String> {
    let fields = read_record(text)?;
    if !fields.has("References") {
        return Err("no References field".to_string());
    }
    Ok(fields)
}

/// Guile's `dirname` for an absolute path: the directory part, trailing slashes removed.
pub fn dirname(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return if path.starts_with('/') { "/" } else { "." };
    }
    match trimmed.rfind('/') {
        None => ".",
        Some(i) => {
            let dir = trimmed[..i].trim_end_matches('/');
            if dir.is_empty() { "/" } else { dir }
        }
    }
}

/// Whether a string is a Scheme number equal to 1 (how Guix checks the signature version:
/// `(= 1 (string->number version))`). Understands the forms `string->number` reads that could be
/// 1: optional `#e`/`#i`/`#d`/`#x`/`#o`/`#b` prefixes, a sign, integers, decimals with exponent,
/// and fractions.
pub fn scheme_number_is_one(text: &str) -> bool {
    let mut s = text;
    let mut radix = 10;
    for _ in 0..2 {
        if let Some(rest) = s.strip_prefix('#') {
            let mut chars = rest.chars();
            match chars.next().map(|c| c.to_ascii_lowercase()) {
                Some('e' | 'i') => {}
                Some('d') => radix = 10,
                Some('x') => radix = 16,
                Some('o') => radix = 8,
                Some('b') => radix = 2,
                _ => return false,
            }
            s = chars.as_str();
        }
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned.starts_with('-') || unsigned.starts_with('+') {
        return false;
    }
    let int_is_one = |digits: &str| -> Option<bool> {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        Some(digits.trim_start_matches('0') == "1")
    };
    if let Some((num, den)) = unsigned.split_once('/') {
        let (Some(_), Some(_)) = (int_is_one(num), int_is_one(den)) else { return false };
        let (n, d) = (num.trim_start_matches('0'), den.trim_start_matches('0'));
        return !d.is_empty() && n == d;
    }
    if let Some(is_one) = int_is_one(unsigned) {
        return is_one;
    }
    if radix != 10 {
        return false;
    }
    // A decimal: digits with at most one point, an optional exponent.
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = {
        let (a, b) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        (!a.is_empty() || !b.is_empty())
            && mantissa.matches('.').count() <= 1
            && a.chars().all(|c| c.is_ascii_digit())
            && b.chars().all(|c| c.is_ascii_digit())
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok && unsigned.parse::<f64>().is_ok_and(|v| v == 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_rules() {
        let f = read_record("\nA: 1\n# c\nB:  x \n+ more\nA: 2\n\nC: 3\n").unwrap();
        assert_eq!(f.first("A"), Some("1"));
        assert_eq!(f.first("B"), Some("x \nmore"));
        assert!(!f.has("C"));
        assert!(read_record("A: 1\n 2\n").is_err());
        assert!(read_record("A 1\n").is_err());
        assert_eq!(read_record("A: 1\r\n").unwrap().first("A"), Some("1\r"));
    }

    #[test]
    fn versions() {
        for one in ["1", "+1", "01", "1.0", "1.", "#e1", "#x1", "1e0", "10e-1", "2/2", "#i1"] {
            assert!(scheme_number_is_one(one), "{one}");
        }
        for not in ["2", "", "one", "-1", "1;", " 1", "0/0", "1/0", "inf", "1e", "1..0", "#z1"] {
            assert!(!scheme_number_is_one(not), "{not}");
        }
    }

    #[test]
    fn dirnames() {
        assert_eq!(dirname("/gnu/store/abc-x"), "/gnu/store");
        assert_eq!(dirname("/gnu/store/abc-x/"), "/gnu/store");
        assert_eq!(dirname("/gnu/store//abc"), "/gnu/store");
        assert_eq!(dirname("/abc"), "/");
    }
}
