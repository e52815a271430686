//! The edge's TOML configuration: one file per node. Every field documents its default;
//! docs/configuration.md is the reference for operators.

mod cluster;
mod load;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_shared::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

pub use cluster::ClusterConfig;
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
    /// This edge's name in the fleet. Default: the host name.
    pub node_id: Option<String>,
    /// The distributor to take policy from and report to. Default: none (the edge runs alone).
    pub distributor: Option<DistributorLink>,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// The certificate chain and key served on `listen.https`, reloaded when the files change
    /// and on SIGHUP. Default: none (required with `listen.https`).
    pub tls: Option<berth_shared::tls::TlsFiles>,
    /// The on-disk and in-memory cache.
    pub cache: CacheConfig,
    /// Process settings (worker threads, shutdown).
    pub server: ServerConfig,
    /// Client authorization: the edge's token service.
    pub auth: AuthConfig,
    /// The admin API (prefetch, purge) on the admin listener.
    pub admin: AdminConfig,
    /// The access log.
    pub log: crate::access_log::LogConfig,
    /// The registries this edge mirrors. Only these are ever contacted.
    pub upstream: Vec<UpstreamConfig>,
    /// The other edges of this region, so the region caches as one. Default: none (alone).
    pub cluster: ClusterConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            region: "default".into(),
            node_id: None,
            distributor: None,
            listen: ListenConfig::default(),
            tls: None,
            cache: CacheConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            log: Default::default(),
            upstream: Vec::new(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// `[distributor]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributorLink {
    /// Base URL of the distributor, e.g. `"http://distributor:7000"`. Required.
    pub url: String,
    /// Further replicas of the distributor (on one PostgreSQL store), tried in turn when the
    /// one in use cannot be reached; the watch resumes from the last version applied, so
    /// nothing is missed. (A `url` whose name has several addresses is tried address by
    /// address too.) Default: none.
    pub replicas: Vec<String>,
    /// Environment variable holding this edge's bearer token. Default: `"BERTH_EDGE_TOKEN"`.
    pub token_env: String,
    /// A file holding the bearer token instead (e.g. a mounted secret); when set, `token_env` is
    /// not read. Default: none.
    pub token_file: Option<std::path::PathBuf>,
    /// Extra PEM CA certificates to trust for an `https://` distributor (e.g. a private CA).
    /// Default: none (the public web roots).
    pub ca_file: Option<PathBuf>,
    /// How often the edge reports its counters and prefetch progress. Default: `"5s"`.
    pub report_interval: HumanDuration,
    /// How long a starting edge waits to catch up with the policy log before it serves anyway
    /// (a distributor that is away must not keep an edge down). Default: `"10s"`.
    pub startup_sync_timeout: HumanDuration,
    /// `/readyz` turns 503 when nothing (not even a keep-alive) came from the distributor for
    /// this long. Default: none (an edge stays ready without its distributor).
    pub max_staleness: Option<HumanDuration>,
    /// The address clients reach this edge at, reported to the distributor for the DNS zone it
    /// renders (`berthctl dns zone`). Default: none (the edge is left out of the zone).
    pub advertise: Option<std::net::IpAddr>,
}

impl Default for DistributorLink {
    fn default() -> Self {
        DistributorLink {
            url: String::new(),
            replicas: Vec::new(),
            token_env: "BERTH_EDGE_TOKEN".into(),
            token_file: None,
            ca_file: None,
            report_interval: HumanDuration::secs(5),
            startup_sync_timeout: HumanDuration::secs(10),
            max_staleness: None,
            advertise: None,
        }
    }
}

impl DistributorLink {
    /// The bearer token, from `token_file` or the environment.
    pub fn token(&self) -> Result<String, String> {
        berth_shared::secret::read(self.token_file.as_deref(), &self.token_env)
    }
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenConfig {
    /// The OCI pull API over plain HTTP; `"off"` turns it off. Default: `"0.0.0.0:5000"`.
    #[serde(with = "optional_addr")]
    pub http: Option<SocketAddr>,
    /// The OCI pull API over TLS (HTTP/2 and HTTP/1.1, by ALPN), with the pair in `[tls]`.
    /// Default: off.
    #[serde(with = "optional_addr")]
    pub https: Option<SocketAddr>,
    /// Health, readiness and metrics. Default: `"127.0.0.1:9400"`.
    pub admin: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 5000))),
            https: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9400)),
        }
    }
}

/// A listening address, or `"off"`.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is not an address like \"0.0.0.0:5000\" (or \"off\")"))
        })
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
    /// Bound on the memory tier (manifests and blobs up to `memory_object_max`). `"0"` turns it
    /// off.
    /// Default: `"1GiB"`.
    pub memory_max: ByteSize,
    /// Largest blob kept in the memory tier: a blob up to this size moves to memory on its first
    /// disk hit, and a hot blob served from memory costs about half the CPU per byte of one
    /// read from the page cache (docs/benchmarks.md). Default: `"128MiB"`.
    pub memory_object_max: ByteSize,
    /// Bytes per second the background scrub re-hashes cached files at. `"0"` turns it off.
    /// Default: `"32MiB"`.
    pub scrub_rate: ByteSize,
    /// Hash every cached byte as it is served (disk and memory hits) and cut the response before
    /// its last byte if it does not match the digest; the entry is then dropped. Costs a hash of
    /// every byte served (a range request hashes the whole file). Default: `false`.
    pub verify_on_serve: bool,
    /// Which entries leave the disk first when it is full: `"s3-fifo"` (a blob asked for only
    /// once leaves before one asked for again) or `"lru"` (least recently used); see
    /// docs/configuration.md. Default: `"s3-fifo"`.
    pub eviction: crate::cache::index::Eviction,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("./berth-data"),
            disk_max: ByteSize::gib(10),
            memory_max: ByteSize::gib(1),
            memory_object_max: ByteSize::mib(128),
            scrub_rate: ByteSize::mib(32),
            verify_on_serve: false,
            eviction: Default::default(),
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
    /// Downstream connections open at once (plain and TLS together); more are closed as they
    /// arrive. Default: `10000`.
    pub max_connections: usize,
    /// On HTTP/1, a request must arrive whole within this time of its first byte (slowloris).
    /// Default: `"10s"`.
    pub header_timeout: HumanDuration,
    /// A connection with no request in progress is closed after this time. Default: `"60s"`.
    pub idle_timeout: HumanDuration,
    /// Largest request head (request line and headers); larger gets `431`. Default: `"16KiB"`.
    pub max_header_bytes: ByteSize,
    /// Longest request target (path and query); longer gets `414`. Default: `"8KiB"`.
    pub max_url_bytes: ByteSize,
    /// Prefetch orders run at once; more wait their turn. Default: `4`.
    pub max_prefetch_orders: usize,
    /// After a drain starts (`/readyz` 503), how long the pull listeners keep taking new
    /// requests, so DNS answers and BGP routes move first. Default: `"15s"`.
    pub drain_period: HumanDuration,
    /// On HTTP/1.1, a GET or HEAD of a manifest or blob by digest that the memory tier holds is
    /// answered straight from the request's bytes (`proxy/direct.rs`), with the same checks and
    /// the same response as the full path, which every other request takes. Default: `true`.
    pub direct_hits: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 0,
            grace_period: HumanDuration::secs(30),
            max_connections: 10_000,
            header_timeout: HumanDuration::secs(10),
            idle_timeout: HumanDuration::secs(60),
            max_header_bytes: ByteSize::kib(16),
            max_url_bytes: ByteSize::kib(8),
            max_prefetch_orders: 4,
            drain_period: HumanDuration::secs(15),
            direct_hits: true,
        }
    }
}

/// `[auth]`: the token service of the edge (`/token`), used by every upstream whose `access`
/// is not `"anonymous"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// A file holding the key that signs the edge's tokens (at least 32 bytes). Give the edges
    /// of a region the same key so a token from one is accepted by all. Default: none.
    pub signing_key_file: Option<PathBuf>,
    /// An environment variable holding the signing key instead. Default: none. With neither set,
    /// each start makes a random key (tokens are then valid on this edge, until it restarts).
    pub signing_key_env: Option<String>,
    /// How long a token the edge issues is valid. Default: `"5m"`.
    pub token_ttl: HumanDuration,
    /// How long an upstream's answer (may these credentials pull that repository?) and a
    /// confirmation that a repository holds a digest are reused. Default: `"60s"`.
    pub authz_ttl: HumanDuration,
    /// The `service` named in challenges and tokens. Default: `"berth-edge"`.
    pub service: String,
    /// The base URL clients reach this edge at, for the challenge's realm
    /// (`<realm_base>/token`), e.g. `"https://pull.example.com"`. Default: none (taken from
    /// each request's Host and the listener's scheme).
    pub realm_base: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            signing_key_file: None,
            signing_key_env: None,
            token_ttl: HumanDuration::secs(300),
            authz_ttl: HumanDuration::secs(60),
            service: "berth-edge".into(),
            realm_base: None,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Environment variable holding the bearer tokens (comma- or newline-separated) the admin
    /// API (prefetch, purge) accepts. `/healthz`, `/readyz` and `/metrics` stay
    /// open. Default: none (the admin API is open: bind the admin listener to loopback).
    pub tokens_env: Option<String>,
    /// A file holding those tokens instead. Default: none.
    pub tokens_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The accepted tokens; `None` when the admin API is open.
    pub fn tokens(&self) -> Option<Result<Vec<String>, String>> {
        match (&self.tokens_file, &self.tokens_env) {
            (None, None) => None,
            (file, env) => Some(berth_shared::secret::read_list(file.as_deref(), env.as_deref().unwrap_or_default())),
        }
    }
}

/// Who may pull through an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Everyone (public content).
    Anonymous,
    /// Those the upstream itself lets pull the repository (asked with their credentials).
    Upstream,
    /// The users of `htpasswd_file`, each on the repositories `grants` gives them.
    Htpasswd,
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
    /// A file holding the password instead (e.g. a mounted secret). Default: none.
    pub password_file: Option<PathBuf>,
    /// How long a tag→digest mapping is served before it is revalidated upstream. Default: `"60s"`.
    pub tag_ttl: HumanDuration,
    /// How long an upstream's 404 for a manifest or blob is answered from memory without asking
    /// again (`"0s"`: not at all). An invalidation from the distributor or the admin API clears
    /// these answers. Default: `"10s"`.
    pub negative_ttl: HumanDuration,
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
    /// Blob fills from this upstream running at once; a request that would start another waits
    /// up to `queue_timeout`, then gets `503` with `Retry-After`. Default: `64`.
    pub max_fills: usize,
    /// Requests to this upstream in flight at once (each holds a connection until its body is
    /// read); over it, the same wait, then `503`. Default: `128`.
    pub max_connections: usize,
    /// How long a request waits for a fill or a connection under the bounds above.
    /// Default: `"10s"`.
    pub queue_timeout: HumanDuration,
    /// Internal networks (CIDR, e.g. `"10.0.0.0/8"`) that this upstream's redirects and token
    /// realms may lead to. The upstream's own host is always reachable; any other host must
    /// resolve to public addresses unless its network is listed here (loopback, link-local,
    /// private, shared and unspecified addresses are internal). Default: none.
    pub allow_private_networks: Vec<crate::upstream::guard::Network>,
    /// Prefix one-segment repository names with `library/` (Docker Hub's official images).
    /// Default: `true` for the upstream named `docker.io`, else `false`.
    pub library_prefix: Option<bool>,
    /// The upstream is another Berth edge (a parent region, a shield in front of the origin):
    /// every request to it carries `ns=<this upstream's name>`, so the parent routes it to the
    /// registry of the same name and applies its own access rules. Default: `false`.
    pub parent: bool,
    /// Who may pull: `"anonymous"`, `"upstream"` or `"htpasswd"`. Default: `"upstream"` when
    /// the upstream has credentials (`username`), else `"anonymous"`.
    pub access: Option<AccessMode>,
    /// Lets `access = "anonymous"` be combined with credentials (anyone can then read what the
    /// edge's credentials can). Default: `false`.
    pub allow_anonymous_with_credentials: bool,
    /// With `access = "htpasswd"`: the htpasswd file (bcrypt entries, `htpasswd -B`). Default: none.
    pub htpasswd_file: Option<PathBuf>,
    /// With `access = "htpasswd"`: user → repository patterns the user may pull (`*` matches
    /// within one path segment, `**` across segments), e.g. `alice = ["team-a/**"]`.
    /// Default: empty.
    pub grants: std::collections::BTreeMap<String, Vec<String>>,
}

impl UpstreamConfig {
    /// The password, from `password_file` or `password_env`; `None` when neither is set.
    pub fn password(&self) -> Option<Result<String, String>> {
        match (&self.password_file, &self.password_env) {
            (None, None) => None,
            (file, env) => Some(berth_shared::secret::read(file.as_deref(), env.as_deref().unwrap_or_default())),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            url: String::new(),
            default: false,
            username: None,
            password_env: None,
            password_file: None,
            tag_ttl: HumanDuration::secs(60),
            negative_ttl: HumanDuration::secs(10),
            stale_if_error: HumanDuration::secs(24 * 3600),
            connect_timeout: HumanDuration::secs(10),
            first_byte_timeout: HumanDuration::secs(30),
            body_stall_timeout: HumanDuration::secs(30),
            ca_file: None,
            max_fills: 64,
            max_connections: 128,
            queue_timeout: HumanDuration::secs(10),
            allow_private_networks: Vec::new(),
            library_prefix: None,
            parent: false,
            access: None,
            allow_anonymous_with_credentials: false,
            htpasswd_file: None,
            grants: Default::default(),
        }
    }
}

impl UpstreamConfig {
    /// The access mode in force (the configured one, or the default for these credentials).
    pub fn access_mode(&self) -> AccessMode {
        self.access.unwrap_or(if self.username.is_some() { AccessMode::Upstream } else { AccessMode::Anonymous })
    }

    pub fn uses_library_prefix(&self) -> bool {
        self.library_prefix.unwrap_or(self.name == "docker.io")
    }
}

impl EdgeConfig {
    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        parse(DEFAULT_CONFIG)
    }

    /// This edge's id in the fleet: `node_id`, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(host_name)
    }

    /// The upstream marked `default = true`, if any.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstream.iter().find(|u| u.default)
    }
}

/// The machine's host name (`"edge"` if it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(name)) if !name.is_empty() => name.to_owned(),
        _ => "edge".to_owned(),
    }
}
