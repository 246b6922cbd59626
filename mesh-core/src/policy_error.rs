//! Invalid policy values.

/// A policy value is out of range or inconsistent: names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    /// The field, e.g. `retries.budget.ttl`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl PolicyError {
    /// A new error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error under a parent field (`retries` + `budget.ttl` → `retries.budget.ttl`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}
