//! Edges for tests: in-process on port 0 (Pingora on its own thread), or the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth_edge::config::{self, EdgeConfig};
use berth_edge::{EdgeServer, RunningEdge};

/// An in-process edge with its own cache folder; stopped when dropped.
pub struct TestEdge {
    pub edge: Option<RunningEdge>,
    pub dir: tempfile::TempDir,
}

impl TestEdge {
    pub fn url(&self) -> String {
        format!("http://{}", self.running().http_addr.expect("plain-HTTP listener on"))
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running().admin_addr)
    }

    pub fn running(&self) -> &RunningEdge {
        self.edge.as_ref().expect("edge running")
    }

    /// Waits until the blob is published on disk (fills publish just after serving).
    pub async fn published(&self, digest: berth_shared::Digest) {
        let store = self.running().state.fills.store().clone();
        let key = berth_edge::cache::EntryKey::blob(digest);
        crate::eventually("blob published", std::time::Duration::from_secs(20), move || store.contains(&key).is_some())
            .await;
    }

    /// The value of one metric series from `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = crate::client::get(&format!("{}/metrics", self.admin_url())).await;
        metric_value(&String::from_utf8_lossy(text.bytes()), series)
    }

    /// Stops the edge and hands back its folder (to restart on the same cache).
    pub fn stop(self) -> tempfile::TempDir {
        let TestEdge { edge, dir } = self;
        if let Some(edge) = edge {
            edge.stop();
        }
        dir
    }
}

/// Finds `series` (e.g. `berth_edge_requests_total{kind="blob",outcome="hit"`) in a
/// Prometheus exposition and sums the matching lines.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An edge config for tests: listeners on 127.0.0.1:0, the cache in `dir`, one upstream per
/// (name, url), the first the default. Upstream stall and first-byte timeouts are 30 s, longer
/// than any test holds a response at a gate; the tests of those timeouts set their own.
pub fn test_config(dir: &Path, upstreams: &[(&str, &str)], extra: &str) -> EdgeConfig {
    let mut text = format!(
        "region = \"test\"\n{extra}\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {dir:?}\ndisk_max = \"1GiB\"\n",
        dir = dir.display().to_string()
    );
    for (i, (name, url)) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\ndefault = {}\nbody_stall_timeout = \"30s\"\nfirst_byte_timeout = \"30s\"\nconnect_timeout = \"2s\"\n",
            i == 0
        ));
    }
    config::parse(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
}

/// Starts an in-process edge with `config` (its cache dir must be inside `dir`). Set
/// `BERTH_TEST_LOG=debug` to see the edge's log.
pub fn start_with(config: EdgeConfig, dir: tempfile::TempDir) -> TestEdge {
    start_with_sockets(config, dir, Default::default())
}

/// Starts an in-process edge with `config`, serving pulls on `sockets` where given.
pub fn start_with_sockets(
    config: EdgeConfig,
    dir: tempfile::TempDir,
    sockets: berth_edge::listener::Sockets,
) -> TestEdge {
    if let Ok(filter) = std::env::var("BERTH_TEST_LOG") {
        berth_edge::telemetry::init(&filter, false);
    }
    let edge = EdgeServer::build_with(config, sockets).expect("edge starts").spawn();
    TestEdge { edge: Some(edge), dir }
}

/// Starts an in-process edge that serves pulls on `socket` (bound by the test, so its URL is
/// known before it starts: a region's configs name each other).
pub fn start_on(
    socket: std::net::TcpListener,
    upstreams: &[(&str, &str)],
    extra: &str,
    tweak: impl FnOnce(&mut EdgeConfig),
) -> TestEdge {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&dir.path().join("cache"), upstreams, extra);
    tweak(&mut config);
    start_with_sockets(config, dir, berth_edge::listener::Sockets { http: Some(socket), https: None })
}

/// Starts an in-process edge in front of one upstream (named `docker.io`, the default).
pub fn start(upstream_url: &str) -> TestEdge {
    start_custom(&[("docker.io", upstream_url)], "", |_| {})
}

/// Starts an in-process edge with several upstreams, extra top-level TOML, and a final tweak.
pub fn start_custom(upstreams: &[(&str, &str)], extra: &str, tweak: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&dir.path().join("cache"), upstreams, extra);
    tweak(&mut config);
    start_with(config, dir)
}

/// The path of a workspace binary built next to the test executable. Fails with a clear message
/// when it is missing or older than any source file of the crates it is built from, so a test
/// never runs a stale binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    let fix = "run `cargo build --workspace --bins` (scripts/test does) before the tests";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is not built: {fix}", path.display()));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let crates: &[&str] = if name == "berth-edge" { &["shared", "edge"] } else { &["shared", "distributor"] };
    for krate in crates {
        if let Some((newest, source)) = newest_file(&workspace.join(krate).join("src")) {
            assert!(newest <= built, "{} is older than {}: {fix}", path.display(), source.display());
        }
    }
    path
}

/// The newest `.rs` file under `dir`.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_file(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        } else {
            None
        };
        if let Some(found) = found {
            if newest.as_ref().is_none_or(|(t, _)| found.0 > *t) {
                newest = Some(found);
            }
        }
    }
    newest
}

/// The real `berth-edge` binary, run with a config file that listens on port 0; the addresses
/// are read from its start-up log line. Killed when dropped.
pub struct EdgeProcess {
    pub child: Child,
    /// The plain-HTTP and TLS pull listeners (each when on).
    pub plain: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
    pub log: PathBuf,
}

impl EdgeProcess {
    /// Starts the binary and waits for it to report its listeners.
    pub fn start(config_path: &Path, log: &Path) -> EdgeProcess {
        Self::start_with_env(config_path, log, &[])
    }

    /// Starts the binary with extra environment variables (secrets named by its config).
    pub fn start_with_env(config_path: &Path, log: &Path, env: &[(&str, &str)]) -> EdgeProcess {
        let mut child = Command::new(binary("berth-edge"))
            .arg("--config")
            .arg(config_path)
            .env("BERTH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth-edge");
        let (plain, tls, admin) = crate::tools::follow_output(&mut child, log, |line| {
            let field = |name: &str| -> Option<std::net::SocketAddr> {
                line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse().ok())
            };
            if line.contains("edge ready to serve") {
                Some((field("http="), field("https="), field("admin=")?))
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("berth-edge did not start: {}", std::fs::read_to_string(log).unwrap_or_default()));
        EdgeProcess { child, plain, tls, admin, log: log.to_owned() }
    }

    /// The plain-HTTP pull listener; panics when it is off.
    pub fn http(&self) -> std::net::SocketAddr {
        self.plain.expect("the edge's plain-HTTP listener is on")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http())
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
