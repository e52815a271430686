//! In-process integration tests: the edge on port 0 against a scripted origin.

mod access;
mod bounds;
mod cluster;
mod direct;
mod drain;
mod durability;
mod faults;
mod fills;
mod logs;
mod manifests;
mod policy;
mod pull_api;
mod reload;
mod tls;
