//! A region as one cache (`[cluster]`). The edges of a region know each other; each blob has an
//! owner among them by rendezvous hashing (`ring.rs`). A miss on an edge that does not own the
//! blob is filled from the owner (which fills from the origin once for the whole region), then
//! from the next owner if the owner fails or is not ready, then from the origin
//! (`sources.rs`); the edge streams to its clients and verifies as always. A blob filled from a
//! peer is kept only once it is popular here (filled `keep_after` times within the last
//! `popular_window`): rarely pulled blobs live on their owner only, popular ones on every edge
//! that serves them. Peer requests are signed with the region's key and never forwarded again
//! (`hop.rs`).

pub mod hop;
pub mod ring;
pub mod sources;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_shared::{Digest, HumanDuration};
use parking_lot::{Mutex, RwLock};

use crate::config::{ClusterConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use hop::RegionKey;

/// A member's name as every edge must hash it: the URL without a trailing `/`, its scheme and
/// host in lower case (`HTTP://Edge-1:5000/` and `http://edge-1:5000` are one member).
fn normal(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{}", scheme.to_ascii_lowercase(), rest.to_ascii_lowercase()),
        None => url.to_ascii_lowercase(),
    }
}

/// How long a peer that failed is skipped before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// The other edges of the region, and this one's name among them.
struct Members {
    me: String,
    peers: HashMap<String, Arc<Upstream>>,
}

/// Where a fill should get its bytes.
pub struct Plan {
    /// The peers to ask first, in owner order (those that rank above this edge and are up).
    pub peers: Vec<Arc<Upstream>>,
    /// Whether this edge keeps the blob once it is verified: it owns it (no peer ranks above
    /// it, or those that do are down), the fill is a prefetch, or the blob is popular here.
    pub keep: bool,
}

/// This edge's view of its region.
pub struct Cluster {
    key: RegionKey,
    config: ClusterConfig,
    members: RwLock<Arc<Members>>,
    down: Mutex<HashMap<String, Instant>>,
    /// Fills started lately for each digest, and when the first of them started (the
    /// popularity that decides what a non-owner keeps).
    fills: moka::sync::Cache<Digest, (u32, Instant)>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The cluster of a config with `[cluster] advertise` or `advertise_env` (`None` without:
    /// the edge is alone).
    /// Its members are `peers`, or none until the distributor names them ([`Self::from_fleet`]).
    pub fn new(config: &ClusterConfig, metrics: &Arc<Metrics>) -> Result<Option<Arc<Self>>, String> {
        let Some(me) = config.advertised()? else { return Ok(None) };
        let key = RegionKey::new(&config.key()?)?;
        let fills = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.popular_window.get().max(Duration::from_secs(1)))
            .build();
        let cluster = Cluster {
            key,
            config: config.clone(),
            members: RwLock::new(Arc::new(Members { me: String::new(), peers: HashMap::new() })),
            down: Mutex::new(HashMap::new()),
            fills,
            metrics: Arc::clone(metrics),
        };
        cluster.set_members(&me, &config.peers)?;
        Ok(Some(Arc::new(cluster)))
    }

    /// Whether the members come from the distributor's fleet (`[cluster] peers` left out).
    pub fn from_fleet(&self) -> bool {
        self.config.peers.is_empty()
    }

    /// Sets this edge's name and its peers' URLs (a change moves only the blobs whose owner
    /// joined or left). A peer listed under this edge's own name is left out.
    pub fn set_members(&self, me: &str, peers: &[String]) -> Result<(), String> {
        let current = Arc::clone(&self.members.read());
        let mut map = HashMap::new();
        let me = normal(me);
        for url in peers.iter().map(|p| normal(p)).filter(|p| *p != me) {
            let peer = match current.peers.get(&url) {
                Some(existing) => Arc::clone(existing),
                None => Arc::new(self.peer_upstream(&url)?),
            };
            map.insert(url, peer);
        }
        let changed =
            me != current.me || map.len() != current.peers.len() || map.keys().any(|k| !current.peers.contains_key(k));
        if changed {
            let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
            names.sort_unstable();
            tracing::info!(me = %me, peers = ?names, "cluster members");
        }
        let count = map.len() as i64;
        *self.members.write() = Arc::new(Members { me, peers: map });
        self.metrics.cluster_peers.set(count);
        Ok(())
    }

    /// The members the distributor names for this edge's region: those with a valid URL (a
    /// bad one is logged and left out; the others stay in service).
    pub fn set_fleet_members(&self, peers: &[String]) {
        let (good, bad): (Vec<String>, Vec<String>) =
            peers.iter().cloned().partition(|p| berth_shared::url::is_base_url(p));
        if !bad.is_empty() {
            tracing::warn!(urls = ?bad, "the distributor named peers whose URLs cannot be used: left out");
        }
        if let Err(e) = self.set_members(&self.me(), &good) {
            tracing::warn!(error = %e, "cluster members from the distributor not applied");
        }
    }

    /// The client for one peer: an upstream with the cluster's TLS roots and short connect
    /// timeout (a dead peer is skipped at once), trusted on internal networks.
    fn peer_upstream(&self, url: &str) -> Result<Upstream, String> {
        let config = UpstreamConfig {
            name: url.to_owned(),
            url: url.to_owned(),
            ca_file: self.config.ca_file.clone(),
            connect_timeout: HumanDuration::secs(2),
            ..UpstreamConfig::default()
        };
        Upstream::new(usize::MAX, &config, Arc::clone(&self.metrics)).map_err(|e| format!("peer {url}: {e}"))
    }

    /// This edge's name in the region.
    pub fn me(&self) -> String {
        self.members.read().me.clone()
    }

    pub fn key(&self) -> &RegionKey {
        &self.key
    }

    /// Where a fill of `digest` gets its bytes, and whether this edge keeps them. `patient`:
    /// a prefetch, which is always kept.
    pub fn plan(&self, digest: &Digest, patient: bool) -> Plan {
        let members = Arc::clone(&self.members.read());
        let names = members.peers.keys().map(String::as_str).chain([members.me.as_str()]);
        let ranked = ring::rank(names, digest);
        let now = Instant::now();
        let down = self.down.lock();
        let peers: Vec<_> = ranked
            .iter()
            .take_while(|m| **m != members.me)
            .filter(|m| down.get(**m).is_none_or(|until| *until <= now))
            .filter_map(|m| members.peers.get(*m).cloned())
            .collect();
        drop(down);
        let filled = self.count_fill(digest, now);
        let keep = peers.is_empty() || patient || filled >= self.config.keep_after;
        Plan { peers, keep }
    }

    /// Counts a fill of `digest` starting at `now`; returns the fills within `popular_window`
    /// of the first one counted (one atomic update per digest: concurrent fills all count).
    fn count_fill(&self, digest: &Digest, now: Instant) -> u32 {
        let window = self.config.popular_window.get();
        let entry = self.fills.entry(*digest).and_upsert_with(|seen| match seen.map(|e| *e.value()) {
            Some((n, first)) if now.saturating_duration_since(first) < window => (n + 1, first),
            _ => (1, now),
        });
        entry.into_value().0
    }

    /// A peer failed (unreachable, not ready, an error): skipped for a few seconds.
    pub fn peer_failed(&self, peer: &str) {
        self.down.lock().insert(peer.to_owned(), Instant::now() + DOWN_FOR);
        self.metrics.peer_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(me: &str, peers: &[&str], keep_after: u32) -> Arc<Cluster> {
        std::env::set_var("BERTH_TEST_REGION_KEY", "a-region-key-of-32-bytes-or-so!!");
        let config = ClusterConfig {
            advertise: Some(me.to_owned()),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            key_env: "BERTH_TEST_REGION_KEY".into(),
            keep_after,
            ..ClusterConfig::default()
        };
        Cluster::new(&config, &Arc::new(Metrics::new("test"))).unwrap().unwrap()
    }

    #[test]
    fn should_send_a_non_owner_to_the_owner_and_the_owner_to_the_origin() {
        let names = ["http://a:5000", "http://b:5000", "http://c:5000"];
        let d = Digest::of(b"layer");
        let ranked = ring::rank(names, &d);
        let owner = cluster(ranked[0], &names, 2);
        let plan = owner.plan(&d, false);
        assert!(plan.peers.is_empty() && plan.keep, "the owner fills from the origin and keeps it");
        let last = cluster(ranked[2], &names, 2);
        let plan = last.plan(&d, false);
        let asked: Vec<_> = plan.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(asked, [ranked[0], ranked[1]], "the owner first, then the next owner");
        assert!(!plan.keep, "filled once here: not kept");
        assert!(last.plan(&d, false).keep, "filled twice here: popular, kept");
        last.peer_failed(ranked[0]);
        let asked: Vec<_> = last.plan(&d, false).peers.iter().map(|p| p.name.clone()).collect();
        assert_eq!(asked, [ranked[1]], "a peer that failed is skipped for a while");
    }

    #[test]
    fn should_count_fills_within_the_window_of_the_first_and_start_over_after_it() {
        let c = cluster("http://a:5000", &["http://b:5000"], 3);
        let d = Digest::of(b"popular");
        let t0 = Instant::now();
        let window = c.config.popular_window.get();
        assert_eq!(c.count_fill(&d, t0), 1);
        assert_eq!(c.count_fill(&d, t0 + window / 2), 2);
        assert_eq!(c.count_fill(&d, t0 + window - Duration::from_millis(1)), 3);
        assert_eq!(c.count_fill(&d, t0 + window), 1, "a window after the first: counting starts over");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    (0..100).for_each(|_| {
                        c.count_fill(&Digest::of(b"hot"), t0);
                    })
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.count_fill(&Digest::of(b"hot"), t0), 801, "no concurrent fill lost");
    }

    #[test]
    fn should_treat_spellings_of_one_url_as_one_member() {
        assert_eq!(normal("HTTP://Edge-1.EU:5000/"), "http://edge-1.eu:5000");
        let c = cluster("http://a:5000/", &["http://A:5000", "http://b:5000/"], 2);
        assert_eq!(c.me(), "http://a:5000");
        let d = Digest::of(b"x");
        let peers: Vec<_> = c.plan(&d, false).peers.iter().map(|p| p.name.clone()).collect();
        assert!(peers.iter().all(|p| p == "http://b:5000"), "this edge is not its own peer: {peers:?}");
    }

    #[test]
    fn should_keep_a_prefetched_blob_and_have_no_cluster_without_advertise() {
        let names = ["http://a:5000", "http://b:5000"];
        let d = Digest::of(b"prefetched");
        let ranked = ring::rank(names, &d);
        assert!(cluster(ranked[1], &names, 5).plan(&d, true).keep);
        let alone = Cluster::new(&ClusterConfig::default(), &Arc::new(Metrics::new("test"))).unwrap();
        assert!(alone.is_none());
    }
}
