//! What is wrong with a set of documents: each problem names the file, the document and the
//! field path.

use std::{fmt, path::PathBuf};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The document set is still applied (a skipped `Gateway`, an unreachable route, a field
    /// mesh does not implement in lenient mode).
    Warning,
    /// The whole set is rejected; the configuration in force stays.
    Error,
}

/// One problem in a document set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// The file (or `etcd:/prefix/key`, or `<inline>`).
    pub file: PathBuf,
    /// The document: `VirtualService prod/reviews`, or `document 3` when it has no kind/name.
    pub document: String,
    /// The field path inside the document (`spec.http[1].route[0].weight`); empty for the
    /// document as a whole.
    pub field: String,
    /// What is wrong.
    pub reason: String,
    /// Error or warning.
    pub severity: Severity,
}

impl ConfigError {
    /// A new error.
    pub fn error(
        file: impl Into<PathBuf>,
        document: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            document: document.into(),
            field: field.into(),
            reason: reason.into(),
            severity: Severity::Error,
        }
    }

    /// The same problem as a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// Whether it rejects the set.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "{}: {}", self.file.display(), self.document)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A rejected document set: every error found (not only the first), and the warnings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors (not the warnings).
    pub fn errors(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter().filter(|e| e.is_error())
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(
            f,
            "{n} error{} in the configuration",
            if n == 1 { "" } else { "s" }
        )?;
        for e in self.errors() {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Collects the problems of one document while it is converted.
pub(crate) struct Problems<'a> {
    pub(crate) file: &'a std::path::Path,
    pub(crate) document: &'a str,
    pub(crate) lenient: bool,
    pub(crate) out: &'a mut Vec<ConfigError>,
}

impl Problems<'_> {
    /// An error at `field`.
    pub(crate) fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.out
            .push(ConfigError::error(self.file, self.document, field, reason));
    }

    /// A warning at `field`.
    pub(crate) fn warn(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.out
            .push(ConfigError::error(self.file, self.document, field, reason).warning());
    }

    /// A field of Istio's schema that mesh does not implement: an error, or a warning in
    /// lenient mode. Never silently ignored.
    pub(crate) fn unimplemented(&mut self, field: impl Into<String>, what: &str) {
        let reason = format!(
            "{what} is in Istio's schema but not implemented by mesh{}",
            if self.lenient {
                " (ignored: lenient mode)"
            } else {
                " (remove it, or load in lenient mode to ignore it with a warning)"
            }
        );
        if self.lenient {
            self.warn(field, reason);
        } else {
            self.error(field, reason);
        }
    }

    /// Errors so far in this document set.
    pub(crate) fn error_count(&self) -> usize {
        self.out.iter().filter(|e| e.is_error()).count()
    }
}
