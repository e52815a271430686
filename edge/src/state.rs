//! Everything a request handler needs, built once from the config.

use std::sync::Arc;

use crate::cache::{DiskError, DiskStore, Fills, ManifestCache, MemoryTier};
use crate::config::EdgeConfig;
use crate::metrics::Metrics;
use crate::registry::Router;
use crate::upstream::{ClientError, Upstreams};

pub use crate::reload::ReloadError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cache folder: {0}")]
    Disk(#[from] DiskError),
    #[error("upstream client: {0}")]
    Upstream(#[from] ClientError),
    #[error("{0}")]
    Access(#[from] crate::access::AccessError),
    #[error("tls: {0}")]
    Tls(#[from] berth_shared::tls::TlsError),
    #[error("access log {path}: {source}")]
    AccessLog { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cluster: {0}")]
    Cluster(String),
}

/// What a reload (SIGHUP) replaces: the upstreams, who may pull through them, and the request
/// limits, built from one config. Requests take the one in force when they look it up.
pub struct Live {
    /// The config this was built from (`[[upstream]]`, `[auth]`, request limits in force).
    pub config: EdgeConfig,
    pub router: Router,
    pub upstreams: Upstreams,
    pub access: crate::access::Access,
}

impl Live {
    /// `previous`: the one in force (on a reload), whose signing key is kept when the config
    /// names none.
    pub fn build(config: EdgeConfig, metrics: &Arc<Metrics>, previous: Option<&Live>) -> Result<Live, StartError> {
        let upstreams = Upstreams::new(&config.upstream, metrics)?;
        let router = Router::new(config.upstream.iter().map(|u| (u.name.as_str(), u.uses_library_prefix(), u.default)));
        let access = crate::access::Access::new(&config, previous.map(|p| p.access.key()))?;
        Ok(Live { config, router, upstreams, access })
    }
}

/// Shared state of a running edge.
pub struct EdgeState {
    /// The config the edge started with: listeners, cache, server, distributor, region. What a
    /// reload may change is in [`EdgeState::live`].
    pub config: EdgeConfig,
    live: arc_swap::ArcSwap<Live>,
    /// The file the config came from, reloaded on SIGHUP (none: nothing to reload).
    pub config_file: parking_lot::Mutex<Option<std::path::PathBuf>>,
    pub quarantine: crate::policy::quarantine::Quarantine,
    /// Upstream 404s, remembered for each upstream's `negative_ttl`.
    pub negative: crate::cache::negative::NegativeCache,
    pub fills: Arc<Fills>,
    pub manifests: Arc<ManifestCache>,
    pub memory: Arc<MemoryTier>,
    pub metrics: Arc<Metrics>,
    /// Readiness and drain.
    pub drain: Arc<crate::drain::Drain>,
    pub access_log: crate::access_log::AccessLog,
    /// Pull counts for the next report to the distributor.
    pub pulls: crate::pulls::PullCounter,
    /// When the process started (its counters count from then).
    pub started: std::time::Instant,
}

impl EdgeState {
    /// Opens the cache folder (rebuilding its index) and builds the upstream clients.
    pub fn new(config: EdgeConfig) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new(&config.region));
        let c = &config.cache;
        let store = DiskStore::open_with(&c.dir, c.disk_max.bytes(), c.eviction, Arc::clone(&metrics))?;
        let live = Live::build(config.clone(), &metrics, None)?;
        let drain = crate::drain::Drain::load(
            &config.cache.dir,
            config.server.drain_period.get(),
            config.distributor.as_ref().and_then(|d| d.max_staleness).map(|s| s.get()),
        );
        let access_log = crate::access_log::AccessLog::start(&config.log)
            .map_err(|source| StartError::AccessLog { path: config.log.access.clone(), source })?;
        let quarantine = crate::policy::quarantine::Quarantine::load(&config.cache.dir);
        metrics.quarantined.set(quarantine.len() as i64);
        let memory = Arc::new(MemoryTier::new(config.cache.memory_max.bytes(), config.cache.memory_object_max.bytes()));
        let cluster = crate::cluster::Cluster::new(&config.cluster, &metrics).map_err(StartError::Cluster)?;
        Ok(Arc::new(EdgeState {
            live: arc_swap::ArcSwap::from_pointee(live),
            config_file: parking_lot::Mutex::new(None),
            quarantine,
            negative: crate::cache::negative::NegativeCache::new(
                config.upstream.iter().map(|u| u.negative_ttl.get()).max().unwrap_or_default(),
            ),
            fills: Fills::new(Arc::clone(&store), Arc::clone(&metrics), cluster),
            manifests: ManifestCache::new(store, Arc::clone(&memory), Arc::clone(&metrics)),
            memory,
            metrics,
            config,
            drain,
            access_log,
            pulls: crate::pulls::PullCounter::default(),
            started: std::time::Instant::now(),
        }))
    }

    /// The upstreams, access rules and limits in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts a new [`Live`] in force (requests already running keep the one they took).
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// Why the edge should not receive traffic now, if it should not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(reason) = self.drain.reason() {
            return Some(reason);
        }
        if let Some(reason) = self.fills.store().degraded() {
            return Some(format!("cache disk degraded: {reason}"));
        }
        let tmp = self.fills.store().root().join("tmp");
        match std::fs::metadata(&tmp) {
            Ok(m) if m.is_dir() => None,
            _ => Some(format!("cache folder unusable: {} is missing", tmp.display())),
        }
    }

    /// Brings the gauges that are read rather than counted up to date (before `/metrics`).
    pub fn refresh_gauges(&self) {
        self.metrics.memory_bytes.set(self.memory.usage() as i64);
        self.metrics.memory_entries.set(self.memory.entries() as i64);
        self.metrics.fills_in_flight.set(self.fills.in_flight() as i64);
        let _ = self.fills.store().degraded();
        self.metrics.ready.set(i64::from(self.not_ready_reason().is_none()));
    }
}
