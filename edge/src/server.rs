//! Assembling and running an edge: the pull API and the admin listener as Pingora services in
//! one Pingora server. `run` blocks until a shutdown signal; `spawn` runs it on its own thread
//! and returns a handle that stops it (used by tests and embedders).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;
use tokio::sync::mpsc;

use crate::admin::AdminApp;
use crate::config::EdgeConfig;
use crate::listener::{adopt, bind, PreBound, Sockets};
use crate::policy::link::Link;
use crate::policy::Policy;
use crate::proxy::EdgeProxy;
use crate::state::{EdgeState, StartError};

/// An edge ready to run: state built, sockets bound.
pub struct EdgeServer {
    state: Arc<EdgeState>,
    server: Server,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
}

impl EdgeServer {
    /// Opens the cache, builds the upstream clients and binds both listeners.
    pub fn build(config: EdgeConfig) -> Result<Self, StartError> {
        Self::build_with(config, Sockets::default())
    }

    /// The same, serving pulls on `sockets` where given rather than binding `[listen]`.
    pub fn build_with(config: EdgeConfig, sockets: Sockets) -> Result<Self, StartError> {
        let http = match sockets.http {
            Some(socket) => Some(adopt(socket)?),
            None => config.listen.http.map(bind).transpose()?,
        };
        let https = match sockets.https {
            Some(socket) => Some(adopt(socket)?),
            None => config.listen.https.map(bind).transpose()?,
        };
        let (admin_socket, admin_addr) = bind(config.listen.admin)?;
        let tls = match (&https, &config.tls) {
            (Some(_), Some(files)) => Some(crate::tls::settings(files)?),
            (Some(_), None) => return Err(StartError::Tls(berth_shared::tls::TlsError::Missing)),
            _ => None,
        };
        let state = EdgeState::new(config)?;
        let mut server = Server::new_with_opt_and_conf(None, server_conf(&state.config));
        server.bootstrap();
        let conf = Arc::clone(&server.configuration);

        let mut app = pingora::proxy::http_proxy(&conf, EdgeProxy::new(Arc::clone(&state)));
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(state.config.server.idle_timeout.get());
        app.server_options = Some(options);
        let limits = crate::proxy::connection::Limits {
            max_connections: state.config.server.max_connections,
            header_timeout: state.config.server.header_timeout.get(),
            idle_timeout: state.config.server.idle_timeout.get(),
        };
        let guarded = crate::proxy::connection::GuardedApp::new(app, limits, Arc::clone(&state));
        let mut proxy = ListeningService::new("berth-edge".to_owned(), guarded);
        // No write buffer: every write goes to the socket. Pingora flushes a body only at its
        // end, so a buffered tail of a streamed body would wait for bytes a stalled upstream may
        // never send; direct answers (`proxy/direct.rs`) write a small response in one piece.
        let buffers = L4BufferSettings { read: None, write: Some(0) };
        let mut sockets = Vec::new();
        let (http_addr, https_addr) = (http.as_ref().map(|h| h.1), https.as_ref().map(|h| h.1));
        if let Some((socket, addr)) = http {
            proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
            sockets.push((addr.to_string(), socket));
        }
        if let (Some((socket, addr)), Some((settings, cert))) = (https, tls) {
            proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers).tls(settings));
            sockets.push((addr.to_string(), socket));
            let watch = crate::tls::CertWatch { cert, metrics: Arc::clone(&state.metrics) };
            let mut watch = background_service("tls", watch);
            watch.threads = Some(1);
            server.add_service(watch);
        }
        server.add_service(PreBound::new(proxy, sockets));

        let policy = Policy::new(Arc::clone(&state));
        let link = state.config.distributor.as_ref().map(|c| Arc::new(Link::new(c)));
        if let Some(config) = &state.config.distributor {
            // The admin address answers "starting" meanwhile (the pull listeners are not open).
            let _starting = crate::starting::Starting::answer(&admin_socket);
            tracing::info!(admin = %admin_addr, "catching up with the distributor before serving");
            initial_sync(&policy, config);
        }
        let mut admin =
            ListeningService::new("berth-admin".to_owned(), AdminApp::new(Arc::clone(&state), Arc::clone(&policy)));
        admin.add_tcp(&admin_addr.to_string());
        server.add_service(PreBound::new(admin, vec![(admin_addr.to_string(), admin_socket)]));

        let mut policy_service = background_service("policy", PolicyService { policy, link });
        policy_service.threads = Some(1);
        server.add_service(policy_service);

        let mut config_watch = background_service("config", crate::reload::ConfigWatch { state: Arc::clone(&state) });
        config_watch.threads = Some(1);
        server.add_service(config_watch);

        let scrub = Scrub { state: Arc::clone(&state) };
        let mut scrub = background_service("scrub", scrub);
        scrub.threads = Some(1);
        server.add_service(scrub);

        let off = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        tracing::info!(http = %off(http_addr), https = %off(https_addr), admin = %admin_addr, region = %state.config.region, "edge ready to serve");
        Ok(EdgeServer { state, server, http_addr, https_addr, admin_addr })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn state(&self) -> &Arc<EdgeState> {
        &self.state
    }

    /// The file SIGHUP reloads the config from.
    pub fn reload_from(self, path: &std::path::Path) -> Self {
        *self.state.config_file.lock() = Some(path.to_owned());
        self
    }

    /// Runs until SIGTERM (graceful: in-flight requests get `server.grace_period`), SIGINT
    /// (fast) or SIGQUIT (graceful upgrade).
    pub fn run(self) {
        // A SIGHUP before the certificate watch takes it over must not end the process (its
        // default action): ignored until then.
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let state = Arc::clone(&self.state);
        let signal = Box::new(Draining { state, inner: Box::new(pingora::server::UnixShutdownSignalWatch) });
        self.server.run(RunArgs { shutdown_signal: signal });
    }

    /// Runs on a new thread; the handle stops it.
    pub fn spawn(self) -> RunningEdge {
        let (tx, rx) = mpsc::unbounded_channel();
        let (http_addr, https_addr, admin_addr) = (self.http_addr, self.https_addr, self.admin_addr);
        let state = Arc::clone(&self.state);
        let signal = Box::new(Draining {
            state: Arc::clone(&state),
            inner: Box::new(ChannelSignal(tokio::sync::Mutex::new(rx))),
        });
        let thread = std::thread::Builder::new()
            .name("berth-edge".into())
            .spawn(move || self.server.run(RunArgs { shutdown_signal: signal }))
            .ok();
        RunningEdge { http_addr, https_addr, admin_addr, state, stop: tx, thread }
    }
}

fn server_conf(config: &EdgeConfig) -> ServerConf {
    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let grace = config.server.grace_period.get().as_secs();
    ServerConf {
        threads,
        work_stealing: true,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace.min(10)),
        ..ServerConf::default()
    }
}

/// A running edge; dropping it stops the edge.
pub struct RunningEdge {
    /// The plain-HTTP pull listener, when on.
    pub http_addr: Option<SocketAddr>,
    /// The TLS pull listener, when on.
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub state: Arc<EdgeState>,
    stop: mpsc::UnboundedSender<ShutdownSignal>,
    thread: Option<JoinHandle<()>>,
}

impl RunningEdge {
    /// Stops the edge and waits for its thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(ShutdownSignal::FastShutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningEdge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct ChannelSignal(tokio::sync::Mutex<mpsc::UnboundedReceiver<ShutdownSignal>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.lock().await.recv().await.unwrap_or(ShutdownSignal::FastShutdown)
    }
}

/// Catches up with the distributor's policy log before the edge serves (an edge that was down
/// applies what it missed first), giving up after `startup_sync_timeout`: a distributor that is
/// away must not keep an edge down.
fn initial_sync(policy: &Arc<Policy>, config: &crate::config::DistributorLink) {
    // On a thread of its own: `build` may be called from inside an async runtime.
    let (policy, config) = (Arc::clone(policy), config.clone());
    let _ = std::thread::spawn(move || sync_now(&policy, &config)).join();
}

fn sync_now(policy: &Arc<Policy>, config: &crate::config::DistributorLink) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let link = Link::new(config);
    let timeout = config.startup_sync_timeout.get();
    let caught_up = runtime.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut synced = Some(tx);
        let follow = async {
            loop {
                if let Err(e) = crate::policy::watch::session(policy, &link, &mut synced).await {
                    tracing::warn!(error = %e, "distributor not reachable at start");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        tokio::time::timeout(timeout, async {
            tokio::select! {
                _ = follow => {}
                _ = rx => {}
            }
        })
        .await
        .is_ok()
    });
    if caught_up {
        tracing::info!(applied = policy.applied(), "policy caught up before serving");
    } else {
        tracing::warn!(applied = policy.applied(), "serving without catching up with the distributor");
    }
}

/// Follows the distributor (when configured), reports to it, and runs prefetch jobs.
struct PolicyService {
    policy: Arc<Policy>,
    link: Option<Arc<Link>>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for PolicyService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let jobs = tokio::spawn(Arc::clone(&self.policy.prefetch).run());
        if let Some(link) = &self.link {
            let follow =
                crate::policy::watch::follow(Arc::clone(&self.policy), Arc::clone(link), shutdown.clone(), None);
            let report = crate::policy::report::run(Arc::clone(&self.policy), Arc::clone(link), shutdown.clone());
            tokio::join!(follow, report);
        } else {
            let mut shutdown = shutdown;
            let _ = shutdown.changed().await;
        }
        jobs.abort();
    }
}

/// The background scrub of the disk tier, as a Pingora background service.
struct Scrub {
    state: Arc<EdgeState>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for Scrub {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let store = Arc::clone(self.state.fills.store());
        crate::cache::scrub::run(store, self.state.config.cache.scrub_rate.bytes(), shutdown).await;
    }
}

/// Marks the edge not ready (for `/readyz`) as soon as shutdown begins.
struct Draining {
    state: Arc<EdgeState>,
    inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
}

#[async_trait]
impl ShutdownSignalWatch for Draining {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        tracing::info!(?signal, "shutdown requested");
        match signal {
            ShutdownSignal::GracefulTerminate => {
                // Drain first (Pingora would close every listener at once, then wait the whole
                // grace period): then exit as soon as the last request ends.
                self.state.drain.shut_down(self.state.config.server.grace_period.get()).await;
                ShutdownSignal::FastShutdown
            }
            other => {
                self.state.drain.stop_being_ready();
                other
            }
        }
    }
}
