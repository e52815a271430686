//! The distributor's TOML configuration. Every field documents its default; docs/configuration.md
//! is the reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_shared::config_file::{self, ConfigError};
use berth_shared::{secret, HumanDuration};
use serde::{Deserialize, Serialize};

/// The configuration the distributor runs with when started without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributorConfig {
    pub listen: ListenConfig,
    /// Serve the API over TLS with this certificate chain and key (reloaded when the files
    /// change and on SIGHUP). Default: none (plain HTTP).
    pub tls: Option<berth_shared::tls::TlsFiles>,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub watch: WatchConfig,
    /// The GeoDNS zone rendered from the fleet (`GET /api/v1/dns/zone`, `berthctl dns zone`).
    pub dns: crate::dns::DnsConfig,
    /// Registry webhooks that turn pushes into prefetch jobs (`POST /api/v1/hooks/registry`).
    pub hooks: crate::hooks::HooksConfig,
    pub fleet: FleetConfig,
    pub analytics: AnalyticsConfig,
}

/// `[fleet]`: how the fleet page judges edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetConfig {
    /// An edge without a report for this long is shown `stale`. Default: `"30s"` (six of the
    /// edges' default 5 s report intervals).
    pub stale_after: HumanDuration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { stale_after: HumanDuration::secs(30) }
    }
}

/// `[analytics]`: pull counts reported by edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyticsConfig {
    /// How long per-region pull counts are kept. Default: `"7d"`.
    pub keep: HumanDuration,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig { keep: HumanDuration::secs(7 * 86_400) }
    }
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenConfig {
    /// The API, the watch streams and `/metrics`. Default: `"127.0.0.1:7000"`.
    pub http: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig { http: SocketAddr::from(([127, 0, 0, 1], 7000)) }
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Folder of the embedded database (edges, policy log, jobs). Default:
    /// `"./berth-distributor-data"`.
    pub dir: PathBuf,
    /// A PostgreSQL database instead of the embedded one (`postgres://user@host:port/db`), so
    /// that several replicas serve one fleet; `dir` is then unused. Default: none.
    pub postgres_url: Option<String>,
    /// With PostgreSQL: how often a replica checks the log for changes it was not told of.
    /// Changes reach every replica at once by `NOTIFY`; this only catches up one that a dropped
    /// connection lost. Default: `"1s"`.
    pub recheck: HumanDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("./berth-distributor-data"),
            postgres_url: None,
            recheck: HumanDuration::secs(1),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Environment variable with the comma-separated bearer tokens of the admin API.
    /// Default: `"BERTH_ADMIN_TOKENS"`.
    pub admin_tokens_env: String,
    /// Environment variable with the bearer tokens edges present (comma- or newline-separated).
    /// Each entry is `<token>` (any edge) or `<node_id> <region> <token>` (only that edge may
    /// report with it).
    /// Default: `"BERTH_EDGE_TOKENS"`.
    pub edge_tokens_env: String,
    /// A file with the admin tokens (comma- or newline-separated) instead of
    /// `admin_tokens_env` (e.g. a mounted secret). Default: none.
    pub admin_tokens_file: Option<std::path::PathBuf>,
    /// A file with the edge tokens instead of `edge_tokens_env`. Default: none.
    pub edge_tokens_file: Option<std::path::PathBuf>,
    /// Environment variable with the bearer tokens registries present on
    /// `POST /api/v1/hooks/registry`. Default: `"BERTH_HOOK_TOKENS"` (unset: no hook accepted).
    pub hook_tokens_env: String,
    /// A file with the hook tokens instead. Default: none.
    pub hook_tokens_file: Option<std::path::PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_tokens_env: "BERTH_ADMIN_TOKENS".into(),
            edge_tokens_env: "BERTH_EDGE_TOKENS".into(),
            admin_tokens_file: None,
            edge_tokens_file: None,
            hook_tokens_env: "BERTH_HOOK_TOKENS".into(),
            hook_tokens_file: None,
        }
    }
}

/// `[log]`: the policy log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Events kept; older ones are compacted into the snapshot that edges behind the log get.
    /// Default: `10000`.
    pub keep_events: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { keep_events: 10_000 }
    }
}

/// `[watch]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchConfig {
    /// Interval of keep-alive lines on idle watch streams. Default: `"15s"`.
    pub keepalive: HumanDuration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { keepalive: HumanDuration::secs(15) }
    }
}

/// Bearer tokens read from the environment.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: Vec<String>,
    pub edge: Vec<String>,
    /// May be empty (webhooks off).
    pub hook: Vec<String>,
}

impl DistributorConfig {
    pub fn embedded_default() -> Result<Self, ConfigError> {
        parse(DEFAULT_CONFIG)
    }

    /// The tokens named by `[auth]`, from their files or the environment (validated at load).
    pub fn tokens(&self) -> Tokens {
        let a = &self.auth;
        Tokens {
            admin: secret::read_list(a.admin_tokens_file.as_deref(), &a.admin_tokens_env).unwrap_or_default(),
            edge: secret::read_list(a.edge_tokens_file.as_deref(), &a.edge_tokens_env).unwrap_or_default(),
            hook: secret::read_list(a.hook_tokens_file.as_deref(), &a.hook_tokens_env).unwrap_or_default(),
        }
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<DistributorConfig, ConfigError> {
    config_file::read(path, validate)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<DistributorConfig, ConfigError> {
    config_file::parse(text, validate)
}

fn validate(config: &DistributorConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(url) = &config.store.postgres_url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            problems.push("store.postgres_url: must start with postgres:// or postgresql://".to_owned());
        }
    }
    if config.store.recheck.get().is_zero() {
        problems.push("store.recheck: must be greater than zero".to_owned());
    }
    let a = &config.auth;
    for (key, file, var) in [
        ("admin_tokens", &a.admin_tokens_file, &a.admin_tokens_env),
        ("edge_tokens", &a.edge_tokens_file, &a.edge_tokens_env),
    ] {
        if let Err(e) = secret::read_list(file.as_deref(), var) {
            let key = if file.is_some() { format!("auth.{key}_file") } else { format!("auth.{key}_env") };
            problems.push(format!("{key}: {e} (comma-separated bearer tokens)"));
        }
    }
    if let Ok(entries) = secret::read_list(a.edge_tokens_file.as_deref(), &a.edge_tokens_env) {
        let key = if a.edge_tokens_file.is_some() { "auth.edge_tokens_file" } else { "auth.edge_tokens_env" };
        for (i, entry) in entries.iter().enumerate() {
            if let Err(e) = crate::api::EdgeToken::parse(entry) {
                problems.push(format!("{key}: entry {}: {e}", i + 1));
            }
        }
    }
    if let Some(files) = &config.tls {
        if let Err(e) = berth_shared::tls::load_pair(files) {
            problems.push(format!("tls: {e}"));
        }
    }
    problems.extend(crate::dns::validate(&config.dns));
    problems.extend(crate::hooks::validate(&config.hooks));
    if let Some(file) = &a.hook_tokens_file {
        if let Err(e) = secret::read_list(Some(file), "") {
            problems.push(format!("auth.hook_tokens_file: {e}"));
        }
    }
    if config.log.keep_events == 0 {
        problems.push("log.keep_events: must be at least 1".into());
    }
    if config.fleet.stale_after.get().is_zero() {
        problems.push("fleet.stale_after: must be greater than zero".into());
    }
    if config.analytics.keep.get() < std::time::Duration::from_secs(60) {
        problems.push("analytics.keep: must be at least 1m (one bucket)".into());
    }
    if config.watch.keepalive.get().is_zero() {
        problems.push("watch.keepalive: must be greater than zero".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_refuse_unknown_keys_and_missing_token_variables_at_once() {
        let text = "[listen]\nhttp = \"127.0.0.1:7000\"\nport = 1\n[auth]\nadmin_tokens_env = \"BERTH_TEST_UNSET_ADMIN\"\nedge_tokens_env = \"BERTH_TEST_UNSET_EDGE\"\n[log]\nkeep_events = 0\n";
        let err = parse(text).unwrap_err().to_string();
        for key in ["listen.port: unknown key", "auth.admin_tokens_env", "auth.edge_tokens_env", "log.keep_events"] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
    }

    #[test]
    fn should_read_tokens_from_files() {
        let dir = std::env::temp_dir().join(format!("berth-dist-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin"), " a, b ,,\n").unwrap();
        std::fs::write(dir.join("edge"), "e\n").unwrap();
        let text = format!(
            "[auth]\nadmin_tokens_file = {:?}\nedge_tokens_file = {:?}\n",
            dir.join("admin").display().to_string(),
            dir.join("edge").display().to_string()
        );
        let config = parse(&text).unwrap();
        let tokens = config.tokens();
        assert_eq!(tokens.admin, vec!["a", "b"]);
        assert_eq!(tokens.edge, vec!["e"]);
        assert_eq!(config.listen.http.to_string(), "127.0.0.1:7000");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
