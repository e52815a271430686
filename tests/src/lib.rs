//! Test harness for Berth: a scripted origin registry whose endpoints misbehave on purpose, an
//! HTTP client that reports cut-short bodies, in-process and real-binary edges, and wrappers
//! for Debian's `docker-registry` and `skopeo`.

pub mod client;
pub mod edge;
pub mod fleet;
pub mod origin;
pub mod registry;
pub mod tools;

/// Waits until `cond` holds, polling on events of the runtime rather than sleeping blindly;
/// panics with `what` after `limit`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, limit: std::time::Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
