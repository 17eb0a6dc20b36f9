//! Key paths such as `cameras[2].url`, and finding the line a key path was written on.

use std::fmt;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key, displayed as `cameras[2].motion.zones[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// Parses the form serde_path_to_error prints (`cameras[2].url`, `node.id`).
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.') {
            let mut rest = part;
            if let Some(b) = rest.find('[') {
                if b > 0 {
                    segs.push(Seg::Key(rest[..b].to_owned()));
                }
                rest = &rest[b..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let end = stripped.find(']').unwrap_or(stripped.len());
                    if let Ok(i) = stripped[..end].parse() {
                        segs.push(Seg::Index(i));
                    }
                    rest = stripped.get(end + 1..).unwrap_or("");
                }
            } else if !rest.is_empty() && rest != "?" {
                segs.push(Seg::Key(rest.to_owned()));
            }
        }
        KeyPath(segs)
    }

    pub(crate) fn from_ignored(p: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        fn walk(p: &Path<'_>, out: &mut Vec<Seg>) {
            match p {
                Path::Root => {}
                Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Seg::Index(*index));
                }
                Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Seg::Key(key.clone()));
                }
                Path::Some { parent }
                | Path::NewtypeStruct { parent }
                | Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut out = Vec::new();
        walk(p, &mut out);
        KeyPath(out)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(document)")?;
        }
        Ok(())
    }
}

/// 1-based line of byte offset `pos` in `text`.
pub fn line_of_offset(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Finds the 1-based line where `target` (or the closest enclosing key or table) is written.
///
/// This is a line scanner, not a TOML parser: it understands `[table]`, `[[array]]` and
/// `key = value` lines, including keys inside a one-line inline table, which covers how
/// configuration files are written in practice. It returns `None` rather than guess.
pub fn locate(text: &str, target: &KeyPath) -> Option<usize> {
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    let mut current: Vec<Seg> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (matched segments, line)
    let consider = |path: &[Seg], line: usize, best: &mut Option<(usize, usize)>| {
        let n = common_prefix(path, &target.0);
        if n == path.len() && n > 0 && best.is_none_or(|(m, _)| n > m) {
            *best = Some((n, line));
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let name = name.trim().to_owned();
            let count = match array_counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    array_counts.push((name.clone(), 0));
                    0
                }
            };
            // A new element of `cameras` restarts the numbering of `cameras.x` arrays.
            let prefix = format!("{name}.");
            array_counts.retain(|(n, _)| !n.starts_with(&prefix));
            current = header_path(&name, &array_counts);
            current.push(Seg::Index(count));
            consider(&current, line_no, &mut best);
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header_path(name.trim(), &array_counts);
            consider(&current, line_no, &mut best);
            continue;
        }
        let Some(eq) = line.find('=') else { continue };
        let mut path = current.clone();
        path.extend(split_key(&line[..eq]).into_iter().map(Seg::Key));
        consider(&path, line_no, &mut best);
        // Keys inside an inline table on this line: `motion = { enabled = true, zonez = [] }`.
        let matched = common_prefix(&path, &target.0);
        if matched == path.len()
            && target.0.len() > path.len()
            && let Some(Seg::Key(k)) = target.0.last()
        {
            let value = &line[eq + 1..];
            if value.contains('{') && contains_key(value, k) {
                return Some(line_no);
            }
        }
    }
    best.map(|(_, l)| l)
}

fn common_prefix(a: &[Seg], b: &[Seg]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn strip_comment(line: &str) -> &str {
    let mut in_str: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (in_str, c) {
            (None, '"') | (None, '\'') => in_str = Some(c),
            (Some(q), c) if c == q => in_str = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn split_key(k: &str) -> Vec<String> {
    k.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `cameras.motion` after `[[cameras]]` means the last camera's `motion`.
fn header_path(name: &str, arrays: &[(String, usize)]) -> Vec<Seg> {
    let parts = split_key(name);
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        out.push(Seg::Key(p.clone()));
        let so_far = parts[..=i].join(".");
        if i + 1 < parts.len()
            && let Some((_, c)) = arrays.iter().find(|(n, _)| *n == so_far)
        {
            out.push(Seg::Index(*c));
        }
    }
    out
}

fn contains_key(inline: &str, key: &str) -> bool {
    inline
        .split([',', '{'])
        .filter_map(|part| part.split_once('='))
        .any(|(k, _)| k.trim().trim_matches('"') == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# comment
[node]
id = "n1"

[[cameras]]
id = "a"
url = "rtsp://x/1"

[[cameras]]
id = "b"
url = "rtsp://x/2"   # the second
motion = { enabled = true, zonez = [] }

[cameras.extra]
foo = 1

[[devices]]
id = "d"
location = { lat = 1.0, lon = 2.0 }
"#;

    #[test]
    fn parses_and_displays_paths() {
        let p = KeyPath::parse("cameras[2].motion.zones[0]");
        assert_eq!(p.to_string(), "cameras[2].motion.zones[0]");
        assert_eq!(KeyPath::root().key("node").key("id").to_string(), "node.id");
    }

    #[test]
    fn locates_keys_in_arrays_of_tables_and_inline_tables() {
        assert_eq!(locate(DOC, &KeyPath::parse("node.id")), Some(3));
        assert_eq!(locate(DOC, &KeyPath::parse("cameras[0].url")), Some(7));
        assert_eq!(locate(DOC, &KeyPath::parse("cameras[1].url")), Some(11));
        assert_eq!(
            locate(DOC, &KeyPath::parse("cameras[1].motion.zonez")),
            Some(12)
        );
        assert_eq!(
            locate(DOC, &KeyPath::parse("cameras[1].extra.foo")),
            Some(15)
        );
        assert_eq!(
            locate(DOC, &KeyPath::parse("devices[0].location.lat")),
            Some(19)
        );
        // A key that is not written points at its table.
        assert_eq!(locate(DOC, &KeyPath::parse("cameras[1].name")), Some(9));
        assert_eq!(locate(DOC, &KeyPath::parse("bridge.mqtt")), None);
    }
}
