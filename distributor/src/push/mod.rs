//! Pushing the policy log to edges over long-lived watch streams.

pub mod watch;
