//! The problems found in the docs and the README, all collected before anything is reported.

use std::fmt;

/// One problem, tied to the file (and, where there is one, the front-matter field) to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the repository root, with `/` separators (`docs/guides/foo.md`).
    pub file: String,
    /// The front-matter field at fault, if the problem is about one.
    pub field: Option<String>,
    /// What is wrong and, where it is not obvious, what would be right.
    pub message: String,
}

impl Problem {
    /// A problem with a file as a whole.
    pub(crate) fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            field: None,
            message: message.into(),
        }
    }

    /// A problem with one field of a file's front matter.
    pub(crate) fn field(
        file: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{field}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for Problem {}

/// Every problem found in one run, in a stable order (by folder, then file name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Errors(pub Vec<Problem>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "{problem}")?;
        }
        let n = self.0.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Errors {}
