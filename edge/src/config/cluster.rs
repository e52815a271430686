//! `[cluster]`: the other edges of the region (see `cluster/`).

use std::path::PathBuf;

use berth_shared::HumanDuration;
use serde::{Deserialize, Serialize};

/// `[cluster]`: the edges of a region share one cache. Each blob has an owner among them by
/// rendezvous hashing; a miss elsewhere is filled from the owner, which fills from the origin
/// once for the whole region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This edge's pull URL as its peers reach it: its name in the owner hash, the same string
    /// the other edges list in their `peers`. Required with `peers`. Default: none.
    pub advertise: Option<String>,
    /// An environment variable holding `advertise` instead, for configs shared by edges that
    /// differ only in their address (a Kubernetes DaemonSet sets it per pod from the node's
    /// address). Default: none.
    pub advertise_env: Option<String>,
    /// The pull URLs of the other edges of the region (`http://` or `https://`, no path).
    /// Empty: the edge works alone. Default: none.
    pub peers: Vec<String>,
    /// Environment variable holding the region's shared key (at least 16 bytes), which signs
    /// requests between edges. Default: `"BERTH_REGION_KEY"`.
    pub key_env: String,
    /// A file holding the key instead (surrounding whitespace trimmed). Default: none.
    pub key_file: Option<PathBuf>,
    /// A blob filled from a peer is kept on this edge once it has been filled here this many
    /// times within `popular_window` (popular blobs on every edge that serves them, the rest on
    /// their owner only). Default: `2`.
    pub keep_after: u32,
    /// The window `keep_after` counts in, from the first fill counted. Default: `"10m"`.
    pub popular_window: HumanDuration,
    /// CA certificates (PEM) for peers reached over `https://`, besides the system's roots.
    /// Default: none.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            advertise: None,
            advertise_env: None,
            peers: Vec::new(),
            key_env: "BERTH_REGION_KEY".into(),
            key_file: None,
            keep_after: 2,
            popular_window: HumanDuration::secs(600),
            ca_file: None,
        }
    }
}

impl ClusterConfig {
    /// This edge's URL in the region: `advertise`, else the value of `advertise_env` (an error
    /// when that variable is unset or empty). `None`: the edge is in no cluster.
    pub fn advertised(&self) -> Result<Option<String>, String> {
        match (&self.advertise, &self.advertise_env) {
            (Some(url), _) => Ok(Some(url.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => Ok(Some(url.trim().to_owned())),
                _ => Err(format!("environment variable {var} is not set")),
            },
            (None, None) => Ok(None),
        }
    }

    /// The region key, from `key_file` or `key_env`.
    pub fn key(&self) -> Result<String, String> {
        berth_shared::secret::read(self.key_file.as_deref(), &self.key_env)
    }
}
