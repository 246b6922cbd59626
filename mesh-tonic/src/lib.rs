//! mesh for tonic (placeholder crate until its issue lands).
