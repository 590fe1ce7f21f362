//! What is wrong with a rule file, where: `file:line:column: message`.
//! Shared by loading (syntax, structure) and compiling (meaning).

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found while loading a rule set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors for one file, turning byte offsets into line and column.
pub(crate) struct Located<'a> {
    file: &'a Path,
    src: &'a str,
    errors: Vec<RuleError>,
}

impl<'a> Located<'a> {
    pub(crate) fn new(file: &'a Path, src: &'a str) -> Located<'a> {
        Located {
            file,
            src,
            errors: Vec::new(),
        }
    }

    /// The file being read.
    pub(crate) fn file(&self) -> &Path {
        self.file
    }

    /// The errors found, in the order they appear in the file.
    pub(crate) fn into_sorted(mut self) -> Vec<RuleError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }

    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn at<T>(&mut self, value: &Spanned<T>, message: String) {
        self.at_offset(value.span().start, message);
    }

    pub(crate) fn at_offset(&mut self, offset: usize, message: String) {
        let (line, column) = line_column(self.src, offset);
        self.errors.push(RuleError {
            file: self.file.to_owned(),
            line,
            column,
            message,
        });
    }

    pub(crate) fn toml(&mut self, err: &toml::de::Error) {
        let offset = err.span().map_or(0, |s| s.start);
        let message = err.message().trim().replace('\n', " ");
        self.at_offset(offset, message);
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
