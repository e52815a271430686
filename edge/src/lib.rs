//! Berth edge: a Pingora pull-through cache for the OCI pull API.
//!
//! A request flows `proxy` (Pingora glue) → `registry` (routing, OCI rules) → `cache` (lookup,
//! fills, tiers) → `upstream` (client, token auth). See docs/architecture.md.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod pulls;
pub mod registry;
pub mod reload;
pub mod server;
pub mod starting;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use config::EdgeConfig;
pub use server::{EdgeServer, RunningEdge};
