//! Reloading the config on SIGHUP: the upstreams (URLs, credentials, TTLs, timeouts, bounds,
//! access rules), `[auth]`, the request-head limits and `[cluster] peers` take effect for new
//! requests; requests in flight finish with what they started with. A file that does not load
//! is refused with the same message as at start, and a change to a key that needs a restart
//! (listen addresses, the cache, worker and connection settings, the distributor link, region,
//! node id, the admin tokens, the rest of `[cluster]`) is refused naming those keys: the config
//! in force stays either way. Every attempt is counted (`berth_edge_config_reloads_total{result}`).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;

use crate::config::{self, ConfigError, EdgeConfig};
use crate::state::{EdgeState, Live, StartError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("these keys change only with a restart: {}", .0.join(", "))]
    RestartNeeded(Vec<String>),
    #[error("{0}")]
    Build(#[from] StartError),
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// The restart-only keys whose values differ between the config in force and `new`.
pub fn restart_only_changes(old: &EdgeConfig, new: &EdgeConfig) -> Vec<String> {
    let mut changed = Vec::new();
    let mut compare = |key: &str, a: serde_json::Value, b: serde_json::Value| {
        if a != b {
            changed.push(key.to_owned());
        }
    };
    compare("region", json(&old.region), json(&new.region));
    compare("node_id", json(&old.node_id), json(&new.node_id));
    compare("listen", json(&old.listen), json(&new.listen));
    compare("tls", json(&old.tls), json(&new.tls));
    compare("cache", json(&old.cache), json(&new.cache));
    compare("distributor", json(&old.distributor), json(&new.distributor));
    compare("admin", json(&old.admin), json(&new.admin));
    compare("log", json(&old.log), json(&new.log));
    // The peers of a static cluster change with a reload; the rest of `[cluster]`, and whether
    // the peers come from the config or from the distributor, only with a restart.
    let cluster = |c: &EdgeConfig| {
        let mut v = json(&c.cluster);
        if let Some(map) = v.as_object_mut() {
            map.insert("peers".into(), json(&c.cluster.peers.is_empty()));
        }
        v
    };
    changed.extend(changed_keys("cluster", &cluster(old), &cluster(new)));
    let server = |c: &EdgeConfig| {
        let mut v = json(&c.server);
        if let Some(map) = v.as_object_mut() {
            map.remove("max_header_bytes");
            map.remove("max_url_bytes");
            map.remove("direct_hits");
        }
        v
    };
    changed.extend(changed_keys("server", &server(old), &server(new)));
    changed
}

/// The keys of table `table` whose values differ between `old` and `new` (`table.key`).
fn changed_keys(table: &str, old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    old.as_object()
        .into_iter()
        .flatten()
        .filter(|(key, value)| new.get(key.as_str()) != Some(value))
        .map(|(key, _)| format!("{table}.{key}"))
        .collect()
}

/// Reloads from `path`; on any problem the config in force stays.
pub fn reload(state: &EdgeState, path: &Path) -> Result<(), ReloadError> {
    let new = config::load_file(path)?;
    let changed = restart_only_changes(&state.config, &new);
    if !changed.is_empty() {
        return Err(ReloadError::RestartNeeded(changed));
    }
    let peers = new.cluster.peers.clone();
    let live = Live::build(new, &state.metrics, Some(&state.live()))?;
    // Everything that can fail is built before anything changes: a refused reload changes
    // nothing.
    if let Some(cluster) = state.fills.cluster().filter(|c| !c.from_fleet()) {
        cluster.set_members(&cluster.me(), &peers).map_err(StartError::Cluster)?;
    }
    state.replace_live(live);
    // Remembered 404s are keyed by an upstream's position, which a reload may change.
    state.negative.clear();
    Ok(())
}

/// Reloads the config file on SIGHUP, as a Pingora background service.
pub struct ConfigWatch {
    pub state: Arc<EdgeState>,
}

impl ConfigWatch {
    fn attempt(&self) {
        let Some(path) = self.state.config_file.lock().clone() else { return };
        match reload(&self.state, &path) {
            Ok(()) => {
                self.state.metrics.config_reloads.with_label_values(&["loaded"]).inc();
                tracing::info!(file = %path.display(), "config reloaded");
            }
            Err(e) => {
                self.state.metrics.config_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(file = %path.display(), error = %e, "config reload refused: the config in force stays");
            }
        }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        if let Some(path) = self.state.config_file.lock().as_ref() {
            tracing::info!(file = %path.display(), "the config reloads on SIGHUP");
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup.recv() => self.attempt(),
            }
        }
    }
}
