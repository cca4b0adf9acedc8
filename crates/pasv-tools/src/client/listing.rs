//! MLSD entries (RFC 3659 section 7).

use std::borrow::Cow;

/// What an MLSD entry is (the `type` fact, RFC 3659 section 7.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// `type=file`.
    File,
    /// `type=dir`.
    Dir,
    /// `type=cdir`: the listed directory itself.
    CurrentDir,
    /// `type=pdir`: its parent.
    ParentDir,
    /// Any other type (`OS.unix=slink`, ...), lower-cased.
    Other(String),
}

/// One MLSD line: facts and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsdEntry {
    /// The facts in the order sent, names lower-cased (fact names are case-insensitive).
    pub facts: Vec<(String, String)>,
    /// The name, raw bytes (it need not be UTF-8).
    pub name: Vec<u8>,
}

impl MlsdEntry {
    /// Parses `fact=value;fact=value; name` (RFC 3659 section 7.2): the name follows the
    /// first space and may itself hold spaces and semicolons. Lines without a space are
    /// rejected.
    pub fn parse(line: &[u8]) -> Option<MlsdEntry> {
        let space = line.iter().position(|&b| b == b' ')?;
        let (facts_part, name) = (&line[..space], &line[space + 1..]);
        if name.is_empty() {
            return None;
        }
        let facts = facts_part
            .split(|&b| b == b';')
            .filter(|f| !f.is_empty())
            .filter_map(|fact| {
                let eq = fact.iter().position(|&b| b == b'=')?;
                let key = String::from_utf8_lossy(&fact[..eq]).to_ascii_lowercase();
                let value = String::from_utf8_lossy(&fact[eq + 1..]).into_owned();
                Some((key, value))
            })
            .collect();
        Some(MlsdEntry {
            facts,
            name: name.to_vec(),
        })
    }

    /// The value of a fact, by case-insensitive name.
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `type` fact.
    pub fn kind(&self) -> Option<EntryKind> {
        let t = self.fact("type")?.to_ascii_lowercase();
        Some(match t.as_str() {
            "file" => EntryKind::File,
            "dir" => EntryKind::Dir,
            "cdir" => EntryKind::CurrentDir,
            "pdir" => EntryKind::ParentDir,
            _ => EntryKind::Other(t),
        })
    }

    /// The `size` fact, in bytes.
    pub fn size(&self) -> Option<u64> {
        self.fact("size")?.parse().ok()
    }

    /// The `modify` fact, `YYYYMMDDHHMMSS[.sss]` in UTC.
    pub fn modify(&self) -> Option<&str> {
        self.fact("modify")
    }

    /// The name as text (lossy).
    pub fn name_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// Parses an MLSD listing: one entry per line (CRLF or LF), skipping lines that do not parse.
pub fn parse_mlsd(listing: &[u8]) -> Vec<MlsdEntry> {
    listing
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(MlsdEntry::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_facts_and_names_with_spaces() {
        let listing = b"Type=file;Size=1024;modify=20240102030405; a b;c.bin\r\n\
                        type=cdir;perm=el; .\r\n\
                        type=OS.unix=slink:/x; link\n\
                        garbage\r\n";
        let entries = parse_mlsd(listing);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].name, b"a b;c.bin");
        assert_eq!(entries[0].kind(), Some(EntryKind::File));
        assert_eq!(entries[0].size(), Some(1024));
        assert_eq!(entries[0].modify(), Some("20240102030405"));
        assert_eq!(entries[1].kind(), Some(EntryKind::CurrentDir));
        assert_eq!(
            entries[2].kind(),
            Some(EntryKind::Other("os.unix=slink:/x".into()))
        );
    }
}
