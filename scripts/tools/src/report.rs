//! Problems found by the checks.

use std::fmt;

/// One problem, printed as `path:line: message` (or `path: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the repository root.
    pub path: String,
    /// The 1-based line, where one applies.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem with a whole file.
    pub fn file(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    /// A problem on one line of a file.
    pub fn line(path: impl Into<String>, line: usize, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            line: Some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path, line, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}
