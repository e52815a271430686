//! The versioned policy log: every prefetch order and invalidation, in order.

pub mod log;

pub use log::PolicyLog;
