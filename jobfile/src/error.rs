//! A refused job file: where (file, line, column), what, and a hint, shown the
//! way compilers show errors, with the offending line and a caret under it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a job file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobFileError {
    #[error("{path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// An I/O error kept comparable (tests compare errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

/// One problem at one place of a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    /// The offending line, for the caret display.
    pub source_line: String,
}

impl JobFileError {
    /// The located problem, if the file was read.
    pub fn located(&self) -> Option<&Located> {
        match self {
            JobFileError::Invalid(l) => Some(l),
            JobFileError::Read { .. } => None,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        let gutter = self.line.to_string().len();
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(f, "{:gutter$} | {:>col$}", "", "^", col = self.column)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n{:gutter$} = hint: {hint}", "")?;
        }
        Ok(())
    }
}

/// A problem found while validating, located by byte span in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
    /// The spanned value is a secret: the line is shown without it.
    pub secret: bool,
}

impl Problem {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            hint: None,
            secret: false,
        }
    }

    /// Shows the offending line with the spanned value starred out.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The problem at its line and column of `text`, the file at `path`.
    pub fn locate(self, path: &Path, text: &str) -> JobFileError {
        let at = self.span.start.min(text.len());
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let line = text[..at].matches('\n').count() + 1;
        let column = text[line_start..at].chars().count() + 1;
        let mut source_line = text[line_start..line_end].trim_end_matches('\r').to_owned();
        if self.secret {
            let end = self.span.end.clamp(at, line_end);
            source_line = format!("{}\"***\"{}", &text[line_start..at], &text[end..line_end]);
        }
        JobFileError::Invalid(Box::new(Located {
            path: path.to_owned(),
            line,
            column,
            message: self.message,
            hint: self.hint,
            source_line,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_shown_at_its_line_and_column_with_a_caret() {
        let text = "name = \"x\"\n[input]\ntopic = 3\n";
        let at = text.find('3').unwrap_or_default();
        let err = Problem::new(at..at + 1, "expected a string")
            .hint("quote it")
            .locate(Path::new("job.toml"), text);
        assert_eq!(
            err.to_string(),
            "job.toml:3:9: expected a string\n  |\n3 | topic = 3\n  |         ^\n  = hint: quote it"
        );
    }
}
