//! Validation problems: each names the file, line, column and field; the compiler collects
//! every problem of a document before it reports.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Line of the offending value in the document.
    pub line: u32,
    /// Column of the offending value.
    pub column: u32,
    /// Path of the field (e.g. `spec.identities[0].selector`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem of a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The document's file name (as given).
    pub file: String,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, p.line, p.column, p.field, p.message
            )?;
        }
        Ok(())
    }
}

/// The problems found so far in one document.
pub(super) struct Problems {
    pub(super) list: Vec<Problem>,
}

impl Problems {
    pub(super) fn new() -> Self {
        Self { list: Vec::new() }
    }

    /// Records a problem at the position of `s`.
    pub(super) fn at<T>(
        &mut self,
        s: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            line: s.referenced.line() as u32,
            column: s.referenced.column() as u32,
            field: field.into(),
            message: message.into(),
        });
    }
}
