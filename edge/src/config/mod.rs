//! The edge's TOML configuration: one file per node. Every field documents its default;
//! docs/configuration.md is the reference for operators.

mod load;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_shared::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

pub use load::{load_file, parse, ConfigError};

/// The configuration an edge runs with when started without `--config`: a mirror of Docker Hub
/// (the default upstream), GHCR, Quay and registry.k8s.io.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A whole edge configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeConfig {
    /// Region this edge serves, reported to the distributor and in metrics. Default: `"default"`.
    pub region: String,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// The on-disk and in-memory cache.
    pub cache: CacheConfig,
    /// Process settings (worker threads, shutdown).
    pub server: ServerConfig,
    /// The registries this edge mirrors. Only these are ever contacted.
    pub upstream: Vec<UpstreamConfig>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            region: "default".into(),
            listen: ListenConfig::default(),
            cache: CacheConfig::default(),
            server: ServerConfig::default(),
            upstream: Vec::new(),
        }
    }
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenConfig {
    /// The OCI pull API (plain HTTP). Default: `"0.0.0.0:5000"`.
    pub http: SocketAddr,
    /// Health, readiness and metrics. Default: `"127.0.0.1:9400"`.
    pub admin: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig { http: SocketAddr::from(([0, 0, 0, 0], 5000)), admin: SocketAddr::from(([127, 0, 0, 1], 9400)) }
    }
}

/// `[cache]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Folder holding blobs, manifests and temp files. Default: `"./berth-data"`.
    pub dir: PathBuf,
    /// Hard bound on the bytes of cached blobs and manifests on disk. Default: `"10GiB"`.
    pub disk_max: ByteSize,
    /// Bound on the memory tier (manifests and small blobs). `"0"` turns it off.
    /// Default: `"1GiB"`.
    pub memory_max: ByteSize,
    /// Largest blob kept in the memory tier. Default: `"4MiB"`.
    pub memory_object_max: ByteSize,
    /// Bytes per second the background scrub re-hashes cached files at. `"0"` turns it off.
    /// Default: `"32MiB"`.
    pub scrub_rate: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("./berth-data"),
            disk_max: ByteSize::gib(10),
            memory_max: ByteSize::gib(1),
            memory_object_max: ByteSize::mib(4),
            scrub_rate: ByteSize::mib(32),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Worker threads for the pull API. `0` means one per CPU core. Default: `0`.
    pub threads: usize,
    /// How long in-flight requests may finish after SIGTERM before they are cut. Default: `"30s"`.
    pub grace_period: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { threads: 0, grace_period: HumanDuration::secs(30) }
    }
}

/// One `[[upstream]]` registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// What `?ns=` and the path prefix match, e.g. `"docker.io"`, `"ghcr.io"`, `"10.0.0.5:5000"`.
    /// Required.
    pub name: String,
    /// Base URL of the registry, e.g. `"https://registry-1.docker.io"`. Required.
    pub url: String,
    /// Requests that name no upstream go to the default one. At most one. Default: `false`.
    pub default: bool,
    /// User name for the registry (Basic, or for the bearer-token exchange). Default: none.
    pub username: Option<String>,
    /// Name of the environment variable holding the password. Default: none.
    pub password_env: Option<String>,
    /// How long a tag→digest mapping is served before it is revalidated upstream. Default: `"60s"`.
    pub tag_ttl: HumanDuration,
    /// How long past its last confirmation a tag may be served while the upstream fails.
    /// Default: `"24h"`.
    pub stale_if_error: HumanDuration,
    /// Timeout for establishing a connection (TCP and TLS). Default: `"10s"`.
    pub connect_timeout: HumanDuration,
    /// Timeout from sending a request to receiving the response headers. Default: `"30s"`.
    pub first_byte_timeout: HumanDuration,
    /// Longest pause allowed between two pieces of a response body. Default: `"30s"`.
    pub body_stall_timeout: HumanDuration,
    /// Extra PEM CA certificates to trust for this upstream (private registries). Default: none.
    pub ca_file: Option<PathBuf>,
    /// Prefix one-segment repository names with `library/` (Docker Hub's official images).
    /// Default: `true` for the upstream named `docker.io`, else `false`.
    pub library_prefix: Option<bool>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            url: String::new(),
            default: false,
            username: None,
            password_env: None,
            tag_ttl: HumanDuration::secs(60),
            stale_if_error: HumanDuration::secs(24 * 3600),
            connect_timeout: HumanDuration::secs(10),
            first_byte_timeout: HumanDuration::secs(30),
            body_stall_timeout: HumanDuration::secs(30),
            ca_file: None,
            library_prefix: None,
        }
    }
}

impl UpstreamConfig {
    pub fn uses_library_prefix(&self) -> bool {
        self.library_prefix.unwrap_or(self.name == "docker.io")
    }
}

impl EdgeConfig {
    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        parse(DEFAULT_CONFIG)
    }

    /// The upstream marked `default = true`, if any.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstream.iter().find(|u| u.default)
    }
}
