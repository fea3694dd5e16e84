//! [`Outcome`]: what one write did, reported by `store` and recorded by `trace` and `writer`.
//!
//! A leaf module of its own, so that `trace` (which `batch` uses) does not depend on `store` (which uses `batch`).

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub stored: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub presence_updates: u64,
    /// Rows the database refused (found by bisecting a batch), stored as dead letters (counted in `dead_lettered`).
    pub refused: u64,
}
