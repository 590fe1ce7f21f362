//! Honey lists: files of decoy code hashes, minted by the issuer and never
//! sold, so that any attempt on one is proof of a leaked or enumerated code
//! list. A list holds hashes only (the `card.code_hash` an attempt carries,
//! or the hash kamiguard makes of a raw `card.code`: `kamiguard hash-codes`
//! turns raw decoys into those), one per line; `#` starts a comment.
//!
//! In memory a list is a sorted array of the entries' state keys
//! ([`crate::key::key_of`], 8 bytes each): a million decoys take 8 MB, and
//! a lookup is a binary search on the attempt's card key, which the engine
//! has already hashed.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::key::key_of;

/// Most entries one list may hold: 20 million decoys, 160 MB.
pub const MAX_HONEY_ENTRIES: usize = 20_000_000;

/// One loaded list.
#[derive(Debug)]
pub struct HoneyList {
    /// The file, as the rule names it, for the evidence and the logs.
    pub name: String,
    /// Where it was read from, for hot reload to watch.
    pub path: PathBuf,
    keys: Box<[u64]>,
}

impl PartialEq for HoneyList {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.keys == other.keys
    }
}

impl HoneyList {
    /// Reads `path` (`name` as the rule wrote it). An error names the line
    /// and never shows its content: a raw code put there by mistake must
    /// not reach a log.
    pub fn load(path: &Path, name: &str) -> Result<HoneyList, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read honey list {}: {e}", path.display()))?;
        HoneyList::read(std::io::BufReader::new(file), path, name)
    }

    fn read(reader: impl BufRead, path: &Path, name: &str) -> Result<HoneyList, String> {
        let mut keys = Vec::new();
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("cannot read honey list {}: {e}", path.display()))?;
            let text = std::str::from_utf8(&line).map_err(|_| bad_line(path, i))?;
            let entry = text.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            // The shape `card.code_hash` has on an attempt (docs/contract.md).
            if entry.len() < 8 || entry.len() > 128 || !entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad_line(path, i));
            }
            if keys.len() == MAX_HONEY_ENTRIES {
                return Err(format!(
                    "honey list {} has more than {MAX_HONEY_ENTRIES} entries; split it across rules",
                    path.display()
                ));
            }
            keys.push(key_of(entry.to_ascii_lowercase().as_str()));
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(HoneyList {
            name: name.to_string(),
            path: path.to_owned(),
            keys: keys.into_boxed_slice(),
        })
    }

    /// Whether the card whose key is `card` is a decoy.
    #[inline]
    pub fn contains(&self, card: u64) -> bool {
        self.keys.binary_search(&card).is_ok()
    }

    /// Decoys on the list.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn bad_line(path: &Path, i: usize) -> String {
    format!(
        "honey list {} line {}: not a code hash (8 to 128 hexadecimal digits); the line is not shown, in case it is a raw code: list hashes only (`kamiguard hash-codes`)",
        path.display(),
        i + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<HoneyList, String> {
        HoneyList::read(text.as_bytes(), Path::new("decoys.txt"), "decoys.txt")
    }

    #[test]
    fn entries_are_hashes_with_comments_and_blank_lines_allowed() {
        let list = read("# decoys of batch 7\n\nAB12cd34ef56\nab12cd34ef56  # again, other case\n0011223344556677\n")
            .expect("list");
        assert_eq!(list.len(), 2, "case folded, duplicates kept once");
        assert!(list.contains(key_of("ab12cd34ef56")));
        assert!(!list.contains(key_of("ab12cd34ef57")));
    }

    #[test]
    fn a_line_that_is_not_a_hash_is_refused_without_being_shown() {
        let err = read("ab12cd34ef56\nXMI-GIFT-7731-0042\n").expect_err("a raw code");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("XMI"), "the line must not be echoed: {err}");
        assert!(read("ab12\n").is_err(), "too short for a hash");
        assert!(read(&format!("{}\n", "a".repeat(129))).is_err(), "too long");
        let invalid_utf8 = HoneyList::read(&b"\xff\xfe\n"[..], Path::new("x"), "x");
        assert!(invalid_utf8.is_err());
    }
}
