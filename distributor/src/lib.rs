//! Berth distributor: the control plane. Release pipelines and operators talk to it; it keeps
//! the fleet and a versioned policy log (prefetch orders, invalidations) and pushes it to every
//! edge over watch streams.
//!
//! A request reads `api` → `policy` (the log) → `push` (watch streams) → `fleet` (edges,
//! reports) → `store` (redb). `ctl` is the `berthctl` client.

pub mod activation;
pub mod analytics;
pub mod api;
pub mod config;
pub mod ctl;
pub mod dns;
pub mod fleet;
pub mod hooks;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod policy;
pub mod push;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;
pub mod view;

pub use config::DistributorConfig;
pub use server::{Distributor, RunningDistributor};

/// Logging: `tracing`, text or JSON lines.
pub fn init_logging(filter: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
